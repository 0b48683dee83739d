//! The shadow copy: pages copied while the process runs, by address. A page copied again (it
//! was written since) overwrites its slot, so the store never holds two versions of a page.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::FileExt;

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

/// Below this many pages one thread reads faster than two can start.
const PARALLEL_MIN_PAGES: u64 = 256;

/// Pages per arena segment (64 MiB).
const SEGMENT_PAGES: usize = 16384;

/// Pages keyed by address, stored in an arena of fixed-size segments: growing it never moves
/// what it holds (one big vector would be remapped whole when it grows, inside the freeze).
#[derive(Default)]
pub struct Shadow {
    slots: HashMap<u64, u32, BuildHasherDefault<PageHasher>>,
    arena: Vec<Vec<u8>>,
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
        let (seg, at) = (slot / SEGMENT_PAGES, slot % SEGMENT_PAGES * PAGE);
        Some(&self.arena[seg][at..at + PAGE])
    }

    fn slot_for(&mut self, addr: u64) -> usize {
        let next = self.slots.len();
        let slot = *self.slots.entry(addr).or_insert(next as u32) as usize;
        while self.arena.len() <= slot / SEGMENT_PAGES {
            // Zero-filled on demand by the kernel: only pages written are ever touched.
            self.arena.push(vec![0u8; SEGMENT_PAGES * PAGE]);
        }
        slot
    }

    fn page_mut(&mut self, slot: usize) -> &mut [u8] {
        let (seg, at) = (slot / SEGMENT_PAGES, slot % SEGMENT_PAGES * PAGE);
        &mut self.arena[seg][at..at + PAGE]
    }

    /// Copies the pages of `ranges` out of process `pid` into the store. Pages that cannot be
    /// read (unmapped meanwhile) are skipped: the caller decides from [`Shadow::covered`]
    /// what the image holds. Returns the pages copied.
    pub fn copy_from(&mut self, pid: i32, ranges: &[(u64, u64)]) -> Result<u64, SyscallError> {
        let groups = self.plan(ranges);
        let mut dst = slices(&mut self.arena, &groups);
        let got = read_groups(pid, &groups, &mut dst)?;
        Ok(self.record(got))
    }

    /// Like [`Shadow::copy_from`], but with enough to read, half of it is read by a second
    /// thread meanwhile: for the final pass, when the process is frozen and every CPU is free.
    pub fn copy_from_parallel(
        &mut self,
        pid: i32,
        ranges: &[(u64, u64)],
    ) -> Result<u64, SyscallError> {
        let total: u64 = ranges.iter().map(|(s, e)| (e - s) / PAGE_SIZE).sum();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if total < PARALLEL_MIN_PAGES || cpus < 2 {
            return self.copy_from(pid, ranges);
        }
        let groups = self.plan(ranges);
        let mut dst = slices(&mut self.arena, &groups);
        // Split where half of the pages are on each side.
        let mut half = 0;
        let mut pages = 0;
        while half < groups.len() && pages < total / 2 {
            pages += groups[half].pages as u64;
            half += 1;
        }
        let (g1, g2) = groups.split_at(half);
        let (d1, d2) = dst.split_at_mut(half);
        let (first, second) = std::thread::scope(|scope| {
            let other = scope.spawn(|| read_groups(pid, g2, d2));
            let first = read_groups(pid, g1, d1);
            (first, other.join())
        });
        let mut got = first?;
        match second {
            Ok(second) => got.extend(second?),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        Ok(self.record(got))
    }

    /// Gives every page of `ranges` its slot and groups them into runs of consecutive
    /// addresses held in consecutive slots of one segment, in address order.
    fn plan(&mut self, ranges: &[(u64, u64)]) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for (start, end) in super::ranges::normalize(ranges.to_vec()) {
            let mut addr = start;
            while addr < end {
                let slot = self.slot_for(addr);
                match groups.last_mut() {
                    Some(g)
                        if g.addr + g.pages as u64 * PAGE_SIZE == addr
                            && g.slot + g.pages == slot
                            && !slot.is_multiple_of(SEGMENT_PAGES)
                            && g.pages < GROUP_PAGES =>
                    {
                        g.pages += 1
                    }
                    _ => groups.push(Group {
                        addr,
                        slot,
                        pages: 1,
                    }),
                }
                addr += PAGE_SIZE;
            }
        }
        groups
    }

    /// Notes ranges read as covered; returns their pages.
    fn record(&mut self, got: Vec<(u64, u64)>) -> u64 {
        let pages = got.iter().map(|(s, e)| (e - s) / PAGE_SIZE).sum();
        self.covered.extend(got);
        pages
    }

    /// Every address range the store holds pages for, sorted and merged.
    pub fn covered(&mut self) -> &[(u64, u64)] {
        self.covered = super::ranges::normalize(std::mem::take(&mut self.covered));
        &self.covered
    }

    /// Stores whole pages given by the caller at `addr` (a migration destination mirrors the
    /// source's copies this way); a trailing partial page is ignored.
    pub fn store(&mut self, addr: u64, data: &[u8]) {
        let mut a = addr;
        for page in data.chunks_exact(PAGE) {
            let slot = self.slot_for(a);
            self.page_mut(slot).copy_from_slice(page);
            a += PAGE_SIZE;
        }
        if a > addr {
            self.covered.push((addr, a));
        }
    }

    /// Stores one page (tests fill the store without a process).
    #[cfg(test)]
    fn put(&mut self, addr: u64, data: &[u8]) {
        self.store(addr, &data[..PAGE]);
    }
}

/// Pages read in one `process_vm_readv` iovec at most (the careful path redoes a whole group
/// page by page when part of it cannot be read).
const GROUP_PAGES: usize = 512;

/// Pages at consecutive addresses from `addr`, held in consecutive slots from `slot`.
#[derive(Debug, Clone, Copy)]
struct Group {
    addr: u64,
    slot: usize,
    pages: usize,
}

/// The arena bytes of each group, in the order of `groups` (whose slots never overlap).
fn slices<'a>(arena: &'a mut [Vec<u8>], groups: &[Group]) -> Vec<&'a mut [u8]> {
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_unstable_by_key(|&i| groups[i].slot);
    let mut out: Vec<Option<&'a mut [u8]>> = (0..groups.len()).map(|_| None).collect();
    let mut segments = arena.iter_mut().enumerate();
    // The current segment, its bytes not handed out yet, and the slot they start at.
    let mut current: Option<(usize, &'a mut [u8], usize)> = None;
    for i in order {
        let g = groups[i];
        let (seg, at) = (g.slot / SEGMENT_PAGES, g.slot % SEGMENT_PAGES);
        let (mut idx, mut rest, mut from) = match current.take() {
            Some(c) => c,
            None => match segments.next() {
                Some((idx, v)) => (idx, v.as_mut_slice(), 0),
                None => break,
            },
        };
        while idx < seg {
            match segments.next() {
                Some((next, v)) => (idx, rest, from) = (next, v.as_mut_slice(), 0),
                None => break,
            }
        }
        if idx != seg || at < from {
            // Not reachable: slot_for made the segment, and plan gives each page one group.
            break;
        }
        let (_, tail) = rest.split_at_mut((at - from) * PAGE);
        let (mine, tail) = tail.split_at_mut(g.pages * PAGE);
        out[i] = Some(mine);
        current = Some((seg, tail, at + g.pages));
    }
    out.into_iter().flatten().collect()
}

/// Reads `groups` of `pid` into `dst` (one slice per group); a group that cannot be read at
/// once is read page by page, through `/proc/PID/mem` for what `process_vm_readv` refuses
/// (no PROT_READ), skipping what is gone. Returns the ranges read.
fn read_groups(
    pid: i32,
    groups: &[Group],
    dst: &mut [&mut [u8]],
) -> Result<Vec<(u64, u64)>, SyscallError> {
    let addrs: Vec<u64> = groups.iter().map(|g| g.addr).collect();
    let mut got = Vec::with_capacity(groups.len());
    let mut memf = None;
    let mut i = 0;
    while i < groups.len() {
        let mut bytes = mem::read_remote_scatter(pid, &addrs[i..], &mut dst[i..])?;
        while i < groups.len() && bytes >= groups[i].pages * PAGE {
            bytes -= groups[i].pages * PAGE;
            let g = groups[i];
            got.push((g.addr, g.addr + g.pages as u64 * PAGE_SIZE));
            i += 1;
        }
        if i == groups.len() {
            break;
        }
        let g = groups[i];
        for (n, page) in dst[i].chunks_exact_mut(PAGE).enumerate() {
            let addr = g.addr + n as u64 * PAGE_SIZE;
            let read = matches!(mem::read_remote(pid, &[(addr, PAGE)], page), Ok(PAGE)) || {
                let f = memf.get_or_insert_with(|| File::open(format!("/proc/{pid}/mem")).ok());
                f.as_ref()
                    .is_some_and(|f| f.read_exact_at(page, addr).is_ok())
            };
            if read {
                got.push((addr, addr + PAGE_SIZE));
            }
        }
        i += 1;
    }
    Ok(got)
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
        // A page past the first segment lands in a second one; the first stays in place.
        for i in 0..=SEGMENT_PAGES as u64 {
            s.put(0x100_0000 + i * PAGE_SIZE, &[5u8; PAGE]);
        }
        assert_eq!(s.arena.len(), 2);
        assert_eq!(s.get(0x1000).unwrap()[0], 9);
        assert_eq!(
            s.get(0x100_0000 + SEGMENT_PAGES as u64 * PAGE_SIZE)
                .unwrap()[0],
            5
        );
    }

    /// Reads from this very process: pages land in their slots whatever the order in which
    /// slots were handed out, in one thread or two.
    #[test]
    fn reads_scattered_pages_into_their_slots() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let n = 600usize;
        let mut src = vec![0u8; (n + 1) * PAGE];
        let base = (src.as_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let off = (base - src.as_ptr() as u64) as usize;
        for p in 0..n {
            src[off + p * PAGE..off + (p + 1) * PAGE].fill((p % 251) as u8 + 1);
        }
        let page = |p: usize| base + (p * PAGE) as u64;
        let mut s = Shadow::new();
        // Later pages first: their slots come before those of earlier pages.
        assert_eq!(s.copy_from(pid, &[(page(10), page(12))]).unwrap(), 2);
        assert_eq!(
            s.copy_from(pid, &[(page(3), page(5)), (page(4), page(11))])
                .unwrap(),
            8
        );
        assert_eq!(
            s.copy_from_parallel(pid, &[(page(0), page(n))]).unwrap(),
            n as u64
        );
        for p in 0..n {
            assert_eq!(
                s.get(page(p)).unwrap()[PAGE - 1],
                (p % 251) as u8 + 1,
                "page {p}"
            );
        }
        assert_eq!(s.len(), n);
        assert_eq!(s.covered(), &[(page(0), page(n))]);
        // An unmapped address is skipped, the rest is read.
        let holes = [(0x1000, 0x3000), (page(1), page(2))];
        assert_eq!(s.copy_from(pid, &holes).unwrap(), 1);
        drop(src);
    }
}
