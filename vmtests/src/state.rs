//! What /proc shows of a process, captured before a dump and after a restore and compared
//! (the ZDTM idea of visible state).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::numeric_entries;

/// /proc status fields that must survive a checkpoint unchanged.
const STATUS_KEYS: &[&str] = &[
    "Name",
    "Umask",
    "Pid",
    "Tgid",
    "Threads",
    "Uid",
    "Gid",
    "Groups",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
];

/// One open fd: what it points to, and its fdinfo position and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdState {
    /// readlink of /proc/PID/fd/N.
    pub target: String,
    /// fdinfo `pos:`.
    pub pos: String,
    /// fdinfo `flags:` (octal, includes O_CLOEXEC).
    pub flags: String,
}

/// What /proc shows of a process, in a form two captures can be compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleState {
    /// /proc/PID/maps, canonicalised: adjacent entries that only differ by where the kernel
    /// happened to split them are merged, and columns are normalised.
    pub maps: Vec<String>,
    /// Open fds, except transient ones (see [`VisibleState::capture`]).
    pub fds: BTreeMap<i32, FdState>,
    /// The [`STATUS_KEYS`] fields of /proc/PID/status.
    pub status: BTreeMap<String, String>,
    /// readlink /proc/PID/cwd.
    pub cwd: String,
    /// readlink /proc/PID/exe.
    pub exe: String,
    /// readlink /proc/PID/root.
    pub root: String,
}

/// Pipe and socket inode numbers change across a restore; which fds share a pipe or a socket
/// must not. Renames `pipe:[INODE]` to `pipe:#K` and `socket:[INODE]` to `socket:#K`, K
/// counting distinct pipes and sockets in fd order.
fn canonical_pipe_ids(fds: &mut BTreeMap<i32, FdState>) {
    let mut seen: Vec<String> = Vec::new();
    for st in fds.values_mut() {
        for kind in ["pipe", "socket"] {
            if !st.target.starts_with(&format!("{kind}:[")) {
                continue;
            }
            let k = seen
                .iter()
                .position(|t| *t == st.target)
                .unwrap_or_else(|| {
                    seen.push(st.target.clone());
                    seen.len() - 1
                });
            st.target = format!("{kind}:#{k}");
        }
    }
}

impl VisibleState {
    /// Captures the state of `pid`. Fds to `*.tmp` files are left out: the workloads open those
    /// for a moment to publish their counter, so they come and go between captures.
    pub fn capture(pid: i32) -> VisibleState {
        Self::try_capture(pid).unwrap_or_else(|e| panic!("capture state of pid {pid}: {e:#}"))
    }

    fn try_capture(pid: i32) -> Result<VisibleState> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let maps = canonical_maps(&fs::read_to_string(proc.join("maps")).context("read maps")?);
        let mut fds = BTreeMap::new();
        for fd in numeric_entries(proc.join("fd")).context("read fd dir")? {
            let target = match fs::read_link(proc.join(format!("fd/{fd}"))) {
                Ok(t) => t.to_string_lossy().into_owned(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // closed meanwhile
                Err(e) => return Err(e).context("readlink fd"),
            };
            if target.ends_with(".tmp") {
                continue;
            }
            let info = match fs::read_to_string(proc.join(format!("fdinfo/{fd}"))) {
                Ok(i) => i,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).context("read fdinfo"),
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            fds.insert(
                fd,
                FdState {
                    target,
                    pos: field("pos:"),
                    flags: field("flags:"),
                },
            );
        }
        canonical_pipe_ids(&mut fds);
        let status_text = fs::read_to_string(proc.join("status")).context("read status")?;
        let status = status_text
            .lines()
            .filter_map(|line| {
                let (k, v) = line.split_once(':')?;
                STATUS_KEYS.contains(&k).then(|| {
                    (
                        k.to_string(),
                        v.split_whitespace().collect::<Vec<_>>().join(" "),
                    )
                })
            })
            .collect();
        let link = |name: &str| -> Result<String> {
            Ok(fs::read_link(proc.join(name))
                .with_context(|| format!("readlink {name}"))?
                .to_string_lossy()
                .into_owned())
        };
        Ok(VisibleState {
            maps,
            fds,
            status,
            cwd: link("cwd")?,
            exe: link("exe")?,
            root: link("root")?,
        })
    }

    /// Human-readable differences from `self` (before) to `after`; empty when equal.
    pub fn diff(&self, after: &VisibleState) -> Vec<String> {
        let mut out = Vec::new();
        for (what, a, b) in [
            ("cwd", &self.cwd, &after.cwd),
            ("exe", &self.exe, &after.exe),
            ("root", &self.root, &after.root),
        ] {
            if a != b {
                out.push(format!("{what}: {a:?} -> {b:?}"));
            }
        }
        for key in STATUS_KEYS {
            let (a, b) = (self.status.get(*key), after.status.get(*key));
            if a != b {
                out.push(format!("status {key}: {a:?} -> {b:?}"));
            }
        }
        let fds: std::collections::BTreeSet<i32> =
            self.fds.keys().chain(after.fds.keys()).copied().collect();
        for fd in fds {
            let (a, b) = (self.fds.get(&fd), after.fds.get(&fd));
            if a != b {
                out.push(format!("fd {fd}: {a:?} -> {b:?}"));
            }
        }
        if self.maps != after.maps {
            for line in &self.maps {
                if !after.maps.contains(line) {
                    out.push(format!("maps -{line}"));
                }
            }
            for line in &after.maps {
                if !self.maps.contains(line) {
                    out.push(format!("maps +{line}"));
                }
            }
        }
        out
    }

    /// Panics listing the differences if `after` differs from `self`.
    pub fn assert_same(&self, after: &VisibleState, context: &str) {
        let diff = self.diff(after);
        assert!(
            diff.is_empty(),
            "{context}: visible state changed:\n  {}",
            diff.join("\n  ")
        );
    }
}

/// One parsed /proc/PID/maps line.
#[derive(Debug)]
struct MapLine {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    dev: String,
    inode: u64,
    path: String,
}

fn parse_map_line(line: &str) -> Option<MapLine> {
    let mut it = line.split_whitespace();
    let (start, end) = it.next()?.split_once('-')?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.collect::<Vec<_>>().join(" ");
    Some(MapLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// Merges adjacent entries that map the same thing contiguously with the same permissions: the
/// kernel may or may not merge such VMAs depending on history, which a restore cannot replay.
pub(crate) fn canonical_maps(text: &str) -> Vec<String> {
    let mut merged: Vec<MapLine> = Vec::new();
    for line in text.lines() {
        let Some(m) = parse_map_line(line) else {
            continue;
        };
        if let Some(prev) = merged.last_mut() {
            let file_backed = prev.inode != 0;
            let contiguous_offset =
                !file_backed || prev.offset + (prev.end - prev.start) == m.offset;
            if prev.end == m.start
                && prev.perms == m.perms
                && prev.dev == m.dev
                && prev.inode == m.inode
                && prev.path == m.path
                && contiguous_offset
            {
                prev.end = m.end;
                continue;
            }
        }
        merged.push(m);
    }
    merged
        .iter()
        .map(|m| {
            format!(
                "{:x}-{:x} {} {:08x} {} {} {}",
                m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_maps_merges_split_anon_and_contiguous_file_entries() {
        let text = "\
1000-2000 rw-p 00000000 00:00 0 \n\
2000-3000 rw-p 00000000 00:00 0 \n\
3000-4000 r--p 00000000 00:00 0 \n\
5000-6000 r--p 00000000 fe:00 42                         /f\n\
6000-7000 r--p 00001000 fe:00 42                         /f\n\
7000-8000 r--p 00005000 fe:00 42                         /f\n";
        assert_eq!(
            canonical_maps(text),
            vec![
                "1000-3000 rw-p 00000000 00:00 0 ",
                "3000-4000 r--p 00000000 00:00 0 ",
                "5000-7000 r--p 00000000 fe:00 42 /f",
                "7000-8000 r--p 00005000 fe:00 42 /f",
            ]
        );
    }
}
