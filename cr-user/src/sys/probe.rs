//! Raw calls behind `fastcr check` (`crate::kerndat`) and the tracefs mount the BPF loader needs.
//!
//! Each probe exercises the real kernel interface once, with the smallest valid arguments, and
//! cleans up what it created (children are killed and reaped by [`PausedChild`]'s `Drop`, file
//! descriptors are `OwnedFd`s). Nothing here decides what a result *means*; `kerndat` does.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

use super::{SyscallError, check};

/// Where fastcr expects (and, if needed, mounts) tracefs.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Returns the tracefs mount point, mounting tracefs at [`TRACEFS`] first if its `events`
/// directory is absent (Debian does not mount it by default; aya needs it to resolve tracepoint
/// ids).
///
/// # Errors
/// The failed `mount(2)`.
pub fn ensure_tracefs() -> Result<PathBuf, SyscallError> {
    let path = PathBuf::from(TRACEFS);
    if path.join("events").is_dir() {
        return Ok(path);
    }
    let source = CString::new("tracefs").expect("no NUL in literal");
    let target = CString::new(TRACEFS).expect("no NUL in literal");
    // SAFETY: all three strings are valid NUL-terminated C strings that outlive the call; a
    // null `data` pointer is allowed for tracefs.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(ret.into(), "mount(tracefs)")?;
    Ok(path)
}

/// Fetches errno-carrying results for calls returning a file descriptor.
fn owned_fd(ret: libc::c_long, call: &'static str) -> Result<OwnedFd, SyscallError> {
    let fd = check(ret, call)?;
    let fd = RawFd::try_from(fd).map_err(|_| SyscallError::from_errno(call, libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// userfaultfd

/// `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = super::uffd::ioc(0, 0xAA, 0x00, 0);

/// How a userfaultfd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdSource {
    /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux ≥ 6.1).
    DevNode,
    /// The `userfaultfd(2)` system call.
    Syscall,
}

/// What `UFFDIO_API` reported.
#[derive(Debug, Clone, Copy)]
pub struct UffdApi {
    /// Where the descriptor came from.
    pub source: UffdSource,
    /// Every feature bit the kernel supports (`UFFD_FEATURE_*`).
    pub features: u64,
    /// Bit mask of the ioctls available on the descriptor (`1 << _UFFDIO_*`).
    pub ioctls: u64,
}

/// Opens a userfaultfd (the device node first, then the syscall) and asks `UFFDIO_API` for every
/// supported feature: with `features = 0` the kernel answers with the full set.
///
/// # Errors
/// The syscall's error if both ways to get a descriptor fail (the device node's error is only
/// logged: it is absent on older kernels), or the failed `UFFDIO_API`.
pub fn uffd_api() -> Result<UffdApi, SyscallError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let (fd, source) = match File::options()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => {
            // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags as an integer
            // argument and returns a new descriptor; `dev` is open for the call's duration.
            let ret = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
            (
                owned_fd(ret.into(), "ioctl(USERFAULTFD_IOC_NEW)")?,
                UffdSource::DevNode,
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "/dev/userfaultfd unavailable, trying the syscall");
            // SAFETY: userfaultfd(2) takes only a flags integer and returns a new descriptor.
            let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            (owned_fd(ret, "userfaultfd")?, UffdSource::Syscall)
        }
    };
    let (features, ioctls) = super::uffd::api(std::os::fd::AsFd::as_fd(&fd), 0)?;
    Ok(UffdApi {
        source,
        features,
        ioctls,
    })
}

// ---------------------------------------------------------------------------------------------
// PAGEMAP_SCAN

/// Runs one `PAGEMAP_SCAN` over a page of our own heap that is known to be present, and returns
/// the number of regions the kernel reported (1 when the ioctl works).
///
/// # Errors
/// The failed open of `/proc/self/pagemap` or the ioctl (`ENOTTY` when unsupported).
pub fn pagemap_scan() -> Result<usize, SyscallError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| SyscallError {
        call: "open(/proc/self/pagemap)",
        io_error: e,
    })?;
    // Two pages so that one whole, page-aligned, touched page lies inside.
    let page = super::PAGE_SIZE;
    let buf = vec![1u8; 2 * 4096];
    let start = (buf.as_ptr() as u64).next_multiple_of(page);
    let req = super::uffd::ScanRequest {
        start,
        end: start + page,
        category_mask: super::uffd::PAGE_IS_PRESENT,
        return_mask: super::uffd::PAGE_IS_PRESENT,
        ..Default::default()
    };
    let mut regions = Vec::new();
    super::uffd::pagemap_scan(&pagemap, &req, &mut regions)?;
    drop(buf);
    Ok(regions.len())
}

// ---------------------------------------------------------------------------------------------
// pidfd

/// `pidfd_open` on ourselves, then `pidfd_getfd` of a descriptor we hold: the same path fastcr
/// uses to take a userfaultfd created inside a target.
///
/// # Errors
/// The failed call.
pub fn pidfd_getfd_self() -> Result<(), SyscallError> {
    let probe = File::open("/dev/null").map_err(|e| SyscallError {
        call: "open(/dev/null)",
        io_error: e,
    })?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) };
    let pidfd = owned_fd(ret, "pidfd_open")?;
    // SAFETY: pidfd_getfd takes a live pidfd, a descriptor number in that process and flags,
    // and returns a new descriptor in ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            probe.as_raw_fd(),
            0,
        )
    };
    let _copy = owned_fd(ret, "pidfd_getfd")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// clone3 set_tid

/// Creates a child with pid `pid` through clone3 `set_tid`; the child exits at once and is
/// reaped before returning.
///
/// # Errors
/// The failed clone3 (`EEXIST` if `pid` is taken: pick another one) or wait.
pub fn clone3_set_tid(pid: i32) -> Result<(), SyscallError> {
    super::process::spawn_exiting_with_pid(pid)
}

// ---------------------------------------------------------------------------------------------
// A throwaway child

/// A forked child that only sleeps in `pause()`, for probes that need a live foreign process
/// (ptrace, cgroup freeze). Dropping it kills and reaps it, so every exit path cleans up.
#[derive(Debug)]
pub struct PausedChild {
    pid: i32,
}

impl PausedChild {
    /// Forks the child.
    ///
    /// # Errors
    /// The failed fork.
    pub fn spawn() -> Result<Self, SyscallError> {
        // SAFETY: in the child only the raw pause/exit_group syscalls run, which are safe after
        // fork in a multi-threaded process; it never returns into Rust code.
        let ret = unsafe { libc::fork() };
        if ret == 0 {
            loop {
                // SAFETY: raw syscalls, no arguments beyond integers.
                unsafe { libc::syscall(libc::SYS_pause) };
            }
        }
        let pid = i32::try_from(check(ret.into(), "fork")?)
            .map_err(|_| SyscallError::from_errno("fork", libc::EINVAL))?;
        Ok(Self { pid })
    }

    /// The child's pid.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        // SAFETY: plain integers; the pid is our unreaped child, so it cannot have been recycled.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Err(e) = super::process::wait_exit(self.pid) {
            tracing::warn!(pid = self.pid, error = %e, "cannot reap probe child");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ptrace

/// What the ptrace probe measured.
#[derive(Debug, Clone, Copy)]
pub struct PtraceProbe {
    /// Bytes of `NT_X86_XSTATE` the kernel returned.
    pub xstate_len: usize,
    /// `rseq_abi_size` reported by `PTRACE_GET_RSEQ_CONFIGURATION` (0: no rseq registered).
    pub rseq_size: u32,
}

/// Seizes `child`, interrupts it, waits for the stop, reads its xstate and rseq configuration,
/// then detaches (the child is left stopped-then-running, and is killed by its owner). Uses the
/// same calls as the dump, so what it reports is what a dump gets.
///
/// # Errors
/// The first call that failed, named.
pub fn ptrace_probe(child: &PausedChild) -> Result<PtraceProbe, SyscallError> {
    use super::ptrace::{self, Stop};
    let pid = child.pid();
    ptrace::seize(pid, 0)?;
    ptrace::interrupt(pid)?;
    match ptrace::wait_stop(pid)? {
        Stop::Exited(_) | Stop::Killed(_) => {
            return Err(SyscallError::from_errno(
                "waitpid(ptrace stop)",
                libc::ESRCH,
            ));
        }
        _ => {}
    }
    let xstate_len = ptrace::get_xstate(pid)?.len();
    let rseq = ptrace::get_rseq(pid)?;
    ptrace::detach(pid, 0)?;
    Ok(PtraceProbe {
        xstate_len,
        rseq_size: rseq.len,
    })
}

// ---------------------------------------------------------------------------------------------
// prctl

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET)`: whether
/// `timer_create` takes the wanted id (Linux 6.14+); only reads this process's setting.
///
/// # Errors
/// The failed prctl (`EINVAL` on older kernels).
pub fn timer_restore_ids() -> Result<bool, SyscallError> {
    const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
    const PR_TIMER_CREATE_RESTORE_IDS_GET: libc::c_ulong = 2;
    // SAFETY: this prctl takes integers only and touches no memory.
    let ret = unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret.into(), "prctl(PR_TIMER_CREATE_RESTORE_IDS)").map(|v| v != 0)
}

/// `PR_SET_MM_MAP_SIZE`: asks the kernel for `sizeof(struct prctl_mm_map)`, which only
/// succeeds where `PR_SET_MM_MAP` exists (CONFIG_CHECKPOINT_RESTORE).
///
/// # Errors
/// The failed prctl.
pub fn prctl_mm_map_size() -> Result<u32, SyscallError> {
    const PR_SET_MM_MAP_SIZE: libc::c_ulong = 15;
    let mut size: libc::c_uint = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int to the pointer in arg3.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            PR_SET_MM_MAP_SIZE,
            &raw mut size,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(ret.into(), "prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)")?;
    Ok(size)
}
