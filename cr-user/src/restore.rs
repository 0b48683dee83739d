//! The restore orchestrator: read and check the whole image, fork a child with the dumped pid,
//! rebuild it by injected syscalls (DESIGN §7, "restore by transplant"), and let it run.
//!
//! Every check that can fail is done before the fork. After the fork, the child is guarded: if
//! any step fails it is killed and reaped, so a failed restore leaves no process behind. While it
//! is being built, `PTRACE_O_EXITKILL` also kills it should fastcr itself die.

use std::path::{Path, PathBuf};
use std::time::Instant;

mod build;
mod load;

use crate::core::CoreError;
use crate::files::FilesError;
use crate::image::ImageError;
use crate::inject::InjectError;
use crate::mm::MmError;
use crate::proc::{self, ProcError};
use crate::stats::{RestoreStats, micros};
use crate::sys::ptrace::{self, Stop};
use crate::sys::{SyscallError, process};
pub(crate) use build::{Memory, build_memory};
pub use load::{LoadedImage, ProcImage, load};

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
    /// The lazy phase still to serve (`lazy`): one address space per process, the root's first.
    pub lazy: Vec<crate::lazy::Space>,
    /// For each lazily restored process: its pid here and the fd of the userfaultfd copy it
    /// keeps until the lazy phase is over.
    pub lazy_release: Vec<(i32, i32)>,
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
    /// The image holds more than this version restores lazily.
    #[error("image holds {count} processes; lazy restore of process trees is not supported yet")]
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

/// The processes being built: killed and reaped on drop unless released.
pub(crate) struct Building {
    pub(crate) pids: Vec<i32>,
    armed: bool,
}

impl Drop for Building {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in &self.pids {
            let _ = process::kill(pid, libc::SIGKILL);
        }
        for &pid in self.pids.iter().rev() {
            // Threads created so far are traced by us: reap them first, or the main thread's
            // exit is never reported.
            for tid in proc::threads(pid).unwrap_or_default() {
                if tid != pid {
                    let _ = process::wait_exit(tid);
                }
            }
            let _ = process::wait_exit(pid);
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
/// runs when the tree is complete but still stopped, just before it resumes: an error from
/// it kills the tree instead (a migration destination waits there for the source's `Go`).
pub fn restore_loaded(
    img: &LoadedImage,
    opts: &RestoreOptions,
    t0: Instant,
    gate: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Restored, RestoreError> {
    let root = img.root();
    let pid = root.pid;
    for p in &img.procs {
        crate::files::validate(&p.files, opts.shell_job)?;
        load::check_mapped_files(&p.mm)?;
    }
    // Before any fork: a missing or damaged object fails the restore with nothing started.
    let objects = crate::files::objects::Objects::create(&img.objects, &img.dir)
        .map_err(crate::files::FilesError::from)?;

    let mut plans = Vec::with_capacity(img.procs.len());
    for p in &img.procs {
        let inconsistent = |detail: String| ImageError::Inconsistent {
            path: p.pages_path.clone(),
            detail,
        };
        let keep = crate::lazy::register::kernel_written(&p.core, &p.threads);
        let plan = crate::lazy::register::plan(&p.mm, &p.pagemap, opts.lazy, &keep)
            .map_err(inconsistent)?;
        if !opts.lazy && !plan.pending.is_empty() {
            return Err(inconsistent(
                "the image leaves pages with a migration source; only `fastcr receive` restores it"
                    .into(),
            )
            .into());
        }
        plans.push(plan);
    }
    let mut pidns = if opts.pidns_new {
        Some(crate::pidns::PidNs::create().map_err(RestoreError::PidNs)?)
    } else {
        if let Some(p) = img
            .tree
            .procs
            .iter()
            .find(|p| Path::new(&format!("/proc/{}", p.pid)).exists())
        {
            return Err(RestoreError::PidInUse { pid: p.pid });
        }
        None
    };
    // Before the root is forked (and after the namespace's init was): the root inherits the
    // shared pipes and the sockets, and every process of the tree from it (see files::park).
    // A taken address fails here, before any process exists.
    let files: Vec<&crate::image::files::FilesImage> = img.procs.iter().map(|p| &p.files).collect();
    let shared = crate::files::SharedPipes::create(&files, &objects)?;
    let sockets = crate::files::TreeSockets::create(&files)?;
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
        pids: vec![child],
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
        ptrace::OPT_TRACESYSGOOD
            | ptrace::OPT_EXITKILL
            | ptrace::OPT_TRACECLONE
            | ptrace::OPT_TRACEFORK,
    )
    .map_err(err("ptrace options"))?;
    // Blocked from here on (and inherited by every forked process) so that no signal, such as
    // a zombie's SIGCHLD, interrupts an injected syscall.
    ptrace::set_sigmask(child, !0).map_err(err("block signals"))?;
    // Not lazy: each parent's memory is rebuilt before it forks its children, which so
    // share its pages again (a lazy restore fills each process's pages on its own).
    let early = (!opts.lazy).then_some(crate::tree::restore::Early {
        procs: &img.procs,
        objects: &objects,
    });
    let mut created = crate::tree::restore::create(child, &img.tree, &mut guard, early)?;
    let rebuilt_early: Vec<i32> = created.memory.keys().copied().collect();
    let forking_time_us = micros(t_fork.elapsed());
    let mut built = Vec::with_capacity(img.procs.len());
    for p in &img.procs {
        let h = created
            .here
            .get(&p.pid)
            .copied()
            .ok_or(RestoreError::Child {
                pid: p.pid,
                step: "create the process",
                source: SyscallError::from_errno("clone3", libc::ESRCH),
            })?;
        let lazy = opts.lazy.then_some(&plans[built.len()]);
        // Its parent's layout, if the parent was rebuilt before forking it.
        let parent = img
            .tree
            .procs
            .iter()
            .find(|t| t.pid == p.pid)
            .filter(|t| rebuilt_early.contains(&t.ppid))
            .and_then(|t| img.procs.iter().find(|q| q.pid == t.ppid))
            .map(|q| &q.mm);
        let memory = created.memory.remove(&p.pid);
        built.push(build::build(
            p, h, &shared, &objects, &sockets, lazy, memory, parent,
        )?);
    }
    objects.seal().map_err(crate::files::FilesError::from)?;
    let restore_time_us = micros(t0.elapsed());
    gate().map_err(|why| RestoreError::Aborted { pid, why })?;
    // A process that was stopped by job control gets a SIGSTOP queued while it is still held:
    // it takes it on its way out of the detach, before any of its own instructions, and stops
    // as it was (its parent is told, as for any stop). SIGSTOP whatever the original stop
    // signal: the kernel discards SIGTSTP, SIGTTIN and SIGTTOU in an orphaned process group,
    // which a restored group can be, and SIGSTOP cannot be caught or blocked.
    for (b, p) in built.iter().zip(&img.procs) {
        if p.stopped.is_some() {
            process::kill(b.here, libc::SIGSTOP).map_err(|source| RestoreError::Child {
                pid: p.pid,
                step: "queue its stop signal",
                source,
            })?;
        }
    }
    for b in &built {
        for t in &b.threads {
            ptrace::detach(t.tid_here, 0).map_err(err("detach of a thread"))?;
        }
        ptrace::detach(b.here, 0).map_err(err("detach"))?;
    }
    guard.armed = false;
    drop(shared);
    drop(objects);
    drop(sockets);
    let pages_restored = built.iter().map(|b| b.pages).sum();
    let mut lazy = Vec::new();
    let mut lazy_release = Vec::new();
    for (b, (p, plan)) in built.iter_mut().zip(img.procs.iter().zip(plans)) {
        if let Some((uffd, kept)) = b.uffd.take() {
            lazy.push(crate::lazy::Space::new(
                p.pid,
                uffd,
                plan.pending,
                plan.vmas,
            ));
            lazy_release.push((b.here, kept));
        }
    }
    if lazy.is_empty()
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
        lazy_release,
        pidns,
    })
}

/// Serves the lazy phase of `r` (if any) from `feed`, then lets the process run on without
/// fastcr. On failure the restored tree is killed: it never runs on with memory missing.
pub fn finish_lazy(
    r: &mut Restored,
    feed: &mut dyn crate::lazy::Feed,
) -> Result<Option<crate::stats::LazyStats>, RestoreError> {
    if r.lazy.is_empty() {
        return Ok(None);
    }
    let placer = crate::lazy::Placer::new(std::mem::take(&mut r.lazy));
    let served = crate::lazy::serve(placer, feed).and_then(|(stats, stragglers)| {
        for &(here, kept) in &r.lazy_release {
            crate::lazy::register::release(here, kept)?;
        }
        // Released: no process holds a userfaultfd copy any more.
        drop(stragglers);
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
