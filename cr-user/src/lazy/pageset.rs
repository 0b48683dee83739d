//! The pages still missing in one restored address space, as disjoint intervals
//! `[start, end)` of the process's addresses, each remembering where its content is in the
//! image (the *source* address): equal to the address until the process moves a range with
//! mremap, after which the moved pages still come from their old place in the image.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    end: u64,
    src: u64,
}

/// Disjoint intervals keyed by start; adjacent intervals with contiguous sources are merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    runs: BTreeMap<u64, Run>,
    bytes: u64,
    /// Whether every run still has `src == start`, so lookups by source are lookups by address.
    identity: bool,
}

impl PageSet {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            runs: BTreeMap::new(),
            bytes: 0,
            identity: true,
        }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Total bytes in the set.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The source of `addr` if `addr` is in the set.
    pub fn source_of(&self, addr: u64) -> Option<u64> {
        self.runs
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| addr < r.end)
            .map(|(s, r)| r.src + (addr - s))
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        self.source_of(addr).is_some()
    }

    /// Adds `[start, end)` whose content is at `src` in the image.
    pub fn insert_from(&mut self, start: u64, end: u64, src: u64) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        if src != start {
            self.identity = false;
        }
        let (mut s, mut e, mut from) = (start, end, src);
        if let Some((&ps, &pr)) = self.runs.range(..start).next_back()
            && pr.end == start
            && pr.src + (start - ps) == src
        {
            self.runs.remove(&ps);
            self.bytes -= pr.end - ps;
            s = ps;
            from = pr.src;
        }
        if let Some(&nr) = self.runs.get(&end)
            && nr.src == src + (end - start)
        {
            self.runs.remove(&end);
            self.bytes -= nr.end - end;
            e = nr.end;
        }
        self.runs.insert(s, Run { end: e, src: from });
        self.bytes += e - s;
    }

    /// Adds `[start, end)` holding its own content.
    pub fn insert(&mut self, start: u64, end: u64) {
        self.insert_from(start, end, start);
    }

    /// Removes `[start, end)`; returns the removed pieces as (start, end, src).
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let mut removed = Vec::new();
        if start >= end {
            return removed;
        }
        let first = self
            .runs
            .range(..start)
            .next_back()
            .filter(|(_, r)| r.end > start)
            .map_or(start, |(s, _)| *s);
        let hit: Vec<(u64, Run)> = self.runs.range(first..end).map(|(s, r)| (*s, *r)).collect();
        for (s, r) in hit {
            self.runs.remove(&s);
            self.bytes -= r.end - s;
            if s < start {
                self.runs.insert(
                    s,
                    Run {
                        end: start,
                        src: r.src,
                    },
                );
                self.bytes += start - s;
            }
            if r.end > end {
                self.runs.insert(
                    end,
                    Run {
                        end: r.end,
                        src: r.src + (end - s),
                    },
                );
                self.bytes += r.end - end;
            }
            let piece = s.max(start);
            removed.push((piece, r.end.min(end), r.src + (piece - s)));
        }
        removed
    }

    /// Moves whatever lies in `[from, from+len)` to the same offsets from `to` (mremap): the
    /// moved pages keep their sources, and what was pending at the target is gone.
    pub fn relocate(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.remove(from, from + len);
        self.remove(to, to + len);
        for (s, e, src) in moved {
            self.insert_from(s - from + to, e - from + to, src);
        }
    }

    /// The first interval that ends after `addr`, clipped to start at `addr` or later, with the
    /// source of its first page.
    pub fn next_from(&self, addr: u64) -> Option<(u64, u64, u64)> {
        if let Some((&s, r)) = self.runs.range(..=addr).next_back()
            && r.end > addr
        {
            let start = s.max(addr);
            return Some((start, r.end, r.src + (start - s)));
        }
        self.runs
            .range(addr..)
            .next()
            .map(|(s, r)| (*s, r.end, r.src))
    }

    /// Each interval as (source start, length).
    pub fn iter_sources(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(s, r)| (r.src, r.end - s))
    }

    /// The pieces of the set whose sources fall in `[src, src+len)`, as (start, end, src).
    pub fn by_source(&self, src: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = src + len;
        if self.identity {
            let first = self
                .runs
                .range(..src)
                .next_back()
                .filter(|(_, r)| r.end > src)
                .map_or(src, |(s, _)| *s);
            return self
                .runs
                .range(first..end)
                .map(|(s, r)| {
                    let a = (*s).max(src);
                    (a, r.end.min(end), a)
                })
                .collect();
        }
        self.runs
            .iter()
            .filter_map(|(s, r)| {
                let (rs, re) = (r.src, r.src + (r.end - s));
                let (a, b) = (rs.max(src), re.min(end));
                (a < b).then(|| (s + (a - rs), s + (b - rs), a))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(s: &PageSet) -> Vec<(u64, u64, u64)> {
        s.runs.iter().map(|(a, r)| (*a, r.end, r.src)).collect()
    }

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut s = PageSet::new();
        s.insert(0x1000, 0x3000);
        s.insert(0x3000, 0x5000);
        s.insert(0x8000, 0x9000);
        assert_eq!(
            runs(&s),
            vec![(0x1000, 0x5000, 0x1000), (0x8000, 0x9000, 0x8000)]
        );
        assert_eq!(s.bytes(), 0x5000);
        let removed = s.remove(0x2000, 0x8800);
        assert_eq!(
            removed,
            vec![(0x2000, 0x5000, 0x2000), (0x8000, 0x8800, 0x8000)]
        );
        assert_eq!(
            runs(&s),
            vec![(0x1000, 0x2000, 0x1000), (0x8800, 0x9000, 0x8800)]
        );
        assert_eq!(s.bytes(), 0x1800);
        assert!(s.contains(0x1000) && !s.contains(0x2000) && s.contains(0x8800));
        assert!(!s.contains(0x9000));
    }

    #[test]
    fn relocate_keeps_sources() {
        let mut s = PageSet::new();
        s.insert(0x10000, 0x12000);
        s.insert(0x40000, 0x41000);
        s.relocate(0x11000, 0x40000, 0x2000);
        assert_eq!(
            runs(&s),
            vec![(0x10000, 0x11000, 0x10000), (0x40000, 0x41000, 0x11000)]
        );
        assert_eq!(s.bytes(), 0x2000);
        assert_eq!(s.source_of(0x40000), Some(0x11000));
        assert_eq!(
            s.by_source(0x11000, 0x1000),
            vec![(0x40000, 0x41000, 0x11000)]
        );
        assert_eq!(s.by_source(0x40000, 0x1000), vec![]);
        // Moved twice: still the first source.
        s.relocate(0x40000, 0x90000, 0x1000);
        assert_eq!(s.source_of(0x90000), Some(0x11000));
    }

    #[test]
    fn next_from_and_by_source_clip() {
        let mut s = PageSet::new();
        s.insert(0x1000, 0x4000);
        s.insert(0x6000, 0x7000);
        assert_eq!(s.next_from(0), Some((0x1000, 0x4000, 0x1000)));
        assert_eq!(s.next_from(0x2000), Some((0x2000, 0x4000, 0x2000)));
        assert_eq!(s.next_from(0x4000), Some((0x6000, 0x7000, 0x6000)));
        assert_eq!(s.next_from(0x7000), None);
        assert_eq!(
            s.by_source(0x3000, 0x4000),
            vec![(0x3000, 0x4000, 0x3000), (0x6000, 0x7000, 0x6000)]
        );
    }
}
