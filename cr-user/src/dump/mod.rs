//! The dump orchestrator: check the target, freeze it, save each resource, release it.
//!
//! Order matters for the frozen window: everything that can be learned while the task runs is
//! learned before the freeze; pages are copied into memory while frozen and written after the
//! task is released (`--leave-running`). Without `--leave-running` the task stays frozen until
//! the image is safely on disk and is only then killed, so a failed write loses nothing.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::bpf::{TaskEventKind, TaskTracker};
use crate::files::FilesError;
use crate::freeze::{FrozenProcess, FrozenTree};
use crate::image::inventory::Inventory;
use crate::image::pagemap::{PE_PRESENT, PagemapImage};
use crate::image::{ImageDir, ImageError, Kind, pages_file_name};
use crate::proc::stat::PF_KTHREAD;
use crate::proc::{self, ProcError};
use crate::stats::{DumpStats, micros};
use crate::sys::PAGE_SIZE;
use crate::track::final_scan::{self, FinalScanner};
use crate::track::incremental::{self, load_parent};
use crate::track::precopy::{self, PageSink, Rounds};
use crate::track::shadow::Shadow;
use crate::track::{TrackError, WriteTracker};
use cpu::CpuProbe;
pub(crate) use cpu::dump_cpu;
pub use error::DumpError;
pub use lazy::lazy_candidate;
pub(crate) use lazy::lazy_pagemap;

mod cpu;
mod error;
mod lazy;

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root pid of the tree.
    pub pid: i32,
    /// Image directory (created if missing).
    pub dir: PathBuf,
    /// Leave the tasks running after the dump instead of killing them.
    pub leave_running: bool,
    /// Standard streams that are terminals or pipes are handed to the restorer.
    pub shell_job: bool,
    /// Copy memory in rounds while the process runs, freezing only for the residue.
    pub pre_copy: Option<Rounds>,
    /// Do not use BPF: the task set and layout come from `/proc` alone.
    pub no_bpf: bool,
    /// Do not use userfaultfd async write-protect: pre-copy becomes a stop-the-world copy.
    pub no_wp_async: bool,
    /// With pre-copy: the final `PAGEMAP_SCAN` walks all memory even when the guards allow it
    /// to walk only the hinted pages.
    pub full_final_scan: bool,
    /// With pre-copy: after a hinted final scan, walk all memory too and fail the dump if it
    /// finds a written page the hints did not cover.
    pub verify_final_scan: bool,
    /// Parent image (a `pre-dump`): pages unchanged since it are referenced, not copied.
    pub prev_images_dir: Option<PathBuf>,
    /// With `--leave-running`: keep write tracking in the process for a further incremental dump.
    pub track_mem: bool,
    /// Leave the pages of private anonymous VMAs out of the image (`PE_LAZY`): a migration
    /// source sends them after the destination resumed.
    pub lazy_pages: bool,
    /// Save established TCP connections with `TCP_REPAIR` (refused otherwise).
    pub tcp_established: bool,
}

/// What happens to the process once its image is complete.
pub(crate) enum After {
    Thaw,
    Kill,
    Hold,
}

/// Checks the target before anything touches it.
pub(crate) fn preflight(pid: i32) -> Result<(proc::stat::Stat, proc::status::Status), DumpError> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DumpError::NoSuchProcess { pid });
    }
    if pid == std::process::id() as i32 {
        return Err(DumpError::Unsupported {
            pid,
            what: "fastcr cannot dump itself".into(),
        });
    }
    let gone = |e: ProcError| match e {
        ProcError::Read { .. } => DumpError::NoSuchProcess { pid },
        e => DumpError::Proc(e),
    };
    let stat = proc::stat::stat(pid).map_err(gone)?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(DumpError::KernelThread { pid });
    }
    let status = proc::status::status(pid).map_err(gone)?;
    if status.tgid != pid {
        return Err(DumpError::NotAProcess {
            pid,
            tgid: status.tgid,
        });
    }
    Ok((stat, status))
}

/// The single-process path needs a process without children; one that forked meanwhile is
/// dumped again as a tree.
pub(crate) fn check_single(pid: i32) -> Result<(), DumpError> {
    let children = proc::children(pid)?;
    if !children.is_empty() {
        return Err(DumpError::Raced {
            pid,
            what: format!("child processes {children:?} appeared during the dump"),
        });
    }
    Ok(())
}

/// Starts BPF task tracking; the dump goes on from `/proc` alone if BPF is unavailable.
pub(crate) fn start_tracking(pid: i32) -> Option<TaskTracker> {
    match TaskTracker::attach(pid as u32) {
        Ok(t) => Some(t),
        Err(e) => {
            // Not an error for the dump: the task set is confirmed from /proc either way, and
            // the stats say which source was used.
            tracing::info!(error = %e, "BPF task tracking unavailable; using /proc only");
            None
        }
    }
}

/// Fails if BPF saw the task set change before the freeze completed: an exec, a fork whose
/// child is not in `tree`, or a thread that is neither frozen nor gone.
pub(crate) fn confirm_task_set(
    pid: i32,
    tracker: &mut TaskTracker,
    frozen: &[i32],
    tree: &[i32],
) -> Result<(), DumpError> {
    for ev in tracker.drain()? {
        let gone = |tgid: u32, tid: u32| !Path::new(&format!("/proc/{tgid}/task/{tid}")).exists();
        let what = match TaskEventKind::from_u32(ev.kind) {
            Some(TaskEventKind::Fork)
                if tree.contains(&(ev.tgid as i32)) || gone(ev.tgid, ev.tgid) =>
            {
                continue;
            }
            Some(TaskEventKind::Fork) => format!("it forked child {} during the dump", ev.tgid),
            Some(TaskEventKind::Thread)
                if frozen.contains(&(ev.pid as i32)) || gone(ev.tgid, ev.pid) =>
            {
                continue;
            }
            Some(TaskEventKind::Thread) => format!("it created thread {} during the dump", ev.pid),
            Some(TaskEventKind::Exec) => "it called execve during the dump".to_string(),
            _ => continue,
        };
        return Err(DumpError::Raced { pid, what });
    }
    Ok(())
}

/// Where the dumped pages are when the image is written.
pub(crate) enum Pages {
    /// Back to back in a buffer, in pagemap order (stop-the-world copy).
    Buffer(Vec<u8>),
    /// In the pre-copy shadow store, by address.
    Shadow(Shadow),
}

impl Pages {
    /// Writes the pages file and fills in each run's checksum.
    pub(crate) fn write(
        &self,
        dir: &ImageDir,
        pid: i32,
        pagemap: &mut PagemapImage,
    ) -> Result<(), ImageError> {
        let path = dir.file(&pages_file_name(pid));
        dir.write_with(&path, |w| {
            let mut off = 0usize;
            for e in pagemap.entries.iter_mut().filter(|e| e.flags == PE_PRESENT) {
                let mut crc = crc32fast::Hasher::new();
                for i in 0..u64::from(e.nr_pages) {
                    let page = match self {
                        Pages::Buffer(buf) => &buf[off..off + PAGE_SIZE as usize],
                        Pages::Shadow(shadow) => {
                            shadow.get(e.vaddr + i * PAGE_SIZE).ok_or_else(|| {
                                std::io::Error::other(format!(
                                    "page {:#x} was never copied",
                                    e.vaddr + i * PAGE_SIZE
                                ))
                            })?
                        }
                    };
                    crc.update(page);
                    w.write_all(page)?;
                    off += PAGE_SIZE as usize;
                }
                e.crc32 = crc.finalize();
            }
            Ok(())
        })
    }
}

/// Checkpoints `opts.pid` into `opts.dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    crate::files::tcp_repair_begin(opts.tcp_established);
    let r = with_retries(|| dump_with(opts, after_of(opts), None)).map(|(stats, _)| stats);
    // Killed: fastcr's copies of repaired TCP sockets are the last, closed silently. Otherwise
    // the connections go on: repair mode off again.
    crate::files::tcp_repair_end(r.is_ok() && !opts.leave_running);
    r
}

fn after_of(opts: &DumpOptions) -> After {
    if opts.leave_running {
        After::Thaw
    } else {
        After::Kill
    }
}

/// How often a dump is tried again when the process forked or made a thread while it was being
/// frozen (each try leaves it running as it was).
const RACE_RETRIES: usize = 5;

fn with_retries<T>(mut f: impl FnMut() -> Result<T, DumpError>) -> Result<T, DumpError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(DumpError::Raced { pid, what }) if tries < RACE_RETRIES => {
                tracing::info!(
                    pid,
                    what,
                    "the task set changed during the freeze; trying again"
                );
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Checkpoints `opts.pid` into `opts.dir` and returns with the process still frozen (a
/// migration source hands it over, or thaws it if the destination fails).
pub fn dump_held(opts: &DumpOptions) -> Result<(DumpStats, FrozenTree), DumpError> {
    dump_held_streaming(opts, None)
}

/// Parent recorded in an image whose pre-copied pages went to a [`PageSink`] instead of into
/// the image: whoever received them writes them as a parent image and points the inventory
/// at it (`fastcr receive` does).
pub const STREAMED_PARENT: &str = "(streamed pre-copy)";

/// Like [`dump_held`]; with `sink`, the pages the pre-copy rounds copy also go to it as they
/// are copied, and the image leaves to the parent [`STREAMED_PARENT`] (`PE_IN_PARENT`) every
/// page the sink got whose copy is still exact. (A tree, or a pre-copy that could not run,
/// stores every page itself.)
pub fn dump_held_streaming(
    opts: &DumpOptions,
    mut sink: Option<&mut (dyn PageSink + 'static)>,
) -> Result<(DumpStats, FrozenTree), DumpError> {
    match with_retries(|| dump_with(opts, After::Hold, sink.as_deref_mut()))? {
        (stats, Some(frozen)) => Ok((stats, frozen)),
        (_, None) => Err(DumpError::Unsupported {
            pid: opts.pid,
            what: "the dump released the process it was asked to hold".into(),
        }),
    }
}

fn dump_with(
    opts: &DumpOptions,
    after: After,
    mut sink: Option<&mut (dyn PageSink + 'static)>,
) -> Result<(DumpStats, Option<FrozenTree>), DumpError> {
    let pid = opts.pid;
    let (stat, status) = preflight(pid)?;
    if crate::tree::has_children(pid)? {
        return crate::tree::dump::dump(opts, after, None);
    }
    let dir = prepare_dir(&opts.dir)?;
    if opts.pre_copy.is_some() && opts.prev_images_dir.is_some() {
        return Err(DumpError::Unsupported {
            pid,
            what: "--pre-copy and --prev-images-dir cannot be combined yet".into(),
        });
    }
    let parent = match &opts.prev_images_dir {
        Some(p) => Some(load_parent(p, pid)?),
        None => None,
    };
    let mut adopted = match &parent {
        Some(p) => {
            let link = p
                .inventory
                .tracking
                .ok_or_else(|| DumpError::NoTracking { dir: p.dir.clone() })?;
            Some((WriteTracker::adopt(pid, link)?, link))
        }
        None => None,
    };
    let keep_tracking = opts.track_mem && opts.leave_running;
    let mut tracker = if opts.no_bpf {
        None
    } else {
        start_tracking(pid)
    };
    let mut stats = DumpStats {
        task_tracking: if tracker.is_some() { "bpf" } else { "proc" }.into(),
        ..Default::default()
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();

    // Read the full layout (smaps walks page tables: slow on big processes) while the task
    // still runs, before any pre-copy round so the last round is followed by the freeze at
    // once; inside the window only the cheap maps is read, unless BPF saw the layout change.
    let layout_watch = tracker.as_mut().and_then(|t| {
        let watch = t
            .watch_memory()
            .and_then(|()| t.drain_vma_events())
            .and_then(|_| t.lost_vma_events());
        watch
            .inspect_err(
                |e| tracing::debug!(error = %e, "no VMA events: the layout is read in the freeze"),
            )
            .ok()
    });
    let pre_smaps = match layout_watch {
        Some(_) => Some(proc::maps::smaps(pid)?),
        None => None,
    };
    let mut precopy = match opts.pre_copy {
        None => {
            stats.precopy_mode = "off".into();
            None
        }
        Some(_) if opts.no_wp_async => {
            stats.precopy_mode =
                "stop-the-world (userfaultfd write-protect disabled by --no-wp-async)".into();
            None
        }
        Some(rounds) => {
            let t = Instant::now();
            // Write-fault hints schedule the rounds when BPF is there; without it the scans
            // alone do (the final set is always the scan's).
            let hinting = tracker.as_mut().is_some_and(|t| t.watch_memory().is_ok());
            let hints = if hinting { tracker.as_mut() } else { None };
            // With the layout known (and watched by BPF), pages are also selected during the
            // rounds instead of in the freeze.
            let layout = match pre_smaps.as_ref() {
                Some(pre) => Some(crate::mm::dump::layout(pid, pre)?),
                None => None,
            };
            match precopy::run(pid, rounds, hints, layout.as_deref(), sink.as_deref_mut()) {
                // It forked during the rounds: the tree goes on from here, its copy kept.
                Ok(pc) if crate::tree::has_children(pid)? => {
                    drop(tracker);
                    return crate::tree::dump::dump(opts, after, Some(pc));
                }
                Ok(pc) => {
                    record_precopy(&mut stats, t, &pc.rounds, pc.dirty_rate, 1);
                    Some(pc)
                }
                Err(e) => {
                    record_precopy_failure(&mut stats, &e);
                    None
                }
            }
        }
    };
    // Touch the page buffer now so the frozen window does not pay for its page faults.
    let mut buf = Vec::new();
    if precopy.is_none() && adopted.is_none() && !opts.lazy_pages {
        let estimate = (status.rss_anon_kib + status.rss_shmem_kib) as usize * 1024 * 11 / 10;
        buf.resize(estimate, 1);
    }

    // The final page-table walk's threads are ready before the freeze; they walk from the
    // moment it holds.
    let mut scanner = match precopy.as_mut() {
        Some(pc) => Some(match pc.scanner.take() {
            Some(ready) => ready,
            None => FinalScanner::prepare(&pc.tracker)?,
        }),
        None => None,
    };
    let t_freeze = Instant::now();
    let frozen = FrozenProcess::freeze(pid)?;
    let t_frozen = Instant::now();
    let stopped = frozen.main().group_stop();
    stats.freezing_time_us = micros(t_frozen - t_freeze);
    stats.frozen_steps.stop_us = stats.freezing_time_us;
    if let Some(t) = tracker.as_mut() {
        confirm_task_set(pid, t, &frozen.tids(), &[pid])?;
    }
    check_single(pid)?;
    let layout_changed = match (tracker.as_mut(), layout_watch) {
        (Some(t), Some(lost_before)) => vma_activity(t, lost_before)?,
        _ => true,
    };
    // Before anything is injected into the frozen process: an injected syscall takes its mmap
    // lock, which the guards would count.
    if let (Some(s), Some(pc)) = (scanner.as_mut(), precopy.as_mut()) {
        let coverage =
            final_scan::narrowed(pc, tracker.as_mut(), layout_changed, opts.full_final_scan);
        if opts.verify_final_scan {
            final_scan::verify(&pc.tracker, &coverage)?;
        }
        s.cover(coverage, &mut pc.shadow);
    }
    // With pre-copy, the final page-table walk (the one step that grows with memory) runs
    // beside the metadata and registers, which mostly wait on /proc and ptrace. It starts once
    // the scratch area is mapped (see `cpu`).
    let state = (|| {
        let t = Instant::now();
        let smaps = match pre_smaps {
            Some(pre) if !layout_changed => {
                let now = proc::maps::maps(pid)?;
                match proc::maps::with_flags_from(&now, &pre) {
                    Some(merged) => merged,
                    None => {
                        tracing::debug!("maps differ from the smaps read before: smaps read again");
                        proc::maps::smaps(pid)?
                    }
                }
            }
            _ => proc::maps::smaps(pid)?,
        };
        let t_probe = Instant::now();
        let probe = CpuProbe::new(&frozen, &smaps)?;
        let probe_us = micros(t_probe.elapsed());
        if let Some(s) = scanner.as_mut() {
            s.start();
        }
        let tracking_fd = adopted.as_ref().map(|(_, link)| link.fd);
        let (vmas, files) = dump_layout_files(
            pid,
            &smaps,
            status.umask,
            opts.shell_job,
            tracking_fd,
            &crate::files::TreePipes::new(),
        )?;
        let objects =
            crate::files::objects::dump(&[(pid, &vmas, &files)]).map_err(FilesError::from)?;
        let locks = crate::files::locks::dump(pid, &files, &mut Default::default())
            .map_err(FilesError::from)?;
        let metadata_us = micros(t.elapsed()) - probe_us;
        let t = Instant::now();
        let close_fd = tracking_fd.filter(|_| !keep_tracking);
        let cpu = probe.dump(&frozen, vmas, &stat, &status, comm, close_fd)?;
        let registers_us = probe_us + micros(t.elapsed());
        Ok::<_, DumpError>((files, objects, locks, cpu, metadata_us, registers_us, probe))
    })();
    let scanned = scanner.map(FinalScanner::finish).transpose()?;
    let (files, objects, locks, cpu, metadata_us, mut registers_us, probe) = state?;
    let (mm, core, threads, sigstate) = cpu;
    // After the walk, so the munmap does not wait for it.
    let t = Instant::now();
    probe.unmap()?;
    registers_us += micros(t.elapsed());
    stats.frozen_steps.metadata_us = metadata_us;
    stats.frozen_steps.registers_us = registers_us;
    let t_mem = Instant::now();
    let mut streamed = false;
    let (mut pagemap, pages) = match (precopy.as_mut(), adopted.as_mut(), parent.as_ref()) {
        (None, Some((tracker, _)), Some(parent)) => {
            let t = Instant::now();
            let (written, intact) = tracker.final_scan()?;
            stats.frozen_steps.final_scan_us = micros(t.elapsed());
            let sel = crate::mm::dump::select_pages(pid, &mm.vmas)?;
            stats.pages_scanned = sel.pages_scanned;
            let (pagemap, stored) = incremental::split(
                &sel.pagemap,
                &incremental::trusted(parent, &intact, &written),
            );
            buf.resize(pagemap.stored_pages() as usize * PAGE_SIZE as usize, 0);
            crate::mm::dump::copy_entries(pid, &mm.vmas, &stored, &mut buf)?;
            stats.residual_pages = pagemap.stored_pages();
            if keep_tracking {
                tracker.retrack(&intact)?;
            }
            stats.frozen_steps.residual_copy_us = micros(t.elapsed());
            (pagemap, Pages::Buffer(buf))
        }
        (None, _, _) if opts.lazy_pages => {
            let keep = crate::lazy::register::kernel_written(&core, &threads);
            let (pagemap, scanned) = lazy_pagemap(pid, &mm.vmas, &keep, &mut buf)?;
            stats.pages_scanned = scanned;
            stats.residual_pages = pagemap.stored_pages();
            stats.frozen_steps.residual_copy_us = micros(t_mem.elapsed());
            (pagemap, Pages::Buffer(buf))
        }
        (None, _, _) => {
            let d = crate::mm::dump::dump_pages(pid, &mm.vmas, &mut buf)?;
            stats.pages_scanned = d.pages_scanned;
            stats.residual_pages = d.pagemap.total_pages();
            stats.frozen_steps.residual_copy_us = micros(t_mem.elapsed());
            (d.pagemap, Pages::Buffer(buf))
        }
        (Some(pc), _, _) => {
            let (mut pagemap, scanned, fin) =
                precopy::finish(pc, &mm.vmas, !layout_changed, scanned)?;
            if sink.is_some() {
                // What the sink holds exactly is left to the parent it will become.
                pagemap = incremental::split(&pagemap, &fin.trusted).0;
                streamed = true;
            }
            stats.pages_scanned = scanned;
            stats.residual_pages = fin.residual_pages;
            stats.frozen_steps.final_scan_us = fin.final_scan_us;
            stats.final_scan = fin.final_scan_over;
            stats.frozen_steps.residual_copy_us = fin.residual_copy_us;
            if fin.bulk {
                stats.precopy_mode = "uffd-wp-async (did not converge: final copy in bulk)".into();
            }
            (pagemap, Pages::Shadow(std::mem::take(&mut pc.shadow)))
        }
    };
    stats.memdump_time_us = micros(t_mem.elapsed());
    stats.pages_written = pagemap.stored_pages();
    stats.pages_in_parent = pagemap.total_pages() - pagemap.stored_pages() - pagemap.lazy_pages();
    let still_frozen = if matches!(after, After::Thaw) {
        frozen.thaw()?;
        stats.frozen_time_us = micros(t_frozen.elapsed());
        None
    } else {
        Some(frozen)
    };
    // Closing the userfaultfd makes the kernel drop the write-protect markers of every tracked
    // page, a page-table walk over the whole range: done after the thaw, it costs the workload a
    // short mmap-lock wait instead of frozen time. Until then its writes resolve in the kernel.
    drop(precopy);
    let t_write = Instant::now();
    pages.write(&dir, pid, &mut pagemap)?;
    dir.write(Kind::Pagemap, pid, &pagemap)?;
    dir.write(Kind::Mm, pid, &mm)?;
    dir.write(Kind::Core, pid, &core)?;
    if !threads.threads.is_empty() {
        dir.write(Kind::Threads, pid, &threads)?;
    }
    dir.write(Kind::SigState, pid, &sigstate)?;
    if let Some(signal) = stopped {
        dir.write(
            Kind::Stopped,
            pid,
            &crate::image::core::StoppedImage { signal },
        )?;
    }
    dir.write(Kind::Files, pid, &files)?;
    objects.write(&dir)?;
    if !locks.locks.is_empty() {
        dir.write(Kind::Locks, pid, &locks)?;
    }
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        root_pid: pid,
        pids: vec![pid],
        shell_job: opts.shell_job,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        parent: parent
            .as_ref()
            .map(|p| p.dir.to_string_lossy().into_owned())
            .or_else(|| streamed.then(|| STREAMED_PARENT.to_string())),
        pre_dump: false,
        tracking: if keep_tracking {
            adopted.as_ref().map(|(_, link)| *link)
        } else {
            None
        },
    };
    drop(adopted);
    // The inventory goes last: an image dir without it is incomplete and restore refuses it.
    dir.write(Kind::Inventory, 0, &inventory)?;
    stats.memwrite_time_us = micros(t_write.elapsed());
    match (after, still_frozen) {
        (After::Kill, Some(frozen)) => {
            frozen.kill()?;
            stats.frozen_time_us = micros(t_frozen.elapsed());
            Ok((stats, None))
        }
        (After::Hold, held) => {
            // Frozen until now; the caller's hand-over adds to it.
            stats.frozen_time_us = micros(t_frozen.elapsed());
            let held = held.map(FrozenTree::single);
            if let Some(h) = &held {
                h.put_back()?;
            }
            Ok((stats, held))
        }
        (_, held) => Ok((stats, held.map(FrozenTree::single))),
    }
}

/// Records in `stats` the pre-copy rounds that ran since `t`.
pub(crate) fn record_precopy(
    stats: &mut DumpStats,
    t: Instant,
    rounds: &[precopy::RoundStat],
    dirty_rate: f64,
    processes: u32,
) {
    stats.precopy_processes = processes;
    stats.precopy_time_us = micros(t.elapsed());
    stats.rounds = rounds.to_vec();
    stats.dirty_rate_pages_per_s = dirty_rate;
    stats.precopy_mode = "uffd-wp-async".into();
}

/// Tracking is an optimisation: without it the dump is still exact, only its frozen window is
/// longer. The stats say so.
pub(crate) fn record_precopy_failure(stats: &mut DumpStats, e: &TrackError) {
    tracing::warn!(error = %e, "pre-copy unavailable; copying with the tasks stopped");
    stats.precopy_mode = format!("stop-the-world ({})", crate::error_chain(e));
}

/// Whether BPF saw a VMA syscall of the tracked tasks since the last call, or lost any event
/// since `lost_before` was read.
fn vma_activity(t: &mut TaskTracker, lost_before: u64) -> Result<bool, DumpError> {
    let events = t.drain_vma_events()?;
    if let Some(e) = events.first() {
        tracing::debug!(count = events.len(), first = ?e, "VMA syscalls seen: the layout is read again");
    }
    Ok(!events.is_empty() || t.lost_vma_events()? != lost_before)
}

/// Reads a frozen process's layout and fd table. `tracking_fd` is fastcr's own, not saved.
pub(crate) fn dump_layout_files(
    pid: i32,
    smaps: &[crate::proc::maps::MapEntry],
    umask: u32,
    shell_job: bool,
    tracking_fd: Option<i32>,
    tree_pipes: &crate::files::TreePipes,
) -> Result<(Vec<crate::image::mm::Vma>, crate::image::files::FilesImage), DumpError> {
    let vmas = crate::mm::dump::layout(pid, smaps)?;
    let files = crate::files::dump(pid, umask, shell_job, tracking_fd, tree_pipes)?;
    Ok((vmas, files))
}

/// Creates the image dir and proves it writable before the workload is touched.
pub(crate) fn prepare_dir(path: &Path) -> Result<ImageDir, DumpError> {
    let dir = ImageDir::create(path)?;
    let probe = dir.file(".fastcr-write-test");
    std::fs::write(&probe, b"").map_err(|source| ImageError::Io {
        path: probe.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir)
}
