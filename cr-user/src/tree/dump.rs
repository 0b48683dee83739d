//! Dump of a whole process tree: every live process frozen (parents first, until no new one
//! appears), each saved like a single process, pipes between them saved once, zombies recorded
//! with their exit status. Memory is copied with the tree stopped, or mostly before the freeze
//! with `--pre-copy` (see `precopy.rs`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::dump::{
    After, DumpError, DumpOptions, Pages, confirm_task_set, dump_cpu, dump_layout_files,
    prepare_dir, record_precopy, record_precopy_failure, start_tracking,
};
use crate::freeze::{FreezeError, FrozenProcess, FrozenTree};
use crate::image::core::{CoreImage, StoppedImage, ThreadsImage};
use crate::image::files::FilesImage;
use crate::image::inventory::Inventory;
use crate::image::mm::MmImage;
use crate::image::pagemap::PagemapImage;
use crate::image::sigstate::SigStateImage;
use crate::image::{ImageDir, Kind};
use crate::proc;
use crate::stats::{DumpStats, micros};
use crate::track::precopy::{self, PreCopy};

/// Everything saved of one process.
struct Saved {
    pid: i32,
    core: CoreImage,
    threads: ThreadsImage,
    sigstate: SigStateImage,
    /// The job-control stop signal it had taken, if it was stopped.
    stopped: Option<i32>,
    files: FilesImage,
    mm: MmImage,
    pagemap: PagemapImage,
    pages: Pages,
    /// The stored pages are still to be copied into the buffer (see [`copy_pages`]).
    pending_copy: bool,
}

/// Freezes `root` and every live descendant; returns them in tree order with the tree.
fn freeze_all(root: i32) -> Result<(Vec<FrozenProcess>, crate::image::tree::TreeImage), DumpError> {
    let mut frozen = vec![FrozenProcess::freeze(root)?];
    loop {
        let tree = super::collect(root)?;
        let missing: Vec<i32> = tree
            .procs
            .iter()
            .filter(|p| p.zombie.is_none())
            .map(|p| p.pid)
            .filter(|pid| !frozen.iter().any(|f| f.main().pid() == *pid))
            .collect();
        if missing.is_empty() {
            frozen.sort_by_key(|f| {
                tree.procs
                    .iter()
                    .position(|p| p.pid == f.main().pid())
                    .unwrap_or(usize::MAX)
            });
            // A frozen process that left the tree (it exited meanwhile) is not dumped.
            frozen.retain(|f| tree.procs.iter().any(|p| p.pid == f.main().pid()));
            return Ok((frozen, tree));
        }
        for pid in missing {
            match FrozenProcess::freeze(pid) {
                Ok(f) => frozen.push(f),
                // It exited or became a zombie: the next listing says which.
                Err(FreezeError::NoSuchProcess { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Figures of the final passes of the pre-copied processes.
#[derive(Default)]
struct Final {
    scan_us: u64,
    residual_pages: u64,
    bulk: bool,
}

fn save(
    f: &FrozenProcess,
    opts: &DumpOptions,
    pipes: &crate::files::TreePipes,
    // The process's pre-copy session and the layout its rounds read, if pre-copied.
    (precopied, layout): (Option<&mut PreCopy>, Option<&[proc::maps::MapEntry]>),
    mut buf: Vec<u8>,
    fin: &mut Final,
    parent: Option<crate::mm::dump::CowParent<'_>>,
) -> Result<Saved, DumpError> {
    let pid = f.main().pid();
    let stat = proc::stat::stat(pid)?;
    let status = proc::status::status(pid)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    // A layout that did not move since the rounds read it (smaps walks page tables, slow on
    // big processes): the cheap maps with its flags.
    let unchanged = layout.and_then(|pre| {
        let now = proc::maps::maps(pid).ok()?;
        proc::maps::with_flags_from(&now, pre)
    });
    let layout_unchanged = unchanged.is_some();
    let smaps = match unchanged {
        Some(merged) => merged,
        None => proc::maps::smaps(pid)?,
    };
    tracing::debug!(pid, layout_unchanged, "layout read");
    let (vmas, files) = dump_layout_files(pid, &smaps, status.umask, opts.shell_job, None, pipes)?;
    tracing::debug!(pid, "files saved");
    let (mm, core, threads, sigstate) = dump_cpu(f, &smaps, vmas, &stat, &status, comm, None)?;
    tracing::debug!(pid, "layout, files and registers saved");
    let mut pending_copy = false;
    let (pagemap, pages) = match precopied {
        Some(pc) => {
            let (pagemap, _, pass) = precopy::finish(pc, &mm.vmas, layout_unchanged, None)?;
            fin.scan_us += pass.final_scan_us;
            fin.residual_pages += pass.residual_pages;
            fin.bulk |= pass.bulk;
            (pagemap, Pages::Shadow(std::mem::take(&mut pc.shadow)))
        }
        None if opts.lazy_pages => {
            let keep = crate::lazy::register::kernel_written(&core, &threads);
            let pagemap = crate::dump::lazy_pagemap(pid, &mm.vmas, &keep, &mut buf)?.0;
            (pagemap, Pages::Buffer(buf))
        }
        None => {
            // Pages still shared copy-on-write with the parent are saved once, in its image.
            // Copied once every process is selected (see `copy_pages`).
            let mut d = crate::mm::dump::select_pages(pid, &mm.vmas)?;
            if let Some(parent) = parent {
                crate::mm::dump::share_with_parent(pid, &mm.vmas, &mut d.pagemap, parent)?;
            }
            fin.residual_pages += d.pagemap.stored_pages();
            pending_copy = true;
            (d.pagemap, Pages::Buffer(buf))
        }
    };
    Ok(Saved {
        pid,
        core,
        threads,
        sigstate,
        stopped: f.main().group_stop(),
        files,
        mm,
        pagemap,
        pages,
        pending_copy,
    })
}

/// Copies the pages of every process selected for a copy in the freeze. Only once all are
/// selected: reading pages with `process_vm_readv` unshares copy-on-write pages (the kernel
/// does so before it pins one), so a parent read first would share nothing with its child.
/// A process with live children is read through `/proc/PID/mem` instead, which pins nothing:
/// the tree still shares its pages afterwards (`--leave-running`), and the freeze does not
/// pay for copying them.
fn copy_pages(saved: &mut [Saved], tree: &crate::image::tree::TreeImage) -> Result<(), DumpError> {
    for s in saved.iter_mut().filter(|s| s.pending_copy) {
        let parent = tree.children(s.pid).any(|c| c.zombie.is_none());
        if let Pages::Buffer(buf) = &mut s.pages {
            crate::mm::dump::copy_stored(s.pid, &s.mm.vmas, &s.pagemap, buf, parent)?;
        }
        s.pending_copy = false;
    }
    Ok(())
}

/// A touched buffer per live process of the tree whose pages will be copied in the freeze,
/// sized from its resident memory.
fn page_buffers(
    root: i32,
    precopied: Option<&super::precopy::TreePreCopy>,
    lazy: bool,
) -> std::collections::HashMap<i32, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    if lazy {
        return out;
    }
    let Ok(tree) = super::collect(root) else {
        return out;
    };
    for p in tree.procs.iter().filter(|p| p.zombie.is_none()) {
        if precopied.is_some_and(|pc| pc.sessions.contains_key(&p.pid)) {
            continue;
        }
        if let Ok(status) = proc::status::status(p.pid) {
            let estimate = (status.rss_anon_kib + status.rss_shmem_kib) as usize * 1024 * 11 / 10;
            out.insert(p.pid, vec![1u8; estimate]);
        }
    }
    out
}

/// Dumps the tree rooted at `opts.pid` into `opts.dir`.
///
/// `seed` is the pre-copy of the root made before it turned out to have children: the rounds
/// go on from it.
pub(crate) fn dump(
    opts: &DumpOptions,
    after: After,
    seed: Option<PreCopy>,
) -> Result<(DumpStats, Option<FrozenTree>), DumpError> {
    let root = opts.pid;
    if opts.prev_images_dir.is_some() || opts.track_mem {
        return Err(DumpError::Unsupported {
            pid: root,
            what: "it has child processes; --prev-images-dir and --track-mem are not supported for process trees yet".into(),
        });
    }
    let dir = prepare_dir(&opts.dir)?;
    let mut tracker = if opts.no_bpf {
        None
    } else {
        start_tracking(root)
    };
    let mut stats = DumpStats {
        task_tracking: if tracker.is_some() { "bpf" } else { "proc" }.into(),
        precopy_mode: "off".into(),
        ..Default::default()
    };
    let mut precopied = match opts.pre_copy {
        None => None,
        Some(_) if opts.no_wp_async => {
            stats.precopy_mode =
                "stop-the-world (userfaultfd write-protect disabled by --no-wp-async)".into();
            None
        }
        Some(rounds) => {
            let t = Instant::now();
            let hinting = tracker.as_mut().is_some_and(|t| t.watch_memory().is_ok());
            let hints = if hinting { tracker.as_mut() } else { None };
            match super::precopy::run(root, rounds, hints, seed) {
                Ok(pc) => {
                    let n = pc.sessions.len() as u32;
                    record_precopy(&mut stats, t, &pc.rounds, pc.dirty_rate, n);
                    Some(pc)
                }
                Err(e) => {
                    record_precopy_failure(&mut stats, &e);
                    None
                }
            }
        }
    };
    // Page buffers touched now, so the frozen window does not pay for their page faults (a
    // process that appears meanwhile grows its own in the window).
    let mut buffers = page_buffers(root, precopied.as_ref(), opts.lazy_pages);
    let t_freeze = Instant::now();
    let (frozen, tree) = freeze_all(root)?;
    let t_frozen = Instant::now();
    if let Some(p) = precopied.as_mut() {
        // VMA syscalls between the last round and the freeze.
        super::precopy::forget_moved_layouts(&mut tracker.as_mut(), &mut p.layouts, p.lost_before);
    }
    stats.freezing_time_us = micros(t_frozen - t_freeze);
    stats.frozen_steps.stop_us = stats.freezing_time_us;
    let live: Vec<i32> = frozen.iter().map(|f| f.main().pid()).collect();
    if let Some(t) = tracker.as_mut() {
        let tids: Vec<i32> = frozen.iter().flat_map(FrozenProcess::tids).collect();
        let all: Vec<i32> = tree.procs.iter().map(|p| p.pid).collect();
        confirm_task_set(root, t, &tids, &all)?;
    }
    let t = Instant::now();
    tracing::debug!(us = micros(t_frozen - t_freeze), "tree frozen");
    let pipes = crate::files::tree_pipes(&live)?;
    tracing::debug!(us = micros(t.elapsed()), "tree pipes read");
    let mut saved = Vec::with_capacity(frozen.len());
    let mut fin = Final::default();
    for f in &frozen {
        let (pc, layout) = match precopied.as_mut() {
            Some(p) => (
                p.sessions.get_mut(&f.main().pid()),
                p.layouts.get(&f.main().pid()).map(Vec::as_slice),
            ),
            None => (None, None),
        };
        let buf = buffers.remove(&f.main().pid()).unwrap_or_default();
        // Parents are saved before their children (tree order). Not with --lazy-pages: a
        // migration source serves each process's private anonymous pages itself.
        let ppid = tree
            .procs
            .iter()
            .find(|p| p.pid == f.main().pid())
            .map(|p| p.ppid);
        let parent = saved
            .iter()
            .find(|s: &&Saved| Some(s.pid) == ppid && !opts.lazy_pages)
            .map(|s| crate::mm::dump::CowParent {
                pid: s.pid,
                vmas: &s.mm.vmas,
                pagemap: &s.pagemap,
            });
        let s = save(f, opts, &pipes, (pc, layout), buf, &mut fin, parent)?;
        saved.push(s);
    }
    copy_pages(&mut saved, &tree)?;
    let refs: Vec<_> = saved
        .iter()
        .map(|s| (s.pid, &s.mm.vmas[..], &s.files))
        .collect();
    let objects = crate::files::objects::dump(&refs).map_err(crate::files::FilesError::from)?;
    let mut seen = crate::files::locks::SeenLocks::default();
    let mut locks = Vec::new();
    for s in &saved {
        let l = crate::files::locks::dump(s.pid, &s.files, &mut seen)
            .map_err(crate::files::FilesError::from)?;
        locks.push((s.pid, l));
    }
    stats.memdump_time_us = micros(t.elapsed());
    stats.frozen_steps.final_scan_us = fin.scan_us;
    if fin.scan_us > 0 {
        // A tree's processes are scanned one after the other, each over all its memory.
        stats.final_scan = "all memory: a process tree".into();
    }
    if fin.bulk {
        stats.precopy_mode = "uffd-wp-async (did not converge: final copy in bulk)".into();
    }
    stats.pages_scanned = saved.iter().map(|s| s.pagemap.total_pages()).sum();
    stats.residual_pages = fin.residual_pages;
    stats.pages_written = saved.iter().map(|s| s.pagemap.stored_pages()).sum();
    stats.pages_cow_shared = saved.iter().map(|s| s.pagemap.cow_pages()).sum();
    let frozen = FrozenTree::new(frozen);
    let still_frozen = if matches!(after, After::Thaw) {
        frozen.thaw()?;
        stats.frozen_time_us = micros(t_frozen.elapsed());
        None
    } else {
        Some(frozen)
    };
    // After the thaw: closing a userfaultfd walks its whole range (see `dump_with`).
    drop(precopied);
    let t_write = Instant::now();
    objects.write(&dir)?;
    for (pid, l) in locks.iter().filter(|(_, l)| !l.locks.is_empty()) {
        dir.write(Kind::Locks, *pid, l)?;
    }
    write(&dir, &mut saved, &tree, root, opts.shell_job)?;
    stats.memwrite_time_us = micros(t_write.elapsed());
    match (after, still_frozen) {
        (After::Kill, Some(frozen)) => {
            frozen.kill()?;
            stats.frozen_time_us = micros(t_frozen.elapsed());
            Ok((stats, None))
        }
        (_, held) => {
            if let Some(h) = &held {
                stats.frozen_time_us = micros(t_frozen.elapsed());
                h.put_back()?;
            }
            Ok((stats, held))
        }
    }
}

fn write(
    dir: &ImageDir,
    saved: &mut [Saved],
    tree: &crate::image::tree::TreeImage,
    root: i32,
    shell_job: bool,
) -> Result<(), DumpError> {
    for s in saved.iter_mut() {
        s.pages.write(dir, s.pid, &mut s.pagemap)?;
        dir.write(Kind::Pagemap, s.pid, &s.pagemap)?;
        dir.write(Kind::Mm, s.pid, &s.mm)?;
        dir.write(Kind::Core, s.pid, &s.core)?;
        if !s.threads.threads.is_empty() {
            dir.write(Kind::Threads, s.pid, &s.threads)?;
        }
        dir.write(Kind::SigState, s.pid, &s.sigstate)?;
        if let Some(signal) = s.stopped {
            dir.write(Kind::Stopped, s.pid, &StoppedImage { signal })?;
        }
        dir.write(Kind::Files, s.pid, &s.files)?;
    }
    dir.write(Kind::Tree, 0, tree)?;
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        root_pid: root,
        pids: saved.iter().map(|s| s.pid).collect(),
        shell_job,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        parent: None,
        pre_dump: false,
        tracking: None,
    };
    // The inventory goes last: an image dir without it is incomplete and restore refuses it.
    dir.write(Kind::Inventory, 0, &inventory)?;
    Ok(())
}
