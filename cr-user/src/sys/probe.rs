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

/// `struct uffdio_api` from `<linux/userfaultfd.h>`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioApi>() == 24);

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, 24);
/// `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = ioc(0, 0xAA, 0x00, 0);

const IOC_WRITE: libc::c_ulong = 1;
const IOC_READ: libc::c_ulong = 2;

/// Linux's `_IOC(dir, type, nr, size)` for x86_64.
const fn ioc(dir: libc::c_ulong, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    (dir << 30)
        | ((size as libc::c_ulong) << 16)
        | ((ty as libc::c_ulong) << 8)
        | nr as libc::c_ulong
}

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
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly one `struct uffdio_api`, which `api` is
    // (layout asserted above), and `fd` is a live userfaultfd.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &raw mut api) };
    check(ret.into(), "ioctl(UFFDIO_API)")?;
    Ok(UffdApi {
        source,
        features: api.features,
        ioctls: api.ioctls,
    })
}

// ---------------------------------------------------------------------------------------------
// PAGEMAP_SCAN

/// `struct pm_scan_arg` from `<linux/fs.h>` (Linux ≥ 6.7).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(size_of::<PmScanArg>() == 96);

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}
const _: () = assert!(size_of::<PageRegion>() == 24);

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, b'f', 16, 96);
/// `PAGE_IS_PRESENT`.
const PAGE_IS_PRESENT: u64 = 1 << 3;

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
    let mut regions = [PageRegion::default(); 1];
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: 0,
        start,
        end: start + page,
        walk_end: 0,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        max_pages: 0,
        category_inverted: 0,
        category_mask: PAGE_IS_PRESENT,
        category_anyof_mask: 0,
        return_mask: PAGE_IS_PRESENT,
    };
    // SAFETY: `arg` is a valid pm_scan_arg (layout asserted); the scanned range lies in `buf`,
    // and `vec` points to `regions`, which has room for `vec_len` entries; both outlive the call.
    let ret = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &raw mut arg) };
    let n = check(ret.into(), "ioctl(PAGEMAP_SCAN)")?;
    drop(buf);
    Ok(usize::try_from(n).unwrap_or(0))
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

/// `struct clone_args` (`CLONE_ARGS_SIZE_VER2`).
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

/// Creates a child with pid `pid` through clone3 `set_tid`; the child exits at once and is
/// reaped before returning.
///
/// # Errors
/// The failed clone3 (`EEXIST` if `pid` is taken: pick another one) or wait.
pub fn clone3_set_tid(pid: i32) -> Result<(), SyscallError> {
    let tid: libc::pid_t = pid;
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: (&raw const tid) as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child runs on a copy of our memory and only
    // makes the raw exit_group syscall below, which is async-signal-safe in a forked child of a
    // multi-threaded process.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if ret == 0 {
        // SAFETY: terminates the child immediately; no Rust code runs in it.
        unsafe { libc::syscall(libc::SYS_exit_group, 0) };
        unreachable!("exit_group returned");
    }
    let child = i32::try_from(check(ret, "clone3(set_tid)")?)
        .map_err(|_| SyscallError::from_errno("clone3(set_tid)", libc::EINVAL))?;
    reap(child)?;
    if child == pid {
        Ok(())
    } else {
        // The kernel ignored set_tid: report it as unsupported.
        Err(SyscallError::from_errno("clone3(set_tid)", libc::EINVAL))
    }
}

/// Waits for `pid` to terminate.
fn reap(pid: i32) -> Result<(), SyscallError> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the call.
        let ret = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
        if ret == -1 {
            let err = SyscallError::last("waitpid");
            if err.errno() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Ok(());
        }
    }
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
        if let Err(e) = reap(self.pid) {
            tracing::warn!(pid = self.pid, error = %e, "cannot reap probe child");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ptrace

/// `NT_X86_XSTATE`.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux ≥ 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}
const _: () = assert!(size_of::<RseqConfiguration>() == 24);

/// What the ptrace probe measured.
#[derive(Debug, Clone, Copy)]
pub struct PtraceProbe {
    /// Bytes of `NT_X86_XSTATE` the kernel returned.
    pub xstate_len: usize,
    /// `rseq_abi_size` reported by `PTRACE_GET_RSEQ_CONFIGURATION` (0: no rseq registered).
    pub rseq_size: u32,
}

/// Seizes `child`, interrupts it, waits for the stop, reads its xstate and rseq configuration,
/// then detaches (the child is left stopped-then-running, and is killed by its owner).
///
/// # Errors
/// The first call that failed, named.
pub fn ptrace_probe(child: &PausedChild) -> Result<PtraceProbe, SyscallError> {
    let pid = child.pid();
    // SAFETY: PTRACE_SEIZE with integer arguments on our own child.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    check(ret, "ptrace(PTRACE_SEIZE)")?;
    // SAFETY: PTRACE_INTERRUPT with integer arguments on a seized tracee.
    let ret = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) };
    check(ret, "ptrace(PTRACE_INTERRUPT)")?;
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let ret = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
    check(ret.into(), "waitpid(ptrace stop)")?;
    if !libc::WIFSTOPPED(status) {
        return Err(SyscallError::from_errno(
            "waitpid(ptrace stop)",
            libc::ESRCH,
        ));
    }

    let mut xstate = vec![0u8; 16 * 1024];
    let mut iov = libc::iovec {
        iov_base: xstate.as_mut_ptr().cast(),
        iov_len: xstate.len(),
    };
    // SAFETY: `iov` describes `xstate`, which is writable for `iov_len` bytes and outlives the
    // call; the kernel shrinks `iov_len` to what it wrote.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid,
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &raw mut iov,
        )
    };
    check(ret, "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)")?;
    let xstate_len = iov.iov_len;

    let mut rseq = RseqConfiguration::default();
    // SAFETY: the kernel writes at most `addr` bytes (the struct's size) into `rseq`.
    let ret = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            pid,
            size_of::<RseqConfiguration>(),
            &raw mut rseq,
        )
    };
    check(ret, "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)")?;

    // SAFETY: PTRACE_DETACH with integer arguments on our stopped tracee.
    let ret = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    check(ret, "ptrace(PTRACE_DETACH)")?;
    Ok(PtraceProbe {
        xstate_len,
        rseq_size: rseq.rseq_abi_size,
    })
}

// ---------------------------------------------------------------------------------------------
// prctl

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
