//! `bpf(2)` commands aya 0.14 does not expose: batched lookup-and-delete of a hash map, so a
//! round's write hints come out in a few calls instead of three per page.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::SyscallError;

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One call's worth of entries taken out of a hash map.
pub struct Batch {
    /// Entries returned (their keys and values are at the front of the buffers).
    pub count: usize,
    /// Where the next call goes on, or `None` when the map has been walked to its end.
    pub next: Option<u32>,
}

/// Reads and deletes up to `keys.len() / key_size` entries of the hash map `map`, starting at
/// bucket cursor `from` (`None`: the beginning). `keys` and `values` receive the entries packed
/// (`key_size` and `value_size` bytes each). Fails with `EINVAL` on kernels without batch
/// operations, `ENOSPC` if one bucket holds more entries than the buffers.
pub fn lookup_and_delete_batch(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    from: Option<u32>,
    keys: &mut [u8],
    values: &mut [u8],
) -> Result<Batch, SyscallError> {
    const CALL: &str = "bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH)";
    let room = (keys.len() / key_size.max(1)).min(values.len() / value_size.max(1));
    let cursor_in = from.unwrap_or(0);
    let mut cursor_out = 0u32;
    let mut attr = BatchAttr {
        in_batch: if from.is_some() {
            std::ptr::from_ref(&cursor_in) as u64
        } else {
            0
        },
        out_batch: std::ptr::from_mut(&mut cursor_out) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(room).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.batch` of the size passed. The kernel writes at most
    // `count` keys of `key_size` bytes into `keys` and as many values into `values` (`room` fits
    // both buffers, and the caller's sizes are the map's), one u32 into `cursor_out`, reads one
    // u32 from `cursor_in`, and updates `attr.count`; all of them outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_BATCH,
            std::ptr::from_mut(&mut attr),
            size_of::<BatchAttr>() as u32,
        )
    };
    let count = attr.count as usize;
    if ret == -1 {
        let err = SyscallError::last(CALL);
        // The end of the map: what this call returned is still valid.
        if err.errno() == Some(libc::ENOENT) {
            return Ok(Batch { count, next: None });
        }
        return Err(err);
    }
    Ok(Batch {
        count,
        next: Some(cursor_out),
    })
}
