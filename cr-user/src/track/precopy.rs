//! Pre-copy: copy rounds while the process runs, then a final pass inside the freeze that copies
//! only what changed since the last round (DESIGN §5, §6).
//!
//! The shadow store keeps the newest copy of every page. At the freeze the image's page set is
//! decided from pagemap exactly as a stop-the-world dump would decide it; a page comes from the
//! shadow only if its range was tracked without a break (the final `PAGEMAP_SCAN` with
//! `PM_SCAN_CHECK_WPASYNC` succeeds on it) and it was not written since its copy. Everything
//! else is read right then.

use std::time::Instant;

use serde::Serialize;

use std::collections::HashMap;

pub use super::final_pass::{FinalPass, finish};
use super::final_pass::{Preselection, preselect};
use super::final_scan::FinalScanner;
use super::ranges::{intersect, normalize, subtract};
use super::shadow::Shadow;
use super::{TrackError, WriteTracker, pages_in};
use crate::bpf::{MmActivity, TaskTracker};
use crate::image::mm::Vma;
use crate::stats::micros;
use crate::sys::PAGE_SIZE;

/// Where the pages copied by the rounds also go as they are copied (a migration streams them
/// to its destination while the process runs).
pub trait PageSink {
    /// Pages `[addr, addr + data.len())` of process `pid` as just copied.
    fn pages(&mut self, pid: i32, addr: u64, data: &[u8]) -> std::io::Result<()>;
}

/// Largest piece handed to a [`PageSink`] at once (8 MiB).
const SINK_CHUNK: u64 = 8 << 20;

/// How many rounds to run before the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// Exactly this many (at least one).
    Fixed(u32),
    /// Until the dirty set stops shrinking (at most [`AUTO_MAX_ROUNDS`]).
    Auto,
}

/// Upper bound of rounds in auto mode.
pub const AUTO_MAX_ROUNDS: u32 = 12;
/// In auto mode, a round that finds fewer dirty pages than this ends the pre-copy at once.
const AUTO_SMALL_SET: u64 = 64;

/// One pre-copy round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundStat {
    /// Pages found written (the first round: every populated page).
    pub pages: u64,
    /// Of those, hot pages (BPF saw them written in this round and the one before) left for
    /// the final pass instead of being copied again.
    pub deferred: u64,
    /// Pages BPF hinted as written in the round.
    pub hinted: u64,
    /// Duration of the round.
    pub time_us: u64,
    /// A closing round, driven by the BPF hints: it copies what the scan confirms written among
    /// the hinted ranges (or, when they are too scattered, all tracked memory) (see [`run`]).
    pub hinted_only: bool,
}

/// One process's pre-copy: its tracking session, the newest copies of its pages, and what the
/// rounds found.
pub struct PreCopy {
    /// The tracking session, still active.
    pub tracker: WriteTracker,
    /// Newest copies of the pages.
    pub shadow: Shadow,
    /// Per-round figures.
    pub rounds: Vec<RoundStat>,
    /// Pages written per second, from the last full round.
    pub dirty_rate: f64,
    /// Hot pages not copied yet: the final pass copies them whatever the last scan says.
    pub deferred: Vec<(u64, u64)>,
    /// The page selection of the tracked VMAs, taken in round 0; see [`preselect`].
    pub(super) preselected: Option<Preselection>,
    /// The guard readings at the start of the last walk of all tracked memory; see
    /// [`super::final_scan::narrowed`].
    pub(super) walk_mark: Option<WalkMark>,
    /// The final scan's workers, started before the closing rounds so that their creation is
    /// not between the last round and the freeze (what the process writes there is the
    /// residue).
    pub scanner: Option<FinalScanner>,
    heat: Heat,
    last_harvest: Instant,
}

/// Consecutive rounds a page must be hinted in to count as hot.
const HOT_STREAK: u32 = 2;

/// Which pages BPF saw written, round after round.
#[derive(Default)]
struct Heat {
    streak: HashMap<u64, u32>,
}

impl Heat {
    /// Takes one round of hints; returns the hot pages as sorted ranges.
    fn round(&mut self, hinted: &[u64]) -> Vec<(u64, u64)> {
        let mut next = HashMap::with_capacity(hinted.len());
        for &page in hinted {
            next.insert(page, self.streak.get(&page).copied().unwrap_or(0) + 1);
        }
        self.streak = next;
        normalize(
            self.streak
                .iter()
                .filter(|(_, n)| **n >= HOT_STREAK)
                .map(|(p, _)| (*p, p + PAGE_SIZE))
                .collect(),
        )
    }
}

/// Runs the copy rounds while `pid` keeps running. With `hints` (BPF write-fault hints
/// attached), pages written round after round are deferred to the final pass, and the full
/// rounds are followed by short closing rounds that scan and copy only what the hints name,
/// so the freeze follows a round of a millisecond or so instead of a walk of all memory.
/// With `layout` (the process's VMAs, watched by BPF for changes) round 0 also selects the
/// pages, so the freeze need not.
///
/// With `sink`, every page copied is also handed to it right after its round.
pub fn run(
    pid: i32,
    rounds: Rounds,
    mut hints: Option<&mut TaskTracker>,
    layout: Option<&[Vma]>,
    mut sink: Option<&mut (dyn PageSink + 'static)>,
) -> Result<PreCopy, TrackError> {
    // Before the registration for write-protect, which takes the mmap lock for writing: no
    // hold begun before the watch outlasts it.
    if let Some(bpf) = hints.as_deref_mut()
        && let Err(e) = bpf.watch_mm(pid)
    {
        tracing::debug!(pid, error = %e, "mmap lock not watched: the final scan walks all memory");
    }
    let mut pc = PreCopy::start(pid)?;
    let limit = rounds.limit();
    for round in 0..limit {
        let hinted = drain_hints(&mut hints);
        let last = round + 1 == limit;
        let mark = WalkMark::take(hints.as_deref(), pid);
        let copied = pc.full_round(
            hinted.get(&pid).map_or(&[], Vec::as_slice),
            last,
            layout,
            mark,
        )?;
        pc.stream(&copied, sink.as_deref_mut())?;
        if rounds == Rounds::Auto && auto_converged(&pc.rounds) {
            break;
        }
    }
    if let Some(bpf) = hints {
        pc.scanner = FinalScanner::prepare(&pc.tracker)
            .inspect_err(|e| tracing::debug!(error = %e, "final scan prepared later"))
            .ok();
        closing_rounds(bpf, &mut [(pid, &mut pc)], sink)?;
    }
    Ok(pc)
}

/// The closing rounds after the full ones, over every session of `sessions` (pid, session):
/// each drains the hints and runs [`PreCopy::closing_round`] per process, until a round finds
/// at most [`CLOSING_DONE`] pages written or over 1.5 times the fewest a round found (or
/// [`CLOSING_ROUNDS`] ran). Copied pages go to `sink` too. Returns each round's figures summed
/// over the sessions; every session also keeps its own.
pub fn closing_rounds(
    bpf: &mut TaskTracker,
    sessions: &mut [(i32, &mut PreCopy)],
    mut sink: Option<&mut (dyn PageSink + 'static)>,
) -> Result<Vec<RoundStat>, TrackError> {
    let mut out = Vec::new();
    let mut smallest = u64::MAX;
    for _ in 0..CLOSING_ROUNDS {
        let t = Instant::now();
        let Ok(all) = bpf.drain_dirty() else {
            break;
        };
        tracing::debug!(
            us = micros(t.elapsed()),
            hints = all.len(),
            "closing round: hints drained"
        );
        let mut hinted: HashMap<i32, Vec<u64>> = HashMap::new();
        for h in all {
            hinted.entry(h.tgid as i32).or_default().push(h.page);
        }
        let mut sum = RoundStat {
            hinted_only: true,
            ..RoundStat::default()
        };
        for (pid, pc) in sessions.iter_mut() {
            let mark = WalkMark::take(Some(bpf), *pid);
            let copied = pc.closing_round(hinted.get(pid).map_or(&[][..], Vec::as_slice), mark)?;
            pc.stream(&copied, sink.as_deref_mut())?;
            if let Some(r) = pc.rounds.last() {
                sum.pages += r.pages;
                sum.hinted += r.hinted;
            }
        }
        sum.time_us = micros(t.elapsed());
        let pages = sum.pages;
        out.push(sum);
        // Small: freeze now. Growing well past the smallest round: the writes outrun the
        // rounds, and another one would only leave more behind. Otherwise one more round may
        // catch a quiet moment (writers that work in bursts leave one between two).
        if pages <= CLOSING_DONE || pages.saturating_mul(2) > smallest.saturating_mul(3) {
            break;
        }
        smallest = smallest.min(pages);
    }
    Ok(out)
}

/// The hinted pages of every process since the last drain; none once the hints fail (the
/// rounds then go on from the scans alone).
pub fn drain_hints(hints: &mut Option<&mut TaskTracker>) -> HashMap<i32, Vec<u64>> {
    let mut out: HashMap<i32, Vec<u64>> = HashMap::new();
    if let Some(bpf) = hints.as_deref_mut() {
        match bpf.drain_dirty() {
            Ok(all) => {
                for h in all {
                    out.entry(h.tgid as i32).or_default().push(h.page);
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "BPF hints unavailable; scheduling from scans alone");
                *hints = None;
            }
        }
    }
    out
}

impl Rounds {
    /// Full rounds at most.
    pub fn limit(self) -> u32 {
        match self {
            Rounds::Fixed(n) => n.max(1),
            Rounds::Auto => AUTO_MAX_ROUNDS,
        }
    }
}

impl PreCopy {
    /// Starts tracking `pid`; nothing is copied yet.
    pub fn start(pid: i32) -> Result<Self, TrackError> {
        Ok(Self {
            tracker: WriteTracker::start(pid)?,
            shadow: Shadow::new(),
            rounds: Vec::new(),
            dirty_rate: 0.0,
            deferred: Vec::new(),
            preselected: None,
            walk_mark: None,
            scanner: None,
            heat: Heat::default(),
            last_harvest: Instant::now(),
        })
    }

    /// One full round: harvest every tracked VMA (the first time: every populated page) and
    /// copy what was written, hot pages left for later unless this is the `last` round.
    /// `hinted` must be drained before the harvest, so it is inside what the harvest reports;
    /// `mark`, the guard readings, taken after that drain (see [`WalkMark`]).
    pub fn full_round(
        &mut self,
        hinted: &[u64],
        last: bool,
        layout: Option<&[Vma]>,
        mark: Option<WalkMark>,
    ) -> Result<Vec<(u64, u64)>, TrackError> {
        let pid = self.tracker.pid();
        let t = Instant::now();
        let first = self.rounds.is_empty();
        let hot = self.heat.round(hinted);
        self.walk_mark = mark;
        let dirty = self.tracker.harvest()?;
        let since = self.last_harvest.elapsed();
        self.last_harvest = Instant::now();
        let pages = pages_in(&dirty);
        if !first && since.as_secs_f64() > 0.0 {
            self.dirty_rate = pages as f64 / since.as_secs_f64();
        }
        let dirty = normalize(dirty);
        self.add_to_selection(&dirty);
        let (copy, defer) = if last {
            (dirty, Vec::new())
        } else {
            (subtract(&dirty, &hot), intersect(&dirty, &hot))
        };
        self.copy(&copy, "copy of dirty pages")?;
        if first && let Some(vmas) = layout {
            self.preselected = preselect(pid, &self.tracker, vmas)
                .inspect_err(|e| tracing::debug!(error = %e, "no preselection"))
                .ok();
        }
        // A page copied now is fresh; one deferred now waits for the final pass.
        let mut all = subtract(&self.deferred, &copy);
        all.extend_from_slice(&defer);
        self.deferred = normalize(all);
        self.rounds.push(RoundStat {
            pages,
            deferred: pages_in(&defer),
            hinted: hinted.len() as u64,
            time_us: micros(t.elapsed()),
            hinted_only: false,
        });
        Ok(copy)
    }

    /// A closing round: scans (and write-protects again) only the ranges the hints name, and
    /// copies what the scan confirms written. Exact for the same reason a full round is: a
    /// written page the hints missed stays marked written, so the final scan still reports it.
    /// Returns the ranges copied. `mark` is the guard readings after the hints were drained
    /// (see [`WalkMark`]): kept if the round walks all memory.
    pub fn closing_round(
        &mut self,
        hinted: &[u64],
        mark: Option<WalkMark>,
    ) -> Result<Vec<(u64, u64)>, TrackError> {
        let t = Instant::now();
        let tracked = normalize(self.tracker.tracked().to_vec());
        // Hot pages the full rounds left are copied now, at the end, so that the freeze has
        // only those written again in the last moments: they are scanned too, which write-
        // protects them again before their copy.
        let deferred = intersect(&std::mem::take(&mut self.deferred), &tracked);
        let mut wanted = hint_ranges(hinted);
        wanted.extend_from_slice(&deferred);
        let ranges = intersect(&normalize(wanted), &tracked);
        // One PAGEMAP_SCAN per hinted range costs a few µs; one over every tracked range about
        // 0.4 ms per GiB: scattered hints over a big memory are cheaper scanned whole.
        let tracked_gib = tracked.iter().map(|(s, e)| e - s).sum::<u64>() >> 30;
        let whole = ranges.len() as u64 > CLOSING_RANGES_MIN + CLOSING_RANGES_PER_GIB * tracked_gib;
        let written = if whole {
            self.walk_mark = mark;
            normalize(self.tracker.scan()?)
        } else {
            normalize(self.tracker.scan_ranges(&ranges)?)
        };
        tracing::debug!(
            us = micros(t.elapsed()),
            ranges = ranges.len(),
            "closing round: scanned"
        );
        // A deferred page not written since its harvest is still write-protected, so its copy
        // now is exact; one written since and missed by the scan keeps its written mark for
        // the final scan.
        let mut copy = written.clone();
        copy.extend_from_slice(&deferred);
        let copy = normalize(copy);
        self.copy(&copy, "copy of hinted pages")?;
        tracing::debug!(
            us = micros(t.elapsed()),
            pages = pages_in(&copy),
            deferred = pages_in(&deferred),
            "closing round: copied"
        );
        self.add_to_selection(&written);
        let pages = pages_in(&written);
        self.rounds.push(RoundStat {
            pages,
            deferred: 0,
            hinted: hinted.len() as u64,
            time_us: micros(t.elapsed()),
            hinted_only: true,
        });
        Ok(copy)
    }

    /// Hands the pages of `ranges` (just copied) to `sink`, from the shadow.
    pub fn stream(
        &self,
        ranges: &[(u64, u64)],
        sink: Option<&mut (dyn PageSink + 'static)>,
    ) -> Result<(), TrackError> {
        let Some(sink) = sink else {
            return Ok(());
        };
        let pid = self.tracker.pid();
        let mut buf = Vec::new();
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let stop = end.min(at + SINK_CHUNK);
                buf.clear();
                let mut a = at;
                while a < stop {
                    // Every page of a copied range is in the shadow, unless it could not be
                    // read (unmapped meanwhile): the piece ends before it.
                    let Some(page) = self.shadow.get(a) else {
                        break;
                    };
                    buf.extend_from_slice(page);
                    a += PAGE_SIZE;
                }
                if !buf.is_empty() {
                    sink.pages(pid, at, &buf).map_err(|e| TrackError::Syscall {
                        pid,
                        step: "streaming of copied pages",
                        source: crate::sys::SyscallError {
                            call: "write",
                            io_error: e,
                        },
                    })?;
                }
                at = if a == at { a + PAGE_SIZE } else { a };
            }
        }
        Ok(())
    }

    fn copy(&mut self, ranges: &[(u64, u64)], step: &'static str) -> Result<(), TrackError> {
        let pid = self.tracker.pid();
        self.shadow
            .copy_from(pid, ranges)
            .map_err(|source| TrackError::Syscall { pid, step, source })?;
        // Merged now, while the process runs, so the final pass does not sort every range
        // ever copied.
        self.shadow.covered();
        Ok(())
    }

    /// Pages written are present (or were): they join the preselection.
    fn add_to_selection(&mut self, written: &[(u64, u64)]) {
        if let Some(pre) = self.preselected.as_mut() {
            let mut pages = std::mem::take(&mut pre.pages);
            pages.extend_from_slice(written);
            pre.pages = normalize(pages);
        }
    }
}

/// What the guards read at the start of a walk of all tracked memory. If they read the same at
/// the freeze, every write since that walk was a fault of the process's own tasks, so hinted:
/// the final scan can be limited to the pages hinted since the last round
/// ([`super::final_scan::narrowed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkMark {
    /// Lock activity on the process's memory by anybody but fastcr.
    pub activity: MmActivity,
    /// Hints lost to a full ring buffer, all processes together.
    pub drops: u64,
}

impl WalkMark {
    /// The readings now, if `bpf` watches `pid`'s mmap lock and nobody else holds it (a holder
    /// might write during the walk and after it, unhinted).
    pub fn take(bpf: Option<&TaskTracker>, pid: i32) -> Option<Self> {
        let bpf = bpf?;
        let activity = bpf.mm_activity(pid).ok().flatten()?;
        let drops = bpf.dirty_drops().ok()?;
        (!activity.held).then_some(Self { activity, drops })
    }
}

/// Closing rounds at most.
pub const CLOSING_ROUNDS: usize = 6;
/// A closing round that copies at most this many pages is the last one.
pub const CLOSING_DONE: u64 = 32;
/// A closing round scans the hinted ranges one by one up to this many (plus
/// [`CLOSING_RANGES_PER_GIB`] per GiB tracked), and all tracked memory in one walk beyond.
const CLOSING_RANGES_MIN: u64 = 64;
/// See [`CLOSING_RANGES_MIN`].
const CLOSING_RANGES_PER_GIB: u64 = 80;
/// Hinted pages this close are scanned as one range (one ioctl instead of several).
const HINT_GAP_PAGES: u64 = 32;

/// Sorted hinted pages as ranges, pages at most [`HINT_GAP_PAGES`] apart joined.
pub(super) fn hint_ranges(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some(last) if p >= last.0 && p <= last.1 + HINT_GAP_PAGES * PAGE_SIZE => {
                last.1 = last.1.max(p + PAGE_SIZE);
            }
            _ => out.push((p, p + PAGE_SIZE)),
        }
    }
    out
}

/// Whether `auto` pre-copy should stop after the rounds in `stats`: the set is small, or it no
/// longer shrinks by a fifth from one round to the next. Round 0 is the full copy, and what
/// round 1 finds is only how much was written while that copy ran, so the trend is judged
/// from round 2 on.
pub fn auto_converged(stats: &[RoundStat]) -> bool {
    let Some(last) = stats.last() else {
        return false;
    };
    if stats.len() >= 2 && last.pages < AUTO_SMALL_SET {
        return true;
    }
    // Not shrinking any more, and not a passing spike (the workload catching up a backlog,
    // or fastcr losing its CPU): within a quarter of the smallest set seen since round 1.
    let floor = stats[1..].iter().map(|r| r.pages).min().unwrap_or(0);
    stats.len() >= 3
        && last.pages * 5 > stats[stats.len() - 2].pages * 4
        && last.pages * 4 <= floor * 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_turn_hot_after_two_rounds_and_cool_off() {
        let mut h = Heat::default();
        assert!(h.round(&[0x1000, 0x2000]).is_empty());
        assert_eq!(h.round(&[0x2000, 0x3000]), vec![(0x2000, 0x3000)]);
        assert_eq!(h.round(&[0x2000, 0x3000]), vec![(0x2000, 0x4000)]);
        assert!(h.round(&[0x5000]).is_empty());
    }

    #[test]
    fn auto_judges_the_trend_from_round_two() {
        let r = |pages| RoundStat {
            pages,
            ..Default::default()
        };
        // A long first copy: round 1 finds almost everything again; that is no verdict.
        assert!(!auto_converged(&[r(1_000_000), r(980_000)]));
        assert!(!auto_converged(&[r(1_000_000), r(980_000), r(400_000)]));
        assert!(auto_converged(&[
            r(1_000_000),
            r(980_000),
            r(400_000),
            r(390_000)
        ]));
        assert!(auto_converged(&[r(1_000_000), r(10)]));
        assert!(!auto_converged(&[r(10)]));
    }

    #[test]
    fn auto_goes_on_after_a_spike() {
        let r = |pages| RoundStat {
            pages,
            ..Default::default()
        };
        // Round 4 grew (a burst): not the floor, so another round is run.
        assert!(!auto_converged(&[
            r(1_000_000),
            r(300_000),
            r(900),
            r(700),
            r(4_700)
        ]));
        assert!(auto_converged(&[
            r(1_000_000),
            r(300_000),
            r(900),
            r(700),
            r(800)
        ]));
    }

    #[test]
    fn hinted_pages_join_into_ranges() {
        let p = |n: u64| n * PAGE_SIZE;
        assert_eq!(
            hint_ranges(&[p(1), p(2), p(3 + HINT_GAP_PAGES), p(100)]),
            vec![(p(1), p(4 + HINT_GAP_PAGES)), (p(100), p(101))]
        );
        assert!(hint_ranges(&[]).is_empty());
    }
}
