//! What the background stream of a lazy migration sends and in which order: the hot set
//! watched before the freeze and the bulk plan of each frozen process. It reads the process's
//! page tables only; it sends nothing.

use std::thread;
use std::time::Duration;

use crate::image::mm::MmImage;
use crate::image::pagemap::{PE_LAZY, PagemapImage};
use crate::migrate::MigrateError;

/// How long the pages the process writes are watched before a lazy migration freezes it: what
/// it wrote in that window is its hot set, streamed first.
const HOT_WINDOW: Duration = Duration::from_millis(100);

/// The pages `pid` writes during [`HOT_WINDOW`], found with the pre-copy write tracking
/// (userfaultfd write-protect, then `PAGEMAP_SCAN`) while it runs; none if tracking is not
/// possible (the stream is then ordered without them).
pub(super) fn hot_pages(pid: i32) -> Vec<(u64, u64)> {
    let watch = || -> Result<Vec<(u64, u64)>, crate::track::TrackError> {
        let mut tracker = crate::track::WriteTracker::start(pid)?;
        // The first harvest reports every populated page and protects them all.
        tracker.harvest()?;
        thread::sleep(HOT_WINDOW);
        Ok(crate::track::ranges::normalize(tracker.scan()?))
    };
    watch()
        .inspect_err(|e| tracing::info!(pid, error = %e, "no hot set; streaming without one"))
        .unwrap_or_default()
}

/// What the background stream sends: the lazy VMAs' pages that exist, hottest first (the
/// stack, then what the process wrote during [`HOT_WINDOW`] before the freeze, then the rest
/// ascending), and the ranges that hold nothing.
pub(super) struct BulkPlan {
    pub(super) present: Vec<(u64, u64)>,
    pub(super) absent: Vec<(u64, u64)>,
}

/// Finds, in the frozen process, which pages of the lazy ranges exist (a `PAGEMAP_SCAN` done
/// after the hand-over, outside the frozen window).
pub(super) fn bulk_plan(
    pid: i32,
    pagemap: &PagemapImage,
    mm: &MmImage,
    hot: &[(u64, u64)],
) -> Result<BulkPlan, MigrateError> {
    let lazy: Vec<(u64, u64)> = pagemap
        .entries
        .iter()
        .filter(|e| e.flags == PE_LAZY)
        .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * 4096))
        .collect();
    let vmas: Vec<_> = mm
        .vmas
        .iter()
        .filter(|v| lazy.iter().any(|&(s, e)| s < v.end && e > v.start))
        .cloned()
        .collect();
    let sel = crate::mm::dump::select_pages(pid, &vmas)
        .map_err(|e| MigrateError::Peer(format!("page scan of process {pid}: {e}")))?;
    // A present run may cross a page the dump kept (rseq): only its lazy part counts.
    let runs: Vec<(u64, u64)> = sel
        .pagemap
        .entries
        .iter()
        .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * 4096))
        .collect();
    let present = crate::track::ranges::intersect(&crate::track::ranges::normalize(runs), &lazy);
    let absent = crate::track::ranges::subtract(&lazy, &present);
    let stack = mm
        .vmas
        .iter()
        .find(|v| v.name == "[stack]")
        .map(|v| (v.start, v.end));
    let stack: Vec<(u64, u64)> = stack.into_iter().collect();
    let first = crate::track::ranges::intersect(&present, &stack);
    let rest = crate::track::ranges::subtract(&present, &stack);
    let written = crate::track::ranges::intersect(&rest, hot);
    let mut order = first;
    order.extend_from_slice(&written);
    order.extend(crate::track::ranges::subtract(&rest, hot));
    Ok(BulkPlan {
        present: order,
        absent,
    })
}
