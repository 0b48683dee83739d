//! The page index of a dump for lazy migration: which pages are left to the migration source.

use super::DumpError;
use crate::image::pagemap::{PE_LAZY, PE_PRESENT, PagemapImage};
use crate::sys::PAGE_SIZE;

/// The pagemap of a lazy migration: readable private anonymous VMAs are left to the migration
/// source, whole (`PE_LAZY`): which of their pages exist is worked out after the hand-over
/// (`Absent` frames), so the frozen window does not grow with memory size. The pages of every
/// other VMA are copied into `buf` now. Returns the pagemap and the pages scanned.
pub(crate) fn lazy_pagemap(
    pid: i32,
    vmas: &[crate::image::mm::Vma],
    keep: &[(u64, u64)],
    buf: &mut Vec<u8>,
) -> Result<(PagemapImage, u64), DumpError> {
    let (lazy, eager): (Vec<_>, Vec<_>) = vmas.iter().cloned().partition(lazy_candidate);
    let sel = crate::mm::dump::select_pages(pid, &eager)?;
    let mut pagemap = sel.pagemap;
    let push = |pagemap: &mut PagemapImage, s: u64, e: u64, flags: u32| {
        let mut a = s;
        while a < e {
            let n = ((e - a) / PAGE_SIZE).min(u64::from(u32::MAX >> 1));
            pagemap.entries.push(crate::image::pagemap::PagemapEntry {
                vaddr: a,
                nr_pages: n as u32,
                flags,
                crc32: 0,
            });
            a += n * PAGE_SIZE;
        }
    };
    for v in &lazy {
        // The kernel writes into these while the copy is being restored: they go now.
        let kept = crate::track::ranges::intersect(keep, &[(v.start, v.end)]);
        for (s, e) in crate::track::ranges::subtract(&[(v.start, v.end)], &kept) {
            push(&mut pagemap, s, e, PE_LAZY);
        }
        for (s, e) in kept {
            push(&mut pagemap, s, e, PE_PRESENT);
        }
    }
    pagemap.entries.sort_by_key(|e| e.vaddr);
    let stored: Vec<_> = pagemap
        .entries
        .iter()
        .filter(|e| e.flags == PE_PRESENT)
        .copied()
        .collect();
    buf.resize(pagemap.stored_pages() as usize * PAGE_SIZE as usize, 0);
    crate::mm::dump::copy_entries(pid, vmas, &stored, buf)?;
    Ok((pagemap, sel.pages_scanned))
}

/// Whether a VMA's pages can be left to a migration source: private, anonymous, readable
/// (the source reads them from the frozen process with `process_vm_readv`).
pub fn lazy_candidate(v: &crate::image::mm::Vma) -> bool {
    matches!(v.kind, crate::image::mm::VmaKind::Anon)
        && !v.shared
        && v.prot & libc::PROT_READ as u32 != 0
}
