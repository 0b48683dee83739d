//! `core-<pid>.img`: the CPU and signal state of one task.

use serde::{Deserialize, Serialize};

/// x86_64 general-purpose registers, in the kernel's `user_regs_struct` order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// One signal's disposition (kernel `struct sigaction` for rt_sigaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// Signal number (1..=64).
    pub sig: u32,
    /// Handler address, or 0 (SIG_DFL) / 1 (SIG_IGN).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// sa_restorer.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// `sigaltstack` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    /// Stack base.
    pub sp: u64,
    /// SS_* flags (SS_AUTODISARM may be set).
    pub flags: i32,
    /// Size in bytes.
    pub size: u64,
}

/// rseq registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    /// Address of `struct rseq`.
    pub addr: u64,
    /// Registered length.
    pub len: u32,
    /// Abort signature.
    pub sig: u32,
}

/// Credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// Real, effective, saved, fs uid.
    pub uid: [u32; 4],
    /// Real, effective, saved, fs gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Per-task state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreImage {
    /// Task id.
    pub tid: i32,
    /// Command name.
    pub comm: String,
    /// Registers, with an interrupted syscall already set up to restart.
    pub regs: Regs,
    /// The XSAVE area (FPU, SSE, AVX, ...).
    pub xstate: Vec<u8>,
    /// Blocked signals.
    pub sigmask: u64,
    /// Dispositions that differ from the default.
    pub sigactions: Vec<SigAction>,
    /// Alternate signal stack, if one is set.
    pub altstack: Option<AltStack>,
    /// rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// Robust futex list head and length.
    pub robust_list: (u64, u64),
    /// `clear_child_tid` (set_tid_address).
    pub clear_child_tid: u64,
    /// Credentials.
    pub creds: Creds,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF as (interval s, interval µs, value s, value µs);
    /// the value is the time left at dump.
    pub itimers: Vec<[u64; 4]>,
    /// The task led its session (`setsid` on restore).
    pub session_leader: bool,
    /// The task led its process group.
    pub pgrp_leader: bool,
}

/// The state of one thread of a process: what each thread has of its own (the process-wide
/// part, dispositions, timers, credentials, lives in the main thread's [`CoreImage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadCore {
    /// Thread id (as seen in the process's pid namespace).
    pub tid: i32,
    /// Thread name.
    pub comm: String,
    /// Registers, with an interrupted syscall already set up to restart.
    pub regs: Regs,
    /// The XSAVE area.
    pub xstate: Vec<u8>,
    /// Blocked signals.
    pub sigmask: u64,
    /// Alternate signal stack, if one is set.
    pub altstack: Option<AltStack>,
    /// rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// Robust futex list head and length.
    pub robust_list: (u64, u64),
    /// `clear_child_tid`.
    pub clear_child_tid: u64,
}

/// `threads-<pid>.img`: the threads of process `pid` other than its main thread, in creation
/// order. Absent for a single-threaded process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadsImage {
    /// The other threads.
    pub threads: Vec<ThreadCore>,
}

impl CoreImage {
    /// The main thread's own part.
    pub fn main_thread(&self) -> ThreadCore {
        ThreadCore {
            tid: self.tid,
            comm: self.comm.clone(),
            regs: self.regs,
            xstate: self.xstate.clone(),
            sigmask: self.sigmask,
            altstack: self.altstack,
            rseq: self.rseq,
            robust_list: self.robust_list,
            clear_child_tid: self.clear_child_tid,
        }
    }
}

/// `stopped-<pid>.img`, present only for a process that was stopped by job control at the dump
/// (`T` in `/proc/PID/stat`): restore stops it again with the same signal. A file of its own so
/// that images of running processes are unchanged (payloads are bincode, not self-describing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedImage {
    /// The stop signal it had taken: `SIGSTOP`, `SIGTSTP`, `SIGTTIN` or `SIGTTOU`.
    pub signal: i32,
}

/// The signals that stop a process by job control.
pub const STOP_SIGNALS: [i32; 4] = [19, 20, 21, 22];

impl StoppedImage {
    /// Checks the signal is a stop signal.
    pub fn validate(&self) -> Result<(), String> {
        if STOP_SIGNALS.contains(&self.signal) {
            Ok(())
        } else {
            Err(format!("{} is not a stop signal", self.signal))
        }
    }
}
