//! The restore half of memory: the child (a fork of fastcr) is emptied down to a one-page
//! trampoline and the special mappings, the special mappings are moved to their dumped
//! addresses, every VMA is mapped at its exact address, pages are written in, protections and
//! mm fields are set.
//!
//! In a tree, a child forked by a parent whose memory was already rebuilt keeps the private
//! anonymous VMAs it shares copy-on-write with it ([`inherited_vmas`]): those are neither
//! unmapped nor refilled; only the pages it had of its own are written, and the pages the
//! parent has there but it had not are dropped ([`drop_unshared`]).

use std::collections::BTreeMap;

use super::pages::PageChain;
use super::{MmError, find_gap};
use crate::image::mm::{MmImage, Vma, VmaKind};
use crate::image::pagemap::{PE_COW_PARENT, PagemapEntry, PagemapImage};
use crate::inject::{Injector, to_bytes};
use crate::proc::maps::MapEntry;
use crate::sys::PAGE_SIZE;
use crate::sys::mem;

/// Trampoline: page 0 holds `syscall; int3`, the rest is scratch for syscall arguments.
pub const TRAMPOLINE_LEN: u64 = 4 * PAGE_SIZE;
/// Scratch offset for paths (PATH_MAX bytes).
const SCRATCH_PATH: u64 = 1024;
/// Scratch offset for `struct prctl_mm_map` followed by the auxv.
const SCRATCH_MM_MAP: u64 = 6144;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PRCTL_MM_MAP_LEN: usize = 104;

fn is_special(name: &str) -> bool {
    matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

/// Maps the trampoline in a gap free in both the child's current layout and the image's, and
/// switches injection to it. Returns its base address.
pub fn install_trampoline(
    inj: &mut Injector,
    child: &[MapEntry],
    image: &MmImage,
) -> Result<u64, MmError> {
    let busy: Vec<(u64, u64)> = child
        .iter()
        .map(|e| (e.start, e.end))
        .chain(image.vmas.iter().map(|v| (v.start, v.end)))
        .collect();
    let base = find_gap(&busy, TRAMPOLINE_LEN, 0x10_0000).ok_or(MmError::NoGap)?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED_NOREPLACE;
    inj.call(
        || format!("mmap of the trampoline at {base:#x}"),
        "mmap",
        libc::SYS_mmap,
        [base, TRAMPOLINE_LEN, prot, flags, u64::MAX, 0],
    )?;
    mem::write_remote(inj.pid(), base, &[0x0f, 0x05, 0xcc]).map_err(|e| MmError::Memory {
        pid: inj.pid(),
        what: "write trampoline",
        addr: base,
        source: e.io_error,
    })?;
    inj.set_syscall_ip(base);
    inj.set_scratch(base + PAGE_SIZE, TRAMPOLINE_LEN - PAGE_SIZE);
    Ok(base)
}

/// Unmaps everything the child inherited (from fastcr, or from its rebuilt parent) except the
/// trampoline, the special mappings and the ranges `keep` (sorted, disjoint).
pub fn clear_address_space(
    inj: &Injector,
    child: &[MapEntry],
    trampoline: u64,
    keep: &[(u64, u64)],
) -> Result<(), MmError> {
    for e in child {
        if is_special(&e.path) || (e.start == trampoline && e.end == trampoline + TRAMPOLINE_LEN) {
            continue;
        }
        for (start, end) in subtract((e.start, e.end), keep) {
            inj.call(
                || format!("munmap {start:#x}-{end:#x} ({})", e.path),
                "munmap",
                libc::SYS_munmap,
                [start, end - start, 0, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// The parts of `range` outside every range of `holes` (sorted, disjoint).
fn subtract(range: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = range.0;
    for &(s, e) in holes {
        if e <= at || s >= range.1 {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < range.1 {
        out.push((at, range.1));
    }
    out
}

/// For each VMA of `image`, whether the child keeps it as inherited from its parent, whose
/// memory (`parent`, as dumped) was rebuilt before it forked the child: a private anonymous
/// VMA of the same range in both, for which the child's image refers to the parent's pages
/// (`PE_COW_PARENT`).
pub fn inherited_vmas(image: &MmImage, pagemap: &PagemapImage, parent: &MmImage) -> Vec<bool> {
    let anon = |v: &Vma| v.kind == VmaKind::Anon && !v.shared;
    image
        .vmas
        .iter()
        .map(|v| {
            let i = pagemap.entries.partition_point(|e| e.vaddr < v.start);
            let refers = pagemap.entries[i..]
                .iter()
                .take_while(|e| e.vaddr < v.end)
                .any(|e| e.flags == PE_COW_PARENT);
            let j = parent.vmas.partition_point(|w| w.end <= v.start);
            refers
                && anon(v)
                && parent.vmas.get(j).is_some_and(|w| {
                    anon(w) && w.start == v.start && w.end == v.end && w.growsdown == v.growsdown
                })
        })
        .collect()
}

/// In the inherited VMAs, drops the pages the image holds nothing for (the parent had them,
/// this process had not: they read as zeros again, as before). Pages the image stores are
/// written over afterwards, which gives the process its own copies.
pub fn drop_unshared(
    inj: &Injector,
    image: &MmImage,
    pagemap: &PagemapImage,
    inherited: &[bool],
) -> Result<(), MmError> {
    for (v, _) in image.vmas.iter().zip(inherited).filter(|(_, k)| **k) {
        let i = pagemap.entries.partition_point(|e| e.vaddr < v.start);
        let held: Vec<(u64, u64)> = pagemap.entries[i..]
            .iter()
            .take_while(|e| e.vaddr < v.end)
            .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE))
            .collect();
        for (start, end) in subtract((v.start, v.end), &merge(&held)) {
            inj.call(
                || format!("madvise(MADV_DONTNEED) {start:#x}-{end:#x}"),
                "madvise",
                libc::SYS_madvise,
                [start, end - start, libc::MADV_DONTNEED as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// `ranges` (sorted) with touching ones joined.
fn merge(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges {
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Moves `[vdso]`, `[vvar]`, `[vvar_vclock]` to their dumped addresses: first all to free
/// temporary places, then each to its target, so no move lands on another special mapping.
pub fn move_specials(
    inj: &Injector,
    child: &[MapEntry],
    image: &MmImage,
    trampoline: u64,
) -> Result<(), MmError> {
    let wanted: BTreeMap<&str, (u64, u64)> = image
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar { .. }))
        .map(|v| (v.name.as_str(), (v.start, v.end)))
        .collect();
    let have: BTreeMap<&str, (u64, u64)> = child
        .iter()
        .filter(|e| is_special(&e.path) && e.path != "[vsyscall]")
        .map(|e| (e.path.as_str(), (e.start, e.end)))
        .collect();
    for name in wanted.keys().chain(have.keys()) {
        let size = |m: &BTreeMap<&str, (u64, u64)>| m.get(name).map_or(0, |r| r.1 - r.0);
        if size(&wanted) != size(&have) {
            return Err(MmError::SpecialMismatch {
                name: (*name).to_string(),
                dumped: size(&wanted),
                here: size(&have),
            });
        }
    }
    if wanted == have {
        return Ok(());
    }
    let mut busy: Vec<(u64, u64)> = image.vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.push((trampoline, trampoline + TRAMPOLINE_LEN));
    busy.extend(have.values().copied());
    let mremap = |from: u64, len: u64, to: u64, name: &str| {
        inj.call(
            || format!("mremap of {name} {from:#x} -> {to:#x}"),
            "mremap",
            libc::SYS_mremap,
            [
                from,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
                0,
            ],
        )
    };
    let mut temps = Vec::new();
    for (name, &(s, e)) in &have {
        let tmp = find_gap(&busy, e - s, 0x10_0000).ok_or(MmError::NoGap)?;
        busy.push((tmp, tmp + e - s));
        mremap(s, e - s, tmp, name)?;
        temps.push((*name, tmp, e - s));
    }
    for (name, tmp, len) in temps {
        mremap(tmp, len, wanted[name].0, name)?;
    }
    Ok(())
}

/// For each VMA, whether the image holds pages for it.
pub fn vmas_with_pages(image: &MmImage, pagemap: &PagemapImage) -> Vec<bool> {
    image
        .vmas
        .iter()
        .map(|v| {
            let i = pagemap.entries.partition_point(|e| e.vaddr < v.start);
            pagemap.entries.get(i).is_some_and(|e| e.vaddr < v.end)
        })
        .collect()
}

fn initial_prot(v: &Vma, has_pages: bool) -> u32 {
    if has_pages {
        v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
    } else {
        v.prot
    }
}

/// Maps every non-special VMA at its address; writable first where pages will be written.
/// An inherited VMA (`inherited`, empty for none) is already there: only its protection is
/// set.
pub fn map_vmas(
    inj: &Injector,
    image: &MmImage,
    has_pages: &[bool],
    inherited: &[bool],
    objects: &crate::files::objects::Objects,
) -> Result<(), MmError> {
    for (i, (v, &has)) in image.vmas.iter().zip(has_pages).enumerate() {
        if inherited.get(i).copied().unwrap_or(false) {
            inj.call(
                || format!("mprotect of inherited {:#x}-{:#x}", v.start, v.end),
                "mprotect",
                libc::SYS_mprotect,
                [
                    v.start,
                    v.end - v.start,
                    u64::from(initial_prot(v, has)),
                    0,
                    0,
                    0,
                ],
            )?;
            continue;
        }
        let mut flags = libc::MAP_FIXED as u64;
        flags |= if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u64;
        if v.growsdown {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        let prot = u64::from(initial_prot(v, has));
        let len = v.end - v.start;
        match &v.kind {
            VmaKind::Vdso | VmaKind::Vvar { .. } => continue,
            VmaKind::Anon => {
                flags |= libc::MAP_ANONYMOUS as u64;
                inj.call(
                    || format!("mmap of anonymous {:#x}-{:#x}", v.start, v.end),
                    "mmap",
                    libc::SYS_mmap,
                    [v.start, len, prot, flags, u64::MAX, 0],
                )?;
            }
            VmaKind::Object { dev, ino, offset } => {
                let path = objects.path(*dev, *ino).ok_or(MmError::MissingObject {
                    dev: *dev,
                    ino: *ino,
                })?;
                // Read-only unless mapped writable: a read-only shared mapping of a memfd sealed
                // against writes must not count as writable, or the seal could not be added.
                map_file(inj, v, &path, (*offset, prot, flags), false)?;
            }
            VmaKind::File { path, offset, .. } => {
                map_file(inj, v, path, (*offset, prot, flags), false)?;
            }
        }
    }
    Ok(())
}

/// Maps `v` from the file at `path` (opened in the task for the mapping only, read-write if
/// `rdwr` or the mapping is shared and writable).
fn map_file(
    inj: &Injector,
    v: &Vma,
    path: &str,
    (offset, prot, flags): (u64, u64, u64),
    rdwr: bool,
) -> Result<(), MmError> {
    let len = v.end - v.start;
    let writable_shared = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
    let oflags = if writable_shared || rdwr {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } | libc::O_CLOEXEC;
    let addr = inj.put_cstr(SCRATCH_PATH, path)?;
    let fd = inj.call(
        || format!("open of mapped file {path}"),
        "openat",
        libc::SYS_openat,
        [libc::AT_FDCWD as u64, addr, oflags as u64, 0, 0, 0],
    )?;
    let mapped = inj.call(
        || format!("mmap of {path} at {:#x}-{:#x}", v.start, v.end),
        "mmap",
        libc::SYS_mmap,
        [v.start, len, prot, flags, fd, offset],
    );
    inj.call(
        || "close".into(),
        "close",
        libc::SYS_close,
        [fd, 0, 0, 0, 0, 0],
    )?;
    mapped?;
    Ok(())
}

/// Writes the dumped pages into the child, through the parent chain where needed, except the
/// runs `skip` names (left for lazy restore, or inherited from the parent process); every
/// run's checksum is checked before its pages are used. Returns the number of pages written.
pub fn fill_pages(
    pid: i32,
    chain: &PageChain,
    skip: impl Fn(&PagemapEntry) -> bool,
) -> Result<u64, MmError> {
    let mut written = 0;
    for idx in 0..chain.top().entries.len() {
        let e = chain.top().entries[idx];
        if skip(&e) {
            continue;
        }
        written += u64::from(e.nr_pages);
        chain.for_each_piece(idx, |addr, bytes| {
            let n = mem::write_remote(pid, addr, bytes).map_err(|err| MmError::Memory {
                pid,
                what: "write pages",
                addr,
                source: err.io_error,
            })?;
            if n != bytes.len() {
                return Err(MmError::Memory {
                    pid,
                    what: "write pages (short)",
                    addr,
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                });
            }
            Ok(())
        })?;
    }
    Ok(written)
}

/// Sets final protections where they differ from the initial ones.
pub fn finish_prot(inj: &Injector, image: &MmImage, has_pages: &[bool]) -> Result<(), MmError> {
    for (v, &has) in image.vmas.iter().zip(has_pages) {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar { .. }) {
            continue;
        }
        if initial_prot(v, has) != v.prot {
            inj.call(
                || format!("mprotect {:#x}-{:#x}", v.start, v.end),
                "mprotect",
                libc::SYS_mprotect,
                [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// Sets the madvise flags. After the process forked its children: `MADV_DONTFORK` and
/// `MADV_WIPEONFORK` would keep them from inheriting memory they share.
pub fn advise(inj: &Injector, image: &MmImage) -> Result<(), MmError> {
    for v in &image.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar { .. }) {
            continue;
        }
        let len = v.end - v.start;
        for f in &v.madv {
            let advice = match f.as_str() {
                "dd" => libc::MADV_DONTDUMP,
                "hg" => libc::MADV_HUGEPAGE,
                "nh" => libc::MADV_NOHUGEPAGE,
                "dc" => libc::MADV_DONTFORK,
                "wf" => libc::MADV_WIPEONFORK,
                _ => continue,
            };
            inj.call(
                || format!("madvise({f}) {:#x}-{:#x}", v.start, v.end),
                "madvise",
                libc::SYS_madvise,
                [v.start, len, advice as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// Restores brk, stack, args, env, auxv and the exe link with `PR_SET_MM_MAP`.
pub fn set_mm_fields(inj: &Injector, image: &MmImage) -> Result<(), MmError> {
    let f = &image.fields;
    let path = inj.put_cstr(SCRATCH_PATH, &image.exe)?;
    let exe_fd = inj.call(
        || format!("open of executable {}", image.exe),
        "openat",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            path,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let auxv_addr = inj.scratch_addr(SCRATCH_MM_MAP) + PRCTL_MM_MAP_LEN as u64;
    let auxv_bytes = to_bytes(&image.auxv);
    let mut map = to_bytes(&[
        f.start_code,
        f.end_code,
        f.start_data,
        f.end_data,
        f.start_brk,
        f.brk,
        f.start_stack,
        f.arg_start,
        f.arg_end,
        f.env_start,
        f.env_end,
        auxv_addr,
    ]);
    map.extend_from_slice(&(auxv_bytes.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    debug_assert_eq!(map.len(), PRCTL_MM_MAP_LEN);
    map.extend_from_slice(&auxv_bytes);
    let addr = inj.put(SCRATCH_MM_MAP, &map)?;
    let set = inj.call(
        || "prctl(PR_SET_MM_MAP)".into(),
        "prctl",
        libc::SYS_prctl,
        [
            PR_SET_MM,
            PR_SET_MM_MAP,
            addr,
            PRCTL_MM_MAP_LEN as u64,
            0,
            0,
        ],
    );
    inj.call(
        || "close".into(),
        "close",
        libc::SYS_close,
        [exe_fd, 0, 0, 0, 0, 0],
    )?;
    set?;
    Ok(())
}

/// Unmaps the trampoline: the last injected syscall. The task stays at its syscall-exit stop,
/// where its registers are then replaced with the dumped ones.
pub fn remove_trampoline(inj: &Injector, trampoline: u64) -> Result<(), MmError> {
    inj.call(
        || "munmap of the trampoline".into(),
        "munmap",
        libc::SYS_munmap,
        [trampoline, TRAMPOLINE_LEN, 0, 0, 0, 0],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_subtract_and_merge() {
        assert_eq!(
            subtract((0x1000, 0x9000), &[(0x2000, 0x3000), (0x5000, 0xa000)]),
            vec![(0x1000, 0x2000), (0x3000, 0x5000)]
        );
        assert_eq!(subtract((0x1000, 0x2000), &[]), vec![(0x1000, 0x2000)]);
        assert!(subtract((0x1000, 0x2000), &[(0, 0x3000)]).is_empty());
        assert_eq!(merge(&[(1, 3), (3, 5), (7, 8)]), vec![(1, 5), (7, 8)]);
    }
}
