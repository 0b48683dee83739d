//! File-descriptor queries that std does not offer.

use std::os::fd::{AsFd, AsRawFd};

use super::{SyscallError, check};

/// The capacity of the pipe behind `fd` (`F_GETPIPE_SZ`).
pub fn pipe_size(fd: impl AsFd) -> Result<u32, SyscallError> {
    // SAFETY: fcntl on a descriptor we borrow; F_GETPIPE_SZ takes no pointer.
    let ret = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) };
    check(ret.into(), "fcntl(F_GETPIPE_SZ)").map(|n| n as u32)
}

/// Sets the capacity of the pipe behind `fd` (`F_SETPIPE_SZ`).
pub fn set_pipe_size(fd: impl AsFd, size: u32) -> Result<(), SyscallError> {
    // SAFETY: fcntl on a descriptor we borrow, with an integer argument.
    let ret = unsafe {
        libc::fcntl(
            fd.as_fd().as_raw_fd(),
            libc::F_SETPIPE_SZ,
            size as libc::c_int,
        )
    };
    check(ret.into(), "fcntl(F_SETPIPE_SZ)").map(drop)
}

/// `splice(2)` of up to `len` bytes from the pipe `from` to `to` (a socket), without blocking
/// on the pipe (`SPLICE_F_NONBLOCK`; the socket may still block). `more` says more data
/// follows (`SPLICE_F_MORE`). Returns the bytes moved; `EAGAIN` when the pipe is empty.
pub fn splice_from_pipe(
    from: impl AsFd,
    to: impl AsFd,
    len: usize,
    more: bool,
) -> Result<usize, SyscallError> {
    let flags =
        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: two borrowed descriptors, null offsets (both are streams), integer arguments.
    let ret = unsafe {
        libc::splice(
            from.as_fd().as_raw_fd(),
            std::ptr::null_mut(),
            to.as_fd().as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    check(ret as libc::c_long, "splice").map(|n| n as usize)
}
