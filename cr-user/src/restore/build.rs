//! Rebuilding one process by transplant (DESIGN §7): the process, a stopped fork of fastcr
//! traced by us, is emptied down to a trampoline and rebuilt by injected syscalls. It ends
//! complete but stopped: the caller sets its CPU state and detaches.

use std::os::fd::OwnedFd;

use super::{ProcImage, RestoreError};
use crate::core::threads::Created;
use crate::files::SharedPipes;
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

/// Rebuilds `p` into the stopped task `here`; `lazy` leaves its plan's pages missing.
pub(super) fn build<'a>(
    p: &'a ProcImage,
    here: i32,
    shared: &SharedPipes,
    objects: &crate::files::objects::Objects,
    sockets: &crate::files::TreeSockets,
    lazy: Option<&LazyPlan>,
) -> Result<Built<'a>, RestoreError> {
    let pid = p.pid;
    let err = |step| move |source| RestoreError::Child { pid, step, source };
    ptrace::set_sigmask(here, !0).map_err(err("block signals"))?;
    let child_maps = proc::maps::maps(here)?;
    let regs = ptrace::get_regs(here).map_err(err("read registers"))?;
    let ip = crate::inject::vdso_syscall_ip(here, &child_maps)?;
    let mut inj = Injector::new(Remote::new(here, regs, ip));

    crate::core::unregister_inherited_rseq(&inj)?;
    let trampoline = mmr::install_trampoline(&mut inj, &child_maps, &p.mm)?;
    let above = shared.raw_fds().into_iter().max().unwrap_or(0);
    let (parked, keep) = crate::files::park(&inj, &p.files, sockets, above)?;
    crate::files::close_inherited(&inj, &p.files, shared, keep)?;
    mmr::clear_address_space(&inj, &child_maps, trampoline)?;
    mmr::move_specials(&inj, &child_maps, &p.mm, trampoline)?;
    let has_pages = mmr::vmas_with_pages(&p.mm, &p.pagemap);
    mmr::map_vmas(&inj, &p.mm, &has_pages, objects)?;
    let pages = mmr::fill_pages(here, &p.chain, |vaddr| {
        lazy.is_some_and(|l| l.is_lazy(vaddr))
    })?;
    mmr::finish_vmas(&inj, &p.mm, &has_pages)?;
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
