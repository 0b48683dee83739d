//! Dumped pages, read through an image and its chain of parents (incremental images).
//!
//! Level 0 is the image being restored; level i+1 is the parent of level i. A run flagged
//! `PE_IN_PARENT` is looked up in the next level, recursively. In a process tree the levels
//! above a child are instead its parent process's pages, its grandparent's, and so on: a run
//! flagged `PE_COW_PARENT` (shared copy-on-write when dumped) is looked up there. Every run's
//! CRC is checked once, the first time any of its pages is used.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::MmError;
use crate::image::inventory::Inventory;
use crate::image::pagemap::{PE_COW_PARENT, PE_IN_PARENT, PE_PRESENT, PagemapEntry, PagemapImage};
use crate::image::{ImageDir, ImageError, Kind, pages_file_name};
use crate::sys::PAGE_SIZE;
use crate::sys::mem::MappedFile;

/// Deepest parent chain accepted (a loop of parent links must not hang a restore).
pub const MAX_CHAIN: usize = 64;

struct Level {
    pagemap: PagemapImage,
    /// File offset of each PRESENT run in this level's pages file.
    offsets: Vec<u64>,
    map: MappedFile,
}

/// The pages of an image and its parents.
pub struct PageChain {
    levels: Vec<Level>,
    /// The flag of a run that continues in the next level: `PE_IN_PARENT` (parent images) or
    /// `PE_COW_PARENT` (ancestor processes of a tree).
    follow: u32,
    verified: RefCell<HashSet<(usize, usize)>>,
}

fn inconsistent(path: &Path, detail: String) -> ImageError {
    ImageError::Inconsistent {
        path: path.to_path_buf(),
        detail,
    }
}

fn open_level(dir: &ImageDir, pid: i32, pagemap: PagemapImage) -> Result<Level, ImageError> {
    let path = dir.file(&pages_file_name(pid));
    let len = std::fs::metadata(&path)
        .map_err(|_| ImageError::Missing { path: path.clone() })?
        .len();
    if len != pagemap.stored_pages() * PAGE_SIZE {
        return Err(inconsistent(
            &path,
            format!(
                "{len} bytes, but the pagemap stores {} pages",
                pagemap.stored_pages()
            ),
        ));
    }
    let file = File::open(&path).map_err(|source| ImageError::Io {
        path: path.clone(),
        source,
    })?;
    let map = MappedFile::map(&file, len as usize).map_err(|e| ImageError::Io {
        path: path.clone(),
        source: e.io_error,
    })?;
    let mut offsets = Vec::with_capacity(pagemap.entries.len());
    let mut off = 0u64;
    for e in &pagemap.entries {
        offsets.push(off);
        if e.flags == PE_PRESENT {
            off += u64::from(e.nr_pages) * PAGE_SIZE;
        }
    }
    Ok(Level {
        pagemap,
        offsets,
        map,
    })
}

/// The parent image dirs of `inventory`, nearest first, with their pagemaps; each must be an
/// image of the same process.
pub fn load_parents(
    dir: &ImageDir,
    inventory: &Inventory,
) -> Result<Vec<(ImageDir, PagemapImage)>, ImageError> {
    let mut out = Vec::new();
    let mut next = inventory.parent.clone();
    let mut from = dir.path().to_path_buf();
    while let Some(p) = next {
        if out.len() >= MAX_CHAIN {
            return Err(inconsistent(
                &from,
                format!("parent chain longer than {MAX_CHAIN}"),
            ));
        }
        let path = PathBuf::from(&p);
        let parent = ImageDir::open(&path)?;
        let inv: Inventory = parent.read(Kind::Inventory, 0)?;
        if inv.root_pid != inventory.root_pid {
            return Err(inconsistent(
                &path,
                format!(
                    "parent image is of process {}, not {}",
                    inv.root_pid, inventory.root_pid
                ),
            ));
        }
        let pagemap: PagemapImage = parent.read(Kind::Pagemap, inv.root_pid)?;
        next = inv.parent.clone();
        from = path;
        out.push((parent, pagemap));
    }
    Ok(out)
}

impl PageChain {
    /// Opens the pages of `top` (in `dir`) and of every parent.
    pub fn open(
        dir: &ImageDir,
        pid: i32,
        top: PagemapImage,
        parents: Vec<(ImageDir, PagemapImage)>,
    ) -> Result<Self, ImageError> {
        let mut levels = vec![open_level(dir, pid, top)?];
        for (pdir, pm) in parents {
            levels.push(open_level(&pdir, pid, pm)?);
        }
        Ok(Self {
            levels,
            follow: PE_IN_PARENT,
            verified: RefCell::new(HashSet::new()),
        })
    }

    /// Opens the pages of process `pid` of a tree (in `dir`), with those of its ancestors
    /// (`(pid, pagemap)`, parent first) where its `PE_COW_PARENT` runs lead.
    pub fn open_tree(
        dir: &ImageDir,
        pid: i32,
        top: PagemapImage,
        ancestors: Vec<(i32, PagemapImage)>,
    ) -> Result<Self, ImageError> {
        let mut levels = vec![open_level(dir, pid, top)?];
        for (apid, pm) in ancestors {
            levels.push(open_level(dir, apid, pm)?);
        }
        Ok(Self {
            levels,
            follow: PE_COW_PARENT,
            verified: RefCell::new(HashSet::new()),
        })
    }

    /// Checks that every page of the top image's `PE_COW_PARENT` runs is held by the parent
    /// process's image (possibly through its own parent).
    pub fn check_refs(&self) -> Result<(), String> {
        for e in &self.levels[0].pagemap.entries {
            if e.flags != PE_COW_PARENT {
                continue;
            }
            if self.follow != PE_COW_PARENT || self.levels.len() < 2 {
                return Err(format!(
                    "page run {:#x} refers to the parent process's copy, but the process has no parent in the image",
                    e.vaddr
                ));
            }
            let end = e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE;
            let mut addr = e.vaddr;
            while addr < end {
                let (_, _, _, valid_until) = self.locate(1, addr).map_err(|_| {
                    format!(
                        "page {addr:#x} refers to the parent process's copy, which its image does not hold"
                    )
                })?;
                addr = end.min(valid_until);
            }
        }
        Ok(())
    }

    /// The top image's index.
    pub fn top(&self) -> &PagemapImage {
        &self.levels[0].pagemap
    }

    fn run_bytes(&self, level: usize, idx: usize) -> Result<&[u8], MmError> {
        let l = &self.levels[level];
        let e = &l.pagemap.entries[idx];
        let off = l.offsets[idx] as usize;
        let bytes = &l.map.as_slice()[off..off + e.nr_pages as usize * PAGE_SIZE as usize];
        if self.verified.borrow_mut().insert((level, idx)) && crc32fast::hash(bytes) != e.crc32 {
            return Err(MmError::PagesCorrupt {
                vaddr: e.vaddr,
                pages: e.nr_pages,
            });
        }
        Ok(bytes)
    }

    /// Finds the level and run that hold `addr`, starting at `level` and following in-parent
    /// runs. Also returns where the answer stops being valid: the nearest end of any run
    /// crossed on the way (an in-parent run of a middle level may end before the run below).
    fn locate(
        &self,
        mut level: usize,
        addr: u64,
    ) -> Result<(usize, usize, PagemapEntry, u64), MmError> {
        let mut valid_until = u64::MAX;
        while let Some(l) = self.levels.get(level) {
            let Some((i, e)) = l.pagemap.find(addr) else {
                break;
            };
            valid_until = valid_until.min(e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE);
            if e.flags == PE_PRESENT {
                return Ok((level, i, *e, valid_until));
            }
            if e.flags != self.follow {
                break;
            }
            level += 1;
        }
        Err(MmError::NotInParent { vaddr: addr })
    }

    /// Calls `f(addr, bytes)` for the pages of top-level run `idx`, in contiguous pieces.
    pub fn for_each_piece(
        &self,
        idx: usize,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), MmError>,
    ) -> Result<(), MmError> {
        let e = self.levels[0].pagemap.entries[idx];
        if e.flags == PE_PRESENT {
            return f(e.vaddr, self.run_bytes(0, idx)?);
        }
        if e.flags != self.follow {
            return Err(MmError::NotInParent { vaddr: e.vaddr });
        }
        let end = e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE;
        let mut addr = e.vaddr;
        while addr < end {
            let (level, i, run, valid_until) = self.locate(1, addr)?;
            let bytes = self.run_bytes(level, i)?;
            let piece_end = end.min(valid_until);
            let from = (addr - run.vaddr) as usize;
            f(addr, &bytes[from..from + (piece_end - addr) as usize])?;
            addr = piece_end;
        }
        Ok(())
    }

    /// The image's bytes from `addr` (page-aligned) to at most `max_len` further, contiguous
    /// in one stored run (through the parent chain); `None` if the image holds no page there.
    pub fn bytes_at(&self, addr: u64, max_len: u64) -> Result<Option<&[u8]>, MmError> {
        if self.levels[0].pagemap.find(addr).is_none() {
            return Ok(None);
        }
        let (level, i, run, valid_until) = self.locate(0, addr)?;
        let bytes = self.run_bytes(level, i)?;
        let from = (addr - run.vaddr) as usize;
        let end = valid_until.min(addr.saturating_add(max_len));
        Ok(Some(&bytes[from..from + (end - addr) as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vaddr: u64, nr_pages: u32, flags: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            nr_pages,
            flags,
            crc32: 0,
        }
    }

    /// A tree of three processes in a scratch image dir: 1 (the root) stores 4 pages at
    /// 0x10000, 2 refers to 1 for 2 of them and stores one, 3 refers to 2.
    #[test]
    fn cow_references_resolve_up_the_tree_or_fail() {
        let path = std::env::temp_dir().join(format!("fastcr-pages-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = ImageDir::create(&path).expect("scratch dir");
        let page = |b: u8| vec![b; PAGE_SIZE as usize];
        let mut root_pages = Vec::new();
        for b in 1..=4 {
            root_pages.extend(page(b));
        }
        std::fs::write(dir.file(&pages_file_name(1)), &root_pages).expect("write");
        std::fs::write(dir.file(&pages_file_name(2)), page(9)).expect("write");
        std::fs::write(dir.file(&pages_file_name(3)), b"").expect("write");
        let mut root = PagemapImage {
            entries: vec![run(0x10000, 4, PE_PRESENT)],
        };
        root.entries[0].crc32 = crc32fast::hash(&root_pages);
        let mut child = PagemapImage {
            entries: vec![
                run(0x10000, 2, PE_COW_PARENT),
                run(0x12000, 1, PE_PRESENT),
                run(0x13000, 1, PE_COW_PARENT),
            ],
        };
        child.entries[1].crc32 = crc32fast::hash(&page(9));
        let grand = PagemapImage {
            entries: vec![run(0x11000, 3, PE_COW_PARENT)],
        };
        let ancestors = vec![(2, child.clone()), (1, root.clone())];
        let chain = PageChain::open_tree(&dir, 3, grand, ancestors).expect("open");
        chain.check_refs().expect("every reference resolves");
        let mut seen = Vec::new();
        chain
            .for_each_piece(0, |addr, bytes| {
                seen.push((addr, bytes.len(), bytes[0]));
                Ok(())
            })
            .expect("pieces");
        assert_eq!(
            seen,
            vec![(0x11000, 4096, 2), (0x12000, 4096, 9), (0x13000, 4096, 4)]
        );
        assert_eq!(
            chain
                .bytes_at(0x13000, 1 << 20)
                .expect("bytes")
                .map(|b| b[0]),
            Some(4)
        );
        // A reference to a page the parent does not hold.
        let beyond = PagemapImage {
            entries: vec![run(0x14000, 1, PE_COW_PARENT)],
        };
        let chain = PageChain::open_tree(&dir, 3, beyond, vec![(2, child.clone())]).expect("open");
        let err = chain.check_refs().expect_err("nothing at 0x14000");
        assert!(err.contains("0x14000"), "{err}");
        // The root refers to a parent it does not have.
        let chain = PageChain::open_tree(&dir, 2, child, Vec::new()).expect("open");
        assert!(chain.check_refs().is_err());
        let _ = std::fs::remove_dir_all(&path);
    }
}
