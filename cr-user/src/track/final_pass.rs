//! The final pass of a pre-copy, with the process frozen: which pages the image holds (the
//! selection kept up to date by the rounds, or a fresh one), which of them the shadow cannot
//! supply (the residue), and their copy (DESIGN §5, §6).

use std::time::Instant;

use super::final_scan::FinalScan;
use super::precopy::PreCopy;
use super::ranges::{intersect, normalize, subtract};
use super::{TrackError, WriteTracker, pages_in};
use crate::image::mm::Vma;
use crate::image::pagemap::PagemapImage;
use crate::mm::MmError;
use crate::mm::dump::select_pages;
use crate::stats::micros;
use crate::sys::PAGE_SIZE;

/// Which pages of the tracked ranges were worth saving, kept up to date by every round.
pub(super) struct Preselection {
    /// The tracked ranges when it was taken.
    pub(super) tracked: Vec<(u64, u64)>,
    /// The selected pages, sorted and merged.
    pub(super) pages: Vec<(u64, u64)>,
}

/// Selects the pages of the tracked VMAs while the process still runs, so the final pass does
/// not walk all of memory a second time inside the freeze. Every later harvest adds its
/// written pages to the selection.
///
/// Why this is exact: a page that becomes present after this selection was written after it,
/// so a later harvest or the final `PAGEMAP_SCAN` reports it; a page can leave a private
/// mapping only by a syscall of the process (munmap, madvise, mremap, mmap over it, brk),
/// which the caller must rule out with BPF's VMA events before passing `layout_unchanged` to
/// [`finish`]. A range that stopped being tracked without a break is selected again there.
pub(super) fn preselect(
    pid: i32,
    tracker: &WriteTracker,
    vmas: &[Vma],
) -> Result<Preselection, TrackError> {
    let tracked = tracker.tracked().to_vec();
    let inside: Vec<Vma> = vmas
        .iter()
        .filter(|v| subtract(&[(v.start, v.end)], &tracked).is_empty())
        .cloned()
        .collect();
    let sel = select_pages(pid, &inside)?;
    Ok(Preselection {
        tracked,
        pages: entry_ranges(&sel.pagemap),
    })
}

/// The runs of a page index as sorted, merged ranges.
fn entry_ranges(pagemap: &PagemapImage) -> Vec<(u64, u64)> {
    normalize(
        pagemap
            .entries
            .iter()
            .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE))
            .collect(),
    )
}

/// The page selection at the freeze: from the preselection plus what was written since, when
/// that is exact (see [`preselect`]), else by walking every VMA again.
fn select_at_freeze(
    pc: &mut PreCopy,
    vmas: &[Vma],
    layout_unchanged: bool,
    written: &[(u64, u64)],
    intact: &[(u64, u64)],
) -> Result<(PagemapImage, u64), TrackError> {
    let pid = pc.tracker.pid();
    let pre = pc.preselected.take().filter(|p| {
        layout_unchanged
            && normalize(p.tracked.clone()) == normalize(intact.to_vec())
            && p.tracked == pc.tracker.tracked()
    });
    tracing::debug!(
        preselected = pre.is_some(),
        layout_unchanged,
        "final pass: selection"
    );
    let Some(pre) = pre else {
        let sel = select_pages(pid, vmas)?;
        return Ok((sel.pagemap, sel.pages_scanned));
    };
    // VMAs outside the tracked ranges (read-only ones, say) are small: selected afresh.
    let outside: Vec<Vma> = vmas
        .iter()
        .filter(|v| !subtract(&[(v.start, v.end)], &pre.tracked).is_empty())
        .cloned()
        .collect();
    let fresh = select_pages(pid, &outside)?;
    let mut ranges = pre.pages;
    ranges.extend_from_slice(written);
    ranges.extend(entry_ranges(&fresh.pagemap));
    let ranges = normalize(ranges);
    Ok(crate::mm::dump::pagemap_of_ranges(vmas, &ranges))
}

/// Figures of the final pass.
#[derive(Debug, Clone, Default)]
pub struct FinalPass {
    /// Time of the last `PAGEMAP_SCAN`.
    pub final_scan_us: u64,
    /// What it walked ([`FinalScan::over`]).
    pub final_scan_over: String,
    /// Time spent copying inside the freeze.
    pub residual_copy_us: u64,
    /// Pages copied inside the freeze (written since the last round, or not tracked), by the
    /// final scan's worker and by this pass together.
    pub residual_pages: u64,
    /// The residue was too large to pay off: everything was copied in one sweep.
    pub bulk: bool,
    /// Pages whose newest copy was made during the rounds and that were not written since
    /// (what a [`PageSink`] already holds exactly); empty after a bulk copy.
    pub trusted: Vec<(u64, u64)>,
}

/// The final pass, with the process frozen: harvest the residue, decide the page set, read
/// whatever the shadow cannot supply. Returns the page index; every indexed page is then in
/// the shadow.
///
/// `scanned` is the final scan if the caller already made it, with the process frozen.
pub fn finish(
    pc: &mut PreCopy,
    vmas: &[Vma],
    layout_unchanged: bool,
    scanned: Option<FinalScan>,
) -> Result<(PagemapImage, u64, FinalPass), TrackError> {
    let pid = pc.tracker.pid();
    let mut fin = FinalPass::default();
    let FinalScan {
        written,
        tracked,
        fresh,
        shadow,
        us: scan_us,
        over,
    } = match scanned {
        Some(done) => done,
        None => FinalScan::run(&pc.tracker)?,
    };
    if let Some(shadow) = shadow {
        pc.shadow = shadow;
    }
    fin.final_scan_us = scan_us;
    fin.final_scan_over = over;
    let t = Instant::now();
    let written = normalize(written);
    let (pagemap, pages_scanned) =
        select_at_freeze(pc, vmas, layout_unchanged, &written, &tracked)?;
    tracing::debug!(us = micros(t.elapsed()), "final pass: pages selected");
    // A page comes from the shadow if its range stayed tracked, the shadow holds it, and it was
    // not written since; everything else the image needs is read now.
    let written_pages = pages_in(&written);
    let mut stale = written;
    stale.extend_from_slice(&pc.deferred);
    let trusted = subtract(
        &intersect(&normalize(tracked), pc.shadow.covered()),
        &normalize(stale),
    );
    let selected = entry_ranges(&pagemap);
    // Pages the final scan copied after the freeze are in the shadow already, but not trusted:
    // a sink never saw those copies.
    let fresh = intersect(&normalize(fresh), pc.shadow.covered());
    let residue = subtract(&subtract(&selected, &trusted), &fresh);
    let (residue_pages, selected_pages) = (pages_in(&residue), pages_in(&selected));
    tracing::debug!(
        written = written_pages,
        deferred = pages_in(&normalize(pc.deferred.clone())),
        uncovered = pages_in(&subtract(&selected, pc.shadow.covered())),
        residue_pages,
        "final pass: residue"
    );
    // When writes outran the rounds, the residue is large and scattered, and copying it run by
    // run would be slower than the plain stop-the-world copy: then every selected page is
    // read again in one sweep. Otherwise only the residue is read, every run straight into its
    // shadow slots (one iovec per run, so reading clean pages between runs would only add).
    let bulk = residue_pages * BULK_DENOMINATOR >= selected_pages;
    let copy = if bulk { selected.clone() } else { residue };
    tracing::debug!(
        us = micros(t.elapsed()),
        runs = copy.len(),
        pages = pages_in(&copy),
        bulk,
        "final pass: residue decided"
    );
    // Into the shadow's arena: its pages are already faulted in, and round 0 laid the slots
    // out in address order, so most reads land in place.
    pc.shadow
        .copy_from_parallel(pid, &copy)
        .map_err(|source| TrackError::Syscall {
            pid,
            step: "copy of the residue",
            source,
        })?;
    tracing::debug!(us = micros(t.elapsed()), "final pass: residue copied");
    let missing = subtract(&selected, pc.shadow.covered());
    tracing::debug!(us = micros(t.elapsed()), "final pass: coverage checked");
    if let Some(&(addr, _)) = missing.first() {
        return Err(TrackError::Mm(MmError::Memory {
            pid,
            what: "read a page of the frozen process",
            addr,
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        }));
    }
    fin.residual_pages = if bulk {
        selected_pages
    } else {
        residue_pages + pages_in(&intersect(&fresh, &selected))
    };
    fin.residual_copy_us = micros(t.elapsed());
    fin.bulk = bulk;
    if !bulk {
        fin.trusted = trusted;
    }
    Ok((pagemap, pages_scanned, fin))
}

/// Residue at least 1/BULK_DENOMINATOR of the selected pages is copied in bulk.
const BULK_DENOMINATOR: u64 = 4;
