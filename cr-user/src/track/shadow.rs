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
/// Ranges up to this size are gathered into batched reads.
const SMALL_RANGE: u64 = 16 * PAGE_SIZE;
/// Most ranges one batched `process_vm_readv` takes (`UIO_MAXIOV`).
const BATCH_RANGES: usize = 1024;

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

/// `process_vm_readv` that treats an unmapped range as a short read.
fn read_tolerant(pid: i32, addr: u64, dst: &mut [u8]) -> Result<usize, SyscallError> {
    match mem::read_remote(pid, &[(addr, dst.len())], dst) {
        Ok(n) => Ok(n),
        Err(e) if e.errno() == Some(libc::EFAULT) => Ok(0),
        Err(e) => Err(e),
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

    /// The bytes of `n` consecutive slots from `first`, if they lie in one segment.
    fn slots_mut(&mut self, first: usize, n: usize) -> Option<&mut [u8]> {
        let (seg, at) = (first / SEGMENT_PAGES, first % SEGMENT_PAGES);
        (at + n <= SEGMENT_PAGES).then(|| &mut self.arena[seg][at * PAGE..(at + n) * PAGE])
    }

    /// Copies the pages of `ranges` out of process `pid` into the store. Pages that cannot be
    /// read (unmapped meanwhile) are skipped: the caller decides from [`Shadow::covered`]
    /// what the image holds. Returns the pages copied.
    pub fn copy_from(&mut self, pid: i32, ranges: &[(u64, u64)]) -> Result<u64, SyscallError> {
        const CHUNK: u64 = 512 * PAGE_SIZE;
        let mut copied = 0;
        let mut bounce = Vec::new();
        // Small scattered ranges (the residue of later rounds) are gathered into one
        // process_vm_readv of up to 1024 ranges; large ones go chunk by chunk.
        let mut batch: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in ranges {
            if end - start <= SMALL_RANGE {
                batch.push((start, end));
                if batch.len() == BATCH_RANGES {
                    copied += self.copy_batch(pid, &batch, &mut bounce)?;
                    batch.clear();
                }
                continue;
            }
            let mut at = start;
            while at < end {
                let stop = end.min(at + CHUNK);
                copied += self.copy_chunk(pid, at, stop, &mut bounce)?;
                at = stop;
            }
        }
        copied += self.copy_batch(pid, &batch, &mut bounce)?;
        Ok(copied)
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
        let (first, second) = super::ranges::split_at(ranges, total / 2 * PAGE_SIZE);
        let iov: Vec<(u64, usize)> = second.iter().map(|&(s, e)| (s, (e - s) as usize)).collect();
        let len: usize = iov.iter().map(|r| r.1).sum();
        let (copied, read) = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let mut buf = vec![0u8; len];
                let got = mem::read_remote(pid, &iov, &mut buf);
                (buf, got)
            });
            let copied = self.copy_from(pid, &first);
            (copied, other.join())
        });
        let mut copied = copied?;
        match read {
            // Whole: stored as read.
            Ok((buf, Ok(got))) if got == len => {
                let mut off = 0;
                for &(s, e) in &second {
                    let mut addr = s;
                    while addr < e {
                        let slot = self.slot_for(addr);
                        self.page_mut(slot).copy_from_slice(&buf[off..off + PAGE]);
                        off += PAGE;
                        addr += PAGE_SIZE;
                    }
                    self.covered.push((s, e));
                }
                copied += (len / PAGE) as u64;
            }
            // Part of it could not be read that way: the careful path does it again.
            _ => copied += self.copy_from(pid, &second)?,
        }
        Ok(copied)
    }

    /// Reads many small ranges with one syscall; if any of them fails, each is read on its own.
    fn copy_batch(
        &mut self,
        pid: i32,
        batch: &[(u64, u64)],
        bounce: &mut Vec<u8>,
    ) -> Result<u64, SyscallError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let iov: Vec<(u64, usize)> = batch.iter().map(|&(s, e)| (s, (e - s) as usize)).collect();
        let total: usize = iov.iter().map(|r| r.1).sum();
        bounce.resize(total, 0);
        let got = match mem::read_remote(pid, &iov, bounce) {
            Ok(n) => n,
            Err(e) if e.errno() == Some(libc::EFAULT) => 0,
            Err(e) => return Err(e),
        };
        if got < total {
            let mut copied = 0;
            let mut one = Vec::new();
            for &(s, e) in batch {
                copied += self.copy_chunk(pid, s, e, &mut one)?;
            }
            return Ok(copied);
        }
        let mut off = 0usize;
        for &(s, e) in batch {
            let mut addr = s;
            while addr < e {
                let slot = self.slot_for(addr);
                self.page_mut(slot)
                    .copy_from_slice(&bounce[off..off + PAGE]);
                off += PAGE;
                addr += PAGE_SIZE;
            }
            self.covered.push((s, e));
        }
        Ok((total / PAGE) as u64)
    }

    /// One chunk: straight into the arena when its slots are consecutive in one segment
    /// (pages seen for the first time, the common case), else through a bounce buffer.
    fn copy_chunk(
        &mut self,
        pid: i32,
        start: u64,
        end: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<u64, SyscallError> {
        let n = ((end - start) / PAGE_SIZE) as usize;
        let slots: Vec<usize> = (0..n)
            .map(|i| self.slot_for(start + (i * PAGE) as u64))
            .collect();
        let consecutive = slots.windows(2).all(|w| w[1] == w[0] + 1);
        let direct = if consecutive {
            self.slots_mut(slots[0], n)
        } else {
            None
        };
        let got = match direct {
            Some(dst) => read_tolerant(pid, start, dst)?,
            None => {
                bounce.resize(n * PAGE, 0);
                let got = read_tolerant(pid, start, bounce)?;
                for (i, &slot) in slots.iter().enumerate().take(got / PAGE) {
                    self.page_mut(slot)
                        .copy_from_slice(&bounce[i * PAGE..(i + 1) * PAGE]);
                }
                got
            }
        };
        let whole = got / PAGE;
        if whole > 0 {
            self.covered.push((start, start + (whole * PAGE) as u64));
        }
        // The rest of the chunk is unreadable by process_vm_readv (no PROT_READ, or unmapped
        // meanwhile): page by page, through /proc/PID/mem, which reads what the process could
        // make readable, skipping what is gone.
        let mut page = vec![0u8; PAGE];
        let mut copied = whole as u64;
        let memf = if whole < n {
            File::open(format!("/proc/{pid}/mem")).ok()
        } else {
            None
        };
        for (i, &slot) in slots.iter().enumerate().skip(whole) {
            let addr = start + (i * PAGE) as u64;
            let read = matches!(mem::read_remote(pid, &[(addr, PAGE)], &mut page), Ok(PAGE))
                || memf
                    .as_ref()
                    .is_some_and(|f| f.read_exact_at(&mut page, addr).is_ok());
            if read {
                self.page_mut(slot).copy_from_slice(&page);
                self.covered.push((addr, addr + PAGE_SIZE));
                copied += 1;
            }
        }
        Ok(copied)
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
}
