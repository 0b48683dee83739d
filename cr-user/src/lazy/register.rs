//! The restore side of lazy memory: which pages are left missing, and their registration on a
//! userfaultfd created inside the restored process.

use std::os::fd::{AsFd, OwnedFd};

use super::{LazyError, PageSet};
use crate::freeze::Frozen;
use crate::image::core::{CoreImage, ThreadsImage};
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

/// The pages the kernel writes into on its own while a process is being restored (the rseq area
/// of every thread, updated on each return to user space once registered): they must be in place
/// before that, so they are never left lazy (a page the kernel populated would never fault, and
/// its content would never arrive).
pub fn kernel_written(core: &CoreImage, threads: &ThreadsImage) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::iter::once(core.rseq)
        .chain(threads.threads.iter().map(|t| t.rseq))
        .flatten()
        .map(|r| {
            let start = r.addr & !(PAGE_SIZE - 1);
            let end = (r.addr + u64::from(r.len.max(32)) + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
            (start, end)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Plans which pages stay missing. With `all_anon` false only `PE_LAZY` runs are lazy (what a
/// migration source did not send); with it, every run in a private anonymous VMA is, except runs
/// that touch `keep` ([`kernel_written`]), which are filled at once.
pub fn plan(
    mm: &MmImage,
    pagemap: &PagemapImage,
    all_anon: bool,
    keep: &[(u64, u64)],
) -> Result<LazyPlan, String> {
    let mut out = LazyPlan::default();
    for v in &mm.vmas {
        let anon = matches!(v.kind, VmaKind::Anon) && !v.shared;
        let i = pagemap.entries.partition_point(|e| e.vaddr < v.start);
        let mut any = false;
        for e in pagemap.entries[i..].iter().take_while(|e| e.vaddr < v.end) {
            let end = e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE;
            let touches_keep = keep.iter().any(|&(s, k)| s < end && k > e.vaddr);
            let lazy = e.flags == PE_LAZY || (all_anon && anon && !touches_keep);
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
///
/// A copy of the userfaultfd stays in the process, at the first free fd from `keep_min`, until
/// [`release`]: should fastcr die, the kernel then keeps the registration (faults wait) instead of
/// dropping it (faults would read zeros) until the death signal arrives.
pub fn setup(inj: &Injector, pid: i32, keep_min: u64) -> Result<(OwnedFd, i32), LazyError> {
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
    let kept = inj
        .call(
            || "fcntl(F_DUPFD_CLOEXEC) of the userfaultfd".into(),
            "fcntl",
            libc::SYS_fcntl,
            [fd, libc::F_DUPFD_CLOEXEC as u64, keep_min, 0, 0, 0],
        )
        .map_err(|e| LazyError::Feed(e.to_string()))?;
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
    // Its parent is fastcr (the root) or a restored process (a child in a tree): either way, if
    // fastcr dies the whole tree goes, and during the lazy phase only, a child also goes with its
    // parent.
    set_pdeathsig(inj, libc::SIGKILL as u64).map_err(|e| LazyError::Feed(e.to_string()))?;
    Ok((uffd, kept as i32))
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
/// with its parent and drops the userfaultfd copy kept at fd `kept` (short stops to inject
/// `prctl` and `close`); so do its descendants, which inherited the copy if they were forked
/// during the lazy phase.
pub fn release(pid: i32, kept: i32) -> Result<(), LazyError> {
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        todo.extend(crate::tree::children(p).unwrap_or_default());
        match release_one(p, kept, p == pid) {
            // A child forked during the lazy phase (often about to exit) keeps a harmless
            // extra fd rather than failing the restore of the process it came from.
            Err(e) if p != pid => {
                tracing::warn!(pid = p, error = %e, "could not drop the userfaultfd copy of a child");
            }
            other => other?,
        }
    }
    Ok(())
}

fn release_one(pid: i32, kept: i32, restored: bool) -> Result<(), LazyError> {
    let fail =
        |e: &dyn std::fmt::Display| LazyError::Feed(format!("release of process {pid}: {e}"));
    if !matches!(proc::stat::stat(pid), Ok(s) if s.state != 'Z') {
        // It already ended: nothing depends on fastcr any more.
        return Ok(());
    }
    let holds_copy = proc::read_link(pid, &format!("fd/{kept}"))
        .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[userfaultfd]");
    if !holds_copy && !restored {
        return Ok(());
    }
    let frozen = match Frozen::freeze(pid) {
        Ok(f) => f,
        // It ended meanwhile (a short-lived child of the restored process, typically).
        Err(_) if !matches!(proc::stat::stat(pid), Ok(s) if s.state != 'Z') => return Ok(()),

        Err(e) => return Err(fail(&e)),
    };
    frozen.block_signals().map_err(|e| fail(&e))?;
    let maps = proc::maps::maps(pid).map_err(|e| fail(&e))?;
    let ip = vdso_syscall_ip(pid, &maps).map_err(|e| fail(&e))?;
    let inj = Injector::new(Remote::new(pid, *frozen.regs(), ip));
    if restored {
        set_pdeathsig(&inj, 0).map_err(|e| fail(&e))?;
    }
    if holds_copy {
        inj.call(
            || format!("close of the kept userfaultfd {kept}"),
            "close",
            libc::SYS_close,
            [kept as u64, 0, 0, 0, 0, 0],
        )
        .map_err(|e| fail(&e))?;
    }
    frozen.thaw().map_err(|e| fail(&e))
}
