//! VMA-change events: `mmap`, `munmap`, `mremap`, `brk`, `madvise` and `mprotect` of tracked
//! processes.
//!
//! `syscalls:sys_exit_*` gives only the return value, so `sys_enter_*` stashes the arguments in
//! `VMA_PENDING` keyed by tid (a thread is in at most one syscall at a time) and `sys_exit_*`
//! completes that record with the result and emits it on `VMA_EVENTS`. The stash is checked
//! against the exiting syscall's kind, so a record left behind by a syscall that never returned
//! (a thread killed inside it cannot be, but a stale entry is cheap to guard against) is dropped
//! rather than mislabelled.
//!
//! Only the enter side consults `TRACKED`: the exit side looks up its own tid, which is in the
//! stash only if the enter side accepted it.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use cr_common::vma::{
    MAX_ARGS, STAT_VMA_EVENTS_LOST, STAT_VMA_PENDING_FULL, VMA_EVENTS_BYTES,
    VMA_PENDING_MAX_ENTRIES, VMA_STATS_MAX_ENTRIES, VmaEvent, VmaEventKind, tp,
};

use crate::task::{current_tgid, is_tracked, ktime_ns};

/// Events to userspace; see `cr_common::vma::VMA_EVENTS_MAP`.
#[map]
static VMA_EVENTS: RingBuf = RingBuf::with_byte_size(VMA_EVENTS_BYTES, 0);

/// Syscalls in flight; see `cr_common::vma::VMA_PENDING_MAP`. Not preallocated: it is empty
/// except while a tracked thread is inside one of the six syscalls.
#[map]
static VMA_PENDING: HashMap<u32, VmaEvent> =
    HashMap::with_max_entries(VMA_PENDING_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Loss counters; see `cr_common::vma::VMA_STATS_MAP`.
#[map]
static VMA_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VMA_STATS_MAX_ENTRIES, 0);

/// Defines the `sys_enter_<name>`/`sys_exit_<name>` program pair of one syscall.
macro_rules! vma_syscall {
    ($enter:ident, $exit:ident, $kind:expr) => {
        #[tracepoint]
        fn $enter(ctx: TracePointContext) -> u32 {
            // The return value of a tracepoint program is ignored by the kernel; 1 marks a
            // failed read for anyone inspecting the program with bpftool.
            try_enter(&ctx, $kind).unwrap_or(1)
        }

        #[tracepoint]
        fn $exit(ctx: TracePointContext) -> u32 {
            // As above.
            try_exit(&ctx, $kind).unwrap_or(1)
        }
    };
}

vma_syscall!(sys_enter_mmap, sys_exit_mmap, VmaEventKind::Mmap);
vma_syscall!(sys_enter_munmap, sys_exit_munmap, VmaEventKind::Munmap);
vma_syscall!(sys_enter_mremap, sys_exit_mremap, VmaEventKind::Mremap);
vma_syscall!(sys_enter_brk, sys_exit_brk, VmaEventKind::Brk);
vma_syscall!(sys_enter_madvise, sys_exit_madvise, VmaEventKind::Madvise);
vma_syscall!(
    sys_enter_mprotect,
    sys_exit_mprotect,
    VmaEventKind::Mprotect
);

/// Runs in the calling thread before the syscall body: stash the arguments.
#[inline(always)]
fn try_enter(ctx: &TracePointContext, kind: VmaEventKind) -> Result<u32, i64> {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return Ok(0);
    }
    let nargs = kind.nargs();
    let mut args = [0u64; MAX_ARGS];
    for (i, arg) in args.iter_mut().enumerate() {
        if i < nargs {
            // SAFETY: argument i of a sys_enter record is at ENTER_ARG0 + 8 i (checked against
            // the kernel's format file, by name, by userspace before attach), and i < nargs
            // keeps the read inside the record; read_at goes through bpf_probe_read.
            *arg = unsafe { ctx.read_at(tp::ENTER_ARG0 + i * tp::ENTER_ARG_SIZE) }
                .map_err(i64::from)?;
        }
    }
    let event = VmaEvent {
        kind: kind as u32,
        tgid,
        tid: current_tid(),
        _pad: 0,
        ts_ns: 0,
        ret: 0,
        args,
    };
    // BPF_ANY: a stale entry of this tid (see the module doc) is simply replaced.
    if VMA_PENDING
        .insert(event.tid, event, u64::from(BPF_ANY))
        .is_err()
    {
        bump(STAT_VMA_PENDING_FULL);
    }
    Ok(0)
}

/// Runs in the calling thread after the syscall body: complete and emit the stashed record.
#[inline(always)]
fn try_exit(ctx: &TracePointContext, kind: VmaEventKind) -> Result<u32, i64> {
    let tid = current_tid();
    let Some(pending) = VMA_PENDING.get_ptr(tid) else {
        return Ok(0);
    };
    // SAFETY: the pointer comes from a successful lookup in a non-preallocated hash map: the
    // element stays valid for this program run (RCU) and only this thread writes its own key.
    let mut event = unsafe { *pending };
    // Removal failing means the entry is already gone; nothing to undo.
    let _ = VMA_PENDING.remove(tid);
    if event.kind != kind as u32 {
        return Ok(0);
    }
    // SAFETY: EXIT_RET is the offset of `long ret` in every sys_exit record (checked by
    // userspace); read_at goes through bpf_probe_read.
    event.ret = unsafe { ctx.read_at(tp::EXIT_RET) }.map_err(i64::from)?;
    event.ts_ns = ktime_ns();
    match VMA_EVENTS.reserve::<VmaEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => bump(STAT_VMA_EVENTS_LOST),
    }
    Ok(0)
}

#[inline(always)]
fn current_tid() -> u32 {
    // The lower 32 bits are the tid; the truncation is the point.
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(counter) = VMA_STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is valid and
        // only this CPU writes it; BPF programs are not preempted on the same CPU mid-update.
        unsafe { *counter += 1 };
    }
}
