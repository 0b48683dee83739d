//! Write-fault hints: the userspace half of `cr-ebpf`'s `dirty` module.
//!
//! The BPF programs fill `DIRTY_HINTS` with (tgid, page) → write count for every write fault of a
//! tracked process; [`drain`] reads and deletes what it returns, so each call yields the pages
//! written since the previous one (one "round"). Hints are a subset of what PAGEMAP_SCAN reports
//! for the same round (writes that do not trap in the writer's context are invisible to BPF,
//! DESIGN §5), so callers use them to stream pages early and to measure the dirty rate, never to
//! decide what the final copy must contain.

use aya::maps::{HashMap, MapData, MapError};
use cr_common::dirty::{DIRTY_HINTS_MAP, DirtyKey, tp};

use super::{BpfError, Hook};

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

/// Reads and deletes every entry of `map`, sorted by (tgid, page).
///
/// The map is read first and the returned keys deleted afterwards, one by one (aya 0.14 exposes
/// no batched lookup-and-delete for hash maps). A write that hits a page between its read and its
/// delete loses its count but not the page: the page was already read. A page first written after
/// the read is inserted anew and returned by the next drain.
pub(super) fn drain(map: &mut HashMap<MapData, DirtyKey, u32>) -> Result<Vec<DirtyHint>, BpfError> {
    let map_err = |source| BpfError::Map {
        map: DIRTY_HINTS_MAP,
        source,
    };
    let entries = map
        .iter()
        .collect::<Result<Vec<(DirtyKey, u32)>, MapError>>()
        .map_err(map_err)?;
    let mut hints = Vec::with_capacity(entries.len());
    for (key, writes) in entries {
        match map.remove(&key) {
            // KeyNotFound cannot happen with a single drainer; tolerate it anyway.
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_err(source)),
        }
        hints.push(DirtyHint {
            tgid: key.tgid,
            page: key.page,
            writes,
        });
    }
    hints.sort_unstable();
    Ok(hints)
}
