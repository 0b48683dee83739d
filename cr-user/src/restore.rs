//! The restore orchestrator: read and check the whole image, fork a child with the dumped pid,
//! rebuild it by injected syscalls (DESIGN §7, "restore by transplant"), and let it run.
//!
//! Every check that can fail is done before the fork. After the fork, the child is guarded: if
//! any step fails it is killed and reaped, so a failed restore leaves no process behind. While it
//! is being built, `PTRACE_O_EXITKILL` also kills it should fastcr itself die.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::core::CoreError;
use crate::files::FilesError;
use crate::image::core::{CoreImage, ThreadsImage};
use crate::image::files::FilesImage;
use crate::image::inventory::Inventory;
use crate::image::mm::{MmImage, VmaKind};
use crate::image::pagemap::PagemapImage;
use crate::image::{ImageDir, ImageError, Kind, pages_file_name};
use crate::inject::{InjectError, Injector};
use crate::mm::MmError;
use crate::mm::pages::{PageChain, load_parents};
use crate::mm::restore as mmr;
use crate::proc::{self, ProcError};
use crate::stats::{RestoreStats, micros};
use crate::sys::ptrace::{self, Stop};
use crate::sys::remote::Remote;
use crate::sys::{PAGE_SIZE, SyscallError, process};

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Image directory.
    pub dir: PathBuf,
    /// Hand the image's terminal/pipe standard streams our own.
    pub shell_job: bool,
    /// Resume before the private anonymous memory is in place; the caller then serves it
    /// with [`crate::lazy::serve`].
    pub lazy: bool,
    /// Restore into a new pid namespace (same pids inside it), so the original may still run.
    pub pidns_new: bool,
}

/// A restored process, running.
pub struct Restored {
    /// What was measured.
    pub stats: RestoreStats,
    /// Its pid here (in fastcr's pid namespace); the image's pid inside its own namespace.
    pub pid_here: i32,
    /// The lazy phase still to serve (`lazy`): the first address space for the placer.
    pub lazy: Option<crate::lazy::Space>,
    /// The namespace it lives in (`pidns_new`); release it once the restore is complete.
    pub pidns: Option<crate::pidns::PidNs>,
}

/// Why a restore failed. No restored process is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image is unreadable or inconsistent.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The pid the image needs is taken.
    #[error("pid {pid} is in use; cannot restore the process with its pid")]
    PidInUse {
        /// The pid.
        pid: i32,
    },
    /// A pre-dump image holds pages only.
    #[error(
        "{path} is a pre-dump image, which holds pages only; dump with --prev-images-dir {path} and restore that"
    )]
    PreDumpOnly {
        /// The image dir.
        path: PathBuf,
    },
    /// The image holds more than this version restores.
    #[error("image holds {count} processes; only single-process images are supported yet")]
    Unsupported {
        /// Processes in the image.
        count: usize,
    },
    /// Creating or controlling the child failed.
    #[error("{step} failed for restored process {pid}")]
    Child {
        /// The pid.
        pid: i32,
        /// The step.
        step: &'static str,
        /// The call.
        #[source]
        source: SyscallError,
    },
    /// The child stopped or died unexpectedly while being built.
    #[error("restored process {pid} ended or stopped unexpectedly ({stop:?}) while being built")]
    ChildLost {
        /// The pid.
        pid: i32,
        /// What waitpid said.
        stop: Stop,
    },
    /// Memory could not be rebuilt.
    #[error(transparent)]
    Mm(#[from] MmError),
    /// Files could not be reopened.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// CPU or signal state could not be set.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// `/proc` could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The lazy phase could not be set up.
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    /// The restore was called off before the process resumed.
    #[error("restore of process {pid} called off before it resumed: {why}")]
    Aborted {
        /// The pid.
        pid: i32,
        /// Why.
        why: String,
    },
    /// The new pid namespace could not be made.
    #[error("cannot create a new pid namespace")]
    PidNs(#[source] SyscallError),
}

/// Everything read from an image dir, checked for consistency.
pub struct LoadedImage {
    /// The inventory.
    pub inventory: Inventory,
    /// Root task state.
    pub core: CoreImage,
    /// The root's other threads.
    pub threads: ThreadsImage,
    /// Root address space.
    pub mm: MmImage,
    /// Root files.
    pub files: FilesImage,
    /// Page index.
    pub pagemap: PagemapImage,
    /// Path of the pages file.
    pub pages_path: PathBuf,
    /// The pages, through the parent chain.
    pub chain: PageChain,
}

fn inconsistent(dir: &ImageDir, name: &str, detail: String) -> ImageError {
    ImageError::Inconsistent {
        path: dir.file(name),
        detail,
    }
}

/// Reads every file of the image and checks them against each other.
pub fn load(path: &Path) -> Result<LoadedImage, RestoreError> {
    let dir = ImageDir::open(path)?;
    let inventory: Inventory = dir.read(Kind::Inventory, 0)?;
    if inventory.pre_dump {
        return Err(RestoreError::PreDumpOnly {
            path: path.to_path_buf(),
        });
    }
    if inventory.pids.len() != 1 || inventory.pids[0] != inventory.root_pid {
        return Err(RestoreError::Unsupported {
            count: inventory.pids.len(),
        });
    }
    let pid = inventory.root_pid;
    if pid <= 0 {
        return Err(inconsistent(&dir, "inventory.img", format!("invalid root pid {pid}")).into());
    }
    let core: CoreImage = dir.read(Kind::Core, pid)?;
    let threads: ThreadsImage = if dir.file(&Kind::Threads.file_name(pid)).exists() {
        dir.read(Kind::Threads, pid)?
    } else {
        ThreadsImage::default()
    };
    if let Some(t) = threads.threads.iter().find(|t| t.tid <= 0 || t.tid == pid) {
        return Err(inconsistent(
            &dir,
            &Kind::Threads.file_name(pid),
            format!("invalid thread id {}", t.tid),
        )
        .into());
    }
    let mm: MmImage = dir.read(Kind::Mm, pid)?;
    let files: FilesImage = dir.read(Kind::Files, pid)?;
    let pagemap: PagemapImage = dir.read(Kind::Pagemap, pid)?;
    if core.tid != pid {
        return Err(inconsistent(
            &dir,
            &Kind::Core.file_name(pid),
            format!("task {} is not {pid}", core.tid),
        )
        .into());
    }
    let mut last = 0;
    for v in &mm.vmas {
        if v.start >= v.end || v.start < last || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0
        {
            return Err(inconsistent(
                &dir,
                &Kind::Mm.file_name(pid),
                format!("bad VMA {:#x}-{:#x}", v.start, v.end),
            )
            .into());
        }
        last = v.end;
    }
    let ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    pagemap
        .validate(&ranges)
        .map_err(|d| inconsistent(&dir, &Kind::Pagemap.file_name(pid), d))?;
    let pages_path = dir.file(&pages_file_name(pid));
    let parents = load_parents(&dir, &inventory)?;
    let chain = PageChain::open(&dir, pid, pagemap.clone(), parents)?;
    Ok(LoadedImage {
        inventory,
        core,
        threads,
        mm,
        files,
        pagemap,
        pages_path,
        chain,
    })
}

/// Checks before forking that the files the image maps are still there, unchanged in size.
fn check_mapped_files(mm: &MmImage) -> Result<(), MmError> {
    let exe_ok = std::fs::metadata(&mm.exe).is_ok_and(|m| m.is_file());
    if !exe_ok {
        return Err(MmError::FileChanged {
            path: mm.exe.clone(),
            source: None,
        });
    }
    for v in &mm.vmas {
        if let VmaKind::File { path, size, .. } = &v.kind {
            match std::fs::metadata(path) {
                Ok(m) if m.len() == *size => {}
                Ok(_) => {
                    return Err(MmError::FileChanged {
                        path: path.clone(),
                        source: None,
                    });
                }
                Err(e) => {
                    return Err(MmError::FileChanged {
                        path: path.clone(),
                        source: Some(e),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A child being built: killed and reaped on drop unless released.
struct Building {
    pid: i32,
    armed: bool,
}

impl Drop for Building {
    fn drop(&mut self) {
        if self.armed {
            let _ = process::kill(self.pid, libc::SIGKILL);
            // Threads created so far are traced by us: reap them first, or the main thread's
            // exit is never reported.
            for tid in proc::threads(self.pid).unwrap_or_default() {
                if tid != self.pid {
                    let _ = process::wait_exit(tid);
                }
            }
            let _ = process::wait_exit(self.pid);
        }
    }
}

/// Restores the image in `opts.dir` and leaves the process running (lazy phase not served).
pub fn restore(opts: &RestoreOptions) -> Result<(Restored, LoadedImage), RestoreError> {
    let t0 = Instant::now();
    let img = load(&opts.dir)?;
    let restored = restore_loaded(&img, opts, t0, &mut || Ok(()))?;
    Ok((restored, img))
}

/// Restores an already loaded image; `t0` is when the restore began (for the stats). `gate`
/// runs when the process is complete but still stopped, just before it resumes: an error from
/// it kills the process instead (a migration destination waits there for the source's `Go`).
pub fn restore_loaded(
    img: &LoadedImage,
    opts: &RestoreOptions,
    t0: Instant,
    gate: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Restored, RestoreError> {
    let pid = img.inventory.root_pid;
    crate::files::validate(&img.files, opts.shell_job)?;
    check_mapped_files(&img.mm)?;
    let lazy_plan = crate::lazy::register::plan(&img.mm, &img.pagemap, opts.lazy).map_err(|d| {
        ImageError::Inconsistent {
            path: img.pages_path.clone(),
            detail: d,
        }
    })?;
    if !opts.lazy && !lazy_plan.pending.is_empty() {
        return Err(ImageError::Inconsistent {
            path: img.pages_path.clone(),
            detail:
                "the image leaves pages with a migration source; only `fastcr receive` restores it"
                    .into(),
        }
        .into());
    }
    let mut pidns = if opts.pidns_new {
        Some(crate::pidns::PidNs::create().map_err(RestoreError::PidNs)?)
    } else {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(RestoreError::PidInUse { pid });
        }
        None
    };
    let t_fork = Instant::now();
    let spawned = match &pidns {
        Some(ns) => {
            let child = process::spawn_traced_in_pidns(pid);
            ns.leave().map_err(RestoreError::PidNs)?;
            child
        }
        None => process::spawn_traced_with_pid(pid),
    };
    let child = spawned.map_err(|source| match source.errno() {
        Some(libc::EEXIST) => RestoreError::PidInUse { pid },
        _ => RestoreError::Child {
            pid,
            step: "clone3 with set_tid",
            source,
        },
    })?;
    let mut guard = Building {
        pid: child,
        armed: true,
    };
    match ptrace::wait_stop(child).map_err(|source| RestoreError::Child {
        pid,
        step: "wait for the new process",
        source,
    })? {
        Stop::Signal(libc::SIGSTOP) => {}
        stop => return Err(RestoreError::ChildLost { pid, stop }),
    }
    let err = |step| move |source| RestoreError::Child { pid, step, source };
    ptrace::set_options(
        child,
        ptrace::OPT_TRACESYSGOOD | ptrace::OPT_EXITKILL | ptrace::OPT_TRACECLONE,
    )
    .map_err(err("ptrace options"))?;
    let forking_time_us = micros(t_fork.elapsed());
    ptrace::set_sigmask(child, !0).map_err(err("block signals"))?;

    let child_maps = proc::maps::maps(child)?;
    let regs = ptrace::get_regs(child).map_err(err("read registers"))?;
    let ip = crate::inject::vdso_syscall_ip(child, &child_maps)?;
    let mut inj = Injector::new(Remote::new(child, regs, ip));

    crate::core::unregister_inherited_rseq(&inj)?;
    let trampoline = mmr::install_trampoline(&mut inj, &child_maps, &img.mm)?;
    crate::files::close_inherited(&inj, &img.files)?;
    mmr::clear_address_space(&inj, &child_maps, trampoline)?;
    mmr::move_specials(&inj, &child_maps, &img.mm, trampoline)?;
    let has_pages = mmr::vmas_with_pages(&img.mm, &img.pagemap);
    mmr::map_vmas(&inj, &img.mm, &has_pages)?;
    let pages_restored = mmr::fill_pages(child, &img.chain, |vaddr| lazy_plan.is_lazy(vaddr))?;
    mmr::finish_vmas(&inj, &img.mm, &has_pages)?;
    mmr::set_mm_fields(&inj, &img.mm)?;
    let uffd = if opts.lazy {
        Some(crate::lazy::register::setup(&inj, child)?)
    } else {
        None
    };
    crate::files::restore(&inj, &img.files)?;
    crate::core::restore_identity(&inj, &img.core)?;
    crate::core::restore_signals(&inj, &img.core)?;
    let main_thread = img.core.main_thread();
    crate::core::restore_task_links(&inj, &main_thread)?;
    let threads = crate::core::threads::create(&inj, &img.threads, &img.core.creds)?;
    crate::core::restore_creds(&inj, &img.core.creds)?;
    crate::core::restore_timers(&inj, &img.core)?;
    if let Some(uffd) = &uffd {
        crate::lazy::register::register(uffd, child, &lazy_plan)?;
    }
    mmr::remove_trampoline(&inj, trampoline)?;
    for t in &threads {
        crate::core::restore_cpu(t.tid_here, t.core)?;
    }
    crate::core::restore_cpu(child, &main_thread)?;
    let restore_time_us = micros(t0.elapsed());
    gate().map_err(|why| RestoreError::Aborted { pid, why })?;
    for t in &threads {
        ptrace::detach(t.tid_here, 0).map_err(err("detach of a thread"))?;
    }
    ptrace::detach(child, 0).map_err(err("detach"))?;
    guard.armed = false;
    let lazy = uffd.map(|u| crate::lazy::Space::new(u, lazy_plan.pending));
    if lazy.is_none()
        && let Some(ns) = pidns.as_mut()
    {
        ns.release();
    }
    Ok(Restored {
        stats: RestoreStats {
            forking_time_us,
            restore_time_us,
            pages_restored,
            pid,
        },
        pid_here: child,
        lazy,
        pidns,
    })
}

/// Serves the lazy phase of `r` (if any) from `feed`, then lets the process run on without
/// fastcr. On failure the restored tree is killed: it never runs on with memory missing.
pub fn finish_lazy(
    r: &mut Restored,
    feed: &mut dyn crate::lazy::Feed,
) -> Result<Option<crate::stats::LazyStats>, RestoreError> {
    let Some(space) = r.lazy.take() else {
        return Ok(None);
    };
    let placer = crate::lazy::Placer::new(r.stats.pid, space);
    let served = crate::lazy::serve(placer, feed).and_then(|stats| {
        crate::lazy::register::release(r.pid_here)?;
        Ok(stats)
    });
    match served {
        Ok(stats) => {
            if let Some(ns) = r.pidns.as_mut() {
                ns.release();
            }
            Ok(Some(stats))
        }
        Err(e) => {
            abort(r);
            Err(e.into())
        }
    }
}

/// Kills a restored tree that cannot be completed, and its namespace.
pub fn abort(r: &mut Restored) {
    let _ = process::kill(r.pid_here, libc::SIGKILL);
    let _ = process::wait_exit(r.pid_here);
    // Dropping an unreleased namespace kills whatever else is in it.
    r.pidns = None;
}
