//! Arithmetic on sets of address ranges: sorted, disjoint, half-open `[start, end)` pairs.

/// Sorts and merges overlapping or touching ranges.
pub fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a ∩ b`.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a − b`.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// `ranges` (sorted) cut into the first `bytes` bytes and the rest; a range across the cut is
/// split there.
pub fn split_at(ranges: &[(u64, u64)], bytes: u64) -> (super::Ranges, super::Ranges) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut left = bytes;
    for &(s, e) in ranges {
        if left == 0 {
            second.push((s, e));
        } else if e - s <= left {
            first.push((s, e));
            left -= e - s;
        } else {
            first.push((s, s + left));
            second.push((s + left, e));
            left = 0;
        }
    }
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        assert_eq!(
            normalize(vec![(5, 7), (1, 3), (3, 4), (6, 9), (10, 10)]),
            vec![(1, 4), (5, 9)]
        );
        let a = [(0, 10), (20, 30)];
        let b = [(5, 25)];
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25)]);
        assert_eq!(subtract(&a, &b), vec![(0, 5), (25, 30)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(
            subtract(&[(0, 10)], &[(0, 2), (4, 5), (9, 12)]),
            vec![(2, 4), (5, 9)]
        );
        assert!(intersect(&a, &[]).is_empty());
        assert_eq!(split_at(&a, 15), (vec![(0, 10), (20, 25)], vec![(25, 30)]));
        assert_eq!(split_at(&a, 10), (vec![(0, 10)], vec![(20, 30)]));
        assert_eq!(split_at(&a, 0), (vec![], a.to_vec()));
    }
}
