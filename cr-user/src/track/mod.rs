//! Write tracking of a running process: a userfaultfd created *inside* the target (an injected
//! `userfaultfd` syscall, taken with `pidfd_getfd`, then closed in the target so its fd table is
//! unchanged) registers the target's private writable VMAs for asynchronous write-protect
//! (`UFFD_FEATURE_WP_ASYNC`): the kernel resolves each first write itself (~1 µs) and leaves the
//! page marked "written". [`WriteTracker::harvest`] collects those pages with `PAGEMAP_SCAN`
//! and write-protects them again in the same call, so no write between two harvests is lost.
//!
//! fastcr holds the userfaultfd for the whole session; dropping the tracker closes it, and the
//! kernel then removes the registration and every write-protect marker.

pub mod final_pass;
pub mod final_scan;
pub mod incremental;
mod narrow;
pub mod precopy;
pub mod ranges;
pub mod shadow;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use crate::freeze::{FreezeError, Frozen};
use crate::image::inventory::TrackingLink;
use crate::inject::{InjectError, Injector, vdso_syscall_ip};
use crate::proc::maps::MapEntry;
use crate::proc::{self, ProcError};
use crate::sys::SyscallError;
use crate::sys::process;
use crate::sys::remote::Remote;
use crate::sys::uffd::{
    self, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PageRegion, ScanRequest,
};

/// Why tracking could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The short stop to create the userfaultfd failed.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// The injected `userfaultfd` or `close` failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// `/proc` could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Reading the final pages failed.
    #[error(transparent)]
    Mm(#[from] crate::mm::MmError),
    /// A userfaultfd or pagemap call failed.
    #[error("{step} for process {pid} failed")]
    Syscall {
        /// The process.
        pid: i32,
        /// What was done.
        step: &'static str,
        /// The call.
        #[source]
        source: SyscallError,
    },
    /// The userfaultfd a previous run left in the process is gone.
    #[error(
        "the write tracking left in process {pid} at fd {fd} is gone; dump without --prev-images-dir"
    )]
    LinkLost {
        /// The process.
        pid: i32,
        /// The fd recorded in the parent image.
        fd: i32,
    },
    /// `--verify-final-scan`: the walk of all memory found written pages that the hinted
    /// final scan did not cover, so the guards let a writer through.
    #[error(
        "the hinted final scan of process {pid} missed {pages} written pages (the first at \
         {first:#x}); dump with --full-final-scan"
    )]
    HintedScanMissed {
        /// The process.
        pid: i32,
        /// Written pages outside the hinted ranges.
        pages: u64,
        /// The first of them.
        first: u64,
    },
    /// The kernel lacks asynchronous write-protect.
    #[error(
        "this kernel's userfaultfd has no WP_ASYNC (features {features:#x}); pre-copy needs it"
    )]
    NoWpAsync {
        /// Features granted.
        features: u64,
    },
}

/// Lowest fd number a kept userfaultfd is moved to in the target.
const KEPT_FD_MIN: u64 = 512;

/// Address ranges `[start, end)`.
pub type Ranges = Vec<(u64, u64)>;

/// Whether a VMA's writes are tracked: private, writable, ordinary memory.
pub fn trackable(e: &MapEntry) -> bool {
    let special = e.path.starts_with('[')
        && !matches!(e.path.as_str(), "[heap]" | "[stack]")
        && !e.path.starts_with("[anon:");
    !e.shared && e.prot & libc::PROT_WRITE as u32 != 0 && !special && !e.path.starts_with("/dev/")
}

/// An active write-tracking session on one process.
pub struct WriteTracker {
    pid: i32,
    uffd: OwnedFd,
    pagemap: File,
    /// Registered ranges, ascending.
    ranges: Vec<(u64, u64)>,
}

impl WriteTracker {
    /// Stops `pid` for a moment to create a userfaultfd in it, then registers every trackable
    /// VMA for async write-protect. Nothing is write-protected yet: the first
    /// [`WriteTracker::harvest`] reports every populated page and protects it.
    pub fn start(pid: i32) -> Result<Self, TrackError> {
        Self::create(pid, false).map(|(t, _)| t)
    }

    /// Like [`WriteTracker::start`], but the userfaultfd also stays open *in the target*, at a
    /// high close-on-exec fd, so tracking outlives this fastcr run: `pre-dump` leaves it there
    /// for the next incremental dump, which takes it up with [`WriteTracker::adopt`].
    pub fn start_persistent(pid: i32) -> Result<(Self, TrackingLink), TrackError> {
        let (t, fd) = Self::create(pid, true)?;
        Ok((
            t,
            TrackingLink {
                fd: fd.unwrap_or(-1),
            },
        ))
    }

    fn create(pid: i32, keep_in_target: bool) -> Result<(Self, Option<i32>), TrackError> {
        let err = |step| move |source| TrackError::Syscall { pid, step, source };
        let (remote_fd, kept) = {
            let frozen = Frozen::freeze(pid)?;
            if proc::status::status(pid)?.seccomp != 0 {
                frozen.suspend_seccomp()?;
            }
            frozen.block_signals()?;
            let maps = proc::maps::maps(pid)?;
            let ip = vdso_syscall_ip(pid, &maps)?;
            let inj = Injector::new(Remote::new(pid, *frozen.regs(), ip));
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | uffd::USER_MODE_ONLY;
            let fd = inj.call(
                || "userfaultfd".into(),
                "userfaultfd",
                libc::SYS_userfaultfd,
                [flags, 0, 0, 0, 0, 0],
            )?;
            let taken = process::pidfd_open(pid)
                .and_then(|pidfd| process::pidfd_getfd(pidfd.as_fd(), fd as i32))
                .map_err(err("pidfd_getfd of the injected userfaultfd"));
            // Kept: moved out of the way of the numbers the program itself will be given.
            let kept = if keep_in_target && taken.is_ok() {
                let high = inj.call(
                    || "fcntl(F_DUPFD_CLOEXEC) of the userfaultfd".into(),
                    "fcntl",
                    libc::SYS_fcntl,
                    [fd, libc::F_DUPFD_CLOEXEC as u64, KEPT_FD_MIN, 0, 0, 0],
                )?;
                Some(high as i32)
            } else {
                None
            };
            // The fd the syscall returned is closed whatever happened: the fd table must end as
            // it was (plus the kept fd, if asked).
            inj.call(
                || "close of the injected userfaultfd".into(),
                "close",
                libc::SYS_close,
                [fd, 0, 0, 0, 0, 0],
            )?;
            frozen.thaw()?;
            (taken?, kept)
        };
        let wanted = uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED;
        let (features, _) = uffd::api(remote_fd.as_fd(), wanted).map_err(err("UFFDIO_API"))?;
        if features & uffd::FEATURE_WP_ASYNC == 0 {
            return Err(TrackError::NoWpAsync { features });
        }
        let mut tracker = Self::with_fd(pid, remote_fd)?;
        tracker.refresh()?;
        Ok((tracker, kept))
    }

    fn with_fd(pid: i32, uffd: OwnedFd) -> Result<Self, TrackError> {
        let pagemap =
            File::open(format!("/proc/{pid}/pagemap")).map_err(|e| TrackError::Syscall {
                pid,
                step: "open pagemap",
                source: SyscallError {
                    call: "open",
                    io_error: e,
                },
            })?;
        Ok(Self {
            pid,
            uffd,
            pagemap,
            ranges: Vec::new(),
        })
    }

    /// Takes up the tracking a previous run left in the target at `link.fd`. The ranges to scan
    /// are today's trackable VMAs; [`WriteTracker::final_scan`] says which of them stayed
    /// registered without a break.
    pub fn adopt(pid: i32, link: TrackingLink) -> Result<Self, TrackError> {
        let target = proc::read_link(pid, &format!("fd/{}", link.fd))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if target != "anon_inode:[userfaultfd]" {
            return Err(TrackError::LinkLost { pid, fd: link.fd });
        }
        let uffd = process::pidfd_open(pid)
            .and_then(|pidfd| process::pidfd_getfd(pidfd.as_fd(), link.fd))
            .map_err(|source| TrackError::Syscall {
                pid,
                step: "pidfd_getfd of the tracking userfaultfd",
                source,
            })?;
        let mut tracker = Self::with_fd(pid, uffd)?;
        let maps = proc::maps::maps(pid)?;
        tracker.ranges = maps
            .iter()
            .filter(|e| trackable(e))
            .map(|e| (e.start, e.end))
            .collect();
        Ok(tracker)
    }

    /// After a [`WriteTracker::final_scan`] of an adopted tracker: keeps tracking the intact
    /// ranges and registers everything else, so the next incremental dump sees its writes.
    pub fn retrack(&mut self, intact: &[(u64, u64)]) -> Result<(), TrackError> {
        self.ranges = intact.to_vec();
        self.refresh()
    }

    /// Registers VMAs that appeared since the last call (mmap, brk, mremap) and forgets the
    /// ones that are gone. A newly registered VMA's populated pages all show as written in the
    /// next harvest, so nothing it held is missed.
    pub fn refresh(&mut self) -> Result<(), TrackError> {
        let maps = proc::maps::maps(self.pid)?;
        let mut now = Vec::new();
        for e in maps.iter().filter(|e| trackable(e)) {
            let known = self.ranges.binary_search(&(e.start, e.end)).is_ok();
            if known {
                now.push((e.start, e.end));
                continue;
            }
            match uffd::register(
                self.uffd.as_fd(),
                e.start,
                e.end - e.start,
                uffd::REGISTER_MODE_WP,
            ) {
                Ok(_) => now.push((e.start, e.end)),
                // The VMA vanished or cannot be registered: it stays untracked and the final
                // copy takes it whole.
                Err(source) => {
                    tracing::debug!(pid = self.pid, start = e.start, %source, "VMA not tracked")
                }
            }
        }
        now.sort_unstable();
        self.ranges = now;
        Ok(())
    }

    /// Ends this run's use of the tracking; the userfaultfd stays open in the target if a
    /// copy was kept there ([`WriteTracker::start_persistent`]).
    pub fn take_fd(self) -> OwnedFd {
        self.uffd
    }

    /// The registered ranges.
    pub fn tracked(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Ranges written since the previous harvest (or, the first time, every populated page),
    /// write-protected again atomically. Picks up new VMAs first.
    pub fn harvest(&mut self) -> Result<Vec<(u64, u64)>, TrackError> {
        self.refresh()?;
        self.scan()
    }

    /// Like [`WriteTracker::harvest`] but without looking for new VMAs. Above 256 MiB, on two
    /// threads, each walking one half of memory: the walk of a big memory is the longest part
    /// of a closing round, and what the process writes meanwhile is the freeze's residue.
    pub fn scan(&mut self) -> Result<Vec<(u64, u64)>, TrackError> {
        let (first, second) = final_scan::halves(&self.ranges);
        if second.is_empty() {
            return self.protect_scan(&first);
        }
        let this = &*self;
        let (written, rest) = std::thread::scope(|s| {
            let other = s.spawn(|| this.protect_scan(&second));
            let first = this.protect_scan(&first);
            (first, other.join())
        });
        match rest {
            Ok(rest) => {
                let mut written = written?;
                written.extend(rest?);
                Ok(written)
            }
            // A panic in the scan is a bug: it goes on in this thread.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Written pages of `ranges` (inside the tracked ones) since they were last scanned,
    /// write-protected again atomically: a harvest of part of memory.
    pub fn scan_ranges(&mut self, ranges: &[(u64, u64)]) -> Result<Ranges, TrackError> {
        self.protect_scan(ranges)
    }

    fn protect_scan(&self, ranges: &[(u64, u64)]) -> Result<Ranges, TrackError> {
        let mut regions: Vec<PageRegion> = Vec::new();
        for &(start, end) in ranges {
            self.scan_range(start, end, PM_SCAN_WP_MATCHING, &mut regions)?;
        }
        Ok(regions.into_iter().map(|r| (r.start, r.end)).collect())
    }

    /// The final harvest of an incremental dump, with the process frozen: the written pages
    /// are reported and protected again (tracking goes on after this dump). Each registered
    /// range is scanned with `PM_SCAN_CHECK_WPASYNC`, which fails if any VMA in it is no longer
    /// registered with our userfaultfd (it was unmapped and mapped again, say): such a range is
    /// left out of the tracked ones, and its pages must be copied whole. Returns (written
    /// ranges, sorted and merged; still-tracked ranges, sorted). A pre-copy's read-only final
    /// scan is [`final_scan::FinalScanner`].
    pub fn final_scan(&self) -> Result<(Ranges, Ranges), TrackError> {
        let flags = PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING;
        let scanned = self.ranges.iter().map(|&(start, end)| {
            let mut part = Vec::new();
            let r = scan_chunked(&self.pagemap, self.pid, start, end, flags, &mut part);
            ((start, end), r.map(|()| part))
        });
        classify(self.pid, scanned)
    }

    /// Another handle on the process's pagemap (for scans on other threads).
    pub fn pagemap(&self) -> Result<File, TrackError> {
        self.pagemap.try_clone().map_err(|e| TrackError::Syscall {
            pid: self.pid,
            step: "dup of the pagemap fd",
            source: SyscallError {
                call: "fcntl(F_DUPFD_CLOEXEC)",
                io_error: e,
            },
        })
    }

    fn scan_range(
        &self,
        start: u64,
        end: u64,
        flags: u64,
        out: &mut Vec<PageRegion>,
    ) -> Result<(), TrackError> {
        scan_chunked(&self.pagemap, self.pid, start, end, flags, out)
    }
}

/// Written pages of `[start, end)`, [`final_scan::SCAN_CHUNK`] bytes per `PAGEMAP_SCAN`, so the
/// process's mmap lock is taken for a short walk at a time (a long one holds off every `mmap`
/// of the process, or injected into it, until it ends).
fn scan_chunked(
    pagemap: &File,
    pid: i32,
    start: u64,
    end: u64,
    flags: u64,
    out: &mut Vec<PageRegion>,
) -> Result<(), TrackError> {
    let mut at = start;
    while at < end {
        let stop = end.min(at.saturating_add(final_scan::SCAN_CHUNK));
        let req = ScanRequest {
            start: at,
            end: stop,
            flags,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        uffd::pagemap_scan(pagemap, &req, out).map_err(|source| TrackError::Syscall {
            pid,
            step: "PAGEMAP_SCAN",
            source,
        })?;
        at = stop;
    }
    Ok(())
}

/// Sorts the results of a final scan: (written ranges, sorted and merged; ranges still tracked
/// without a break, sorted). A range whose scan failed with `EPERM` (`PM_SCAN_CHECK_WPASYNC`:
/// part of it is no longer registered) is in neither: it is copied whole.
fn classify(
    pid: i32,
    scanned: impl IntoIterator<Item = ((u64, u64), Result<Vec<PageRegion>, TrackError>)>,
) -> Result<(Ranges, Ranges), TrackError> {
    let mut written = Vec::new();
    let mut intact = Vec::new();
    for ((start, end), result) in scanned {
        match result {
            Ok(regions) => {
                written.extend(regions.into_iter().map(|r| (r.start, r.end)));
                intact.push((start, end));
            }
            Err(TrackError::Syscall { source, .. }) if source.errno() == Some(libc::EPERM) => {
                tracing::debug!(pid, start, end, "range no longer tracked; copied whole");
            }
            Err(e) => return Err(e),
        }
    }
    intact.sort_unstable();
    Ok((ranges::normalize(written), intact))
}

/// Total pages in a list of ranges.
pub fn pages_in(ranges: &[(u64, u64)]) -> u64 {
    ranges
        .iter()
        .map(|(s, e)| (e - s) / crate::sys::PAGE_SIZE)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::maps::parse_maps_line;

    #[test]
    fn trackable_vmas() {
        let t = |l: &str| trackable(&parse_maps_line(l).unwrap());
        assert!(t("1000-2000 rw-p 00000000 00:00 0 [heap]"));
        assert!(t("1000-2000 rw-p 00000000 00:00 0"));
        assert!(t("1000-2000 rw-p 00001000 fe:00 5 /usr/lib/libc.so.6"));
        assert!(!t("1000-2000 r--p 00000000 fe:00 5 /usr/lib/libc.so.6"));
        assert!(!t("1000-2000 rw-s 00000000 00:01 5 /dev/zero (deleted)"));
        assert!(!t("1000-2000 r-xp 00000000 00:00 0 [vdso]"));
        assert_eq!(pages_in(&[(0x1000, 0x3000), (0x8000, 0x9000)]), 3);
    }
}
