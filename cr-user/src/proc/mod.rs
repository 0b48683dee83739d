//! `/proc` readers: pure parsers (`&str` → structs, unit-tested on fixture text) and thin
//! functions that read the files. No syscalls beyond reading files.

pub mod limits;
pub mod maps;
pub mod stat;
pub mod status;
pub mod timers;

use std::path::PathBuf;

/// Failure to read or understand a `/proc` file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process may have gone).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's text is not what the kernel normally writes.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which file or field.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

pub(crate) fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

pub(crate) fn parse_err(what: &'static str, detail: impl Into<String>) -> ProcError {
    ProcError::Parse {
        what,
        detail: detail.into(),
    }
}

/// Reads a link under `/proc/PID/` (e.g. `cwd`, `exe`, `fd/3`).
pub fn read_link(pid: i32, name: &str) -> Result<PathBuf, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{name}"));
    std::fs::read_link(&path).map_err(|source| ProcError::Read { path, source })
}

/// Parses a `/proc/PID/fdinfo/N` text: (`pos`, `flags`).
pub fn parse_fdinfo(text: &str) -> Result<(u64, u32), ProcError> {
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).ok();
        }
    }
    match (pos, flags) {
        (Some(p), Some(f)) => Ok((p, f)),
        _ => Err(parse_err("fdinfo", "missing pos or flags")),
    }
}

/// Reads `/proc/PID/fdinfo/FD`.
pub fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32), ProcError> {
    parse_fdinfo(&read(PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}")))?)
}

/// Lists the open fd numbers of `pid`, ascending.
pub fn fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    let dir = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Lists the thread ids of `pid`.
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/task"));
    let dir = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut out: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Reads `/proc/PID/auxv` as raw bytes.
pub fn auxv(pid: i32) -> Result<Vec<u8>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/auxv"));
    std::fs::read(&path).map_err(|source| ProcError::Read { path, source })
}

/// Children pids of `pid` (its main thread's `children` file).
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/task/{pid}/children")))?;
    Ok(text
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_parses_octal_flags() {
        let (pos, flags) =
            parse_fdinfo("pos:\t1234\nflags:\t02100002\nmnt_id:\t25\nino:\t7\n").unwrap();
        assert_eq!(pos, 1234);
        assert_eq!(flags, 0o2100002);
        assert!(parse_fdinfo("pos: 1\n").is_err());
    }
}
