//! Rebuilding one process by transplant (DESIGN §7): the process, a stopped fork of fastcr
//! traced by us, is emptied down to a trampoline and rebuilt by injected syscalls. It ends
//! complete but stopped: the caller sets its CPU state and detaches.

use std::os::fd::OwnedFd;

use super::{ProcImage, RestoreError};
use crate::core::threads::Created;
use crate::files::SharedPipes;
use crate::image::pagemap::PE_COW_PARENT;
use crate::inject::Injector;
use crate::lazy::register::LazyPlan;
use crate::mm::restore as mmr;
use crate::proc;
use crate::sys::ptrace;
use crate::sys::remote::Remote;

/// A rebuilt process, stopped.
pub(super) struct Built<'a> {
    /// Its pid here.
    pub here: i32,
    /// Its other threads, stopped.
    pub threads: Vec<Created<'a>>,
    /// The userfaultfd of its lazy memory and the fd number of the copy kept in the process.
    pub uffd: Option<(OwnedFd, i32)>,
    /// Pages written.
    pub pages: u64,
}

/// A process whose memory is rebuilt (mappings, contents, protections), injected through its
/// trampoline; the rest of it is not yet.
pub(crate) struct Memory {
    inj: Injector,
    trampoline: u64,
    /// Pages written.
    pages: u64,
}

impl Memory {
    /// The injector, running syscalls through the trampoline.
    pub(crate) fn injector(&mut self) -> &mut Injector {
        &mut self.inj
    }

    /// The trampoline's base address (page 0: `syscall; int3`; then scratch).
    pub(crate) fn trampoline(&self) -> u64 {
        self.trampoline
    }
}

/// Rebuilds the memory of `p` in the stopped task `here`; `lazy` leaves its plan's pages
/// missing. `parent` is the dumped layout of the parent process when `here` was forked by it
/// after its memory was rebuilt: the VMAs they share copy-on-write are then kept as
/// inherited, not unmapped and refilled.
pub(crate) fn build_memory(
    p: &ProcImage,
    here: i32,
    objects: &crate::files::objects::Objects,
    lazy: Option<&LazyPlan>,
    parent: Option<&crate::image::mm::MmImage>,
) -> Result<Memory, RestoreError> {
    let pid = p.pid;
    let err = |step| move |source| RestoreError::Child { pid, step, source };
    ptrace::set_sigmask(here, !0).map_err(err("block signals"))?;
    let child_maps = proc::maps::maps(here)?;
    let regs = ptrace::get_regs(here).map_err(err("read registers"))?;
    let ip = crate::inject::vdso_syscall_ip(here, &child_maps)?;
    let mut inj = Injector::new(Remote::new(here, regs, ip));

    crate::core::unregister_inherited_rseq(&inj)?;
    let trampoline = mmr::install_trampoline(&mut inj, &child_maps, &p.mm)?;
    let inherited = match (parent, lazy) {
        (Some(parent), None) => mmr::inherited_vmas(&p.mm, &p.pagemap, parent),
        _ => Vec::new(),
    };
    let keep: Vec<(u64, u64)> =
        p.mm.vmas
            .iter()
            .zip(&inherited)
            .filter(|(_, k)| **k)
            .map(|(v, _)| (v.start, v.end))
            .collect();
    mmr::clear_address_space(&inj, &child_maps, trampoline, &keep)?;
    mmr::move_specials(&inj, &child_maps, &p.mm, trampoline)?;
    let has_pages = mmr::vmas_with_pages(&p.mm, &p.pagemap);
    mmr::map_vmas(&inj, &p.mm, &has_pages, &inherited, objects)?;
    mmr::drop_unshared(&inj, &p.mm, &p.pagemap, &inherited)?;
    let shared_here = |vaddr: u64| {
        !keep.is_empty()
            && p.mm
                .vmas
                .iter()
                .zip(&inherited)
                .any(|(v, k)| *k && v.start <= vaddr && vaddr < v.end)
    };
    let pages = mmr::fill_pages(here, &p.chain, |e| {
        lazy.is_some_and(|l| l.is_lazy(e.vaddr))
            || (e.flags == PE_COW_PARENT && shared_here(e.vaddr))
    })?;
    mmr::finish_prot(&inj, &p.mm, &has_pages)?;
    Ok(Memory {
        inj,
        trampoline,
        pages,
    })
}

/// Rebuilds `p` into the stopped task `here`; `lazy` leaves its plan's pages missing. `memory`
/// is its memory if already rebuilt (before it forked its children), `parent` as for
/// [`build_memory`].
#[allow(clippy::too_many_arguments)]
pub(super) fn build<'a>(
    p: &'a ProcImage,
    here: i32,
    shared: &SharedPipes,
    objects: &crate::files::objects::Objects,
    sockets: &crate::files::TreeSockets,
    lazy: Option<&LazyPlan>,
    memory: Option<Memory>,
    parent: Option<&crate::image::mm::MmImage>,
) -> Result<Built<'a>, RestoreError> {
    let pid = p.pid;
    let err = |step| move |source| RestoreError::Child { pid, step, source };
    let Memory {
        inj,
        trampoline,
        pages,
    } = match memory {
        Some(m) => m,
        None => build_memory(p, here, objects, lazy, parent)?,
    };
    let above = shared.raw_fds().into_iter().max().unwrap_or(0);
    let (parked, keep) = crate::files::park(&inj, &p.files, sockets, above)?;
    crate::files::close_inherited(&inj, &p.files, shared, keep)?;
    mmr::advise(&inj, &p.mm)?;
    mmr::set_mm_fields(&inj, &p.mm)?;
    let uffd = match lazy {
        Some(_) => {
            // Above every fd number the image uses, so placing them never closes it.
            let top = p.files.fds.iter().map(|f| f.fd).max().unwrap_or(0);
            Some(crate::lazy::register::setup(
                &inj,
                here,
                (top + 1).max(1000) as u64,
            )?)
        }
        None => None,
    };
    crate::files::restore(&inj, &p.files, shared, objects, &parked)?;
    crate::files::locks::restore(&inj, pid, &p.files, &p.locks)
        .map_err(crate::files::FilesError::from)?;
    crate::core::restore_name(&inj, &p.core.comm)?;
    crate::core::restore_signals(&inj, &p.core)?;
    let main = p.core.main_thread();
    crate::core::restore_task_links(&inj, &main)?;
    let sig = p.sigstate.as_ref();
    let tids: Vec<i32> = std::iter::once(pid)
        .chain(p.threads.threads.iter().map(|t| t.tid))
        .collect();
    if let Some(s) = sig {
        if s.has_seccomp() {
            // Inherited by the threads created below.
            ptrace::set_options(
                here,
                ptrace::OPT_TRACESYSGOOD
                    | ptrace::OPT_EXITKILL
                    | ptrace::OPT_TRACECLONE
                    | ptrace::OPT_TRACEFORK
                    | ptrace::OPT_SUSPEND_SECCOMP,
            )
            .map_err(err(
                "suspend seccomp (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN)",
            ))?;
        }
        crate::core::sigstate::restore_early(&inj, &tids, s)?;
    }
    let threads = crate::core::threads::create(&inj, pid, &p.threads, &p.core.creds, sig)?;
    crate::core::restore_creds(&inj, &p.core.creds, sig.map(|s| &s.caps))?;
    crate::core::restore_timers(&inj, &p.core)?;
    if let Some(s) = sig {
        // Signals are queued while everything is still blocked; the dumped mask comes with
        // the registers at the end.
        crate::core::sigstate::restore_late(&inj, pid, &tids, s)?;
    }
    if let (Some((uffd, _)), Some(plan)) = (&uffd, lazy) {
        crate::lazy::register::register(uffd, here, plan)?;
    }
    mmr::remove_trampoline(&inj, trampoline)?;
    for t in &threads {
        crate::core::restore_cpu(t.tid_here, t.core)?;
    }
    crate::core::restore_cpu(here, &main)?;
    Ok(Built {
        here,
        threads,
        uffd,
        pages,
    })
}
