//! Incremental images: what a dump with a parent stores itself, and what it leaves to the
//! parent chain.
//!
//! A page goes into the parent chain (`PE_IN_PARENT`) only if the chain holds it, its range was
//! write-tracked without a break since the parent was taken, and it was not written since.
//! Everything else the image needs is copied.

use std::path::{Path, PathBuf};

use super::ranges::{intersect, normalize, subtract};
use crate::image::inventory::Inventory;
use crate::image::pagemap::{PE_IN_PARENT, PE_PRESENT, PagemapEntry, PagemapImage};
use crate::image::{ImageDir, ImageError, Kind};
use crate::mm::pages::load_parents;
use crate::sys::PAGE_SIZE;

/// A parent image, as a child dump needs it.
pub struct Parent {
    /// Its directory, absolute (recorded in the child's inventory).
    pub dir: PathBuf,
    /// Its inventory.
    pub inventory: Inventory,
    /// Every page address the parent chain can supply.
    pub covered: Vec<(u64, u64)>,
}

/// Loads the parent image at `path` (and checks its own chain is readable).
pub fn load_parent(path: &Path, pid: i32) -> Result<Parent, ImageError> {
    let abs = std::fs::canonicalize(path).map_err(|_| ImageError::NoDir {
        path: path.to_path_buf(),
    })?;
    let dir = ImageDir::open(&abs)?;
    let inventory: Inventory = dir.read(Kind::Inventory, 0)?;
    if inventory.root_pid != pid {
        return Err(ImageError::Inconsistent {
            path: abs,
            detail: format!(
                "it is an image of process {}, not {pid}",
                inventory.root_pid
            ),
        });
    }
    let pagemap: PagemapImage = dir.read(Kind::Pagemap, pid)?;
    load_parents(&dir, &inventory)?;
    let covered = normalize(
        pagemap
            .entries
            .iter()
            .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE))
            .collect(),
    );
    Ok(Parent {
        dir: abs,
        inventory,
        covered,
    })
}

/// Pages the parent chain may supply: tracked without a break, held by the parent, not written.
pub fn trusted(parent: &Parent, intact: &[(u64, u64)], written: &[(u64, u64)]) -> Vec<(u64, u64)> {
    subtract(
        &intersect(&normalize(intact.to_vec()), &parent.covered),
        &normalize(written.to_vec()),
    )
}

/// Splits the selected runs into `PE_IN_PARENT` pieces (inside `trusted`) and stored pieces.
/// Returns the image's index and the stored runs (to copy, in file order).
pub fn split(selected: &PagemapImage, trusted: &[(u64, u64)]) -> (PagemapImage, Vec<PagemapEntry>) {
    let mut out = PagemapImage::default();
    let mut stored = Vec::new();
    for e in &selected.entries {
        let run = [(e.vaddr, e.vaddr + u64::from(e.nr_pages) * PAGE_SIZE)];
        let mut pieces: Vec<(u64, u64, u32)> = intersect(&run, trusted)
            .into_iter()
            .map(|(s, en)| (s, en, PE_IN_PARENT))
            .chain(
                subtract(&run, trusted)
                    .into_iter()
                    .map(|(s, en)| (s, en, PE_PRESENT)),
            )
            .collect();
        pieces.sort_unstable();
        for (s, en, flags) in pieces {
            let piece = PagemapEntry {
                vaddr: s,
                nr_pages: ((en - s) / PAGE_SIZE) as u32,
                flags,
                crc32: 0,
            };
            if flags == PE_PRESENT {
                stored.push(piece);
            }
            out.entries.push(piece);
        }
    }
    (out, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_order_and_flags() {
        let sel = PagemapImage {
            entries: vec![PagemapEntry {
                vaddr: 0x10000,
                nr_pages: 8,
                flags: PE_PRESENT,
                crc32: 0,
            }],
        };
        let (img, stored) = split(&sel, &[(0x12000, 0x14000)]);
        let got: Vec<(u64, u32, u32)> = img
            .entries
            .iter()
            .map(|e| (e.vaddr, e.nr_pages, e.flags))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x10000, 2, PE_PRESENT),
                (0x12000, 2, PE_IN_PARENT),
                (0x14000, 4, PE_PRESENT)
            ]
        );
        assert_eq!(stored.len(), 2);
        assert_eq!(img.total_pages(), 8);
        assert_eq!(img.stored_pages(), 6);
    }

    #[test]
    fn trust_needs_tracking_parent_and_no_write() {
        let parent = Parent {
            dir: PathBuf::new(),
            inventory: Inventory {
                tool_version: String::new(),
                root_pid: 1,
                pids: vec![1],
                shell_job: false,
                created_unix_ms: 0,
                parent: None,
                pre_dump: true,
                tracking: None,
            },
            covered: vec![(0x0, 0x8000)],
        };
        let t = trusted(&parent, &[(0x2000, 0x10000)], &[(0x3000, 0x4000)]);
        assert_eq!(t, vec![(0x2000, 0x3000), (0x4000, 0x8000)]);
    }
}
