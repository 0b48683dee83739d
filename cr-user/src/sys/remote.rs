//! Remote syscall injection: make a ptrace-stopped task execute one syscall of our choosing.
//!
//! The task's registers are pointed at a `syscall` instruction that exists in its address space
//! (one found in its vDSO, or fastcr's one-page trampoline during restore), the syscall number and
//! arguments go in `rax` and `rdi, rsi, rdx, r10, r8, r9`, and `PTRACE_SYSCALL` runs it to its
//! exit stop, where `rax` holds the result. Signals must be blocked in the task (its sigmask is
//! set with `PTRACE_SETSIGMASK`) so that none is delivered in between.

use super::SyscallError;
use super::ptrace::{self, Stop, UserRegs};

/// Why an injected syscall did not complete.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A ptrace request failed.
    #[error("ptrace request failed while injecting syscall {nr}")]
    Ptrace {
        /// The injected syscall number.
        nr: i64,
        /// The failed request.
        #[source]
        source: SyscallError,
    },
    /// The task stopped for another reason than the syscall stop we waited for.
    #[error("task {pid} stopped unexpectedly ({stop:?}) while running injected syscall {nr}")]
    UnexpectedStop {
        /// Task id.
        pid: i32,
        /// The injected syscall number.
        nr: i64,
        /// What waitpid reported.
        stop: Stop,
    },
}

/// A stopped task we inject syscalls into.
pub struct Remote {
    pid: i32,
    base: UserRegs,
}

impl Remote {
    /// `base` is the register set each injection starts from; `syscall_ip` the address of a
    /// `syscall` instruction (bytes `0f 05`) mapped executable in the task.
    pub fn new(pid: i32, base: UserRegs, syscall_ip: u64) -> Self {
        let mut base = base;
        base.rip = syscall_ip;
        // orig_rax = -1 tells the kernel's signal-return path that no syscall is being restarted.
        base.orig_rax = u64::MAX;
        Self { pid, base }
    }

    /// The traced task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Moves injection to another `syscall` instruction (e.g. once the trampoline exists).
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.base.rip = ip;
    }

    /// Runs syscall `nr` with `args` in the task and returns the kernel's raw return value
    /// (a negative errno on failure).
    pub fn syscall(&self, nr: i64, args: [u64; 6]) -> Result<i64, InjectError> {
        self.run(nr, args, false).map(|(ret, _)| ret)
    }

    /// Runs a `clone`-family syscall in a task traced with `PTRACE_O_TRACECLONE` (threads) or
    /// `PTRACE_O_TRACEFORK` (processes): returns the raw result and the new task's id as seen
    /// from here (from the clone or fork event).
    pub fn syscall_clone(
        &self,
        nr: i64,
        args: [u64; 6],
    ) -> Result<(i64, Option<i32>), InjectError> {
        self.run(nr, args, true)
    }

    fn run(&self, nr: i64, args: [u64; 6], clone: bool) -> Result<(i64, Option<i32>), InjectError> {
        let mut regs = self.base;
        regs.rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        let map = |source| InjectError::Ptrace { nr, source };
        ptrace::set_regs(self.pid, &regs).map_err(map)?;
        let mut new_tid = None;
        let mut syscall_stops = 0;
        while syscall_stops < 2 {
            ptrace::resume_to_syscall(self.pid, 0).map_err(map)?;
            match ptrace::wait_stop(self.pid).map_err(map)? {
                Stop::Syscall => syscall_stops += 1,
                // A task stopped by job control traps once more when first resumed (the
                // `PTRACE_INTERRUPT` that froze it is still pending); nothing ran: resume again.
                Stop::Event { event, .. } if event == ptrace::EVENT_STOP => {}
                Stop::Event { event, .. }
                    if clone && (event == ptrace::EVENT_CLONE || event == ptrace::EVENT_FORK) =>
                {
                    let tid = ptrace::get_event_msg(self.pid).map_err(map)?;
                    new_tid = i32::try_from(tid).ok();
                }
                stop => {
                    return Err(InjectError::UnexpectedStop {
                        pid: self.pid,
                        nr,
                        stop,
                    });
                }
            }
        }
        let out = ptrace::get_regs(self.pid).map_err(map)?;
        Ok((out.rax as i64, new_tid))
    }

    /// Starts code already placed in the task at `entry`, with `r12` set to `arg`, and lets it
    /// run until it exits ([`Remote::wait_exit`]) or traps ([`Remote::run_code`]).
    pub fn launch(&self, entry: u64, arg: u64) -> Result<(), InjectError> {
        let mut regs = self.base;
        regs.rip = entry;
        regs.r12 = arg;
        let map = |source| InjectError::Ptrace { nr: -1, source };
        ptrace::set_regs(self.pid, &regs).map_err(map)?;
        ptrace::cont(self.pid, 0).map_err(map)
    }

    /// Waits until a task started by [`Remote::launch`] exits; returns its exit code. Stops on
    /// the way (a group-stop, a signal it has blocked anyway) are continued past.
    pub fn wait_exit(&self) -> Result<i32, InjectError> {
        let map = |source| InjectError::Ptrace { nr: -1, source };
        loop {
            match ptrace::wait_stop(self.pid).map_err(map)? {
                Stop::Exited(code) => return Ok(code),
                Stop::Killed(sig) => {
                    return Err(InjectError::UnexpectedStop {
                        pid: self.pid,
                        nr: -1,
                        stop: Stop::Killed(sig),
                    });
                }
                Stop::Signal(_) | Stop::Event { .. } | Stop::Syscall => {
                    ptrace::cont(self.pid, 0).map_err(map)?;
                }
            }
        }
    }

    /// Runs code already placed in the task at `entry` until it executes `int3`, with `r12`
    /// set to `arg`. Used for loops of syscalls that would otherwise cost one injection each.
    pub fn run_code(&self, entry: u64, arg: u64) -> Result<(), InjectError> {
        let map = |source| InjectError::Ptrace { nr: -1, source };
        self.launch(entry, arg)?;
        loop {
            match ptrace::wait_stop(self.pid).map_err(map)? {
                // The SIGTRAP of `int3` is suppressed by the next resume (signal 0).
                Stop::Signal(libc::SIGTRAP) => return Ok(()),
                // The pending trap of a job-control stopped task (see `run`): nothing ran.
                Stop::Event { event, .. } if event == ptrace::EVENT_STOP => {
                    ptrace::cont(self.pid, 0).map_err(map)?;
                }
                stop => {
                    return Err(InjectError::UnexpectedStop {
                        pid: self.pid,
                        nr: -1,
                        stop,
                    });
                }
            }
        }
    }

    /// Like [`Remote::syscall`], but a negative return becomes a [`SyscallError`].
    pub fn checked(
        &self,
        call: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64, RemoteCallError> {
        let ret = self.syscall(nr, args)?;
        checked_return(call, ret).map_err(RemoteCallError::Failed)
    }
}

/// A raw syscall return as the kernel encodes it: `-4095..0` is a negated errno, which becomes
/// a [`SyscallError`] naming `call`; anything else is the value.
pub fn checked_return(call: &'static str, ret: i64) -> Result<u64, SyscallError> {
    if (-4095..0).contains(&ret) {
        return Err(SyscallError::from_errno(call, (-ret) as i32));
    }
    Ok(ret as u64)
}

/// An injected syscall that could not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteCallError {
    /// Injection itself failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// The syscall ran in the task and returned an error.
    #[error(transparent)]
    Failed(SyscallError),
}

/// Finds the offset of a `syscall` instruction (`0f 05`) in a code blob such as the vDSO.
pub fn find_syscall_insn(code: &[u8]) -> Option<usize> {
    code.windows(2).position(|w| w == [0x0f, 0x05])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_syscall_bytes() {
        assert_eq!(find_syscall_insn(&[0x90, 0x0f, 0x05, 0xc3]), Some(1));
        assert_eq!(find_syscall_insn(&[0x0f, 0x90, 0x05]), None);
    }
}
