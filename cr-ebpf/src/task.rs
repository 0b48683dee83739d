//! Task lifecycle tracking.
//!
//! `TRACKED` holds the tgids fastcr follows. Userspace inserts the root; every new *process*
//! created by a tracked process is inserted here, in the context of the clone, before the child
//! first runs, so a child forked while tracking is followed from its first instruction. Thread
//! creation, exec and exits of tracked processes are reported; a process leaves `TRACKED` when
//! its last thread exits.
//!
//! Hooks (tracepoints only: fentry/kprobes are refused on the project's kernels):
//! - `task:task_newtask` rather than `sched:sched_process_fork`: both fire in the parent before
//!   the child is woken, but only `task_newtask` carries `clone_flags`, which is what tells a new
//!   thread (`CLONE_THREAD`, same tgid) from a new process (tgid = its pid). It fires at the end
//!   of `copy_process`, after the last failure point, so no entry is inserted for a clone that
//!   then fails.
//! - `sched:sched_process_exit`: its `group_dead` field says the whole thread group is gone.
//!   That is the right moment to forget a process, not the leader's exit: the leader may call
//!   `pthread_exit` and leave other threads running.
//! - `sched:sched_process_exec`.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::{debug, warn};
use cr_common::task::{
    CLONE_THREAD, STAT_EVENTS_LOST, STAT_TRACKED_FULL, TASK_EVENTS_BYTES, TASK_STATS_MAX_ENTRIES,
    TRACKED_MAX_ENTRIES, TaskEvent, TaskEventKind, tp,
};

/// Tracked tgids; see `cr_common::task::TRACKED_MAP`.
#[map]
pub(crate) static TRACKED: HashMap<u32, u32> = HashMap::with_max_entries(TRACKED_MAX_ENTRIES, 0);

/// Events to userspace; see `cr_common::task::TASK_EVENTS_MAP`.
#[map]
static TASK_EVENTS: RingBuf = RingBuf::with_byte_size(TASK_EVENTS_BYTES, 0);

/// Loss counters; see `cr_common::task::TASK_STATS_MAP`.
#[map]
static TASK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TASK_STATS_MAX_ENTRIES, 0);

#[tracepoint]
fn task_newtask(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_task_newtask(&ctx).unwrap_or(1)
}

#[tracepoint]
fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_sched_process_exit(&ctx).unwrap_or(1)
}

#[tracepoint]
fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_sched_process_exec(&ctx).unwrap_or(1)
}

/// Runs in the parent (the task calling clone), after the child is fully set up and before it
/// is woken.
fn try_task_newtask(ctx: &TracePointContext) -> Result<u32, i64> {
    let parent_tgid = current_tgid();
    if !is_tracked(parent_tgid) {
        return Ok(0);
    }
    // SAFETY: NEWTASK_PID is the offset of `pid_t pid` in this tracepoint's record (checked
    // against the kernel's format file by userspace before attach); read_at bounds-checks
    // through bpf_probe_read.
    let child: i32 = unsafe { ctx.read_at(tp::NEWTASK_PID) }.map_err(i64::from)?;
    // SAFETY: as above, for `u64 clone_flags`.
    let clone_flags: u64 = unsafe { ctx.read_at(tp::NEWTASK_CLONE_FLAGS) }.map_err(i64::from)?;
    let child = child.cast_unsigned();

    let (kind, child_tgid) = if clone_flags & CLONE_THREAD != 0 {
        (TaskEventKind::Thread, parent_tgid)
    } else {
        // A new process: its tgid is its pid. Track it now so its own forks are seen even if
        // it forks before userspace has read this event.
        if TRACKED.insert(child, parent_tgid, 0).is_err() {
            bump(STAT_TRACKED_FULL);
            warn!(
                ctx,
                "TRACKED full: child {} of {} not tracked", child, parent_tgid
            );
        }
        (TaskEventKind::Fork, child)
    };
    debug!(
        ctx,
        "newtask {} tgid {} parent {}", child, child_tgid, parent_tgid
    );
    emit(TaskEvent {
        kind: kind as u32,
        pid: child,
        tgid: child_tgid,
        parent_tgid,
        ts_ns: ktime_ns(),
        clone_flags,
        old_pid: 0,
        _pad: 0,
        comm: current_comm(),
    });
    Ok(0)
}

/// Runs in the exiting task.
fn try_sched_process_exit(ctx: &TracePointContext) -> Result<u32, i64> {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return Ok(0);
    }
    // SAFETY: EXIT_PID is the offset of `pid_t pid` in this tracepoint's record (checked by
    // userspace); read_at goes through bpf_probe_read.
    let pid: i32 = unsafe { ctx.read_at(tp::EXIT_PID) }.map_err(i64::from)?;
    // SAFETY: as above, for `bool group_dead` (one byte, 0 or 1).
    let group_dead: u8 = unsafe { ctx.read_at(tp::EXIT_GROUP_DEAD) }.map_err(i64::from)?;

    let kind = if group_dead != 0 {
        // Removal failing means the entry is already gone (userspace untracked it): nothing
        // left to do.
        let _ = TRACKED.remove(tgid);
        TaskEventKind::Exit
    } else {
        TaskEventKind::ThreadExit
    };
    emit(TaskEvent {
        kind: kind as u32,
        pid: pid.cast_unsigned(),
        tgid,
        parent_tgid: 0,
        ts_ns: ktime_ns(),
        clone_flags: 0,
        old_pid: 0,
        _pad: 0,
        comm: current_comm(),
    });
    Ok(0)
}

/// Runs in the task that exec'd, after the new image is in place.
fn try_sched_process_exec(ctx: &TracePointContext) -> Result<u32, i64> {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return Ok(0);
    }
    // SAFETY: EXEC_PID is the offset of `pid_t pid` in this tracepoint's record (checked by
    // userspace); read_at goes through bpf_probe_read.
    let pid: i32 = unsafe { ctx.read_at(tp::EXEC_PID) }.map_err(i64::from)?;
    // SAFETY: as above, for `pid_t old_pid`.
    let old_pid: i32 = unsafe { ctx.read_at(tp::EXEC_OLD_PID) }.map_err(i64::from)?;
    emit(TaskEvent {
        kind: TaskEventKind::Exec as u32,
        pid: pid.cast_unsigned(),
        tgid,
        parent_tgid: 0,
        ts_ns: ktime_ns(),
        clone_flags: 0,
        old_pid: old_pid.cast_unsigned(),
        _pad: 0,
        comm: current_comm(),
    });
    Ok(0)
}

#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    // The upper 32 bits are the tgid; the shift leaves exactly 32 significant bits.
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
pub(crate) fn is_tracked(tgid: u32) -> bool {
    TRACKED.get_ptr(tgid).is_some()
}

#[inline(always)]
pub(crate) fn ktime_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0; 16])
}

#[inline(always)]
fn emit(event: TaskEvent) {
    match TASK_EVENTS.reserve::<TaskEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => bump(STAT_EVENTS_LOST),
    }
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(counter) = TASK_STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is valid and
        // only this CPU writes it; BPF programs are not preempted on the same CPU mid-update.
        unsafe { *counter += 1 };
    }
}
