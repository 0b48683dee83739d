//! Creating the processes of a tree for restore, before any of them is rebuilt: each process
//! (still a stopped fork of fastcr) first takes its session or process group, then forks its
//! children with their pids (`clone3` with `set_tid`, injected), which so inherit the right
//! parent, session and group. Zombies are forked the same way and exit at once with their
//! recorded status, so their parent finds them unreaped as it left them.
//!
//! Unless the restore is lazy, a process that has children gets its memory rebuilt before it
//! forks them (`Early`): they inherit its pages, so the pages they shared copy-on-write when
//! dumped are shared again (see `mm::restore`). Everything else of every process is rebuilt
//! after the whole tree exists.

use std::collections::BTreeMap;

use crate::image::tree::{TreeImage, TreeProc};
use crate::inject::{Injector, to_bytes};
use crate::proc;
use crate::restore::{Building, Memory, ProcImage, RestoreError};
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

/// What is needed to rebuild a parent's memory before it forks its children.
#[derive(Clone, Copy)]
pub(crate) struct Early<'a> {
    /// The live processes' images.
    pub procs: &'a [ProcImage],
    /// The objects their mappings may use.
    pub objects: &'a crate::files::objects::Objects,
}

/// The processes created, with what was already rebuilt of them.
#[derive(Default)]
pub(crate) struct Created {
    /// pid → pid here, for the live processes (root included).
    pub here: BTreeMap<i32, i32>,
    /// The processes whose memory was rebuilt before they forked their children, by pid.
    pub memory: BTreeMap<i32, Memory>,
}

/// Creates every process of `tree` below the root, which runs as `root_here` (stopped, traced
/// with fork and clone events). With `early`, each process with children has its memory
/// rebuilt before it forks them.
pub(crate) fn create(
    root_here: i32,
    tree: &TreeImage,
    guard: &mut Building,
    early: Option<Early<'_>>,
) -> Result<Created, RestoreError> {
    let mut out = Created::default();
    let Some(root) = tree.procs.first() else {
        return Ok(out);
    };
    out.here.insert(root.pid, root_here);
    let mut ctx = Ctx {
        tree,
        early,
        out: &mut out,
        guard,
    };
    setup(&mut ctx, root, None, root_here)?;
    Ok(out)
}

/// What the recursion of [`setup`] carries.
struct Ctx<'a, 'b> {
    tree: &'a TreeImage,
    early: Option<Early<'a>>,
    out: &'b mut Created,
    guard: &'b mut Building,
}

fn child_err(pid: i32, step: &'static str) -> impl FnOnce(SyscallError) -> RestoreError {
    move |source| RestoreError::Child { pid, step, source }
}

/// Session and group for `p`, then (its memory first, with `early`) its children, recursively.
fn setup(
    ctx: &mut Ctx<'_, '_>,
    p: &TreeProc,
    parent: Option<&TreeProc>,
    at: i32,
) -> Result<(), RestoreError> {
    let tree = ctx.tree;
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
    let early = ctx.early;
    let image = |pid: i32| early.and_then(|e| e.procs.iter().find(|i| i.pid == pid));
    let mut memory = match (early, image(p.pid)) {
        (Some(early), Some(img)) => {
            // Forked by a parent rebuilt before: it holds the VMAs they share.
            let from = parent.and_then(|pp| image(pp.pid)).map(|i| &i.mm);
            Some(crate::restore::build_memory(
                img,
                at,
                early.objects,
                None,
                from,
            )?)
        }
        _ => None,
    };
    // clone3's arguments: in the trampoline's scratch once the memory is rebuilt, else in a
    // scratch page of their own (the transplant unmaps it later).
    let (ip, scratch) = match memory.as_mut() {
        Some(m) => (m.trampoline(), m.trampoline() + PAGE_SIZE),
        None => {
            let scratch = inj.call(
                || "mmap of a scratch page".into(),
                "mmap",
                libc::SYS_mmap,
                crate::inject::anon_mmap_args(PAGE_SIZE),
            )?;
            inj.set_scratch(scratch, PAGE_SIZE);
            (ip, scratch)
        }
    };
    for c in children {
        let inj: &mut Injector = match memory.as_mut() {
            Some(m) => m.injector(),
            None => &mut inj,
        };
        let tid = inj.put(SCRATCH_TID, &c.pid.to_le_bytes())?;
        // struct clone_args: a fork (no flags), SIGCHLD to the parent, with the child's pid.
        let args = [0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0, tid, 1, 0];
        let args = inj.put(SCRATCH_ARGS, &to_bytes(&args))?;
        let c_here = inj.clone_thread(
            || format!("fork of process {}", c.pid),
            [args, 88, 0, 0, 0, 0],
        )?;
        ctx.guard.pids.push(c_here);
        match ptrace::wait_stop(c_here).map_err(child_err(c.pid, "wait for the new process"))? {
            Stop::Signal(libc::SIGSTOP) | Stop::Event { .. } => {}
            stop => return Err(RestoreError::ChildLost { pid: c.pid, stop }),
        }
        match c.zombie {
            Some(status) => {
                make_zombie(c, c_here, ip, scratch, status)?;
                ctx.guard.pids.retain(|&x| x != c_here);
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
                ctx.out.here.insert(c.pid, c_here);
                setup(ctx, c, Some(p), c_here)?;
            }
        }
    }
    if let Some(m) = memory {
        ctx.out.memory.insert(p.pid, m);
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
