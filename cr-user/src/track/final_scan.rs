//! The final `PAGEMAP_SCAN` of a frozen process (read only), the one step of a pre-copy window
//! that grows with memory size.
//!
//! Two things keep it short:
//! - Its worker threads are started before the freeze and wait for [`FinalScanner::start`], so
//!   the window pays no thread creation (a spawn costs 0.1–0.4 ms here, and the first one of
//!   a process was seen to take 15 ms).
//! - Each worker walks its half of the tracked memory in chunks of [`SCAN_CHUNK`] bytes, one
//!   ioctl each. The kernel holds the target's mmap lock for a whole ioctl; the `mmap` that the
//!   register step injects into the frozen process beside the scan needs that lock for
//!   writing, and with one ioctl over all memory it waited for the whole walk.

use std::fs::File;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Ranges, TrackError, WriteTracker, classify, scan_chunked};
use crate::stats::micros;
use crate::sys::uffd::{PM_SCAN_CHECK_WPASYNC, PageRegion};

/// Bytes of tracked memory walked per ioctl (16384 page-table entries, some 10–30 µs).
pub const SCAN_CHUNK: u64 = 64 << 20;

/// Below this much memory one CPU walks the page tables faster than two can start.
const PARALLEL_SCAN_MIN: u64 = 256 << 20;

/// What the final scan found.
pub struct FinalScan {
    /// Pages written since their last copy, sorted and merged.
    pub written: Ranges,
    /// Ranges still tracked without a break, sorted.
    pub tracked: Ranges,
    /// From [`FinalScanner::start`] until the last worker was done.
    pub us: u64,
}

impl FinalScan {
    /// Scans `tracker`'s ranges right now (its workers started and waited for at once).
    pub fn run(tracker: &WriteTracker) -> Result<Self, TrackError> {
        let mut scanner = FinalScanner::prepare(tracker)?;
        scanner.start();
        scanner.finish()
    }
}

/// Each tracked range of a worker's share, with what its scan returned.
type Scanned = Vec<((u64, u64), Result<Vec<PageRegion>, TrackError>)>;

/// A worker thread waiting to scan its share.
struct Worker {
    go: mpsc::SyncSender<()>,
    done: JoinHandle<(Scanned, Instant)>,
}

/// The final scan of one process, prepared before its freeze.
pub struct FinalScanner {
    pid: i32,
    workers: Vec<Worker>,
    /// Shares whose worker could not be started: scanned by [`FinalScanner::finish`].
    inline: Vec<Ranges>,
    pagemap: File,
    started: Option<Instant>,
}

impl FinalScanner {
    /// Starts one idle worker per half of `tracker`'s ranges (one worker in all when there is
    /// little memory or one CPU). Dropping the scanner unstarted lets them exit.
    pub fn prepare(tracker: &WriteTracker) -> Result<Self, TrackError> {
        let pid = tracker.pid();
        let (first, second) = halves(tracker.tracked());
        let mut scanner = Self {
            pid,
            workers: Vec::new(),
            inline: Vec::new(),
            pagemap: tracker.pagemap()?,
            started: None,
        };
        for share in [first, second] {
            if share.is_empty() {
                continue;
            }
            let pagemap = tracker.pagemap()?;
            let (go, wait) = mpsc::sync_channel::<()>(1);
            let work = share.clone();
            let spawned = std::thread::Builder::new()
                .name("final-scan".into())
                .spawn(move || {
                    if wait.recv().is_err() {
                        return (Vec::new(), Instant::now());
                    }
                    let scanned = scan_share(&pagemap, pid, &work);
                    (scanned, Instant::now())
                });
            match spawned {
                Ok(done) => scanner.workers.push(Worker { go, done }),
                Err(e) => {
                    tracing::debug!(error = %e, "no scan worker: scanned in the dumping thread");
                    scanner.inline.push(share);
                }
            }
        }
        Ok(scanner)
    }

    /// Lets the workers go (the process is frozen now).
    pub fn start(&mut self) {
        self.started = Some(Instant::now());
        for w in &self.workers {
            // A worker that is gone has panicked; `finish` reports it.
            let _ = w.go.send(());
        }
    }

    /// Waits for the workers (starting them if [`FinalScanner::start`] was not called) and
    /// sorts what they found.
    pub fn finish(mut self) -> Result<FinalScan, TrackError> {
        let started = match self.started {
            Some(t) => t,
            None => {
                self.start();
                self.started.unwrap_or_else(Instant::now)
            }
        };
        let mut scanned = Vec::new();
        let mut last = started;
        for share in std::mem::take(&mut self.inline) {
            scanned.extend(scan_share(&self.pagemap, self.pid, &share));
            last = Instant::now();
        }
        for w in std::mem::take(&mut self.workers) {
            match w.done.join() {
                Ok((part, done)) => {
                    scanned.extend(part);
                    last = last.max(done);
                }
                // A panic in the scan is a bug: it goes on in this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let (written, tracked) = classify(self.pid, scanned)?;
        Ok(FinalScan {
            written,
            tracked,
            us: micros(last.saturating_duration_since(started)),
        })
    }
}

/// Read-only scan of every range of `share`, each checked to be still tracked.
fn scan_share(pagemap: &File, pid: i32, share: &[(u64, u64)]) -> Scanned {
    share
        .iter()
        .map(|&(start, end)| {
            let mut part = Vec::new();
            let r = scan_chunked(pagemap, pid, start, end, PM_SCAN_CHECK_WPASYNC, &mut part);
            ((start, end), r.map(|()| part))
        })
        .collect()
}

/// `ranges` cut into two halves of about equal size when they are big enough to be worth
/// scanning on two CPUs; else all of them and an empty second half.
pub(super) fn halves(all: &[(u64, u64)]) -> (Ranges, Ranges) {
    let total: u64 = all.iter().map(|(s, e)| e - s).sum();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if total < PARALLEL_SCAN_MIN || cpus < 2 {
        return (all.to_vec(), Vec::new());
    }
    super::ranges::split_at(
        all,
        total / 2 / crate::sys::PAGE_SIZE * crate::sys::PAGE_SIZE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_ranges_are_halved() {
        let gib = 1u64 << 30;
        let (a, b) = halves(&[(0x1000, 0x3000), (gib, 5 * gib)]);
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            assert!(b.is_empty());
            return;
        }
        assert_eq!(a, vec![(0x1000, 0x3000), (gib, 3 * gib - 0x1000)]);
        assert_eq!(b, vec![(3 * gib - 0x1000, 5 * gib)]);
        let (small, none) = halves(&[(0x1000, 0x3000)]);
        assert_eq!(small, vec![(0x1000, 0x3000)]);
        assert!(none.is_empty());
    }
}
