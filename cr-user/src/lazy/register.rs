//! The restore side of lazy memory: which pages are left missing, and their registration on a
//! userfaultfd created inside the restored process.

use std::os::fd::{AsFd, OwnedFd};

use super::{LazyError, PageSet};
use crate::freeze::Frozen;
use crate::image::mm::{MmImage, VmaKind};
use crate::image::pagemap::{PE_LAZY, PagemapImage};
use crate::inject::{Injector, vdso_syscall_ip};
use crate::proc;
use crate::sys::remote::Remote;
use crate::sys::uffd_lazy::{LAZY_FEATURES, REGISTER_MODE_MISSING};
use crate::sys::{PAGE_SIZE, process, uffd};

/// What lazy restore leaves missing: the pages of private anonymous VMAs (plus every page a
/// migration source kept, `PE_LAZY`), and the VMAs to register for them.
#[derive(Debug, Default)]
pub struct LazyPlan {
    /// Pages to leave missing.
    pub pending: PageSet,
    /// Whole VMAs to register MISSING.
    pub vmas: Vec<(u64, u64)>,
}

impl LazyPlan {
    /// Whether pagemap run `e` is left for the lazy phase.
    pub fn is_lazy(&self, vaddr: u64) -> bool {
        self.pending.contains(vaddr)
    }
}

/// Plans which pages stay missing. With `all_anon` false only `PE_LAZY` runs are lazy (what a
/// migration source did not send); with it, every run in a private anonymous VMA is.
pub fn plan(mm: &MmImage, pagemap: &PagemapImage, all_anon: bool) -> Result<LazyPlan, String> {
    let mut out = LazyPlan::default();
    for v in &mm.vmas {
        let anon = matches!(v.kind, VmaKind::Anon) && !v.shared;
        let i = pagemap.entries.partition_point(|e| e.vaddr < v.start);
        let mut any = false;
        for e in pagemap.entries[i..].iter().take_while(|e| e.vaddr < v.end) {
            let lazy = e.flags == PE_LAZY || (all_anon && anon);
            if !lazy {
                continue;
            }
            if !anon {
                return Err(format!(
                    "lazy page run {:#x} is not in a private anonymous VMA",
                    e.vaddr
                ));
            }
            out.pending
                .insert(e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE);
            any = true;
        }
        if any {
            out.vmas.push((v.start, v.end));
        }
    }
    Ok(out)
}

/// Creates a userfaultfd inside the process being restored (it must still be root's, before
/// its credentials are restored, so that faults taken in the kernel are delivered too), takes
/// it with the fork/remap/remove/unmap events, and makes the process die with its parent
/// (this fastcr thread, the fault handler): a process whose handler is gone would otherwise
/// wait forever, or see zeros where its memory was. Nothing is registered yet: see
/// [`register`].
pub fn setup(inj: &Injector, pid: i32, die_with_parent: bool) -> Result<OwnedFd, LazyError> {
    let err = |step| move |source| LazyError::Uffd { pid, step, source };
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = inj
        .call(
            || "userfaultfd".into(),
            "userfaultfd",
            libc::SYS_userfaultfd,
            [flags, 0, 0, 0, 0, 0],
        )
        .map_err(|e| LazyError::Feed(e.to_string()))?;
    let taken = process::pidfd_open(pid)
        .and_then(|pidfd| process::pidfd_getfd(pidfd.as_fd(), fd as i32))
        .map_err(err("pidfd_getfd of the userfaultfd"));
    inj.call(
        || "close of the userfaultfd".into(),
        "close",
        libc::SYS_close,
        [fd, 0, 0, 0, 0, 0],
    )
    .map_err(|e| LazyError::Feed(e.to_string()))?;
    let uffd = taken?;
    let (features, _) = uffd::api(uffd.as_fd(), LAZY_FEATURES).map_err(err("UFFDIO_API"))?;
    if features & LAZY_FEATURES != LAZY_FEATURES {
        return Err(err("UFFDIO_API (fork/remap/remove/unmap events)")(
            crate::sys::SyscallError::from_errno("ioctl(UFFDIO_API)", libc::ENOTSUP),
        ));
    }
    // Only a process whose parent is fastcr: a child's parent is the restored process, whose
    // normal exit must not kill it (in a new pid namespace, init ends everything if fastcr dies).
    if die_with_parent {
        set_pdeathsig(inj, libc::SIGKILL as u64).map_err(|e| LazyError::Feed(e.to_string()))?;
    }
    Ok(uffd)
}

/// Registers the plan's VMAs MISSING. Done after the last injected syscall that may touch the
/// process's memory (rseq registration reads its TLS): from here on such an access would wait
/// for this thread, which is busy injecting.
pub fn register(uffd: &OwnedFd, pid: i32, plan: &LazyPlan) -> Result<(), LazyError> {
    for &(start, end) in &plan.vmas {
        uffd::register(uffd.as_fd(), start, end - start, REGISTER_MODE_MISSING).map_err(
            |source| LazyError::Uffd {
                pid,
                step: "UFFDIO_REGISTER (missing)",
                source,
            },
        )?;
    }
    Ok(())
}

fn set_pdeathsig(inj: &Injector, sig: u64) -> Result<u64, crate::inject::InjectError> {
    inj.call(
        || "prctl(PR_SET_PDEATHSIG)".into(),
        "prctl",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, sig, 0, 0, 0, 0],
    )
}

/// After the lazy phase: the restored process no longer depends on fastcr, so it stops dying
/// with it (a short stop to clear its parent-death signal).
pub fn release(pid: i32) -> Result<(), LazyError> {
    let fail =
        |e: &dyn std::fmt::Display| LazyError::Feed(format!("release of process {pid}: {e}"));
    let frozen = Frozen::freeze(pid).map_err(|e| fail(&e))?;
    frozen.block_signals().map_err(|e| fail(&e))?;
    let maps = proc::maps::maps(pid).map_err(|e| fail(&e))?;
    let ip = vdso_syscall_ip(pid, &maps).map_err(|e| fail(&e))?;
    let inj = Injector::new(Remote::new(pid, *frozen.regs(), ip));
    set_pdeathsig(&inj, 0).map_err(|e| fail(&e))?;
    frozen.thaw().map_err(|e| fail(&e))
}
