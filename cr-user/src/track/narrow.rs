//! Whether the final scan of a pre-copy may walk only the pages hinted since the last round
//! (DESIGN §5): the guards that rule out every writer the hints cannot see.

use super::final_scan::scan_share;
use super::precopy::{PreCopy, WalkMark, hint_ranges};
use super::ranges::{intersect, normalize, subtract};
use super::{Ranges, TrackError, WriteTracker, classify, pages_in};
use crate::bpf::TaskTracker;

/// What the final scan walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// These ranges only (sorted, inside the tracked ones): the pages hinted since the last
    /// round.
    Hinted(Ranges),
    /// All tracked memory, for this reason.
    All(&'static str),
}

/// Decides what the final scan of `pc`'s process must walk. Call it with the process frozen
/// and before anything is injected into it (an injected syscall takes its mmap lock). Drains
/// the hints: those since the last round's drain are the candidates.
///
/// The scan may skip a page only if the page cannot have been written since it was last
/// scanned, and every page was scanned at the last walk of all memory or after. Since then:
/// - every write made by a fault of the process's own tasks was hinted, and each round scanned
///   every page hinted before it, so a page written since the last round is in this drain;
/// - every other writer (GUP: `process_vm_writev`, `/proc/PID/mem`, O_DIRECT, futex
///   fault-in; khugepaged; `process_madvise`) works under the process's mmap lock, and
///   nobody but fastcr took it ([`WalkMark`]: the count of lock events is the same, nobody
///   holds it);
/// - zaps and remaps are syscalls of the process, seen as VMA events (`layout_changed`);
/// - no hint was lost to a full ring buffer.
///
/// Any doubt walks all memory, as does `full` (the user's `--full-final-scan`).
pub fn narrowed(
    pc: &PreCopy,
    bpf: Option<&mut TaskTracker>,
    layout_changed: bool,
    full: bool,
) -> Coverage {
    let pid = pc.tracker.pid();
    let Some(bpf) = bpf else {
        return Coverage::All("no BPF hints");
    };
    // Drained first, so that a failure below leaves no hint behind for nobody.
    let Ok(hints) = bpf.drain_dirty() else {
        return Coverage::All("hints unreadable");
    };
    if full {
        return Coverage::All("--full-final-scan");
    }
    if layout_changed {
        return Coverage::All("the memory layout changed");
    }
    let Some(mark) = pc.walk_mark else {
        return Coverage::All("the mmap lock was held or not watched at the last walk");
    };
    match WalkMark::take(Some(bpf), pid) {
        None => Coverage::All("another task holds the mmap lock"),
        Some(now) if now.drops != mark.drops => Coverage::All("hints lost (ring buffer full)"),
        Some(now) if now.activity != mark.activity => {
            Coverage::All("another task took the mmap lock since the last walk")
        }
        Some(_) => {
            let pages: Vec<u64> = hints
                .iter()
                .filter(|h| h.tgid == pid.cast_unsigned())
                .map(|h| h.page)
                .collect();
            Coverage::Hinted(intersect(
                &hint_ranges(&pages),
                &normalize(pc.tracker.tracked().to_vec()),
            ))
        }
    }
}

/// The check behind `--verify-final-scan`: with `coverage` hinted, walks all of `tracker`'s
/// memory right now (read only; call it where [`narrowed`] is called, before anything is
/// injected into the frozen process, whose injected code writes to it) and fails with
/// [`TrackError::HintedScanMissed`] if a written page lies outside the hinted ranges.
pub fn verify(tracker: &WriteTracker, coverage: &Coverage) -> Result<(), TrackError> {
    let Coverage::Hinted(hinted) = coverage else {
        return Ok(());
    };
    let pid = tracker.pid();
    let (written, _) = classify(pid, scan_share(&tracker.pagemap()?, pid, tracker.tracked()))?;
    let missed = subtract(&written, hinted);
    tracing::debug!(
        written = pages_in(&written),
        missed = pages_in(&missed),
        "hinted final scan verified against a walk of all memory"
    );
    match missed.first() {
        None => Ok(()),
        Some(&(first, _)) => Err(TrackError::HintedScanMissed {
            pid,
            pages: pages_in(&missed),
            first,
        }),
    }
}
