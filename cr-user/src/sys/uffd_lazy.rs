//! The userfaultfd calls of lazy restore: MISSING registration, the non-cooperative events
//! (fork, mremap, MADV_DONTNEED, munmap) and page placement (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::uffd::ioc;
use super::{SyscallError, check};

/// `UFFD_FEATURE_EVENT_FORK`: a fork of the process gives a new userfaultfd for the child.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: mremap of a registered range is reported.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: MADV_DONTNEED / MADV_REMOVE of a registered range is reported.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_EVENT_UNMAP`: munmap of a registered range is reported.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Every non-cooperative event lazy restore needs.
pub const LAZY_FEATURES: u64 =
    FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;
/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const MSG_LEN: usize = 32;

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
const _: () = assert!(size_of::<UffdioCopy>() == 40);

#[repr(C)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}
const _: () = assert!(size_of::<UffdioZeropage>() == 32);

const UFFDIO_COPY: libc::c_ulong = ioc(3, 0xAA, 0x03, 40);
const UFFDIO_ZEROPAGE: libc::c_ulong = ioc(3, 0xAA, 0x04, 32);

/// One message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread faulted on a missing page at `addr` (page-aligned by the caller).
    PageFault {
        /// Faulting address.
        addr: u64,
        /// `UFFD_PAGEFAULT_FLAG_*`.
        flags: u64,
    },
    /// The process forked; `uffd` serves the child's copy of the registered ranges.
    Fork {
        /// The child's userfaultfd, now ours.
        uffd: OwnedFd,
    },
    /// `[from, from+len)` moved to `[to, to+len)`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `[start, end)` was dropped (MADV_DONTNEED/REMOVE): it now reads as zero.
    Remove {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `[start, end)` was unmapped.
    Unmap {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
}

fn u64_at(b: &[u8; MSG_LEN], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Reads one message from a non-blocking userfaultfd; `Ok(None)` when none is queued.
pub fn read_event(fd: BorrowedFd<'_>) -> Result<Option<Event>, SyscallError> {
    let mut buf = [0u8; MSG_LEN];
    // SAFETY: reads at most MSG_LEN bytes into `buf`, which has that size.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), MSG_LEN) };
    if n == -1 {
        let err = SyscallError::last("read(userfaultfd)");
        return match err.errno() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(err),
        };
    }
    if n as usize != MSG_LEN {
        return Err(SyscallError::from_errno("read(userfaultfd)", libc::EIO));
    }
    // The union starts at byte 8.
    let ev = match buf[0] {
        EVENT_PAGEFAULT => Event::PageFault {
            flags: u64_at(&buf, 8),
            addr: u64_at(&buf, 16),
        },
        EVENT_FORK => {
            let raw = u64_at(&buf, 8) as u32 as i32;
            // SAFETY: the kernel installed this descriptor in our table for the fork event and
            // nothing else owns it.
            let uffd = unsafe { OwnedFd::from_raw_fd(raw) };
            Event::Fork { uffd }
        }
        EVENT_REMAP => Event::Remap {
            from: u64_at(&buf, 8),
            to: u64_at(&buf, 16),
            len: u64_at(&buf, 24),
        },
        EVENT_REMOVE => Event::Remove {
            start: u64_at(&buf, 8),
            end: u64_at(&buf, 16),
        },
        EVENT_UNMAP => Event::Unmap {
            start: u64_at(&buf, 8),
            end: u64_at(&buf, 16),
        },
        _ => return Err(SyscallError::from_errno("read(userfaultfd)", libc::EPROTO)),
    };
    Ok(Some(ev))
}

/// Outcome of a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// All bytes placed.
    All,
    /// The first `n` bytes were placed, then a page that already exists was met (`EEXIST`).
    Exists(u64),
    /// The first `n` bytes were placed, then the layout was changing (`EAGAIN`): read the
    /// pending events and retry.
    Again(u64),
    /// The range is no longer registered or mapped (`ENOENT`), or the process is gone (`ESRCH`).
    Gone,
}

fn placed(ret: libc::c_int, done: i64, call: &'static str) -> Result<Placed, SyscallError> {
    if ret == 0 {
        return Ok(Placed::All);
    }
    let err = SyscallError::last(call);
    let done = u64::try_from(done).unwrap_or(0);
    match err.errno() {
        Some(libc::EEXIST) => Ok(Placed::Exists(done)),
        Some(libc::EAGAIN) => Ok(Placed::Again(done)),
        Some(libc::ENOENT | libc::ESRCH) => Ok(Placed::Gone),
        _ => Err(err),
    }
}

/// `UFFDIO_COPY` of `src` (whole pages) to `dst` in the registered process, waking the threads
/// that wait on it.
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> Result<Placed, SyscallError> {
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads `len` bytes from `src`, a live slice of that length, and
    // writes only into the other process's registered range and into `arg` (layout asserted).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY, &raw mut arg) };
    placed(ret, arg.copy, "ioctl(UFFDIO_COPY)")
}

/// `UFFDIO_ZEROPAGE` of `[start, start+len)`, waking the waiting threads.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<Placed, SyscallError> {
    let mut arg = UffdioZeropage {
        start,
        len,
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes one `struct uffdio_zeropage` (layout asserted).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_ZEROPAGE, &raw mut arg) };
    placed(ret, arg.zeropage, "ioctl(UFFDIO_ZEROPAGE)")
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1: forever); returns which
/// are readable.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> Result<Vec<bool>, SyscallError> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs.
        let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        match check(ret.into(), "poll") {
            Ok(_) => break,
            Err(e) if e.errno() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

const UFFDIO_WAKE: libc::c_ulong = ioc(2, 0xAA, 0x02, 16);

/// `UFFDIO_WAKE` of `[start, start+len)`: threads waiting on a fault there retry it.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), SyscallError> {
    let mut arg = [start, len];
    // SAFETY: UFFDIO_WAKE reads one `struct uffdio_range` (two u64), which `arg` is.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WAKE, arg.as_mut_ptr()) };
    check(ret.into(), "ioctl(UFFDIO_WAKE)").map(drop)
}
