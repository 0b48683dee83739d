//! `fastcr pre-dump`: copy a process's memory while it runs, into an image that a later
//! `dump --prev-images-dir` (or another pre-dump) builds on, copying only what changed.
//!
//! There is no soft-dirty on our kernels, so changes are tracked with a userfaultfd in async
//! write-protect mode. A one-shot CLI cannot hold it between runs, and async write-protect
//! needs nobody to serve it, so the first pre-dump leaves it open *in the process itself*, at a
//! high close-on-exec fd, recorded in the image's inventory. The next run takes it up with
//! `pidfd_getfd`; the final dump closes it and leaves it out of the image. A VMA whose tracking
//! broke in between (unmapped and mapped again) fails the `PM_SCAN_CHECK_WPASYNC` scan and is
//! copied whole.
//!
//! The process never stops for a pre-dump except for the few injected syscalls that create
//! the userfaultfd. Its pages are copied after they are write-protected, so a write during the
//! copy is seen by the next run: the pre-dump image alone is not a consistent snapshot, and
//! restore refuses it; the chain ending in a full dump is exact.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::dump::{DumpError, Pages, check_single, preflight, prepare_dir};
use crate::image::Kind;
use crate::image::inventory::Inventory;
use crate::image::pagemap::PagemapImage;
use crate::proc;
use crate::stats::{DumpStats, micros};
use crate::sys::PAGE_SIZE;
use crate::track::WriteTracker;
use crate::track::incremental::{self, load_parent};
use crate::track::ranges::{intersect, normalize};
use crate::track::shadow::Shadow;

/// What to pre-dump.
#[derive(Debug, Clone)]
pub struct PreDumpOptions {
    /// The process.
    pub pid: i32,
    /// Image directory.
    pub dir: PathBuf,
    /// The previous pre-dump to build on.
    pub prev_images_dir: Option<PathBuf>,
}

/// Pre-dumps `opts.pid` into `opts.dir`.
pub fn pre_dump(opts: &PreDumpOptions) -> Result<DumpStats, DumpError> {
    let pid = opts.pid;
    preflight(pid)?;
    let dir = prepare_dir(&opts.dir)?;
    let parent = match &opts.prev_images_dir {
        Some(p) => Some(load_parent(p, pid)?),
        None => None,
    };
    let t0 = Instant::now();
    let (tracker, link, written, intact) = match &parent {
        Some(p) => {
            let link = p
                .inventory
                .tracking
                .ok_or_else(|| DumpError::NoTracking { dir: p.dir.clone() })?;
            let mut t = WriteTracker::adopt(pid, link)?;
            let (written, intact) = t.final_scan()?;
            t.retrack(&intact)?;
            (t, link, written, intact)
        }
        None => {
            let (mut t, link) = WriteTracker::start_persistent(pid)?;
            let written = t.scan()?;
            let intact = t.tracked().to_vec();
            (t, link, written, intact)
        }
    };
    check_single(pid)?;
    let smaps = proc::maps::smaps(pid)?;
    let vmas = crate::mm::dump::layout(pid, &smaps)?;
    let sel = crate::mm::dump::select_pages(pid, &vmas)?;
    let trusted = parent
        .as_ref()
        .map(|p| incremental::trusted(p, &intact, &written))
        .unwrap_or_default();
    let (_, stored) = incremental::split(&sel.pagemap, &trusted);
    // The process runs: a range may vanish before it is read. What could not be read is simply
    // not in this image, so the next run copies it.
    let mut shadow = Shadow::new();
    let wanted: Vec<(u64, u64)> = stored
        .iter()
        .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE))
        .collect();
    shadow
        .copy_from(pid, &wanted)
        .map_err(|source| crate::track::TrackError::Syscall {
            pid,
            step: "copy of pages",
            source,
        })?;
    let copied = intersect(&normalize(wanted), shadow.covered());
    let mut keep = trusted.clone();
    keep.extend_from_slice(&copied);
    let keep = normalize(keep);
    let selected = PagemapImage {
        entries: sel
            .pagemap
            .entries
            .iter()
            .flat_map(|e| {
                let run = [(e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE)];
                intersect(&run, &keep)
            })
            .map(|(s, e)| crate::image::pagemap::PagemapEntry {
                vaddr: s,
                nr_pages: ((e - s) / PAGE_SIZE) as u32,
                flags: crate::image::pagemap::PE_PRESENT,
                crc32: 0,
            })
            .collect(),
    };
    let (mut pagemap, _) = incremental::split(&selected, &trusted);
    let mut stats = DumpStats {
        task_tracking: "proc".into(),
        precopy_mode: "pre-dump".into(),
        pages_scanned: sel.pages_scanned,
        pages_written: pagemap.stored_pages(),
        pages_in_parent: pagemap.total_pages() - pagemap.stored_pages(),
        memdump_time_us: micros(t0.elapsed()),
        ..Default::default()
    };
    // Our copy of the userfaultfd closes here; the process's own keeps tracking alive.
    drop(tracker.take_fd());
    let t = Instant::now();
    Pages::Shadow(shadow).write(&dir, pid, &mut pagemap)?;
    dir.write(Kind::Pagemap, pid, &pagemap)?;
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        root_pid: pid,
        pids: vec![pid],
        shell_job: false,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        parent: parent
            .as_ref()
            .map(|p| p.dir.to_string_lossy().into_owned()),
        pre_dump: true,
        tracking: Some(link),
    };
    dir.write(Kind::Inventory, 0, &inventory)?;
    stats.memwrite_time_us = micros(t.elapsed());
    Ok(stats)
}
