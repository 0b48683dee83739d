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

/// Whether fd `fd1` of process `pid1` and fd `fd2` of `pid2` are one open file description
/// (`kcmp(KCMP_FILE)`: the kernel compares the `struct file` pointers). Needs ptrace access to
/// both processes.
pub fn same_file_description(
    (pid1, fd1): (i32, i32),
    (pid2, fd2): (i32, i32),
) -> Result<bool, SyscallError> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers (pids, a type, fd numbers) and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(pid1),
            libc::c_long::from(pid2),
            KCMP_FILE,
            libc::c_long::from(fd1),
            libc::c_long::from(fd2),
        )
    };
    check(ret, "kcmp(KCMP_FILE)").map(|r| r == 0)
}

/// Opens `path` with exactly the `open(2)` flags `flags` (access mode and status flags as a
/// process had them; `O_CLOEXEC` is added: the descriptor is fastcr's own).
pub fn open_with_flags(
    path: &std::path::Path,
    flags: i32,
) -> Result<std::os::fd::OwnedFd, SyscallError> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SyscallError::from_errno("open", libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; no mode is read since
    // the caller's flags never include O_CREAT or O_TMPFILE (masked below).
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            (flags | libc::O_CLOEXEC) & !(libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY)),
        )
    };
    check(fd.into(), "open")?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
