//! CPU and signal state of one task: both the dump half and the restore half.
//!
//! Registers and xstate go through ptrace directly; signal dispositions, the alternate stack and
//! the tid address have no ptrace interface, so they are read and written by syscalls injected
//! into the task.

mod dump;
pub mod sigstate;
pub mod threads;

pub use dump::{DUMP_SCRATCH_LEN, dump, dump_thread};

use crate::image::core::{CoreImage, Creds, Regs, ThreadCore};
use crate::inject::{InjectError, Injector, to_bytes};
use crate::sys::SyscallError;
use crate::sys::ptrace::{self, UserRegs};

/// Why CPU or signal state could not be saved or put back.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A ptrace request failed.
    #[error("{step} of task {tid} failed")]
    Ptrace {
        /// The task.
        tid: i32,
        /// What was done.
        step: &'static str,
        /// The call.
        #[source]
        source: SyscallError,
    },
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// `/proc` could not be read.
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    /// A thread runs in a seccomp mode this version does not know.
    #[error("process {pid}: thread {tid} runs in seccomp mode {mode}, which fastcr does not know")]
    Seccomp {
        /// The process.
        pid: i32,
        /// The thread.
        tid: i32,
        /// Its seccomp mode (`Seccomp:` of its status).
        mode: u32,
    },
    /// The kernel cannot create POSIX timers with given ids.
    #[error(
        "process {pid} has POSIX timers, but this kernel cannot create a timer with a given id \
         (prctl(PR_TIMER_CREATE_RESTORE_IDS) failed with errno {errno}; Linux 6.14 or later needed)"
    )]
    TimerIds {
        /// The process.
        pid: i32,
        /// The errno of the prctl.
        errno: i32,
    },
    /// A POSIX timer came back with another id.
    #[error("process {pid}: POSIX timer {want} was restored with id {got}")]
    TimerId {
        /// The process.
        pid: i32,
        /// The dumped id.
        want: i32,
        /// The id the kernel gave.
        got: i32,
    },
    /// A resource limit could not be set.
    #[error("process {pid}: cannot restore {name} (errno {errno})")]
    Rlimit {
        /// The process.
        pid: i32,
        /// The limit.
        name: &'static str,
        /// The errno of prlimit64.
        errno: i32,
    },
}

const SS_DISABLE: i32 = 2;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
/// Scratch layout used here (offsets into the injector's scratch area).
const SCRATCH_SIGACTION: u64 = 0;
const SCRATCH_ALTSTACK: u64 = 64;
const SCRATCH_ITIMER: u64 = 192;
const SCRATCH_GROUPS: u64 = 256;
/// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
pub(crate) const ITIMERS: [u64; 3] = [0, 1, 2];

macro_rules! regs_fields {
    ($m:ident) => {
        $m!(
            r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip,
            cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs
        )
    };
}

/// Converts kernel registers to the image form.
pub fn regs_to_image(r: &UserRegs) -> Regs {
    macro_rules! conv { ($($f:ident),*) => { Regs { $($f: r.$f),* } } }
    regs_fields!(conv)
}

/// Converts image registers to the kernel form.
pub fn regs_from_image(r: &Regs) -> UserRegs {
    macro_rules! conv { ($($f:ident),*) => { UserRegs { $($f: r.$f),* } } }
    regs_fields!(conv)
}

/// Drops the rseq registration the restorer's copy of fastcr inherited (the kernel would keep
/// writing into memory that is about to be replaced).
pub fn unregister_inherited_rseq(inj: &Injector) -> Result<(), CoreError> {
    let tid = inj.pid();
    let cfg = ptrace::get_rseq(tid).map_err(|source| CoreError::Ptrace {
        tid,
        step: "read rseq configuration",
        source,
    })?;
    if cfg.addr != 0 {
        inj.call(
            || "rseq unregister".into(),
            "rseq",
            libc::SYS_rseq,
            [
                cfg.addr,
                u64::from(cfg.len),
                RSEQ_FLAG_UNREGISTER,
                u64::from(cfg.sig),
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// Puts back every signal disposition (default for the ones the image does not list).
pub fn restore_signals(inj: &Injector, core: &CoreImage) -> Result<(), CoreError> {
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let act = core
            .sigactions
            .iter()
            .find(|a| a.sig == sig)
            .map_or([0u64; 4], |a| [a.handler, a.flags, a.restorer, a.mask]);
        let addr = inj.put(SCRATCH_SIGACTION, &to_bytes(&act))?;
        inj.call(
            || format!("rt_sigaction({sig})"),
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [u64::from(sig), addr, 0, 8, 0, 0],
        )?;
    }
    Ok(())
}

/// Puts back what one thread has of its own but its CPU state: the alternate signal stack, the
/// robust list, the tid address and the rseq registration.
pub fn restore_task_links(inj: &Injector, core: &ThreadCore) -> Result<(), CoreError> {
    let ss = match core.altstack {
        Some(a) => [a.sp, a.flags as u32 as u64, a.size],
        None => [0, SS_DISABLE as u64, 0],
    };
    let addr = inj.put(SCRATCH_ALTSTACK, &to_bytes(&ss))?;
    inj.call(
        || "sigaltstack".into(),
        "sigaltstack",
        libc::SYS_sigaltstack,
        [addr, 0, 0, 0, 0, 0],
    )?;
    let (head, len) = core.robust_list;
    if head != 0 {
        inj.call(
            || "set_robust_list".into(),
            "set_robust_list",
            libc::SYS_set_robust_list,
            [head, len, 0, 0, 0, 0],
        )?;
    }
    inj.call(
        || "set_tid_address".into(),
        "set_tid_address",
        libc::SYS_set_tid_address,
        [core.clear_child_tid, 0, 0, 0, 0, 0],
    )?;
    if let Some(r) = core.rseq {
        inj.call(
            || "rseq register".into(),
            "rseq",
            libc::SYS_rseq,
            [r.addr, u64::from(r.len), 0, u64::from(r.sig), 0, 0],
        )?;
    }
    Ok(())
}

/// Sets the calling thread's name.
pub fn restore_name(inj: &Injector, comm: &str) -> Result<(), CoreError> {
    let mut comm = comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let addr = inj.put(SCRATCH_GROUPS, &comm)?;
    inj.call(
        || "prctl(PR_SET_NAME)".into(),
        "prctl",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Drops the calling thread to the dumped credentials and capabilities (last, since earlier
/// steps need root; credentials and capabilities are per thread, so every thread does it).
/// Without `caps` (an image from before they were saved) the thread keeps what the uid change
/// leaves it.
pub fn restore_creds(
    inj: &Injector,
    c: &Creds,
    caps: Option<&crate::image::sigstate::Caps>,
) -> Result<(), CoreError> {
    if let Some(caps) = caps {
        sigstate::caps_before_creds(inj, caps, c)?;
    }
    if c.uid != [0; 4] || c.gid != [0; 4] || !c.groups.is_empty() {
        set_ids(inj, c)?;
    }
    if let Some(caps) = caps {
        sigstate::caps_after_creds(inj, caps, c)?;
    }
    Ok(())
}

fn set_ids(inj: &Injector, c: &Creds) -> Result<(), CoreError> {
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let addr = inj.put(SCRATCH_GROUPS, &groups)?;
    inj.call(
        || "setgroups".into(),
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, addr, 0, 0, 0, 0],
    )?;
    let [rg, eg, sg, fg] = c.gid.map(u64::from);
    inj.call(
        || "setresgid".into(),
        "setresgid",
        libc::SYS_setresgid,
        [rg, eg, sg, 0, 0, 0],
    )?;
    inj.call(
        || "setfsgid".into(),
        "setfsgid",
        libc::SYS_setfsgid,
        [fg, 0, 0, 0, 0, 0],
    )?;
    let [ru, eu, su, fu] = c.uid.map(u64::from);
    inj.call(
        || "setresuid".into(),
        "setresuid",
        libc::SYS_setresuid,
        [ru, eu, su, 0, 0, 0],
    )?;
    inj.call(
        || "setfsuid".into(),
        "setfsuid",
        libc::SYS_setfsuid,
        [fu, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Re-arms the interval timers with the time they had left (last injected step before the
/// trampoline goes, so they do not tick during the restore).
pub fn restore_timers(inj: &Injector, core: &CoreImage) -> Result<(), CoreError> {
    for (which, t) in ITIMERS.iter().zip(&core.itimers) {
        if t.iter().all(|&w| w == 0) {
            continue;
        }
        let mut t = *t;
        // A periodic ITIMER_REAL reads 0 left while its SIGALRM is pending: the kernel re-arms
        // it only when the signal is taken, and `setitimer` cannot record an interval without
        // arming. So it is started to fire at once: its SIGALRM merges with the pending one
        // restored from the image (a second SIGALRM is never queued), and taking it re-arms
        // the timer as before the dump. An image without pending signals gets the same
        // SIGALRM from the timer alone.
        if t[2] == 0 && t[3] == 0 {
            t[3] = 1;
        }
        let addr = inj.put(SCRATCH_ITIMER, &to_bytes(&t))?;
        inj.call(
            || format!("setitimer({which})"),
            "setitimer",
            libc::SYS_setitimer,
            [*which, addr, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Final step: xstate, registers and signal mask, at a syscall-exit stop, ready to detach.
/// `tid` is the thread as seen from here.
pub fn restore_cpu(tid: i32, core: &ThreadCore) -> Result<(), CoreError> {
    let perr = |step| move |source| CoreError::Ptrace { tid, step, source };
    ptrace::set_xstate(tid, &core.xstate).map_err(perr("write xstate"))?;
    let mut regs = regs_from_image(&core.regs);
    regs.orig_rax = u64::MAX;
    ptrace::set_regs(tid, &regs).map_err(perr("write registers"))?;
    ptrace::set_sigmask(tid, core.sigmask).map_err(perr("write sigmask"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip() {
        let mut r = crate::freeze::zero_regs();
        r.rip = 0x401000;
        r.fs_base = 0x7f00_0000_1000;
        r.orig_rax = 7;
        assert_eq!(regs_from_image(&regs_to_image(&r)).rip, 0x401000);
        let i = regs_to_image(&r);
        assert_eq!((i.fs_base, i.orig_rax), (0x7f00_0000_1000, 7));
    }
}
