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
