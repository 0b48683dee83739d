//! The threads of a process besides its main thread: each one's own state is dumped by syscalls
//! injected into that thread (sharing the main thread's scratch page: one address space), and on
//! restore each thread is created by a `clone3` injected into the main thread, with its own tid
//! (`set_tid`), traced from its first instruction (`PTRACE_O_TRACECLONE`), and given back its
//! state the same way.

use super::{CoreError, dump_thread, restore_creds, restore_name, restore_task_links};
use crate::freeze::Frozen;
use crate::image::core::{Creds, ThreadCore, ThreadsImage};
use crate::image::sigstate::SigStateImage;
use crate::inject::{Injector, to_bytes};
use crate::sys::ptrace::{self, Stop};
use crate::sys::remote::Remote;

/// Scratch offsets of the restore trampoline's data area used here.
const SCRATCH_CLONE_ARGS: u64 = 10240;
const SCRATCH_CLONE_TID: u64 = 10400;

const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Dumps every frozen thread of `pid` but the main one. `main` is the main thread's injector,
/// whose scratch area the threads share; `ip` is a `syscall` instruction in the process.
pub fn dump(
    pid: i32,
    others: &[Frozen],
    main: &Injector,
    ip: u64,
) -> Result<ThreadsImage, CoreError> {
    let (scratch, len) = main.scratch_range();
    let mut threads = Vec::with_capacity(others.len());
    for f in others {
        let tid = f.pid();
        f.block_signals().map_err(|e| CoreError::Ptrace {
            tid,
            step: "block signals",
            source: match e {
                crate::freeze::FreezeError::Ptrace { source, .. }
                | crate::freeze::FreezeError::PermissionDenied { source, .. } => source,
                _ => crate::sys::SyscallError::from_errno("ptrace", libc::ESRCH),
            },
        })?;
        let mut inj = Injector::new(Remote::new(tid, *f.regs(), ip));
        inj.set_scratch(scratch, len);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        threads.push(dump_thread(f, &inj, comm)?);
    }
    Ok(ThreadsImage { threads })
}

/// A restored thread, stopped, waiting for its CPU state and the detach.
pub struct Created<'a> {
    /// Its tid as seen from here.
    pub tid_here: i32,
    /// What it is restored to.
    pub core: &'a ThreadCore,
}

/// Creates every thread of `image` in the process whose main thread `main` is being restored
/// (its memory complete, its trampoline in place; still privileged), and gives each its own
/// name, signal stack, robust list, tid address, rseq, credentials, capabilities and pending
/// signals. The main thread must be traced with `PTRACE_O_TRACECLONE`; `pid` is the process's
/// pid as it sees itself.
pub fn create<'a>(
    main: &Injector,
    pid: i32,
    image: &'a ThreadsImage,
    creds: &Creds,
    sig: Option<&SigStateImage>,
) -> Result<Vec<Created<'a>>, CoreError> {
    let mut out = Vec::with_capacity(image.threads.len());
    let (scratch, len) = main.scratch_range();
    for t in &image.threads {
        let tid_addr = main.put(SCRATCH_CLONE_TID, &t.tid.to_le_bytes())?;
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls, set_tid, set_tid_size, cgroup. No stack: the thread never runs
        // before its registers are replaced.
        let args = [THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, tid_addr, 1, 0];
        let args_addr = main.put(SCRATCH_CLONE_ARGS, &to_bytes(&args))?;
        let tid_here = main.clone_thread(
            || format!("clone3 of thread {}", t.tid),
            [args_addr, 88, 0, 0, 0, 0],
        )?;
        let perr = |step| {
            move |source| CoreError::Ptrace {
                tid: t.tid,
                step,
                source,
            }
        };
        // A thread auto-attached by the clone event starts in a stop of its own.
        match ptrace::wait_stop(tid_here).map_err(perr("wait for the new thread"))? {
            Stop::Signal(libc::SIGSTOP) | Stop::Event { .. } => {}
            stop => {
                return Err(perr("wait for the new thread")(
                    crate::sys::SyscallError::from_errno(
                        "waitpid",
                        if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
                            libc::ESRCH
                        } else {
                            libc::EPROTO
                        },
                    ),
                ));
            }
        }
        let regs = ptrace::get_regs(tid_here).map_err(perr("read registers"))?;
        // The new thread sits just after the trampoline's `syscall`: inject from there.
        let ip = regs.rip - 2;
        let mut inj = Injector::new(Remote::new(tid_here, regs, ip));
        inj.set_scratch(scratch, len);
        restore_name(&inj, &t.comm)?;
        restore_task_links(&inj, t)?;
        restore_creds(&inj, creds, sig.map(|s| &s.caps))?;
        if let Some(s) = sig {
            // The new thread inherited the restorer's mask, which blocks everything.
            super::sigstate::queue(&inj, pid, Some(t.tid), s.pending_of(t.tid), s)?;
            // Last for this thread: its filters beyond the ones it inherited from the main
            // thread, or strict mode (the tracer's PTRACE_O_SUSPEND_SECCOMP keeps them off
            // until the detach).
            let tids: Vec<i32> = std::iter::once(pid)
                .chain(image.threads.iter().map(|o| o.tid))
                .collect();
            let shared = s.shared_filters(&tids);
            super::sigstate::restore_seccomp(
                &inj,
                s.filters_of(t.tid).get(shared..).unwrap_or_default(),
                s.seccomp_strict.contains(&t.tid),
            )?;
        }
        out.push(Created { tid_here, core: t });
    }
    Ok(out)
}
