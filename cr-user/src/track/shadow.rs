//! The shadow copy: pages copied while the process runs, by address. A page copied again (it
//! was written since) overwrites its slot, so the store never holds two versions of a page.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::sys::PAGE_SIZE;
use crate::sys::SyscallError;
use crate::sys::mem;

const PAGE: usize = PAGE_SIZE as usize;

/// Page addresses are already well spread in their upper bits; a multiply mixes them enough
/// and costs a fraction of SipHash on the hot final pass.
#[derive(Default, Clone, Copy)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Pages keyed by address, stored back to back in one arena.
#[derive(Default)]
pub struct Shadow {
    slots: HashMap<u64, u32, BuildHasherDefault<PageHasher>>,
    arena: Vec<u8>,
    /// Ranges copied, unsorted; see [`Shadow::covered`].
    covered: Vec<(u64, u64)>,
}

impl Shadow {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The copy of the page at `addr`, if any.
    pub fn get(&self, addr: u64) -> Option<&[u8]> {
        let slot = *self.slots.get(&addr)? as usize;
        Some(&self.arena[slot * PAGE..(slot + 1) * PAGE])
    }

    fn slot_for(&mut self, addr: u64) -> usize {
        let next = self.slots.len();
        let slot = *self.slots.entry(addr).or_insert(next as u32) as usize;
        if (slot + 1) * PAGE > self.arena.len() {
            self.arena.resize((slot + 1) * PAGE, 0);
        }
        slot
    }

    /// Copies the pages of `ranges` out of process `pid` into the store. Pages that cannot be
    /// read (unmapped meanwhile) are skipped: the final pass decides what the image holds.
    /// Returns the pages copied.
    pub fn copy_from(&mut self, pid: i32, ranges: &[(u64, u64)]) -> Result<u64, SyscallError> {
        let mut copied = 0;
        let mut page = vec![0u8; PAGE];
        for &(start, end) in ranges {
            // Whole ranges first, one syscall each; a short read falls back to single pages.
            let len = (end - start) as usize;
            let mut buf = vec![0u8; len];
            let got = match mem::read_remote(pid, &[(start, len)], &mut buf) {
                Ok(n) => n,
                Err(e) if e.errno() == Some(libc::EFAULT) => 0,
                Err(e) => return Err(e),
            };
            let whole = got / PAGE;
            self.covered.push((start, start + (whole * PAGE) as u64));
            for i in 0..whole {
                let slot = self.slot_for(start + (i * PAGE) as u64);
                self.arena[slot * PAGE..(slot + 1) * PAGE]
                    .copy_from_slice(&buf[i * PAGE..(i + 1) * PAGE]);
                copied += 1;
            }
            let mut addr = start + (whole * PAGE) as u64;
            while addr < end {
                if let Ok(PAGE) = mem::read_remote(pid, &[(addr, PAGE)], &mut page) {
                    self.covered.push((addr, addr + PAGE_SIZE));
                    let slot = self.slot_for(addr);
                    self.arena[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(&page);
                    copied += 1;
                }
                addr += PAGE_SIZE;
            }
        }
        Ok(copied)
    }

    /// Every address range the store holds pages for, sorted and merged.
    pub fn covered(&mut self) -> &[(u64, u64)] {
        self.covered = super::ranges::normalize(std::mem::take(&mut self.covered));
        &self.covered
    }

    /// Stores one page given by the caller.
    pub fn put(&mut self, addr: u64, data: &[u8]) {
        self.covered.push((addr, addr + PAGE_SIZE));
        let slot = self.slot_for(addr);
        self.arena[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(&data[..PAGE]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_in_place() {
        let mut s = Shadow::new();
        s.put(0x1000, &[1u8; PAGE]);
        s.put(0x3000, &[3u8; PAGE]);
        s.put(0x1000, &[9u8; PAGE]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(0x1000).unwrap()[0], 9);
        assert_eq!(s.get(0x3000).unwrap()[PAGE - 1], 3);
        assert!(s.get(0x2000).is_none());
        assert_eq!(s.covered(), &[(0x1000, 0x2000), (0x3000, 0x4000)]);
    }
}
