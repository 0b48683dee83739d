//! Write-fault hints.
//!
//! Every write fault a tracked process takes lands here: `exceptions:page_fault_user` for its own
//! stores, `exceptions:page_fault_kernel` for the kernel writing to its memory on its behalf
//! (`copy_to_user` in `read()` and friends). Each is one (tgid, page) record on the
//! `DIRTY_EVENTS` ring buffer; userspace drains it every round and counts the records per page,
//! so no round number is needed here. The records are written without waking anyone: nobody
//! waits on the ring, it is drained on the pre-copy's schedule.
//!
//! With the tracked VMAs write-protected in uffd async mode (DESIGN §5) the first write to each
//! page of a round traps and the kernel then makes the page writable, so one store pattern
//! yields one record per page per round; there are more only for pages re-protected in between
//! or written by several threads racing on the same fault.
//!
//! Hooks (tracepoints only): the x86 page-fault tracepoints fire from the exception handler,
//! before the fault is handled, for every fault on the machine; the write bit of the error code
//! and the tracked-set lookup reject everything else within a few instructions. Writes that do
//! not trap in the tracked task's context (GUP: `process_vm_writev`, `/proc/PID/mem`, O_DIRECT;
//! zaps: `MADV_DONTNEED`) are invisible here, which is why these are hints and PAGEMAP_SCAN is
//! the authority.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use cr_common::dirty::{
    DIRTY_EVENTS_BYTES, DIRTY_STATS_MAX_ENTRIES, DirtyKey, KERNEL_HALF, STAT_DIRTY_DROPS,
    STAT_DIRTY_FAULTS, X86_PF_WRITE, tp,
};

use crate::mmlock::note_kernel_fault;
use crate::task::{current_tgid, is_tracked};

/// Write faults; see `cr_common::dirty::DIRTY_EVENTS_MAP`.
#[map]
static DIRTY_EVENTS: RingBuf = RingBuf::with_byte_size(DIRTY_EVENTS_BYTES, 0);

/// Counters; see `cr_common::dirty::DIRTY_STATS_MAP`.
#[map]
static DIRTY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIRTY_STATS_MAX_ENTRIES, 0);

#[tracepoint]
fn page_fault_user(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_fault(&ctx, false).unwrap_or(1)
}

#[tracepoint]
fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    // As above. Same record layout (event class `x86_exceptions`).
    try_fault(&ctx, true).unwrap_or(1)
}

/// Runs in the faulting task, before the fault is handled. A fault the kernel takes on a
/// tracked process's memory (`copy_to_user`, ...) is also noted for `mmlock`: the kernel
/// handles it under the mmap lock, and that lock is the fault's, not a GUP writer's.
#[inline(always)]
fn try_fault(ctx: &TracePointContext, kernel: bool) -> Result<u32, i64> {
    // SAFETY: FAULT_ERROR_CODE is the offset of `unsigned long error_code` in the record
    // (checked against the kernel's format file by userspace before attach); read_at goes
    // through bpf_probe_read.
    let error_code: u64 = unsafe { ctx.read_at(tp::FAULT_ERROR_CODE) }.map_err(i64::from)?;
    if !kernel && error_code & X86_PF_WRITE == 0 {
        return Ok(0);
    }
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return Ok(0);
    }
    // SAFETY: as above, for `unsigned long address`.
    let address: u64 = unsafe { ctx.read_at(tp::FAULT_ADDRESS) }.map_err(i64::from)?;
    if address >= KERNEL_HALF {
        return Ok(0);
    }
    if kernel {
        note_kernel_fault();
    }
    if error_code & X86_PF_WRITE != 0 {
        record(&DirtyKey::new(tgid, address));
    }
    Ok(0)
}

#[inline(always)]
fn record(key: &DirtyKey) {
    match DIRTY_EVENTS.output::<DirtyKey>(key, u64::from(BPF_RB_NO_WAKEUP)) {
        Ok(()) => bump(STAT_DIRTY_FAULTS),
        // The ring is full: userspace has not drained it for too long.
        Err(_) => bump(STAT_DIRTY_DROPS),
    }
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(counter) = DIRTY_STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it is valid and
        // only this CPU writes it; BPF programs are not preempted on the same CPU mid-update.
        unsafe { *counter += 1 };
    }
}
