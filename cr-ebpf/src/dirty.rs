//! Write-fault hints.
//!
//! Every write fault a tracked process takes lands here: `exceptions:page_fault_user` for its own
//! stores, `exceptions:page_fault_kernel` for the kernel writing to its memory on its behalf
//! (`copy_to_user` in `read()` and friends). The page is recorded in `DIRTY_HINTS` keyed by
//! (tgid, page) with a write count: the first write of a page since userspace last drained the
//! map inserts it with 1, later ones increment. Userspace drains (reads and deletes) the map
//! every round, so no round number is needed here.
//!
//! With the tracked VMAs write-protected in uffd async mode (DESIGN §5) the first write to each
//! page of a round traps and the kernel then makes the page writable, so one store pattern
//! yields one count per page per round; the counts grow beyond 1 only for pages re-protected in
//! between or written by several threads racing on the same fault.
//!
//! Hooks (tracepoints only): the x86 page-fault tracepoints fire from the exception handler,
//! before the fault is handled, for every fault on the machine; the write bit of the error code
//! and the tracked-set lookup reject everything else within a few instructions. Writes that do
//! not trap in the tracked task's context (GUP: `process_vm_writev`, `/proc/PID/mem`, O_DIRECT;
//! zaps: `MADV_DONTNEED`) are invisible here, which is why these are hints and PAGEMAP_SCAN is
//! the authority.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use cr_common::dirty::{
    DIRTY_HINTS_MAX_ENTRIES, DIRTY_STATS_MAX_ENTRIES, DirtyKey, KERNEL_HALF, STAT_DIRTY_DROPS,
    STAT_DIRTY_FAULTS, X86_PF_WRITE, tp,
};

use crate::task::{current_tgid, is_tracked};

/// `EEXIST`: the insert lost a race with another CPU inserting the same page.
const EEXIST: i64 = 17;

/// Written pages; see `cr_common::dirty::DIRTY_HINTS_MAP`. Not preallocated: entries are
/// allocated on first write (safe from tracepoints since the kernel's BPF allocator, 6.1), so a
/// tracker that is never used costs no memory.
#[map]
static DIRTY_HINTS: HashMap<DirtyKey, u32> =
    HashMap::with_max_entries(DIRTY_HINTS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Counters; see `cr_common::dirty::DIRTY_STATS_MAP`.
#[map]
static DIRTY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIRTY_STATS_MAX_ENTRIES, 0);

#[tracepoint]
fn page_fault_user(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_write_fault(&ctx).unwrap_or(1)
}

#[tracepoint]
fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    // As above. Same record layout (event class `x86_exceptions`).
    try_write_fault(&ctx).unwrap_or(1)
}

/// Runs in the faulting task, before the fault is handled.
#[inline(always)]
fn try_write_fault(ctx: &TracePointContext) -> Result<u32, i64> {
    // SAFETY: FAULT_ERROR_CODE is the offset of `unsigned long error_code` in the record
    // (checked against the kernel's format file by userspace before attach); read_at goes
    // through bpf_probe_read.
    let error_code: u64 = unsafe { ctx.read_at(tp::FAULT_ERROR_CODE) }.map_err(i64::from)?;
    if error_code & X86_PF_WRITE == 0 {
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
    record(&DirtyKey::new(tgid, address));
    Ok(0)
}

#[inline(always)]
fn record(key: &DirtyKey) {
    if increment(key) {
        return;
    }
    match DIRTY_HINTS.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => bump(STAT_DIRTY_FAULTS),
        // Another CPU inserted the page between our lookup and insert: count on its entry.
        Err(e) if i64::from(e) == -EEXIST => {
            if !increment(key) {
                // Userspace drained it in the meantime; the page is in the drained batch.
                bump(STAT_DIRTY_FAULTS);
            }
        }
        Err(_) => bump(STAT_DIRTY_DROPS),
    }
}

/// Adds one write to an existing entry; false if there is none.
#[inline(always)]
fn increment(key: &DirtyKey) -> bool {
    match DIRTY_HINTS.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: the pointer comes from a successful lookup in a non-preallocated hash map,
            // whose elements stay valid for the rest of this program run even if deleted
            // concurrently (RCU). The add is not atomic (the BPF target offers no stable atomic
            // RMW on u32): two CPUs faulting on the same page at the same instant may count
            // once. The page itself is never lost, only a count.
            unsafe { *count = (*count).saturating_add(1) };
            bump(STAT_DIRTY_FAULTS);
            true
        }
        None => false,
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
