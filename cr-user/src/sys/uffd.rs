//! userfaultfd ioctls and `PAGEMAP_SCAN`, defined here because Debian's libc crate lacks the
//! newer ones (WP_ASYNC, MOVE, PAGEMAP_SCAN).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::{SyscallError, check};

const IOC_WRITE: libc::c_ulong = 1;
const IOC_READ: libc::c_ulong = 2;

/// Linux's `_IOC(dir, type, nr, size)` for x86_64.
pub(crate) const fn ioc(dir: libc::c_ulong, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    (dir << 30)
        | ((size as libc::c_ulong) << 16)
        | ((ty as libc::c_ulong) << 8)
        | nr as libc::c_ulong
}

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// Write faults on write-protected pages are resolved by the kernel itself; only the
/// "written" state is left behind, for `PAGEMAP_SCAN` to harvest.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Unpopulated pages of a WP-registered range count as write-protected.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_USER_MODE_ONLY`, the flag that lets an unprivileged task create a userfaultfd.
pub const USER_MODE_ONLY: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const REGISTER_MODE_WP: u64 = 2;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioApi>() == 24);

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
const _: () = assert!(size_of::<UffdioRange>() == 16);

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioRegister>() == 32);

const UFFDIO_API: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, 24);
const UFFDIO_REGISTER: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x00, 32);
const UFFDIO_UNREGISTER: libc::c_ulong = ioc(IOC_READ, 0xAA, 0x01, 16);

/// `UFFDIO_API` with the `features` asked for; returns (features granted, ioctl mask).
/// With `features = 0` the kernel answers with everything it supports.
pub fn api(fd: BorrowedFd<'_>, features: u64) -> Result<(u64, u64), SyscallError> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api` (layout asserted), which
    // `arg` is and which outlives the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &raw mut arg) };
    check(ret.into(), "ioctl(UFFDIO_API)")?;
    Ok((arg.features, arg.ioctls))
}

/// `UFFDIO_REGISTER` of `[start, start+len)` with `mode`; returns the ioctl mask for the range.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64, SyscallError> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register` (layout asserted).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, &raw mut arg) };
    check(ret.into(), "ioctl(UFFDIO_REGISTER)")?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER` of `[start, start+len)`.
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), SyscallError> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range` (layout asserted).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_UNREGISTER, &raw mut arg) };
    check(ret.into(), "ioctl(UFFDIO_UNREGISTER)").map(drop)
}

/// `struct pm_scan_arg` (Linux ≥ 6.7).
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

/// `struct page_region`: a run of pages with the same categories.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// `PAGE_IS_*` bits (as selected by the return mask).
    pub categories: u64,
}
const _: () = assert!(size_of::<PageRegion>() == 24);

const PAGEMAP_SCAN: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, b'f', 16, 96);
/// Write-protect the pages that match while reporting them (atomically).
pub const PM_SCAN_WP_MATCHING: u64 = 1;
/// Fail unless the range is registered for async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 2;
/// Written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Backed by a file (or shmem), not anonymous memory.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// Present in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Swapped out.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Mapped to the shared zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// What to ask `PAGEMAP_SCAN` for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest {
    /// First address.
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Categories whose meaning is inverted before matching (to require their absence).
    pub category_inverted: u64,
    /// Pages must have all of these categories.
    pub category_mask: u64,
    /// ... or at least one of these.
    pub category_anyof_mask: u64,
    /// Categories to report.
    pub return_mask: u64,
}

/// Runs `PAGEMAP_SCAN` on `pagemap` (an open `/proc/PID/pagemap`) over the whole request,
/// appending the matching regions to `out`.
pub fn pagemap_scan(
    pagemap: &File,
    req: &ScanRequest,
    out: &mut Vec<PageRegion>,
) -> Result<(), SyscallError> {
    // Never more regions than pages: a scan of a few pages (a closing round's hinted ranges)
    // does not zero a 96 KiB buffer.
    let pages = req.end.saturating_sub(req.start).div_ceil(super::PAGE_SIZE);
    let mut vec = vec![PageRegion::default(); pages.clamp(1, 4096) as usize];
    let mut start = req.start;
    while start < req.end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: req.flags,
            start,
            end: req.end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: 0,
            category_inverted: req.category_inverted,
            category_mask: req.category_mask,
            category_anyof_mask: req.category_anyof_mask,
            return_mask: req.return_mask,
        };
        // SAFETY: `arg` is a valid pm_scan_arg (layout asserted) whose `vec` points to `vec`,
        // which has room for `vec_len` regions and outlives the call.
        let ret = unsafe { libc::ioctl(pagemap.as_fd().as_raw_fd(), PAGEMAP_SCAN, &raw mut arg) };
        let n = check(ret.into(), "ioctl(PAGEMAP_SCAN)")? as usize;
        out.extend_from_slice(&vec[..n.min(vec.len())]);
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(())
}
