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
//!
//! And most of the time it does not walk all memory: [`narrowed`] limits it to the pages the
//! write-fault hints named since the last round, when the guards show that nothing else can
//! have written since the last walk of all memory (DESIGN §5). The walk of all memory is then
//! left to the rounds, before the freeze, and the window grows with the dirty set only.

use std::fs::File;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

pub use super::narrow::{Coverage, narrowed, verify};
use super::shadow::Shadow;
use super::{Ranges, TrackError, WriteTracker, classify, pages_in, scan_chunked};
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
    /// Of `written`, what was already copied into the shadow after the freeze (a hinted scan
    /// copies what it finds at once, beside the register step).
    pub fresh: Ranges,
    /// The shadow, when the scanner borrowed it for that copy ([`FinalScanner::cover`]).
    pub shadow: Option<Shadow>,
    /// From [`FinalScanner::start`] until the last worker was done.
    pub us: u64,
    /// What was walked, for the stats: "all memory: why" or "hinted: how much".
    pub over: String,
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

/// What a worker is told to do.
enum Job {
    /// Walk its share of all tracked memory.
    Share,
    /// Walk these ranges, and copy what they show written into the shadow.
    Hinted(Ranges, Shadow),
}

/// What a worker did.
struct Done {
    scanned: Scanned,
    at: Instant,
    /// For [`Job::Hinted`]: the shadow back, and the ranges copied into it.
    copied: Option<(Shadow, Result<Ranges, TrackError>)>,
}

/// A worker thread waiting to scan.
struct Worker {
    go: mpsc::SyncSender<Job>,
    done: JoinHandle<Done>,
}

/// The final scan of one process, prepared before its freeze.
pub struct FinalScanner {
    pid: i32,
    /// Every tracked range.
    all: Ranges,
    /// What to walk, once decided ([`FinalScanner::cover`]); all memory by default.
    coverage: Option<Coverage>,
    /// The shadow while a hinted scan has it (given back by [`FinalScanner::finish`]).
    shadow: Option<Shadow>,
    workers: Vec<Worker>,
    /// Shares whose worker could not be started: scanned by [`FinalScanner::finish`].
    inline: Vec<Ranges>,
    /// Set when the hinted job could not be handed to a worker: done by `finish`.
    hinted_inline: bool,
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
            all: tracker.tracked().to_vec(),
            coverage: None,
            shadow: None,
            workers: Vec::new(),
            inline: Vec::new(),
            hinted_inline: false,
            pagemap: tracker.pagemap()?,
            started: None,
        };
        for share in [first, second] {
            if share.is_empty() {
                continue;
            }
            let pagemap = tracker.pagemap()?;
            let (go, wait) = mpsc::sync_channel::<Job>(1);
            let work = share.clone();
            let spawned = std::thread::Builder::new()
                .name("final-scan".into())
                .spawn(move || match wait.recv() {
                    Ok(Job::Share) => Done {
                        scanned: scan_share(&pagemap, pid, &work),
                        at: Instant::now(),
                        copied: None,
                    },
                    Ok(Job::Hinted(ranges, shadow)) => hinted(&pagemap, pid, &ranges, shadow),
                    Err(_) => Done {
                        scanned: Vec::new(),
                        at: Instant::now(),
                        copied: None,
                    },
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

    /// Sets what [`FinalScanner::start`] walks (all memory unless told otherwise). A hinted
    /// scan takes `shadow` along, to copy what it finds at once; [`FinalScanner::finish`] gives
    /// it back in [`FinalScan::shadow`].
    pub fn cover(&mut self, coverage: Coverage, shadow: &mut Shadow) {
        if matches!(coverage, Coverage::Hinted(_)) {
            self.shadow = Some(std::mem::take(shadow));
        }
        self.coverage = Some(coverage);
    }

    /// Lets the workers go (the process is frozen now). Hinted ranges are few: one worker
    /// scans and copies them, and the other is let go when the scanner finishes.
    pub fn start(&mut self) {
        self.started = Some(Instant::now());
        if let (Some(Coverage::Hinted(ranges)), Some(shadow)) = (&self.coverage, &mut self.shadow) {
            let job = Job::Hinted(ranges.clone(), std::mem::take(shadow));
            match self.workers.first() {
                Some(w) => {
                    if let Err(mpsc::SendError(Job::Hinted(_, back))) = w.go.send(job) {
                        // The worker is gone (it panicked; `finish` reports it).
                        *shadow = back;
                        self.hinted_inline = true;
                    } else {
                        self.shadow = None;
                    }
                }
                None => {
                    *shadow = match job {
                        Job::Hinted(_, back) => back,
                        Job::Share => Shadow::new(),
                    };
                    self.hinted_inline = true;
                }
            }
            return;
        }
        for w in &self.workers {
            // A worker that is gone has panicked; `finish` reports it.
            let _ = w.go.send(Job::Share);
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
        let mut copied = None;
        let mut last = started;
        if self.hinted_inline
            && let (Some(Coverage::Hinted(ranges)), Some(shadow)) =
                (&self.coverage, self.shadow.take())
        {
            let done = hinted(&self.pagemap, self.pid, ranges, shadow);
            (scanned, copied, last) = (done.scanned, done.copied, done.at);
        } else if !matches!(self.coverage, Some(Coverage::Hinted(_))) {
            for share in std::mem::take(&mut self.inline) {
                scanned.extend(scan_share(&self.pagemap, self.pid, &share));
                last = Instant::now();
            }
        }
        for Worker { go, done } in std::mem::take(&mut self.workers) {
            // A worker not sent anything exits on the closed channel.
            drop(go);
            match done.join() {
                Ok(done) => {
                    scanned.extend(done.scanned);
                    copied = copied.or(done.copied);
                    last = last.max(done.at);
                }
                // A panic in the scan is a bug: it goes on in this thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        let us = |last: Instant| micros(last.saturating_duration_since(started));
        let over = match self.coverage.take() {
            Some(Coverage::Hinted(ranges)) => {
                let (shadow, fresh) = match copied {
                    Some((shadow, fresh)) => (Some(shadow), fresh),
                    None => (self.shadow.take(), Ok(Vec::new())),
                };
                // Every hinted range must still be tracked, as the guards promise; if not, the
                // promise is broken somewhere and all memory is walked after all.
                let broken = scanned.iter().any(|(_, r)| r.is_err());
                if !broken {
                    let (written, _) = classify(self.pid, scanned)?;
                    return Ok(FinalScan {
                        written,
                        tracked: std::mem::take(&mut self.all),
                        fresh: fresh?,
                        shadow,
                        us: us(last),
                        over: format!(
                            "hinted: {} pages in {} ranges",
                            pages_in(&ranges),
                            ranges.len()
                        ),
                    });
                }
                tracing::warn!(pid = self.pid, "a hinted range is no longer tracked");
                self.shadow = shadow;
                scanned = scan_share(&self.pagemap, self.pid, &self.all);
                last = Instant::now();
                "all memory: a hinted range was no longer tracked".to_owned()
            }
            Some(Coverage::All(why)) => format!("all memory: {why}"),
            None => "all memory".to_owned(),
        };
        let (written, tracked) = classify(self.pid, scanned)?;
        Ok(FinalScan {
            written,
            tracked,
            fresh: Vec::new(),
            shadow: self.shadow.take(),
            us: us(last),
            over,
        })
    }
}

/// A hinted job: scans `ranges` (read only) and, if every one of them is still tracked, copies
/// the pages found written into `shadow` right away.
fn hinted(pagemap: &File, pid: i32, ranges: &[(u64, u64)], mut shadow: Shadow) -> Done {
    let t = Instant::now();
    let scanned = scan_share(pagemap, pid, ranges);
    tracing::debug!(
        us = micros(t.elapsed()),
        ranges = ranges.len(),
        "hinted scan: scanned"
    );
    let written: Option<Vec<(u64, u64)>> = scanned
        .iter()
        .map(|(_, r)| r.as_ref().ok())
        .collect::<Option<Vec<_>>>()
        .map(|parts| {
            parts
                .into_iter()
                .flatten()
                .map(|r| (r.start, r.end))
                .collect()
        });
    let copied = match written {
        Some(written) => {
            let written = super::ranges::normalize(written);
            let result = shadow
                .copy_from(pid, &written)
                .map(|_| written)
                .map_err(|source| TrackError::Syscall {
                    pid,
                    step: "copy of the hinted pages",
                    source,
                });
            Some((shadow, result))
        }
        None => Some((shadow, Ok(Vec::new()))),
    };
    tracing::debug!(us = micros(t.elapsed()), "hinted scan: copied");
    Done {
        scanned,
        at: Instant::now(),
        copied,
    }
}

/// Read-only scan of every range of `share`, each checked to be still tracked.
pub(super) fn scan_share(pagemap: &File, pid: i32, share: &[(u64, u64)]) -> Scanned {
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
