//! Who takes a tracked process's mmap lock: what `cr-ebpf`'s `mmlock` module records and
//! `cr-user::bpf::TaskTracker::mm_guard` reads.
//!
//! Every write to a process's memory that does not trap in one of its own tasks (so is never
//! hinted by the fault tracepoints) goes through GUP or a zap, and both run under the target's
//! mmap lock: `process_vm_writev`, `/proc/PID/mem`, ptrace pokes, O_DIRECT and futex fault-in
//! (GUP's slow path, the only one that can write to a write-protected page), `khugepaged`,
//! `process_madvise`. The `mmap_lock` tracepoints report each lock and unlock with the
//! `mm_struct` pointer, so a process's lock activity by anybody but fastcr is counted here. A
//! pre-copy whose counter did not move since its last walk of all memory, with nobody holding
//! the lock, knows every write since that walk was hinted (DESIGN §5).

use core::mem::size_of;

/// Per-CPU hash map of watched `mm_struct` pointers (`u64`) to their [`MmGuard`] (summed over
/// CPUs by userspace: each CPU counts its own events without atomics).
pub const MM_WATCH_MAP: &str = "MM_WATCH";
/// Capacity of [`MM_WATCH_MAP`]: one entry per tracked process.
pub const MM_WATCH_MAX_ENTRIES: u32 = 4096;

/// Hash map of [`HoldKey`] to the depth (`u32`) of a task's hold on a watched mmap lock;
/// entries leave when the depth drops to 0.
pub const MM_HOLDS_MAP: &str = "MM_HOLDS";
/// Capacity of [`MM_HOLDS_MAP`]. A hold that cannot be recorded marks its mm's guard
/// [`MmGuard::overflow`].
pub const MM_HOLDS_MAX_ENTRIES: u32 = 4096;

/// Hash map of fastcr's own thread ids (`u32`) to the last `mm_struct` pointer (`u64`) each
/// locked: how userspace learns a process's `mm_struct` (one `PAGEMAP_SCAN` of it, then a
/// lookup under its own tid).
pub const MM_LEARN_MAP: &str = "MM_LEARN";
/// Capacity of [`MM_LEARN_MAP`] (fastcr's threads).
pub const MM_LEARN_MAX_ENTRIES: u32 = 1024;

/// Name of the BPF global holding fastcr's tgid: its own lock traffic (page-table walks,
/// `process_vm_readv`) is not counted.
pub const FASTCR_TGID_GLOBAL: &str = "FASTCR_TGID";

/// Byte offsets of the tracepoint fields read, as laid out by Linux 6.18 in
/// `/sys/kernel/tracing/events/mmap_lock/*/format`. Userspace checks them before attaching.
pub mod tp {
    /// `struct mm_struct *mm`, in `mmap_lock_acquire_returned` and `mmap_lock_released`.
    pub const MM: usize = 8;
    /// `bool success` of `mmap_lock_acquire_returned` (false: a trylock that failed).
    pub const SUCCESS: usize = 25;
}

/// Value of [`MM_WATCH_MAP`].
///
/// ```text
///  0  events    u64   locks and unlocks by tasks other than fastcr's, since watched (this CPU)
///  8  overflow  u64   holds that could not be recorded in MM_HOLDS (this CPU)
/// 16
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmGuard {
    /// Lock and unlock events by others.
    pub events: u64,
    /// Holds not recorded because [`MM_HOLDS_MAP`] was full.
    pub overflow: u64,
}

const _: () = assert!(size_of::<MmGuard>() == 16);

/// Key of [`MM_HOLDS_MAP`]: one task's hold on one watched mm.
///
/// ```text
///  0  mm    u64   the mm_struct pointer
///  8  tid   u32   the holding task
/// 12  _pad  u32   always 0
/// 16
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HoldKey {
    /// The `mm_struct` pointer.
    pub mm: u64,
    /// The holding task.
    pub tid: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

const _: () = assert!(size_of::<HoldKey>() == 16);

// SAFETY: both are #[repr(C)], Copy, without implicit padding (the size asserts equal the sum
// of their fields) and valid for every bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for MmGuard {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for HoldKey {}
