//! Write-fault hints: the userspace half of `cr-ebpf`'s `dirty` module.
//!
//! The BPF programs put a (tgid, page) record on the `DIRTY_EVENTS` ring buffer for every write
//! fault of a tracked process; [`drain`] takes every record queued and counts them per page, so
//! each call yields the pages written since the previous one (one "round"). Hints are a subset of what PAGEMAP_SCAN reports
//! for the same round (writes that do not trap in the writer's context are invisible to BPF,
//! DESIGN §5), so callers use them to stream pages early and to measure the dirty rate, never to
//! decide what the final copy must contain.

use aya::maps::{MapData, RingBuf};
use cr_common::dirty::{DirtyKey, tp};

use super::Hook;

/// One page a tracked process wrote since the previous drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DirtyHint {
    /// The process that wrote.
    pub tgid: u32,
    /// Page-aligned virtual address in that process.
    pub page: u64,
    /// Write faults counted on the page in the round (at least 1; may under-count when CPUs
    /// fault on the same page at the same instant).
    pub writes: u32,
}

/// The fault tracepoints. Both use the `x86_exceptions` record, so they read the same offsets.
pub(super) const HOOKS: [Hook; 2] = [
    Hook {
        program: "page_fault_user",
        category: "exceptions",
        tracepoint: "page_fault_user",
        fields: &[
            ("address", tp::FAULT_ADDRESS),
            ("error_code", tp::FAULT_ERROR_CODE),
        ],
    },
    Hook {
        program: "page_fault_kernel",
        category: "exceptions",
        tracepoint: "page_fault_kernel",
        fields: &[
            ("address", tp::FAULT_ADDRESS),
            ("error_code", tp::FAULT_ERROR_CODE),
        ],
    },
];

/// Takes every record queued on `ring` and returns the pages written, sorted by (tgid, page),
/// each with its number of records. A fault recorded while this runs is either taken now or
/// left for the next drain, never lost.
pub(super) fn drain(ring: &mut RingBuf<MapData>) -> Vec<DirtyHint> {
    let mut keys = Vec::new();
    while let Some(item) = ring.next() {
        match key_from(&item) {
            Some(key) => keys.push(key),
            // Only a mismatched object/loader pair can produce this; keep draining so the ring
            // buffer does not stall.
            None => tracing::warn!(len = item.len(), "short write-fault record ignored"),
        }
    }
    count(keys)
}

fn key_from(bytes: &[u8]) -> Option<(u32, u64)> {
    let tgid = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
    let page = u64::from_ne_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((tgid, page))
}

/// Sorted (tgid, page) pairs, one per record, as hints with their write counts.
fn count(mut keys: Vec<(u32, u64)>) -> Vec<DirtyHint> {
    keys.sort_unstable();
    let mut hints: Vec<DirtyHint> = Vec::with_capacity(keys.len());
    for (tgid, page) in keys {
        match hints.last_mut() {
            Some(last) if last.tgid == tgid && last.page == page => {
                last.writes = last.writes.saturating_add(1);
            }
            _ => hints.push(DirtyHint {
                tgid,
                page,
                writes: 1,
            }),
        }
    }
    hints
}

const _: () = assert!(size_of::<DirtyKey>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_counted_per_page() {
        let h = count(vec![
            (2, 0x2000),
            (1, 0x5000),
            (2, 0x2000),
            (1, 0x1000),
            (2, 0x2000),
        ]);
        let got: Vec<(u32, u64, u32)> = h.iter().map(|h| (h.tgid, h.page, h.writes)).collect();
        assert_eq!(got, vec![(1, 0x1000, 1), (1, 0x5000, 1), (2, 0x2000, 3)]);
        assert!(count(Vec::new()).is_empty());
    }

    #[test]
    fn records_decode_as_cr_common_lays_them_out() {
        let k = DirtyKey::new(42, 0x7f00_1234_5678);
        let mut b = Vec::new();
        b.extend_from_slice(&k.tgid.to_ne_bytes());
        b.extend_from_slice(&k._pad.to_ne_bytes());
        b.extend_from_slice(&k.page.to_ne_bytes());
        assert_eq!(key_from(&b), Some((42, 0x7f00_1234_5000)));
        assert_eq!(key_from(&b[..12]), None);
    }
}
