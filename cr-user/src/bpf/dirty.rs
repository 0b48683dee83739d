//! Write-fault hints: the userspace half of `cr-ebpf`'s `dirty` module.
//!
//! The BPF programs fill `DIRTY_HINTS` with (tgid, page) → write count for every write fault of a
//! tracked process; [`drain`] reads and deletes what it returns, so each call yields the pages
//! written since the previous one (one "round"). Hints are a subset of what PAGEMAP_SCAN reports
//! for the same round (writes that do not trap in the writer's context are invisible to BPF,
//! DESIGN §5), so callers use them to stream pages early and to measure the dirty rate, never to
//! decide what the final copy must contain.

use std::os::fd::BorrowedFd;

use aya::maps::{HashMap, MapData, MapError};
use cr_common::dirty::{DIRTY_HINTS_MAP, DirtyKey, tp};

use super::{BpfError, Hook};
use crate::sys::{SyscallError, bpf};

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

/// Reads and deletes every entry of `map`, sorted by (tgid, page): in batches of
/// [`BATCH_ENTRIES`] through `fd` (the same map) when the kernel has batch operations, else
/// entry by entry.
///
/// A write that hits a page between its read and its delete loses its count but not the page:
/// the page was already read. A page first written after the read is inserted anew and
/// returned by the next drain.
pub(super) fn drain(
    map: &mut HashMap<MapData, DirtyKey, u32>,
    fd: Option<BorrowedFd<'_>>,
) -> Result<Vec<DirtyHint>, BpfError> {
    if let Some(fd) = fd {
        match drain_batched(fd) {
            Ok(hints) => return Ok(hints),
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSPC)) => {
                tracing::debug!(error = %e, "batched drain unavailable; draining entry by entry");
            }
            Err(source) => {
                return Err(BpfError::Batch {
                    map: DIRTY_HINTS_MAP,
                    source,
                });
            }
        }
    }
    drain_one_by_one(map)
}

/// Entries taken per batched call.
const BATCH_ENTRIES: usize = 8192;

fn drain_batched(fd: BorrowedFd<'_>) -> Result<Vec<DirtyHint>, SyscallError> {
    const KEY: usize = size_of::<DirtyKey>();
    const VALUE: usize = size_of::<u32>();
    let mut keys = vec![0u8; BATCH_ENTRIES * KEY];
    let mut values = vec![0u8; BATCH_ENTRIES * VALUE];
    let mut hints = Vec::new();
    let mut cursor = None;
    loop {
        let batch = bpf::lookup_and_delete_batch(fd, KEY, VALUE, cursor, &mut keys, &mut values)?;
        for (k, v) in keys
            .chunks_exact(KEY)
            .zip(values.chunks_exact(VALUE))
            .take(batch.count)
        {
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[at..at + 8]);
                u64::from_ne_bytes(b)
            };
            hints.push(DirtyHint {
                tgid: word(0) as u32,
                page: word(8),
                writes: u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
            });
        }
        match batch.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    hints.sort_unstable();
    Ok(hints)
}

fn drain_one_by_one(map: &mut HashMap<MapData, DirtyKey, u32>) -> Result<Vec<DirtyHint>, BpfError> {
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
