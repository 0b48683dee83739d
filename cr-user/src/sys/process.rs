//! Processes: clone3 with a chosen pid, signals, waiting, robust lists, identity.

use super::{SyscallError, check};

/// Forks a child whose pid is `pid` (clone3 `set_tid`), which runs `child` and nothing else.
/// `child` must make only raw syscalls (glibc's cached thread data is stale in the child) and
/// must not return. Fails with `EEXIST` if `pid` is in use.
fn clone3_with_pid(pid: i32, child: fn() -> !) -> Result<i32, SyscallError> {
    let got = clone3_raw(0, Some(pid), child)?;
    if got != pid {
        // The kernel ignored set_tid: say so rather than restore under another pid.
        let _ = kill(got, libc::SIGKILL);
        let _ = wait_exit(got);
        return Err(SyscallError::from_errno("clone3(set_tid)", libc::EINVAL));
    }
    Ok(got)
}

/// clone3 without CLONE_VM (a fork) with `flags`, and with the pid `pid` in the innermost pid
/// namespace of the new task when given. The child runs `child` only. Returns the child's pid
/// as seen from here.
fn clone3_raw(flags: u64, pid: Option<i32>, child: fn() -> !) -> Result<i32, SyscallError> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const _: () = assert!(size_of::<CloneArgs>() == 88);
    let tid: libc::pid_t = pid.unwrap_or(0);
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: if pid.is_some() {
            (&raw const tid) as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        cgroup: 0,
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of our memory and
    // runs only `child`, which by contract makes raw async-signal-safe syscalls and never
    // returns into Rust code.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if ret == 0 {
        child();
    }
    Ok(check(ret, "clone3")? as i32)
}

/// The restore child: asks to be traced by its parent and stops itself.
fn traced_child() -> ! {
    // SAFETY: raw syscalls only; glibc's cached thread data is stale in this child, so no
    // libc wrapper that reads it (raise, getpid caches) is used.
    unsafe {
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::syscall(libc::SYS_exit_group, 127);
    }
    unreachable!("exit_group returned");
}

/// A child that exits at once.
fn exiting_child() -> ! {
    // SAFETY: terminates the child immediately.
    unsafe { libc::syscall(libc::SYS_exit_group, 0) };
    unreachable!("exit_group returned");
}

/// Creates a child whose pid is `pid` (clone3 `set_tid`) that asks to be traced by us and stops
/// itself with SIGSTOP; it is then ready for syscall injection once that stop is waited for.
/// Fails with `EEXIST` if `pid` is in use.
pub fn spawn_traced_with_pid(pid: i32) -> Result<i32, SyscallError> {
    clone3_with_pid(pid, traced_child)
}

/// Like [`spawn_traced_with_pid`], in the pid namespace this thread creates children in (see
/// [`enter_pidns_for_children`]); `pid` is the pid inside that namespace. Returns the child's pid
/// as seen from here (in our own namespace).
pub fn spawn_traced_in_pidns(pid: i32) -> Result<i32, SyscallError> {
    clone3_raw(0, Some(pid), traced_child)
}

/// The read end of the release pipe of the init being spawned (see [`spawn_pidns_init`]).
static INIT_RELEASE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Creates a new pid namespace whose init (pid 1) is a child of ours running [`pidns_init`]:
/// it reaps every orphan of the namespace and exits when nothing else is left in it, which ends
/// the namespace. Until it reads one byte from `release` it only waits: if `release` reaches
/// EOF first (its writer, fastcr, died or gave up), init exits at once, and the kernel kills
/// every process in the namespace. Returns init's pid as seen from here.
pub fn spawn_pidns_init(release: std::os::fd::BorrowedFd<'_>) -> Result<i32, SyscallError> {
    use std::os::fd::AsRawFd;
    INIT_RELEASE_FD.store(release.as_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    clone3_raw(libc::CLONE_NEWPID as u64, None, pidns_init)
}

/// Pid 1 of a restore's pid namespace. Raw syscalls only (this is a fork of fastcr).
fn pidns_init() -> ! {
    let release = INIT_RELEASE_FD.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: raw syscalls on integers and on locals that outlive each call; this child never
    // returns into Rust code.
    unsafe {
        // Keep only the release pipe: inherited descriptors (a caller's stdout pipe) must not
        // be held open by a process that can live for as long as the restored tree.
        if release > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (release - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (release + 1) as u32, u32::MAX, 0u32);
        // Named for what it is, not for the fastcr command it was forked from.
        let name = b"fastcr-pidns-init\0";
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        let mut byte = 0u8;
        loop {
            let n = libc::syscall(libc::SYS_read, release, &raw mut byte, 1usize);
            if n == 1 {
                break;
            }
            if n == -1 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // EOF or error before the release: fastcr is gone; take the namespace down.
            libc::syscall(libc::SYS_exit_group, 1);
        }
        libc::syscall(libc::SYS_close, release);
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        loop {
            let mut status = 0i32;
            let r = libc::syscall(libc::SYS_wait4, -1, &raw mut status, libc::__WALL, 0usize);
            if r > 0 {
                continue;
            }
            // No child of ours right now: the tree may still run under fastcr, its parent.
            if libc::syscall(libc::SYS_kill, -1, 0) == -1
                && *libc::__errno_location() == libc::ESRCH
            {
                libc::syscall(libc::SYS_exit_group, 0);
            }
            libc::syscall(libc::SYS_nanosleep, &raw const pause, 0usize);
        }
    }
}

/// Makes the children this thread creates from now on start in the pid namespace of the
/// process behind `pidfd` (`setns(CLONE_NEWPID)`; our own pid namespace is unchanged).
pub fn enter_pidns_for_children(pidfd: std::os::fd::BorrowedFd<'_>) -> Result<(), SyscallError> {
    use std::os::fd::AsRawFd;
    // SAFETY: a live pidfd and a namespace flag.
    let ret = unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWPID) };
    check(ret.into(), "setns(CLONE_NEWPID)").map(drop)
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), SyscallError> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret.into(), "pipe2")?;
    // SAFETY: the kernel just returned these two descriptors and nothing else owns them.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Reaps `pid` if it has ended; `Ok(None)` while it runs.
pub fn waitpid_nohang(pid: i32) -> Result<Option<ExitStatus>, SyscallError> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live c_int the kernel writes into.
    let ret = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL | libc::WNOHANG) };
    check(ret.into(), "waitpid")?;
    if ret == 0 {
        return Ok(None);
    }
    if libc::WIFSIGNALED(status) {
        return Ok(Some(ExitStatus::Killed(libc::WTERMSIG(status))));
    }
    Ok(Some(ExitStatus::Exited(libc::WEXITSTATUS(status))))
}

/// Creates a child with pid `pid` that exits at once, and reaps it (a probe of clone3 set_tid).
pub fn spawn_exiting_with_pid(pid: i32) -> Result<(), SyscallError> {
    let child = clone3_with_pid(pid, exiting_child)?;
    wait_exit(child).map(drop)
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) -> Result<(), SyscallError> {
    // SAFETY: plain integers.
    let ret = unsafe { libc::kill(pid, sig) };
    check(ret.into(), "kill").map(drop)
}

/// Sends `sig` to thread `tid` of process `pid` only (`tgkill`).
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> Result<(), SyscallError> {
    // SAFETY: plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    check(ret, "tgkill").map(drop)
}

/// Waits for `pid` to end and returns its wait status decoded as (exited code | killed signal).
pub fn wait_exit(pid: i32) -> Result<ExitStatus, SyscallError> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a live c_int the kernel writes into.
        let ret = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
        if ret == -1 {
            let err = SyscallError::last("waitpid");
            if err.errno() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if libc::WIFEXITED(status) {
            return Ok(ExitStatus::Exited(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(ExitStatus::Killed(libc::WTERMSIG(status)));
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Killed(i32),
}

/// Reads another task's robust futex list head and length (`get_robust_list`).
pub fn get_robust_list(tid: i32) -> Result<(u64, u64), SyscallError> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: both out-pointers reference live locals of the sizes the kernel writes.
    let ret = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &raw mut head, &raw mut len) };
    check(ret, "get_robust_list")?;
    Ok((head, len as u64))
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes this process a child subreaper, so orphaned descendants are reparented to it.
pub fn set_child_subreaper() -> Result<(), SyscallError> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check(ret.into(), "prctl(PR_SET_CHILD_SUBREAPER)").map(drop)
}

/// `pidfd_open(pid)`.
pub fn pidfd_open(pid: i32) -> Result<std::os::fd::OwnedFd, SyscallError> {
    // SAFETY: integer arguments; returns a new descriptor.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    owned(ret, "pidfd_open")
}

/// `pidfd_getfd`: a copy of descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(
    pidfd: std::os::fd::BorrowedFd<'_>,
    fd: i32,
) -> Result<std::os::fd::OwnedFd, SyscallError> {
    use std::os::fd::AsRawFd;
    // SAFETY: a live pidfd, a descriptor number in that process, no flags.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    owned(ret, "pidfd_getfd")
}

fn owned(ret: libc::c_long, call: &'static str) -> Result<std::os::fd::OwnedFd, SyscallError> {
    use std::os::fd::FromRawFd;
    let fd = check(ret, call)?;
    let fd = i32::try_from(fd).map_err(|_| SyscallError::from_errno(call, libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sets `O_NONBLOCK` on the open file behind `fd` (shared by its duplicates).
pub fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), SyscallError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a live descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(flags.into(), "fcntl(F_GETFL)")?;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    check(ret.into(), "fcntl(F_SETFL)").map(drop)
}
