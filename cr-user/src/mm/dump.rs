//! The dump half of memory: layout from smaps, pages chosen from `/proc/PID/pagemap`, copied
//! into a buffer while the task is frozen (written to disk after).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::{MmError, classify};
use crate::image::mm::{MmFields, MmImage, Vma, VmaKind};
use crate::image::pagemap::{PE_COW_PARENT, PE_PRESENT, PagemapEntry, PagemapImage};
use crate::proc::maps::MapEntry;
use crate::proc::stat::Stat;
use crate::sys::PAGE_SIZE;
use crate::sys::mem;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// The page is mapped by this process only (`PM_MMAP_EXCLUSIVE`): not shared with any other.
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
static ZERO_PFN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
/// Longest run one pagemap entry covers (2 MiB), so a damaged byte is located closely.
const MAX_RUN_PAGES: u32 = 512;
/// Pagemap entries read per pread.
const PAGEMAP_CHUNK: u64 = 64 * 1024;

/// Classifies every VMA; the file of each file-backed one must still be the mapped inode.
pub fn layout(pid: i32, entries: &[MapEntry]) -> Result<Vec<Vma>, MmError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let size_of_mapped = |path: &str| -> Option<u64> {
            let m = std::fs::metadata(path).ok()?;
            (m.ino() == e.inode).then_some(m.len())
        };
        if let Some(v) = classify(pid, e, size_of_mapped)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// The mm image: layout plus the fields `PR_SET_MM_MAP` restores.
pub fn mm_image(exe: String, stat: &Stat, brk: u64, auxv: &[u8], vmas: Vec<Vma>) -> MmImage {
    let auxv = auxv
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    MmImage {
        exe,
        fields: MmFields {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
        },
        auxv,
        vmas,
    }
}

const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Whether a page with pagemap word `pm` in `vma` holds data only this process has. A page
/// mapped to the kernel's zero page (`zero_pfn`) holds none: it was only ever read.
fn wanted(vma: &Vma, pm: u64, zero_pfn: Option<u64>) -> bool {
    if pm & PM_PRESENT != 0 && zero_pfn.is_some_and(|z| pm & PM_PFN_MASK == z) {
        return false;
    }
    match (&vma.kind, vma.shared) {
        (VmaKind::Vdso | VmaKind::Vvar { .. }, _)
        | (VmaKind::File { .. } | VmaKind::Object { .. }, true) => false,
        // Private file pages are in the file until written; a written one is an anonymous COW
        // copy (present without PM_FILE) or swapped out.
        (VmaKind::File { .. } | VmaKind::Object { .. }, false) => {
            (pm & PM_PRESENT != 0 && pm & PM_FILE == 0) || pm & PM_SWAP != 0
        }
        (VmaKind::Anon, _) => pm & (PM_PRESENT | PM_SWAP) != 0,
    }
}

/// Result of copying a process's pages.
#[derive(Debug, Default)]
pub struct PageDump {
    /// Index of the copied pages (checksums filled by [`seal_checksums`]).
    pub pagemap: PagemapImage,
    /// Pages examined in pagemap.
    pub pages_scanned: u64,
}

/// Chooses every page worth saving, as runs in address order: with `PAGEMAP_SCAN` (one
/// region per run of alike pages), or by reading `/proc/PID/pagemap` word by word on kernels
/// without it.
pub fn select_pages(pid: i32, vmas: &[Vma]) -> Result<PageDump, MmError> {
    match select_pages_scan(pid, vmas) {
        Err(MmError::Memory { source, .. })
            if matches!(source.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) =>
        {
            select_pages_words(pid, vmas)
        }
        other => other,
    }
}

/// [`select_pages`] by `PAGEMAP_SCAN`: present or swapped pages, not the zero page, and in
/// private mappings not file pages (those are in the file).
fn select_pages_scan(pid: i32, vmas: &[Vma]) -> Result<PageDump, MmError> {
    use crate::sys::uffd::{
        PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, ScanRequest, pagemap_scan,
    };
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| MmError::Memory {
        pid,
        what: "open pagemap",
        addr: 0,
        source,
    })?;
    let mut out = PageDump::default();
    let mut regions = Vec::new();
    for vma in vmas.iter().filter(|v| selectable(v)) {
        out.pages_scanned += (vma.end - vma.start) / PAGE_SIZE;
        // Only a private file mapping mixes file pages (in the file) with its own COW copies;
        // asking for PAGE_IS_FILE makes the kernel look at every page's struct page, so it is
        // asked only there.
        let excluded = match (&vma.kind, vma.shared) {
            (VmaKind::File { .. } | VmaKind::Object { .. }, false) => {
                PAGE_IS_PFNZERO | PAGE_IS_FILE
            }
            _ => PAGE_IS_PFNZERO,
        };
        let req = ScanRequest {
            start: vma.start,
            end: vma.end,
            flags: 0,
            category_inverted: excluded,
            category_mask: excluded,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        };
        regions.clear();
        pagemap_scan(&pagemap, &req, &mut regions).map_err(|e| MmError::Memory {
            pid,
            what: "PAGEMAP_SCAN",
            addr: vma.start,
            source: e.io_error,
        })?;
        let first_new = out.pagemap.entries.len();
        for r in &regions {
            push_run(&mut out.pagemap.entries, first_new, r.start, r.end);
        }
    }
    Ok(out)
}

/// Whether [`select_pages`] looks at `vma` at all.
fn selectable(vma: &Vma) -> bool {
    !(matches!(vma.kind, VmaKind::Vdso | VmaKind::Vvar { .. })
        || (vma.shared && vma.kind != VmaKind::Anon))
}

/// The page index of `ranges` (sorted, disjoint pages already judged worth saving), split at
/// VMA boundaries like [`select_pages`]' own; also returns the pages such a selection would
/// have examined.
pub fn pagemap_of_ranges(vmas: &[Vma], ranges: &[(u64, u64)]) -> (PagemapImage, u64) {
    let mut pagemap = PagemapImage::default();
    let mut scanned = 0;
    for vma in vmas.iter().filter(|v| selectable(v)) {
        scanned += (vma.end - vma.start) / PAGE_SIZE;
        let first_new = pagemap.entries.len();
        let from = ranges.partition_point(|r| r.1 <= vma.start);
        for &(s, e) in ranges[from..].iter().take_while(|r| r.0 < vma.end) {
            push_run(
                &mut pagemap.entries,
                first_new,
                s.max(vma.start),
                e.min(vma.end),
            );
        }
    }
    (pagemap, scanned)
}

/// Appends `[start, end)` as runs of at most [`MAX_RUN_PAGES`], continuing the last run when
/// it ends at `start` (and belongs to this VMA: index ≥ `first_new`).
fn push_run(entries: &mut Vec<PagemapEntry>, first_new: usize, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        if entries.len() > first_new
            && let Some(last) = entries.last_mut()
            && last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE == addr
            && last.nr_pages < MAX_RUN_PAGES
        {
            let take = (u64::from(MAX_RUN_PAGES - last.nr_pages)).min((end - addr) / PAGE_SIZE);
            last.nr_pages += take as u32;
            addr += take * PAGE_SIZE;
            continue;
        }
        let take = u64::from(MAX_RUN_PAGES).min((end - addr) / PAGE_SIZE);
        entries.push(PagemapEntry {
            vaddr: addr,
            nr_pages: take as u32,
            flags: PE_PRESENT,
            crc32: 0,
        });
        addr += take * PAGE_SIZE;
    }
}

/// [`select_pages`] from `/proc/PID/pagemap` words.
fn select_pages_words(pid: i32, vmas: &[Vma]) -> Result<PageDump, MmError> {
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&path).map_err(|source| MmError::Memory {
        pid,
        what: "open pagemap",
        addr: 0,
        source,
    })?;
    let mut out = PageDump::default();
    let mut words = Vec::new();
    let zero_pfn = *ZERO_PFN.get_or_init(mem::zero_page_pfn);
    for vma in vmas.iter().filter(|v| selectable(v)) {
        let npages = (vma.end - vma.start) / PAGE_SIZE;
        out.pages_scanned += npages;
        let first_new = out.pagemap.entries.len();
        let mut done = 0u64;
        while done < npages {
            let n = (npages - done).min(PAGEMAP_CHUNK);
            words.resize(n as usize * 8, 0u8);
            let page0 = vma.start / PAGE_SIZE + done;
            pagemap
                .read_exact_at(&mut words, page0 * 8)
                .map_err(|source| MmError::Memory {
                    pid,
                    what: "read pagemap",
                    addr: vma.start + done * PAGE_SIZE,
                    source,
                })?;
            for (i, w) in words.chunks_exact(8).enumerate() {
                let pm = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                if wanted(vma, pm, zero_pfn) {
                    push_page(
                        &mut out.pagemap.entries,
                        first_new,
                        (page0 + i as u64) * PAGE_SIZE,
                    );
                }
            }
            done += n;
        }
    }
    Ok(out)
}

/// The VMA holding `addr` (`vmas` ascending).
pub fn vma_of(vmas: &[Vma], addr: u64) -> Option<&Vma> {
    let i = vmas.partition_point(|v| v.end <= addr);
    vmas.get(i).filter(|v| v.start <= addr)
}

/// Copies every page worth saving into `buf` (grown as needed), in pagemap order.
pub fn dump_pages(pid: i32, vmas: &[Vma], buf: &mut Vec<u8>) -> Result<PageDump, MmError> {
    dump_pages_sharing(pid, vmas, buf, None)
}

/// The parent process of a tree, already saved, whose pages a child may share copy-on-write.
#[derive(Debug, Clone, Copy)]
pub struct CowParent<'a> {
    /// Its pid.
    pub pid: i32,
    /// Its layout as saved.
    pub vmas: &'a [Vma],
    /// Its page index as saved (`PE_PRESENT` or `PE_COW_PARENT` runs hold its pages).
    pub pagemap: &'a PagemapImage,
}

/// Like [`dump_pages`], but the pages that are the very physical pages `parent` maps at the
/// same address (copy-on-write shared since a fork) are not copied: their runs are flagged
/// `PE_COW_PARENT` and refer to the parent's image. Only the `PE_PRESENT` runs are in `buf`.
///
/// In a tree, select every process's pages ([`select_pages`], [`share_with_parent`]) before
/// copying any ([`copy_stored`]): `process_vm_readv` pins the pages it reads, and the kernel
/// unshares a copy-on-write page before pinning it, which ends the very sharing looked for.
pub fn dump_pages_sharing(
    pid: i32,
    vmas: &[Vma],
    buf: &mut Vec<u8>,
    parent: Option<CowParent<'_>>,
) -> Result<PageDump, MmError> {
    let mut out = select_pages(pid, vmas)?;
    if let Some(parent) = parent {
        share_with_parent(pid, vmas, &mut out.pagemap, parent)?;
    }
    copy_stored(pid, vmas, &out.pagemap, buf, false)?;
    Ok(out)
}

/// Copies the `PE_PRESENT` runs of `pagemap` back to back into `buf` (resized to fit). With
/// `keep_shared` (a process whose children may share its pages) everything is read through
/// `/proc/PID/mem`, which does not pin pages and so leaves copy-on-write sharing as it is.
pub fn copy_stored(
    pid: i32,
    vmas: &[Vma],
    pagemap: &PagemapImage,
    buf: &mut Vec<u8>,
    keep_shared: bool,
) -> Result<(), MmError> {
    let bytes = pagemap.stored_pages() as usize * PAGE_SIZE as usize;
    if buf.len() < bytes {
        buf.resize(bytes, 0);
    }
    buf.truncate(bytes);
    if pagemap.entries.iter().all(|e| e.flags == PE_PRESENT) {
        return copy_entries_with(pid, vmas, &pagemap.entries, buf, keep_shared);
    }
    let stored: Vec<PagemapEntry> = pagemap
        .entries
        .iter()
        .filter(|e| e.flags == PE_PRESENT)
        .copied()
        .collect();
    copy_entries_with(pid, vmas, &stored, buf, keep_shared)
}

/// Whether the pages of `vma` (a child's) may be shared with `parent`'s: private anonymous
/// memory in both at exactly the same range, which restore can then hand down by `fork`.
/// Memory the parent keeps from its children (`MADV_DONTFORK`, `MADV_WIPEONFORK`) is not.
fn shareable(vma: &Vma, parent: &[Vma]) -> bool {
    let anon = |v: &Vma| v.kind == VmaKind::Anon && !v.shared;
    anon(vma)
        && vma_of(parent, vma.start).is_some_and(|p| {
            anon(p)
                && p.start == vma.start
                && p.end == vma.end
                && p.growsdown == vma.growsdown
                && !p.madv.iter().any(|f| f == "dc" || f == "wf")
        })
}

/// Reads the pagemap words of `n` pages from `addr`.
fn pagemap_words(
    file: &File,
    pid: i32,
    addr: u64,
    n: usize,
    out: &mut Vec<u64>,
) -> Result<(), MmError> {
    let mut bytes = vec![0u8; n * 8];
    file.read_exact_at(&mut bytes, addr / PAGE_SIZE * 8)
        .map_err(|source| MmError::Memory {
            pid,
            what: "read pagemap",
            addr,
            source,
        })?;
    out.clear();
    out.extend(
        bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])),
    );
    Ok(())
}

/// Whether two pagemap words name the same physical page, mapped by more than one process
/// (present in RAM in both, not exclusive to either, same non-zero PFN: PFNs read as 0
/// without CAP_SYS_ADMIN).
fn same_page(a: u64, b: u64) -> bool {
    let shared = |w: u64| w & PM_PRESENT != 0 && w & (PM_SWAP | PM_MMAP_EXCLUSIVE) == 0;
    shared(a) && shared(b) && a & PM_PFN_MASK != 0 && a & PM_PFN_MASK == b & PM_PFN_MASK
}

/// Flags `PE_COW_PARENT` the pages of `pagemap` (the selection of `pid`, all `PE_PRESENT`)
/// that are the same physical page `parent` maps at the same address, in a VMA of the same
/// range, and that the parent's image holds. Runs are split where the flag changes, so they
/// still never cross a VMA. Both processes must be frozen. Returns the pages flagged.
pub fn share_with_parent(
    pid: i32,
    vmas: &[Vma],
    pagemap: &mut PagemapImage,
    parent: CowParent<'_>,
) -> Result<u64, MmError> {
    let open = |p: i32| {
        File::open(format!("/proc/{p}/pagemap")).map_err(|source| MmError::Memory {
            pid: p,
            what: "open pagemap",
            addr: 0,
            source,
        })
    };
    let (mine, theirs) = (open(pid)?, open(parent.pid)?);
    let holds = |addr: u64| {
        parent
            .pagemap
            .find(addr)
            .is_some_and(|(_, e)| matches!(e.flags, PE_PRESENT | PE_COW_PARENT))
    };
    let mut out = Vec::with_capacity(pagemap.entries.len());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut shared = 0u64;
    for e in &pagemap.entries {
        let eligible = e.flags == PE_PRESENT
            && vma_of(vmas, e.vaddr).is_some_and(|v| shareable(v, parent.vmas));
        if !eligible {
            out.push(*e);
            continue;
        }
        let n = e.nr_pages as usize;
        pagemap_words(&mine, pid, e.vaddr, n, &mut a)?;
        pagemap_words(&theirs, parent.pid, e.vaddr, n, &mut b)?;
        let mut i = 0;
        while i < n {
            let flag = |k: usize| {
                let addr = e.vaddr + k as u64 * PAGE_SIZE;
                if same_page(a[k], b[k]) && holds(addr) {
                    PE_COW_PARENT
                } else {
                    PE_PRESENT
                }
            };
            let f = flag(i);
            let mut j = i + 1;
            while j < n && flag(j) == f {
                j += 1;
            }
            if f == PE_COW_PARENT {
                shared += (j - i) as u64;
            }
            out.push(PagemapEntry {
                vaddr: e.vaddr + i as u64 * PAGE_SIZE,
                nr_pages: (j - i) as u32,
                flags: f,
                crc32: 0,
            });
            i = j;
        }
    }
    pagemap.entries = out;
    tracing::debug!(
        pid,
        parent = parent.pid,
        shared,
        "pages shared copy-on-write with the parent"
    );
    Ok(shared)
}

/// Copies the pages of `entries` (inside `vmas`) back to back into `dst`.
pub fn copy_entries(
    pid: i32,
    vmas: &[Vma],
    entries: &[PagemapEntry],
    dst: &mut [u8],
) -> Result<(), MmError> {
    copy_entries_with(pid, vmas, entries, dst, false)
}

/// [`copy_entries`]; with `keep_shared` only through `/proc/PID/mem` (see [`copy_stored`]).
fn copy_entries_with(
    pid: i32,
    vmas: &[Vma],
    entries: &[PagemapEntry],
    dst: &mut [u8],
    keep_shared: bool,
) -> Result<(), MmError> {
    let mut off = 0usize;
    let mut i = 0;
    while i < entries.len() {
        let Some(vma) = vma_of(vmas, entries[i].vaddr) else {
            return Err(MmError::Memory {
                pid,
                what: "find the VMA of a page",
                addr: entries[i].vaddr,
                source: std::io::Error::from_raw_os_error(libc::EFAULT),
            });
        };
        let n = entries[i..]
            .iter()
            .take_while(|e| e.vaddr < vma.end)
            .count();
        let runs = &entries[i..i + n];
        let bytes: usize = runs
            .iter()
            .map(|e| e.nr_pages as usize * PAGE_SIZE as usize)
            .sum();
        copy_runs(pid, vma, runs, &mut dst[off..off + bytes], keep_shared)?;
        off += bytes;
        i += n;
    }
    Ok(())
}

fn push_page(entries: &mut Vec<PagemapEntry>, first_new: usize, addr: u64) {
    push_run(entries, first_new, addr, addr + PAGE_SIZE);
}

/// Copies `runs` of `vma` into `dst`: process_vm_readv where the VMA is readable (unless
/// `keep_shared`: it unshares the copy-on-write pages it pins), otherwise `/proc/PID/mem`,
/// which may read any page the process could make readable.
fn copy_runs(
    pid: i32,
    vma: &Vma,
    runs: &[PagemapEntry],
    dst: &mut [u8],
    keep_shared: bool,
) -> Result<(), MmError> {
    if runs.is_empty() {
        return Ok(());
    }
    let ranges: Vec<(u64, usize)> = runs
        .iter()
        .map(|e| (e.vaddr, e.nr_pages as usize * PAGE_SIZE as usize))
        .collect();
    let fail = |source: std::io::Error| MmError::Memory {
        pid,
        what: "read memory",
        addr: vma.start,
        source,
    };
    if vma.prot & libc::PROT_READ as u32 != 0 && !keep_shared {
        let got = mem::read_remote(pid, &ranges, dst).map_err(|e| fail(e.io_error))?;
        if got == dst.len() {
            return Ok(());
        }
    }
    let memf = File::open(format!("/proc/{pid}/mem")).map_err(fail)?;
    let mut off = 0usize;
    for (addr, len) in ranges {
        memf.read_exact_at(&mut dst[off..off + len], addr)
            .map_err(fail)?;
        off += len;
    }
    Ok(())
}

/// Fills in each entry's CRC-32 from the copied bytes (after the task is released).
pub fn seal_checksums(pagemap: &mut PagemapImage, buf: &[u8]) {
    let mut off = 0usize;
    for e in &mut pagemap.entries {
        let len = e.nr_pages as usize * PAGE_SIZE as usize;
        e.crc32 = crc32fast::hash(&buf[off..off + len]);
        off += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(kind: VmaKind, shared: bool) -> Vma {
        Vma {
            start: 0x1000,
            end: 0x9000,
            prot: 3,
            shared,
            growsdown: false,
            kind,
            name: String::new(),
            madv: vec![],
        }
    }

    #[test]
    fn ranges_become_runs_split_at_vmas() {
        let mut a = vma(VmaKind::Anon, false);
        let mut b = vma(VmaKind::Anon, false);
        (a.start, a.end, b.start, b.end) = (0x1000, 0x5000, 0x5000, 0x9000);
        let vdso = Vma {
            start: 0x9000,
            end: 0xa000,
            ..vma(VmaKind::Vdso, false)
        };
        let (pm, scanned) = pagemap_of_ranges(&[a, b, vdso], &[(0x2000, 0x7000), (0x8000, 0xa000)]);
        let runs: Vec<(u64, u32)> = pm.entries.iter().map(|e| (e.vaddr, e.nr_pages)).collect();
        assert_eq!(runs, vec![(0x2000, 3), (0x5000, 2), (0x8000, 1)]);
        assert_eq!(scanned, 8);
    }

    #[test]
    fn same_physical_page() {
        let w = |pfn: u64| PM_PRESENT | pfn;
        assert!(same_page(w(42), w(42)));
        assert!(!same_page(w(42), w(43)));
        assert!(!same_page(w(0), w(0)));
        assert!(!same_page(w(42) | PM_MMAP_EXCLUSIVE, w(42)));
        assert!(!same_page(PM_SWAP | 42, PM_SWAP | 42));
        let anon = |start, end| Vma {
            start,
            end,
            ..vma(VmaKind::Anon, false)
        };
        let parent = [anon(0x1000, 0x9000)];
        assert!(shareable(&anon(0x1000, 0x9000), &parent));
        assert!(!shareable(&anon(0x1000, 0x5000), &parent));
        let mut dontfork = parent.clone();
        dontfork[0].madv = vec!["dc".into()];
        assert!(!shareable(&anon(0x1000, 0x9000), &dontfork));
        assert!(!shareable(&vma(VmaKind::Anon, true), &parent));
    }

    #[test]
    fn page_selection() {
        let file = VmaKind::File {
            path: "/x".into(),
            offset: 0,
            size: 1,
        };
        assert!(wanted(&vma(VmaKind::Anon, false), PM_PRESENT, None));
        assert!(wanted(&vma(VmaKind::Anon, false), PM_SWAP, None));
        assert!(!wanted(
            &vma(VmaKind::Anon, false),
            PM_PRESENT | 77,
            Some(77)
        ));
        assert!(wanted(
            &vma(VmaKind::Anon, false),
            PM_PRESENT | 78,
            Some(77)
        ));
        assert!(!wanted(&vma(VmaKind::Anon, false), 0, None));
        assert!(wanted(&vma(file.clone(), false), PM_PRESENT, None));
        assert!(!wanted(
            &vma(file.clone(), false),
            PM_PRESENT | PM_FILE,
            None
        ));
        assert!(!wanted(&vma(file, true), PM_PRESENT, None));
        assert!(!wanted(&vma(VmaKind::Vdso, false), PM_PRESENT, None));
    }

    #[test]
    fn runs_coalesce_and_cap() {
        let mut v = Vec::new();
        for i in 0..(MAX_RUN_PAGES as u64 + 3) {
            push_page(&mut v, 0, 0x10000 + i * PAGE_SIZE);
        }
        push_page(&mut v, 0, 0x10000 + 1000 * PAGE_SIZE);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].nr_pages, MAX_RUN_PAGES);
        assert_eq!(v[1].nr_pages, 3);
        // A run never continues across a VMA boundary.
        push_page(&mut v, 3, 0x10000 + 1001 * PAGE_SIZE);
        assert_eq!(v.len(), 4);
        // Whole regions split the same way page-by-page pushes do.
        let mut w = Vec::new();
        push_run(
            &mut w,
            0,
            0x10000,
            0x10000 + (u64::from(MAX_RUN_PAGES) + 3) * PAGE_SIZE,
        );
        push_run(
            &mut w,
            0,
            0x10000 + 1000 * PAGE_SIZE,
            0x10000 + 1002 * PAGE_SIZE,
        );
        assert_eq!(
            w.iter().map(|e| e.nr_pages).collect::<Vec<_>>(),
            vec![MAX_RUN_PAGES, 3, 2]
        );
    }
}
