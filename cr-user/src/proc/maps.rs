//! `/proc/PID/smaps`: one record per VMA, with the kernel's `VmFlags` mnemonics.

use std::path::PathBuf;

use super::{ProcError, parse_err, read};

/// One line of `/proc/PID/maps` plus its smaps `VmFlags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`, `w`, `x` as PROT_* bits.
    pub prot: u32,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device `major:minor` as written.
    pub dev: String,
    /// Inode (0 for anonymous).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, ...), empty for anonymous.
    pub path: String,
    /// Two-letter VmFlags (`rd wr mr mw me gd ac ...`).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    /// Whether smaps reported flag `f` (e.g. `"gd"` for a grows-down stack).
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

/// Parses one maps line: `start-end perms offset dev inode [path]`.
pub fn parse_maps_line(line: &str) -> Result<MapEntry, ProcError> {
    let bad = |d: &str| parse_err("maps line", format!("{d}: {line:?}"));
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or_else(|| bad("no range"))?;
    let perms = it.next().ok_or_else(|| bad("no perms"))?;
    let offset = it.next().ok_or_else(|| bad("no offset"))?;
    let dev = it.next().ok_or_else(|| bad("no dev"))?;
    let inode = it.next().ok_or_else(|| bad("no inode"))?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(|| bad("range"))?;
    let start = u64::from_str_radix(s, 16).map_err(|_| bad("start"))?;
    let end = u64::from_str_radix(e, 16).map_err(|_| bad("end"))?;
    let p = perms.as_bytes();
    if p.len() != 4 || start >= end {
        return Err(bad("perms or range"));
    }
    let mut prot = 0;
    if p[0] == b'r' {
        prot |= libc::PROT_READ as u32;
    }
    if p[1] == b'w' {
        prot |= libc::PROT_WRITE as u32;
    }
    if p[2] == b'x' {
        prot |= libc::PROT_EXEC as u32;
    }
    Ok(MapEntry {
        start,
        end,
        prot,
        shared: p[3] == b's',
        offset: u64::from_str_radix(offset, 16).map_err(|_| bad("offset"))?,
        dev: dev.to_string(),
        inode: inode.parse().map_err(|_| bad("inode"))?,
        path,
        vm_flags: Vec::new(),
    })
}

/// Parses a whole `smaps` text (maps lines followed by `Key: value` lines per VMA).
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>, ProcError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        let is_header = line
            .split_once(' ')
            .is_some_and(|(first, _)| first.contains('-') && !first.ends_with(':'));
        if is_header {
            out.push(parse_maps_line(line)?);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out
                .last_mut()
                .ok_or_else(|| parse_err("smaps", "VmFlags before any VMA"))?;
            last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        }
    }
    Ok(out)
}

/// Reads and parses `/proc/PID/smaps`.
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    parse_smaps(&read(PathBuf::from(format!("/proc/{pid}/smaps")))?)
}

/// `now` (from maps) with the VmFlags of the identical entries of `earlier` (from smaps), or
/// `None` if any entry of `now` has no identical twin (the layout changed).
pub fn with_flags_from(now: &[MapEntry], earlier: &[MapEntry]) -> Option<Vec<MapEntry>> {
    let mut out = Vec::with_capacity(now.len());
    for e in now {
        let i = earlier.partition_point(|x| x.start < e.start);
        let twin = earlier.get(i).filter(|x| {
            x.end == e.end
                && x.prot == e.prot
                && x.shared == e.shared
                && x.offset == e.offset
                && x.inode == e.inode
                && x.path == e.path
        })?;
        let mut merged = e.clone();
        merged.vm_flags = twin.vm_flags.clone();
        out.push(merged);
    }
    Some(out)
}

/// Reads and parses `/proc/PID/maps` (no VmFlags; cheaper).
pub fn maps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    read(PathBuf::from(format!("/proc/{pid}/maps")))?
        .lines()
        .map(parse_maps_line)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c7a00000-55d0c7a02000 r--p 00000000 fe:00 1234                       /usr/bin/cat
Size:                  8 kB
VmFlags: rd mr mw me dw sd
7ffc912ec000-7ffc9130d000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
7f0000000000-7f0000001000 rw-s 00001000 00:01 99                         /memfd:x (deleted)
VmFlags: rd wr sh mr mw me ms sd
";

    #[test]
    fn parses_smaps_entries_and_flags() {
        let v = parse_smaps(SMAPS).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].start, 0x55d0c7a00000);
        assert_eq!(v[0].prot, libc::PROT_READ as u32);
        assert_eq!(v[0].path, "/usr/bin/cat");
        assert_eq!(v[0].inode, 1234);
        assert!(v[1].has_flag("gd"));
        assert_eq!(v[1].path, "[stack]");
        assert!(v[2].shared);
        assert_eq!(v[2].offset, 0x1000);
        assert_eq!(v[2].path, "/memfd:x (deleted)");
    }

    #[test]
    fn flags_carry_over_only_to_identical_entries() {
        // /proc lists VMAs by address; the fixture is not in that order.
        let mut smaps = parse_smaps(SMAPS).unwrap();
        smaps.sort_by_key(|e| e.start);
        let now: Vec<MapEntry> = smaps
            .iter()
            .map(|e| MapEntry {
                vm_flags: vec![],
                ..e.clone()
            })
            .collect();
        let merged = with_flags_from(&now, &smaps).unwrap();
        assert!(merged[2].has_flag("gd"));
        let mut moved = now.clone();
        moved[2].end += 0x1000;
        assert!(with_flags_from(&moved, &smaps).is_none());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_maps_line("zzzz").is_err());
        assert!(parse_maps_line("2000-1000 rw-p 0 00:00 0").is_err());
        assert!(parse_smaps("VmFlags: rd\n").is_err());
    }
}
