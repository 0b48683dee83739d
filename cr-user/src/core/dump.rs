//! The dump half of a task's CPU and signal state.
//!
//! Registers, xstate, rseq and the robust list come through ptrace. The signal stack, the tid
//! address, the 64 signal dispositions, the interval timers and the program break have no
//! ptrace interface: they are asked by syscalls run inside the frozen task, all of a task's in
//! one batch ([`Injector::batch`]), so the frozen window pays one ptrace round trip per task
//! instead of one per syscall (71 for a main thread).

use super::{CoreError, ITIMERS, SS_DISABLE};
use crate::freeze::Frozen;
use crate::image::core::{AltStack, CoreImage, Creds, Rseq, SigAction, ThreadCore};
use crate::inject::{InjectError, Injector, batch_len, words};
use crate::proc::stat::Stat;
use crate::proc::status::Status;
use crate::sys::process;
use crate::sys::ptrace;
use crate::sys::remote::{RemoteCallError, checked_return};

/// Scratch a dump maps in the task (executable: the batch loop runs from it).
pub const DUMP_SCRATCH_LEN: u64 = 16384;
/// The batch loop and its table.
const BATCH_AT: u64 = 0;
/// The answers: the batch's output buffers, read back in one piece.
const OUT: u64 = 8192;
const OUT_ALTSTACK: u64 = 0;
const OUT_TIDADDR: u64 = 32;
const OUT_ITIMERS: u64 = 64;
/// 32 bytes per signal, signal `n` at `(n - 1) * 32`.
const OUT_SIGACTIONS: u64 = 192;
const OUT_LEN: u64 = OUT_SIGACTIONS + 64 * 32;
/// The main thread's batch: its own two queries, 64 dispositions, the timers and `brk`.
const MAIN_CALLS: usize = 2 + 64 + ITIMERS.len() + 1;
const _: () = assert!(BATCH_AT + batch_len(MAIN_CALLS) <= OUT);
const _: () = assert!(OUT + OUT_LEN <= DUMP_SCRATCH_LEN);

const PR_GET_TID_ADDRESS: u64 = 40;

/// One syscall of a batch: a name for errors, its number and arguments.
type Call = (&'static str, i64, [u64; 6]);

/// Saves the process's CPU and signal state (its main thread's, plus what is process-wide) and
/// returns it with the program break. Signals must be blocked and [`DUMP_SCRATCH_LEN`] bytes of
/// executable scratch memory set.
pub fn dump(
    frozen: &Frozen,
    inj: &Injector,
    status: &Status,
    stat: &Stat,
    comm: String,
) -> Result<(CoreImage, u64), CoreError> {
    // Every disposition is asked: a default one can carry flags and a mask that the program
    // set and may read back.
    let mut extra: Vec<Call> = (1..=64u64)
        .map(|sig| {
            let out = inj.scratch_addr(OUT + OUT_SIGACTIONS + (sig - 1) * 32);
            (
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                [sig, 0, out, 8, 0, 0],
            )
        })
        .collect();
    for (i, &which) in ITIMERS.iter().enumerate() {
        let out = inj.scratch_addr(OUT + OUT_ITIMERS + i as u64 * 32);
        extra.push(("getitimer", libc::SYS_getitimer, [which, out, 0, 0, 0, 0]));
    }
    extra.push(("brk", libc::SYS_brk, [0; 6]));
    let (t, out, rets) = dump_thread_with(frozen, inj, comm, &extra)?;
    let brk = rets.last().copied().unwrap_or(0);
    let mut sigactions = Vec::new();
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        let at = (OUT_SIGACTIONS + (u64::from(sig) - 1) * 32) as usize;
        let [handler, flags, restorer, mask] = words::<4>(&out[at..at + 32]);
        sigactions.push(SigAction {
            sig,
            handler,
            flags,
            restorer,
            mask,
        });
    }
    let itimers = (0..ITIMERS.len())
        .map(|i| {
            let at = OUT_ITIMERS as usize + i * 32;
            words::<4>(&out[at..at + 32])
        })
        .collect();
    let tid = t.tid;
    let core = CoreImage {
        tid,
        comm: t.comm,
        regs: t.regs,
        xstate: t.xstate,
        sigmask: t.sigmask,
        sigactions,
        altstack: t.altstack,
        rseq: t.rseq,
        robust_list: t.robust_list,
        clear_child_tid: t.clear_child_tid,
        itimers,
        creds: Creds {
            uid: status.uid,
            gid: status.gid,
            groups: status.groups.clone(),
        },
        session_leader: stat.sid == tid,
        pgrp_leader: stat.pgid == tid,
    };
    Ok((core, brk))
}

/// Saves what one thread has of its own. Its signals must be blocked and the injector's scratch
/// memory set (any thread of the process can use the same scratch page).
pub fn dump_thread(frozen: &Frozen, inj: &Injector, comm: String) -> Result<ThreadCore, CoreError> {
    dump_thread_with(frozen, inj, comm, &[]).map(|(t, ..)| t)
}

/// [`dump_thread`], with `extra` syscalls run in the same batch. Returns the thread's state,
/// the answers area, and the results of the `extra` calls.
fn dump_thread_with(
    frozen: &Frozen,
    inj: &Injector,
    comm: String,
    extra: &[Call],
) -> Result<(ThreadCore, Vec<u8>, Vec<u64>), CoreError> {
    let tid = frozen.pid();
    let perr = |step| move |source| CoreError::Ptrace { tid, step, source };
    let xstate = ptrace::get_xstate(tid).map_err(perr("read xstate"))?;
    let mut calls: Vec<Call> = vec![
        (
            "sigaltstack",
            libc::SYS_sigaltstack,
            [0, inj.scratch_addr(OUT + OUT_ALTSTACK), 0, 0, 0, 0],
        ),
        (
            "prctl(PR_GET_TID_ADDRESS)",
            libc::SYS_prctl,
            [
                PR_GET_TID_ADDRESS,
                inj.scratch_addr(OUT + OUT_TIDADDR),
                0,
                0,
                0,
                0,
            ],
        ),
    ];
    calls.extend_from_slice(extra);
    let rets = run_batch(inj, &calls)?;
    let out = inj.get(OUT, OUT_LEN as usize)?;
    let at = OUT_ALTSTACK as usize;
    let [sp, flags, size] = words::<3>(&out[at..at + 24]);
    let flags = flags as i32;
    let altstack = (flags & SS_DISABLE == 0).then_some(AltStack { sp, flags, size });
    let at = OUT_TIDADDR as usize;
    let [clear_child_tid] = words::<1>(&out[at..at + 8]);
    let rseq = ptrace::get_rseq(tid).map_err(perr("read rseq configuration"))?;
    let rseq = (rseq.addr != 0).then_some(Rseq {
        addr: rseq.addr,
        len: rseq.len,
        sig: rseq.sig,
    });
    let robust_list = process::get_robust_list(tid).map_err(perr("read robust list"))?;
    let thread = ThreadCore {
        tid,
        comm,
        regs: super::regs_to_image(frozen.regs()),
        xstate,
        sigmask: frozen.sigmask(),
        altstack,
        rseq,
        robust_list,
        clear_child_tid,
    };
    Ok((thread, out, rets[2..].to_vec()))
}

/// Runs `calls` as one batch in the task; every one must succeed.
fn run_batch(inj: &Injector, calls: &[Call]) -> Result<Vec<u64>, CoreError> {
    let plain: Vec<(i64, [u64; 6])> = calls.iter().map(|&(_, nr, args)| (nr, args)).collect();
    let rets = inj.batch(BATCH_AT, &plain)?;
    let mut out = Vec::with_capacity(rets.len());
    for (&(name, _, args), ret) in calls.iter().zip(rets) {
        let value = checked_return(name, ret).map_err(|e| InjectError {
            pid: inj.pid(),
            step: format!("{name} (argument {:#x})", args[0]),
            source: RemoteCallError::Failed(e),
        })?;
        out.push(value);
    }
    Ok(out)
}
