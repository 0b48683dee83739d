//! Pre-copy: copy rounds while the process runs, then a final pass inside the freeze that copies
//! only what changed since the last round (DESIGN §5, §6).
//!
//! The shadow store keeps the newest copy of every page. At the freeze the image's page set is
//! decided from pagemap exactly as a stop-the-world dump would decide it; a page comes from the
//! shadow only if its VMA was tracked without a break (smaps still shows the `uw` flag on it)
//! and it was not written since its copy. Everything else is read right then.

use std::time::Instant;

use serde::Serialize;

use super::shadow::Shadow;
use super::{TrackError, WriteTracker, pages_in};
use crate::image::mm::Vma;
use crate::image::pagemap::PagemapImage;
use crate::mm::dump::{copy_entries, select_pages};
use crate::proc::maps::MapEntry;
use crate::stats::micros;
use crate::sys::PAGE_SIZE;

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
    /// Pages found written (the first round: every populated page) and copied.
    pub pages: u64,
    /// Duration of the round.
    pub time_us: u64,
}

/// What the running phase produced.
pub struct PreCopy {
    /// The tracking session, still active.
    pub tracker: WriteTracker,
    /// Newest copies of the pages.
    pub shadow: Shadow,
    /// Per-round figures.
    pub rounds: Vec<RoundStat>,
    /// Pages written per second, from the last round.
    pub dirty_rate: f64,
}

/// Runs the copy rounds while `pid` keeps running.
pub fn run(pid: i32, rounds: Rounds) -> Result<PreCopy, TrackError> {
    let mut tracker = WriteTracker::start(pid)?;
    let mut shadow = Shadow::new();
    let mut stats: Vec<RoundStat> = Vec::new();
    let limit = match rounds {
        Rounds::Fixed(n) => n.max(1),
        Rounds::Auto => AUTO_MAX_ROUNDS,
    };
    let mut last_harvest = Instant::now();
    let mut dirty_rate = 0.0;
    for round in 0..limit {
        let t = Instant::now();
        let dirty = tracker.harvest()?;
        let since = last_harvest.elapsed();
        last_harvest = Instant::now();
        let pages = pages_in(&dirty);
        if round > 0 && since.as_secs_f64() > 0.0 {
            dirty_rate = pages as f64 / since.as_secs_f64();
        }
        shadow
            .copy_from(pid, &dirty)
            .map_err(|source| TrackError::Syscall {
                pid,
                step: "copy of dirty pages",
                source,
            })?;
        stats.push(RoundStat {
            pages,
            time_us: micros(t.elapsed()),
        });
        if rounds == Rounds::Auto && round > 0 {
            let prev = stats[stats.len() - 2].pages;
            // Converged: the set is small, or no longer shrinking by a fifth per round.
            if pages < AUTO_SMALL_SET || pages * 5 > prev * 4 {
                break;
            }
        }
    }
    Ok(PreCopy {
        tracker,
        shadow,
        rounds: stats,
        dirty_rate,
    })
}

/// Figures of the final pass.
#[derive(Debug, Clone, Default)]
pub struct FinalPass {
    /// Time of the last `PAGEMAP_SCAN`.
    pub final_scan_us: u64,
    /// Time spent copying inside the freeze.
    pub residual_copy_us: u64,
    /// Pages copied inside the freeze (written since the last round, or not tracked).
    pub residual_pages: u64,
}

/// The final pass, with the process frozen: harvest the residue, decide the page set, read
/// whatever the shadow cannot supply. Returns the page index; every indexed page is then in the
/// shadow.
pub fn finish(
    pc: &mut PreCopy,
    vmas: &[Vma],
    smaps: &[MapEntry],
) -> Result<(PagemapImage, u64, FinalPass), TrackError> {
    let pid = pc.tracker.pid();
    let mut fin = FinalPass::default();
    let t = Instant::now();
    let residue = pc.tracker.scan()?;
    fin.final_scan_us = micros(t.elapsed());
    let t = Instant::now();
    let written: std::collections::HashSet<u64> = residue
        .iter()
        .flat_map(|&(s, e)| (s..e).step_by(PAGE_SIZE as usize))
        .collect();
    // A VMA's shadow pages are trusted only if it is still registered with our userfaultfd.
    let tracked: Vec<(u64, u64)> = smaps
        .iter()
        .filter(|e| {
            e.has_flag("uw")
                && pc
                    .tracker
                    .tracked()
                    .iter()
                    .any(|&(s, en)| s <= e.start && e.end <= en)
        })
        .map(|e| (e.start, e.end))
        .collect();
    let in_tracked = |a: u64| tracked.iter().any(|&(s, e)| s <= a && a < e);
    let sel = select_pages(pid, vmas)?;
    let mut need = Vec::new();
    for e in &sel.pagemap.entries {
        for i in 0..u64::from(e.nr_pages) {
            let a = e.vaddr + i * PAGE_SIZE;
            if written.contains(&a) || !in_tracked(a) || pc.shadow.get(a).is_none() {
                push_single(&mut need, a);
            }
        }
    }
    let bytes = need.iter().map(|e| e.nr_pages as usize).sum::<usize>() * PAGE_SIZE as usize;
    let mut buf = vec![0u8; bytes];
    copy_entries(pid, vmas, &need, &mut buf)?;
    let mut off = 0usize;
    for e in &need {
        for i in 0..u64::from(e.nr_pages) {
            pc.shadow
                .put(e.vaddr + i * PAGE_SIZE, &buf[off..off + PAGE_SIZE as usize]);
            off += PAGE_SIZE as usize;
        }
    }
    fin.residual_pages = (bytes as u64) / PAGE_SIZE;
    fin.residual_copy_us = micros(t.elapsed());
    Ok((sel.pagemap, sel.pages_scanned, fin))
}

fn push_single(runs: &mut Vec<crate::image::pagemap::PagemapEntry>, addr: u64) {
    if let Some(last) = runs.last_mut()
        && last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE == addr
    {
        last.nr_pages += 1;
        return;
    }
    runs.push(crate::image::pagemap::PagemapEntry {
        vaddr: addr,
        nr_pages: 1,
        flags: crate::image::pagemap::PE_PRESENT,
        crc32: 0,
    });
}
