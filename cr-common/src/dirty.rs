//! Write-fault hints: which pages the tracked processes wrote, as the page-fault tracepoints see
//! them. What `cr-ebpf`'s `dirty` module records and `cr-user::bpf::TaskTracker::drain_dirty`
//! reads.
//!
//! A hint is not proof: writes that do not trap in the writing task's context (GUP users such as
//! `process_vm_writev`, `/proc/PID/mem`, O_DIRECT, and zaps like `MADV_DONTNEED`) never reach
//! the tracepoints. The authoritative dirty set is always PAGEMAP_SCAN's (DESIGN §5).

use core::mem::size_of;

/// Ring buffer of write faults: one [`DirtyKey`] record per write fault of a tracked process.
/// Userspace drains it every round and counts the records per page; the records of a round are
/// about one per page written, since a page write-faults once per protection round (async
/// write-protect, DESIGN §5). A ring buffer rather than a hash map keyed by page: draining it
/// costs per record, while a hash map's batched drain walks every bucket (about 1 ms for
/// 262 144 buckets), which sat in every closing round of a pre-copy.
pub const DIRTY_EVENTS_MAP: &str = "DIRTY_EVENTS";
/// Size in bytes of [`DIRTY_EVENTS_MAP`] (a power of two, a multiple of the page size): 16 MiB,
/// about 700 000 records (16 bytes plus the ring's 8-byte header each) between two drains.
pub const DIRTY_EVENTS_BYTES: u32 = 1 << 24;

/// Per-CPU array of `u64` counters, indexed by the `STAT_*` constants of this module.
pub const DIRTY_STATS_MAP: &str = "DIRTY_STATS";
/// Write faults that could not be recorded because [`DIRTY_EVENTS_MAP`] was full.
pub const STAT_DIRTY_DROPS: u32 = 0;
/// Write faults recorded (new pages and repeated writes alike).
pub const STAT_DIRTY_FAULTS: u32 = 1;
/// Number of entries of [`DIRTY_STATS_MAP`].
pub const DIRTY_STATS_MAX_ENTRIES: u32 = 2;

/// `X86_PF_WRITE` (`arch/x86/include/asm/trap_pf.h`): bit 1 of the page-fault error code is set
/// when the faulting access was a write.
pub const X86_PF_WRITE: u64 = 1 << 1;
/// Log2 of the base page size the hints are kept at (4 KiB; a write into a THP is recorded at
/// the 4 KiB page it touched).
pub const PAGE_SHIFT: u32 = 12;
/// Mask that rounds an address down to its page.
pub const PAGE_MASK: u64 = !((1 << PAGE_SHIFT) - 1);
/// Faults on addresses at or above this are kernel-half addresses (x86-64: bit 63 set), never
/// part of a user mapping, and are ignored.
pub const KERNEL_HALF: u64 = 1 << 63;

/// Byte offsets of the tracepoint fields the fault programs read, as laid out by Linux 6.18 in
/// `/sys/kernel/tracing/events/exceptions/page_fault_{user,kernel}/format` (both events share
/// the `x86_exceptions` class, so one set of offsets serves both). Userspace checks them before
/// attaching.
pub mod tp {
    /// `unsigned long address`: the faulting virtual address (CR2).
    pub const FAULT_ADDRESS: usize = 8;
    /// `unsigned long error_code`: the hardware error code; see [`super::X86_PF_WRITE`].
    pub const FAULT_ERROR_CODE: usize = 24;
}

/// Record of [`DIRTY_EVENTS_MAP`]: which process wrote which page.
///
/// ```text
///  0  tgid   u32   the process that wrote
///  4  _pad   u32   always 0
///  8  page   u64   page-aligned virtual address
/// 16
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirtyKey {
    /// Thread group id of the writer.
    pub tgid: u32,
    /// Explicit padding, always 0 (the record has no implicit padding).
    pub _pad: u32,
    /// Page-aligned address of the written page.
    pub page: u64,
}

const _: () = assert!(size_of::<DirtyKey>() == 16);

impl DirtyKey {
    /// The key of the page containing `address` in `tgid`.
    #[must_use]
    pub const fn new(tgid: u32, address: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            page: address & PAGE_MASK,
        }
    }
}

// SAFETY: DirtyKey is #[repr(C)], Copy, has no implicit padding (the size assert equals the sum
// of its fields; `_pad` makes the alignment hole explicit) and every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DirtyKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rounds_down_to_the_page() {
        let k = DirtyKey::new(7, 0x7f00_1234_5fff);
        assert_eq!(k.page, 0x7f00_1234_5000);
        assert_eq!(k.tgid, 7);
        assert_eq!(k._pad, 0);
        assert_eq!(DirtyKey::new(7, 0x7f00_1234_5000), k);
    }
}
