//! Stopping a task for the dump, and letting it go again exactly as it was.
//!
//! [`Frozen`] seizes the task with ptrace and interrupts it. Dropping it without calling
//! [`Frozen::kill`] puts back the registers and signal mask and detaches, so every error path of
//! a dump leaves the workload running as before. A task stopped by job control (`SIGSTOP`,
//! `SIGTSTP`, ...) is frozen too and stays stopped when released: the seize makes it report its
//! group-stop, and the kernel puts it back into that stop at the detach.

use crate::sys::SyscallError;
use crate::sys::process;
use crate::sys::ptrace::{self, Stop, UserRegs};

/// Why a task could not be frozen or released.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The process does not exist (or exited while being frozen).
    #[error("no such process {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: i32,
    },
    /// We may not trace it.
    #[error("permission denied to trace process {pid}")]
    PermissionDenied {
        /// The pid.
        pid: i32,
        /// The kernel's answer.
        #[source]
        source: SyscallError,
    },
    /// Someone else traces it already.
    #[error("process {pid} is busy: it is already traced")]
    Busy {
        /// The pid.
        pid: i32,
    },
    /// A ptrace request failed.
    #[error("ptrace of process {pid} failed during {step}")]
    Ptrace {
        /// The pid.
        pid: i32,
        /// What was being done.
        step: &'static str,
        /// The failed call.
        #[source]
        source: SyscallError,
    },
}

/// Linux's internal restart codes, seen in `rax` when a task stops inside a syscall.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// Registers as the task must resume: a syscall interrupted by the stop is set up to run again
/// (`rax = orig_rax`, `rip -= 2`), or to call `restart_syscall` for restart-block syscalls such
/// as `nanosleep` (in a freshly restored task that returns `EINTR`, as after any signal).
pub fn restart_adjusted(regs: &UserRegs) -> UserRegs {
    let mut r = *regs;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = libc::SYS_restart_syscall as u64;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r
}

/// A task held in a ptrace stop.
pub struct Frozen {
    pid: i32,
    regs: UserRegs,
    sigmask: u64,
    /// The signal that had stopped it by job control (`SIGSTOP`, `SIGTSTP`, ...), if it was.
    group_stop: Option<i32>,
    armed: bool,
}

impl Frozen {
    /// Seizes and interrupts `pid`; returns once it is stopped.
    pub fn freeze(pid: i32) -> Result<Self, FreezeError> {
        ptrace::seize(pid, ptrace::OPT_TRACESYSGOOD).map_err(|e| match e.errno() {
            Some(libc::ESRCH) => FreezeError::NoSuchProcess { pid },
            Some(libc::EPERM)
                if crate::proc::status::status(pid).is_ok_and(|s| s.tracer_pid != 0) =>
            {
                FreezeError::Busy { pid }
            }
            Some(libc::EPERM) => FreezeError::PermissionDenied { pid, source: e },
            _ => FreezeError::Ptrace {
                pid,
                step: "seize",
                source: e,
            },
        })?;
        let mut frozen = Self {
            pid,
            regs: zero_regs(),
            sigmask: 0,
            group_stop: None,
            armed: false,
        };
        let ptrace_err = |step| move |source| FreezeError::Ptrace { pid, step, source };
        ptrace::interrupt(pid).map_err(ptrace_err("interrupt"))?;
        // A signal that was already on its way is delivered first (it arrived before the
        // checkpoint); the interrupt stays queued and comes next.
        loop {
            match ptrace::wait_stop(pid).map_err(ptrace_err("wait for stop"))? {
                Stop::Event { event, sig } if event == ptrace::EVENT_STOP => {
                    // SIGTRAP: our interrupt. Another signal: the task is stopped by job control
                    // (the seize makes it report its group-stop). It is frozen either way; the
                    // detach leaves a job-control stopped task stopped, as the kernel keeps the
                    // group's stop in effect, and a restore stops it again with that signal.
                    if sig != libc::SIGTRAP {
                        frozen.group_stop = Some(sig);
                    }
                    break;
                }
                Stop::Signal(sig) => {
                    ptrace::cont(pid, sig).map_err(ptrace_err("deliver pending signal"))?
                }
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(FreezeError::NoSuchProcess { pid });
                }
                Stop::Syscall | Stop::Event { .. } => {
                    ptrace::cont(pid, 0).map_err(ptrace_err("continue to interrupt"))?;
                }
            }
        }
        frozen.armed = true;
        frozen.regs =
            restart_adjusted(&ptrace::get_regs(pid).map_err(ptrace_err("read registers"))?);
        frozen.sigmask = ptrace::get_sigmask(pid).map_err(ptrace_err("read sigmask"))?;
        Ok(frozen)
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Registers as the task will resume (restart-adjusted).
    pub fn regs(&self) -> &UserRegs {
        &self.regs
    }

    /// The task's own blocked-signal mask.
    pub fn sigmask(&self) -> u64 {
        self.sigmask
    }

    /// The signal that stopped the task by job control before it was frozen, if any.
    pub fn group_stop(&self) -> Option<i32> {
        self.group_stop
    }

    /// Lets syscalls injected into the task bypass its seccomp filters while it is traced
    /// (`PTRACE_O_SUSPEND_SECCOMP`, needs `CAP_SYS_ADMIN`; the detach ends it).
    pub fn suspend_seccomp(&self) -> Result<(), FreezeError> {
        ptrace::set_options(
            self.pid,
            ptrace::OPT_TRACESYSGOOD | ptrace::OPT_SUSPEND_SECCOMP,
        )
        .map_err(|source| FreezeError::Ptrace {
            pid: self.pid,
            step: "suspend seccomp (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN)",
            source,
        })
    }

    /// Blocks every signal in the task, so none is delivered while syscalls are injected.
    pub fn block_signals(&self) -> Result<(), FreezeError> {
        ptrace::set_sigmask(self.pid, !0).map_err(|source| FreezeError::Ptrace {
            pid: self.pid,
            step: "block signals",
            source,
        })
    }

    /// Puts registers and sigmask back and detaches: the task runs on as if never stopped.
    pub fn thaw(mut self) -> Result<(), FreezeError> {
        self.armed = false;
        self.release()
    }

    fn release(&self) -> Result<(), FreezeError> {
        let pid = self.pid;
        let err = |step| move |source| FreezeError::Ptrace { pid, step, source };
        let mut regs = self.regs;
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(pid, &regs).map_err(err("restore registers"))?;
        ptrace::set_sigmask(pid, self.sigmask).map_err(err("restore sigmask"))?;
        ptrace::detach(pid, 0).map_err(err("detach"))
    }

    /// Kills the task (the default end of a dump) and waits until it is gone.
    pub fn kill(mut self) -> Result<(), FreezeError> {
        self.armed = false;
        let pid = self.pid;
        process::kill(pid, libc::SIGKILL).map_err(|source| FreezeError::Ptrace {
            pid,
            step: "kill",
            source,
        })?;
        loop {
            match ptrace::wait_stop(pid) {
                Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => return Ok(()),
                Ok(_) => {
                    let _ = ptrace::cont(pid, 0);
                }
            }
        }
    }
}

impl Frozen {
    /// Puts the task's own registers and signal mask back while it stays stopped: should its
    /// tracer die, it then continues as if never touched.
    pub fn put_back(&self) -> Result<(), FreezeError> {
        let pid = self.pid;
        let err = |step| move |source| FreezeError::Ptrace { pid, step, source };
        let mut regs = self.regs;
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(pid, &regs).map_err(err("restore registers"))?;
        ptrace::set_sigmask(pid, self.sigmask).map_err(err("restore sigmask"))
    }

    /// Lets go of the guard without touching the task (it is being killed with its process).
    pub fn forget(mut self) {
        self.armed = false;
    }
}

/// Every thread of a process held in a ptrace stop: the main thread, then the others.
pub struct FrozenProcess {
    main: Frozen,
    others: Vec<Frozen>,
}

impl FrozenProcess {
    /// Freezes the main thread `pid`, then every other thread, listing `/proc/PID/task` again
    /// until no thread appears that is not frozen (a running thread may create one until it is
    /// stopped itself). A thread that exits meanwhile is skipped.
    pub fn freeze(pid: i32) -> Result<Self, FreezeError> {
        let main = Frozen::freeze(pid)?;
        let mut others: Vec<Frozen> = Vec::new();
        loop {
            let tids = crate::proc::threads(pid).map_err(|_| FreezeError::NoSuchProcess { pid })?;
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|&t| t != pid && !others.iter().any(|f| f.pid == t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match Frozen::freeze(tid) {
                    Ok(f) => others.push(f),
                    Err(FreezeError::NoSuchProcess { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        others.sort_by_key(|f| f.pid);
        Ok(Self { main, others })
    }

    /// The main thread.
    pub fn main(&self) -> &Frozen {
        &self.main
    }

    /// The other threads, by tid.
    pub fn others(&self) -> &[Frozen] {
        &self.others
    }

    /// Puts every thread's own registers and signal mask back (see [`Frozen::put_back`]).
    pub fn put_back(&self) -> Result<(), FreezeError> {
        self.others.iter().try_for_each(Frozen::put_back)?;
        self.main.put_back()
    }

    /// Every frozen thread id.
    pub fn tids(&self) -> Vec<i32> {
        std::iter::once(self.main.pid)
            .chain(self.others.iter().map(|f| f.pid))
            .collect()
    }

    /// Lets syscalls injected into any thread bypass its seccomp filters while it is traced
    /// (`PTRACE_O_SUSPEND_SECCOMP`, needs `CAP_SYS_ADMIN`; the detach ends it).
    pub fn suspend_seccomp(&self) -> Result<(), FreezeError> {
        std::iter::once(&self.main)
            .chain(&self.others)
            .try_for_each(Frozen::suspend_seccomp)
    }

    /// Blocks every signal in every thread.
    pub fn block_signals(&self) -> Result<(), FreezeError> {
        self.others.iter().try_for_each(Frozen::block_signals)?;
        self.main.block_signals()
    }

    /// Releases every thread as it was.
    pub fn thaw(self) -> Result<(), FreezeError> {
        for f in self.others {
            f.thaw()?;
        }
        self.main.thaw()
    }

    /// Kills the process and waits until it is gone (every traced thread is reaped by us, the
    /// main thread last: the kernel reports it only once the others are gone).
    pub fn kill(self) -> Result<(), FreezeError> {
        let pid = self.main.pid;
        process::kill(pid, libc::SIGKILL).map_err(|source| FreezeError::Ptrace {
            pid,
            step: "kill",
            source,
        })?;
        for f in self.others {
            let tid = f.pid;
            f.forget();
            loop {
                match ptrace::wait_stop(tid) {
                    Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_) => break,
                    Ok(_) => {
                        let _ = ptrace::cont(tid, 0);
                    }
                }
            }
        }
        self.main.kill()
    }
}

/// Every process of a tree held frozen, the root first.
pub struct FrozenTree {
    procs: Vec<FrozenProcess>,
}

impl FrozenTree {
    /// A tree of one.
    pub fn single(p: FrozenProcess) -> Self {
        Self { procs: vec![p] }
    }

    /// A tree from its processes, the root first.
    pub fn new(procs: Vec<FrozenProcess>) -> Self {
        Self { procs }
    }

    /// The processes, the root first.
    pub fn procs(&self) -> &[FrozenProcess] {
        &self.procs
    }

    /// Puts every process's own registers and signal masks back (see [`Frozen::put_back`]).
    pub fn put_back(&self) -> Result<(), FreezeError> {
        self.procs.iter().try_for_each(FrozenProcess::put_back)
    }

    /// Every process's pid, the root first.
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.main.pid).collect()
    }

    /// Releases every process as it was, children first.
    pub fn thaw(self) -> Result<(), FreezeError> {
        let mut first_err = None;
        for p in self.procs.into_iter().rev() {
            if let Err(e) = p.thaw() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Kills every process and waits until each is gone.
    pub fn kill(self) -> Result<(), FreezeError> {
        for p in &self.procs {
            let _ = process::kill(p.main.pid, libc::SIGKILL);
        }
        let mut first_err = None;
        for p in self.procs.into_iter().rev() {
            if let Err(e) = p.kill() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.release()
        {
            tracing::error!(pid = self.pid, error = %e, "could not release frozen task");
        }
    }
}

pub(crate) fn zero_regs() -> UserRegs {
    UserRegs {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        rbp: 0,
        rbx: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rax: 0,
        rcx: 0,
        rdx: 0,
        rsi: 0,
        rdi: 0,
        orig_rax: 0,
        rip: 0,
        cs: 0,
        eflags: 0,
        rsp: 0,
        ss: 0,
        fs_base: 0,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rules() {
        let mut r = zero_regs();
        r.orig_rax = 35; // nanosleep
        r.rip = 0x1002;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        let a = restart_adjusted(&r);
        assert_eq!((a.rax, a.rip), (libc::SYS_restart_syscall as u64, 0x1000));
        r.rax = ERESTARTSYS as u64;
        let a = restart_adjusted(&r);
        assert_eq!((a.rax, a.rip), (35, 0x1000));
        r.rax = (-4i64) as u64; // EINTR: the syscall really returned
        assert_eq!(restart_adjusted(&r).rip, 0x1002);
        r.orig_rax = u64::MAX; // not in a syscall
        r.rax = ERESTARTSYS as u64;
        assert_eq!(restart_adjusted(&r).rip, 0x1002);
    }
}
