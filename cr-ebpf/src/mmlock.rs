//! mmap-lock activity on the tracked processes' memory by anybody but fastcr.
//!
//! A write to a process's memory that does not trap in one of its tasks (and so is never
//! hinted by `dirty`) is made by GUP's slow path or a zap, both under the target's mmap lock;
//! see `cr_common::mmlock`. For each watched `mm_struct` this counts every lock and unlock by a
//! task outside fastcr's thread group, and keeps which tasks hold the lock right now, so that
//! userspace can tell, at the freeze, that nobody but the process's own faulting tasks touched
//! its memory since a given moment.
//!
//! Hooks (tracepoints only): `mmap_lock:mmap_lock_acquire_returned` (after a lock or a trylock,
//! with its success) and `mmap_lock:mmap_lock_released`. They fire for every mmap lock on the
//! machine; a hash lookup on the mm pointer rejects the rest. Faults served under a per-VMA
//! lock do not take the mmap lock, so a tracked process's own stores cost nothing here.
//!
//! fastcr's own tasks are left out (page-table walks and `process_vm_readv` read, never
//! write); for them the program only notes which mm each thread locked last, so userspace can
//! learn a process's mm pointer by walking one page of its page tables.
//!
//! Left out too: the lock a tracked task takes to handle a page fault the kernel took on its
//! memory on its behalf (`copy_to_user` into a write-protected buffer: `read()`, `readlink()`,
//! ...). x86 handles kernel-mode faults on user addresses under the mmap lock, not a per-VMA
//! lock, and a process does that all the time; the fault itself is hinted. `dirty` notes such
//! a fault in `MM_FAULTING` just before the kernel handles it; the next lock event of that task
//! consumes the note, and is excused if it is a lock taken within [`FAULT_LOCK_NS`] of the
//! fault (and then its unlock is excused too). A note that a lock does not consume at once
//! (a fault with page faults disabled, which fails without the lock) goes stale: the next
//! lock, a GUP writer's perhaps, is counted.

use crate::task::ktime_ns;
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use cr_common::mmlock::{
    HoldKey, MM_HOLDS_MAX_ENTRIES, MM_LEARN_MAX_ENTRIES, MM_WATCH_MAX_ENTRIES, MmGuard, tp,
};

/// fastcr's tgid, set by the loader; see `cr_common::mmlock::FASTCR_TGID_GLOBAL`.
#[unsafe(no_mangle)]
static FASTCR_TGID: u32 = 0;

/// Watched mms; see `cr_common::mmlock::MM_WATCH_MAP`.
#[map]
static MM_WATCH: PerCpuHashMap<u64, MmGuard> =
    PerCpuHashMap::with_max_entries(MM_WATCH_MAX_ENTRIES, 0);

/// Current holds on watched mms; see `cr_common::mmlock::MM_HOLDS_MAP`.
#[map]
static MM_HOLDS: HashMap<HoldKey, u32> = HashMap::with_max_entries(MM_HOLDS_MAX_ENTRIES, 0);

/// Tracked tasks inside a kernel-mode fault on their memory: tid -> the fault's time, with
/// [`EXCUSED`] set once its lock is taken.
#[map]
static MM_FAULTING: HashMap<u32, u64> = HashMap::with_max_entries(MM_HOLDS_MAX_ENTRIES, 0);

/// Set in an `MM_FAULTING` value while the fault holds the lock.
const EXCUSED: u64 = 1 << 63;
/// A lock taken this soon after a kernel-mode fault of the same task is the fault's (x86 takes
/// it a few instructions after the tracepoint; a later one is counted, which costs speed, not
/// correctness).
const FAULT_LOCK_NS: u64 = 50_000;

/// Called by `dirty` for a kernel-mode fault of a tracked task on a user address.
#[inline(always)]
pub(crate) fn note_kernel_fault() {
    // The lower 32 bits are the tid.
    let tid = bpf_get_current_pid_tgid() as u32;
    // Best effort: without a note the fault's lock is counted.
    let _ = MM_FAULTING.insert(tid, ktime_ns() & !EXCUSED, 0);
}

/// fastcr's threads' last locked mm; see `cr_common::mmlock::MM_LEARN_MAP`.
#[map]
static MM_LEARN: HashMap<u32, u64> = HashMap::with_max_entries(MM_LEARN_MAX_ENTRIES, 0);

#[tracepoint]
fn mmap_lock_acquire_returned(ctx: TracePointContext) -> u32 {
    // The return value of a tracepoint program is ignored by the kernel; 1 marks a failed read
    // for anyone inspecting the program with bpftool.
    try_lock_event(&ctx, true).unwrap_or(1)
}

#[tracepoint]
fn mmap_lock_released(ctx: TracePointContext) -> u32 {
    // As above.
    try_lock_event(&ctx, false).unwrap_or(1)
}

/// Runs in the task that locked (`acquired`) or unlocked the mm.
#[inline(always)]
fn try_lock_event(ctx: &TracePointContext, acquired: bool) -> Result<u32, i64> {
    if acquired {
        // SAFETY: SUCCESS is the offset of `bool success` in the acquire record (checked
        // against the kernel's format file by userspace before attach); read_at goes through
        // bpf_probe_read.
        let success: u8 = unsafe { ctx.read_at(tp::SUCCESS) }.map_err(i64::from)?;
        if success == 0 {
            return Ok(0);
        }
    }
    // SAFETY: as above, for `struct mm_struct *mm`, read as the pointer's value only.
    let mm: u64 = unsafe { ctx.read_at(tp::MM) }.map_err(i64::from)?;
    let id = bpf_get_current_pid_tgid();
    // The upper 32 bits are the tgid, the lower the tid.
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: a plain read of a global the loader may have rewritten before load; volatile so
    // the compiler does not fold the initializer in.
    let fastcr = unsafe { core::ptr::read_volatile(&raw const FASTCR_TGID) };
    if tgid == fastcr {
        if acquired {
            // Best effort: a full map only means userspace cannot learn this mm.
            let _ = MM_LEARN.insert(tid, mm, 0);
        }
        return Ok(0);
    }
    let Some(guard) = MM_WATCH.get_ptr_mut(mm) else {
        return Ok(0);
    };
    if fault_lock(tid, acquired) {
        return Ok(0);
    }
    // SAFETY: the pointer comes from a successful per-CPU lookup, so it is this CPU's value,
    // valid while this program runs, and only this CPU writes it (BPF programs are not
    // preempted on the same CPU mid-update).
    unsafe { (*guard).events += 1 };
    let key = HoldKey { mm, tid, _pad: 0 };
    match (MM_HOLDS.get_ptr_mut(key), acquired) {
        // SAFETY: as above; only this task updates its own hold entry.
        (Some(depth), true) => unsafe { *depth += 1 },
        (Some(depth), false) => {
            // SAFETY: as above.
            let left = unsafe {
                *depth = (*depth).saturating_sub(1);
                *depth
            };
            if left == 0 {
                let _ = MM_HOLDS.remove(key);
            }
        }
        (None, true) => {
            if MM_HOLDS.insert(key, 1u32, u64::from(BPF_NOEXIST)).is_err() {
                // SAFETY: as for `events`.
                unsafe { (*guard).overflow += 1 };
            }
        }
        // The unlock of a hold taken before the mm was watched.
        (None, false) => {}
    }
    Ok(0)
}

/// Whether this lock event of `tid` belongs to the kernel-mode fault it just took (see the
/// module doc); consumes the fault's note otherwise.
#[inline(always)]
fn fault_lock(tid: u32, acquired: bool) -> bool {
    let Some(note) = MM_FAULTING.get_ptr_mut(tid) else {
        return false;
    };
    // SAFETY: from a successful lookup, valid while this program runs; only this task updates
    // its own note.
    let value = unsafe { *note };
    let excused = if acquired {
        value & EXCUSED == 0 && ktime_ns().wrapping_sub(value) <= FAULT_LOCK_NS
    } else {
        value & EXCUSED != 0
    };
    if acquired && excused {
        // SAFETY: as above.
        unsafe { *note = value | EXCUSED };
    } else {
        let _ = MM_FAULTING.remove(tid);
    }
    excused
}
