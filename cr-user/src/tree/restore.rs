//! Creating the processes of a tree for restore, before any of them is rebuilt: each process
//! (still a stopped fork of fastcr) first takes its session or process group, then forks its
//! children with their pids (`clone3` with `set_tid`, injected), which so inherit the right
//! parent, session and group. Zombies are forked the same way and exit at once with their
//! recorded status, so their parent finds them unreaped as it left them.

use std::collections::BTreeMap;

use crate::image::tree::{TreeImage, TreeProc};
use crate::inject::{Injector, to_bytes};
use crate::proc;
use crate::restore::{Building, RestoreError};
use crate::sys::ptrace::{self, Stop};
use crate::sys::remote::Remote;
use crate::sys::{PAGE_SIZE, SyscallError};

/// Scratch offsets in the page mapped for the forks.
const SCRATCH_ARGS: u64 = 0;
const SCRATCH_TID: u64 = 128;
/// Zero bytes: a `struct sigaction` with SIG_DFL.
const SCRATCH_DEFAULT_ACTION: u64 = 256;
const SCRATCH_SIGSET: u64 = 320;
const SCRATCH_TIMESPEC: u64 = 336;

/// Creates every process of `tree` below the root, which runs as `root_here` (stopped, traced
/// with fork and clone events). Returns pid → pid here for the live processes (root included).
pub(crate) fn create(
    root_here: i32,
    tree: &TreeImage,
    guard: &mut Building,
) -> Result<BTreeMap<i32, i32>, RestoreError> {
    let mut here = BTreeMap::new();
    let Some(root) = tree.procs.first() else {
        return Ok(here);
    };
    here.insert(root.pid, root_here);
    setup(root, None, root_here, tree, &mut here, guard)?;
    Ok(here)
}

fn child_err(pid: i32, step: &'static str) -> impl FnOnce(SyscallError) -> RestoreError {
    move |source| RestoreError::Child { pid, step, source }
}

/// Session and group for `p`, then its children, recursively.
fn setup(
    p: &TreeProc,
    parent: Option<&TreeProc>,
    at: i32,
    tree: &TreeImage,
    here: &mut BTreeMap<i32, i32>,
    guard: &mut Building,
) -> Result<(), RestoreError> {
    let regs = ptrace::get_regs(at).map_err(child_err(p.pid, "read registers"))?;
    let maps = proc::maps::maps(at)?;
    let ip = crate::inject::vdso_syscall_ip(at, &maps)?;
    let mut inj = Injector::new(Remote::new(at, regs, ip));
    // A single process keeps the restorer's session unless it led its own (sid 0: unknown).
    if p.sid == p.pid {
        inj.call(|| "setsid".into(), "setsid", libc::SYS_setsid, [0; 6])?;
    } else if p.pgid == p.pid {
        inj.call(|| "setpgid".into(), "setpgid", libc::SYS_setpgid, [0; 6])?;
    } else if let Some(parent) = parent
        && p.pgid != parent.pgid
        && p.pgid > 0
    {
        inj.call(
            || format!("setpgid(0, {})", p.pgid),
            "setpgid",
            libc::SYS_setpgid,
            [0, p.pgid as u64, 0, 0, 0, 0],
        )?;
    }
    let children: Vec<&TreeProc> = tree.children(p.pid).collect();
    if children.is_empty() {
        return Ok(());
    }
    // Arguments of clone3 live in a scratch page; the transplant unmaps it later.
    let scratch = inj.call(
        || "mmap of a scratch page".into(),
        "mmap",
        libc::SYS_mmap,
        [
            0,
            PAGE_SIZE,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    inj.set_scratch(scratch, PAGE_SIZE);
    for c in children {
        let tid = inj.put(SCRATCH_TID, &c.pid.to_le_bytes())?;
        // struct clone_args: a fork (no flags), SIGCHLD to the parent, with the child's pid.
        let args = [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0, tid, 1, 0];
        let args = inj.put(SCRATCH_ARGS, &to_bytes(&args))?;
        let c_here = inj.clone_thread(
            || format!("fork of process {}", c.pid),
            [args, 88, 0, 0, 0, 0],
        )?;
        guard.pids.push(c_here);
        match ptrace::wait_stop(c_here).map_err(child_err(c.pid, "wait for the new process"))? {
            Stop::Signal(libc::SIGSTOP) | Stop::Event { .. } => {}
            stop => return Err(RestoreError::ChildLost { pid: c.pid, stop }),
        }
        match c.zombie {
            Some(status) => {
                make_zombie(c, c_here, ip, scratch, status)?;
                guard.pids.retain(|&x| x != c_here);
                // Its SIGCHLD waits, blocked, in the parent: the parent had it long ago.
                let set = inj.put(SCRATCH_SIGSET, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
                let zero = inj.put(SCRATCH_TIMESPEC, &[0u8; 16])?;
                inj.raw(
                    "rt_sigtimedwait(SIGCHLD)",
                    libc::SYS_rt_sigtimedwait,
                    [set, 0, zero, 8, 0, 0],
                )?;
            }
            None => {
                here.insert(c.pid, c_here);
                setup(c, Some(p), c_here, tree, here, guard)?;
            }
        }
    }
    Ok(())
}

/// Ends the fresh child `at` the way the zombie `c` ended: `exit_group(code)`, or the signal
/// that killed it (its default action restored first). We, its tracer, see the exit first;
/// once we have waited for it, its parent finds it as an unreaped zombie.
fn make_zombie(
    c: &TreeProc,
    at: i32,
    ip: u64,
    scratch: u64,
    status: i32,
) -> Result<(), RestoreError> {
    let regs = ptrace::get_regs(at).map_err(child_err(c.pid, "read registers"))?;
    let mut inj = Injector::new(Remote::new(at, regs, ip));
    inj.set_scratch(scratch, PAGE_SIZE);
    crate::core::restore_name(&inj, &c.comm)?;
    let sig = status & 0x7f;
    let mut end = regs;
    end.rip = ip;
    end.orig_rax = u64::MAX;
    if sig != 0 {
        let act = inj.put(SCRATCH_DEFAULT_ACTION, &[0u8; 32])?;
        inj.call(
            || format!("rt_sigaction({sig}, SIG_DFL)"),
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, act, 0, 8, 0, 0],
        )?;
        // The signal must reach it: unblock everything.
        ptrace::set_sigmask(at, 0).map_err(child_err(c.pid, "unblock signals"))?;
        end.rax = libc::SYS_kill as u64;
        end.rdi = c.pid as u64;
        end.rsi = sig as u64;
    } else {
        end.rax = libc::SYS_exit_group as u64;
        end.rdi = ((status >> 8) & 0xff) as u64;
    }
    ptrace::set_regs(at, &end).map_err(child_err(c.pid, "write registers"))?;
    ptrace::cont(at, 0).map_err(child_err(c.pid, "continue"))?;
    loop {
        match ptrace::wait_stop(at).map_err(child_err(c.pid, "wait for its end"))? {
            Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
            // The signal it sends itself shows first as a signal stop: let it through.
            Stop::Signal(s) => {
                ptrace::cont(at, s).map_err(child_err(c.pid, "deliver its signal"))?
            }
            _ => ptrace::cont(at, 0).map_err(child_err(c.pid, "continue"))?,
        }
    }
}
