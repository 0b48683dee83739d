//! `pagemap-<pid>.img` indexes `pages-<pid>.img`: runs of dumped pages, in file order.
//!
//! The pages file is raw and page-aligned (no header), so restore can map it and copy from it
//! without decoding. Entry `i` covers `nr_pages` pages starting at file offset
//! `sum(nr_pages of entries before i) * 4096`; its CRC-32 covers those bytes.

use serde::{Deserialize, Serialize};

/// The pages are present in this image's pages file.
pub const PE_PRESENT: u32 = 1;
/// The pages are unchanged since the parent image: read them through the parent chain.
pub const PE_IN_PARENT: u32 = 2;
/// The pages are not in this image: a migration source holds them and sends them after the
/// restored process resumes (lazy migration). Only `fastcr receive` restores such an image.
pub const PE_LAZY: u32 = 4;
/// The pages are the parent process's pages at the same address, shared copy-on-write when
/// the tree was dumped: read them through the parent process's pagemap (which may refer to
/// its own parent in turn). Nothing is stored for them here; `crc32` is 0. Format 1.1.
pub const PE_COW_PARENT: u32 = 8;

/// One run of consecutive dumped pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagemapEntry {
    /// Address of the first page.
    pub vaddr: u64,
    /// Number of pages.
    pub nr_pages: u32,
    /// PE_* flags.
    pub flags: u32,
    /// CRC-32 of the run's bytes in the pages file.
    pub crc32: u32,
}

/// The index of one process's pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagemapImage {
    /// Runs, ascending by vaddr, not overlapping.
    pub entries: Vec<PagemapEntry>,
}

impl PagemapImage {
    /// The index of pages `ranges` (sorted, disjoint, page-aligned), all stored here, in runs of
    /// at most `max_run` pages.
    pub fn of_ranges(ranges: &[(u64, u64)], max_run: u32) -> Self {
        let page = 4096u64;
        let mut entries = Vec::new();
        for &(start, end) in ranges {
            let mut at = start;
            while at < end {
                let n = ((end - at) / page).min(u64::from(max_run.max(1)));
                if n == 0 {
                    break;
                }
                entries.push(PagemapEntry {
                    vaddr: at,
                    nr_pages: n as u32,
                    flags: PE_PRESENT,
                    crc32: 0,
                });
                at += n * page;
            }
        }
        Self { entries }
    }

    /// Total pages indexed (stored here or in the parent chain).
    pub fn total_pages(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.nr_pages)).sum()
    }

    /// Pages stored in this image's own pages file.
    pub fn stored_pages(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.flags == PE_PRESENT)
            .map(|e| u64::from(e.nr_pages))
            .sum()
    }

    /// Pages that a migration source still holds (`PE_LAZY`).
    pub fn lazy_pages(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.flags == PE_LAZY)
            .map(|e| u64::from(e.nr_pages))
            .sum()
    }

    /// Pages shared copy-on-write with the parent process (`PE_COW_PARENT`).
    pub fn cow_pages(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.flags == PE_COW_PARENT)
            .map(|e| u64::from(e.nr_pages))
            .sum()
    }

    /// The run holding `addr`, with its index.
    pub fn find(&self, addr: u64) -> Option<(usize, &PagemapEntry)> {
        let i = self
            .entries
            .partition_point(|e| e.vaddr + u64::from(e.nr_pages) * 4096 <= addr);
        self.entries
            .get(i)
            .filter(|e| e.vaddr <= addr)
            .map(|e| (i, e))
    }

    /// Checks ordering and that every run lies inside one of `ranges` (VMA bounds).
    pub fn validate(&self, ranges: &[(u64, u64)]) -> Result<(), String> {
        let mut last_end = 0u64;
        for e in &self.entries {
            let len = u64::from(e.nr_pages) * 4096;
            let end = e.vaddr.checked_add(len).ok_or("page run overflows")?;
            if e.vaddr % 4096 != 0
                || e.nr_pages == 0
                || e.vaddr < last_end
                || !matches!(e.flags, PE_PRESENT | PE_IN_PARENT | PE_LAZY | PE_COW_PARENT)
            {
                return Err(format!("bad page run at {:#x}", e.vaddr));
            }
            if !ranges.iter().any(|&(s, en)| e.vaddr >= s && end <= en) {
                return Err(format!(
                    "page run {:#x}-{end:#x} is outside every VMA",
                    e.vaddr
                ));
            }
            last_end = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(vaddr: u64, nr_pages: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            nr_pages,
            flags: PE_PRESENT,
            crc32: 0,
        }
    }

    #[test]
    fn validates_order_and_bounds() {
        let ok = PagemapImage {
            entries: vec![e(0x1000, 2), e(0x4000, 1)],
        };
        assert_eq!(ok.total_pages(), 3);
        assert!(ok.validate(&[(0x1000, 0x5000)]).is_ok());
        assert!(ok.validate(&[(0x1000, 0x3000)]).is_err());
        let overlap = PagemapImage {
            entries: vec![e(0x1000, 2), e(0x2000, 1)],
        };
        assert!(overlap.validate(&[(0, 0x10000)]).is_err());
        let unaligned = PagemapImage {
            entries: vec![e(0x1001, 1)],
        };
        assert!(unaligned.validate(&[(0, 0x10000)]).is_err());
        let mut mixed = ok.clone();
        mixed.entries[1].flags = PE_IN_PARENT;
        assert!(mixed.validate(&[(0x1000, 0x5000)]).is_ok());
        assert_eq!((mixed.total_pages(), mixed.stored_pages()), (3, 2));
        assert_eq!(mixed.find(0x2fff).map(|f| f.0), Some(0));
        assert_eq!(mixed.find(0x4000).map(|f| f.0), Some(1));
        assert!(mixed.find(0x3000).is_none());
        mixed.entries[1].flags = PE_COW_PARENT;
        assert!(mixed.validate(&[(0x1000, 0x5000)]).is_ok());
        assert_eq!((mixed.stored_pages(), mixed.cow_pages()), (2, 1));
        mixed.entries[1].flags = 7;
        assert!(mixed.validate(&[(0x1000, 0x5000)]).is_err());
    }
}
