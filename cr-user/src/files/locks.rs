//! File locks: `flock`, POSIX record locks and OFD locks a process holds on its files, read from
//! the `lock:` lines of `/proc/PID/fdinfo/N` at dump and taken again at restore by `flock` /
//! `fcntl(F_SETLK | F_OFD_SETLK)` injected into the restored process, once its fds exist.
//!
//! A lock shows in fdinfo of every fd that owns it: a flock or OFD lock on each fd sharing its
//! open file description (also in other processes, after a fork), a POSIX lock on each fd of the
//! process open on that file. Each lock is therefore taken back once, on the first fd (in tree
//! order) showing it. Locks are never waited for: one that another process holds (outside the
//! restored tree) fails the restore.

use std::collections::BTreeSet;

use crate::image::files::{FdKind, FilesImage};
use crate::image::locks::{FileLock, LockKind, LocksImage};
use crate::inject::{InjectError, Injector, to_bytes};
use crate::proc;

const SCRATCH_FLOCK: u64 = 768;
const F_OFD_SETLK: u64 = 37;

/// Why locks could not be saved or taken back.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A lock fastcr cannot save.
    #[error("process {pid}: cannot dump the lock on fd {fd} ({line:?}): {why}")]
    Unsupported {
        /// The process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The fdinfo line.
        line: String,
        /// Why.
        why: &'static str,
    },
    /// Another process holds a conflicting lock.
    #[error(
        "process {pid}: cannot take back the {what} on fd {fd} ({file}): another process holds a conflicting lock ({cause})"
    )]
    Conflict {
        /// The process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The file.
        file: String,
        /// The lock.
        what: String,
        /// What the kernel said.
        cause: std::io::Error,
    },
    /// Reading fdinfo failed.
    #[error(transparent)]
    Proc(#[from] proc::ProcError),
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
}

/// One `lock:` line of fdinfo: `N: KIND ADVISORY TYPE PID MAJ:MIN:INO START END`, as the lock
/// and the file identity (`MAJ:MIN:INO`).
fn parse_line(fd: i32, line: &str) -> Result<(FileLock, String), &'static str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, kind, mode, ty, _pid, file, start, end] = words[..] else {
        return Err("unreadable lock line");
    };
    let kind = match kind {
        "FLOCK" => LockKind::Flock,
        "POSIX" => LockKind::Posix,
        "OFDLCK" => LockKind::Ofd,
        "LEASE" | "BREAKING" | "DELEG" => return Err("leases are not supported"),
        _ => return Err("this kind of lock is not supported"),
    };
    if mode != "ADVISORY" {
        return Err("mandatory locks are not supported");
    }
    let write = match ty {
        "WRITE" => true,
        "READ" => false,
        _ => return Err("a lock that is neither READ nor WRITE"),
    };
    let start: u64 = start.parse().map_err(|_| "unreadable lock range")?;
    let end = match end {
        "EOF" => None,
        e => Some(e.parse::<u64>().map_err(|_| "unreadable lock range")?),
    };
    if kind == LockKind::Flock && (start != 0 || end.is_some()) {
        return Err("a flock with a range");
    }
    Ok((
        FileLock {
            fd,
            kind,
            write,
            start,
            end,
        },
        file.to_string(),
    ))
}

/// What identifies a lock across fds and processes: a POSIX lock belongs to its process, the
/// others to their open file description (which a fork shares).
type Seen = BTreeSet<(Option<i32>, String, u8, bool, u64, Option<u64>)>;

/// Locks already seen in the dump (tree order), so each is saved once.
#[derive(Debug, Default)]
pub struct SeenLocks(Seen);

/// The locks `pid` holds on the files of its image, each once (see [`SeenLocks`]).
pub fn dump(pid: i32, files: &FilesImage, seen: &mut SeenLocks) -> Result<LocksImage, LockError> {
    let mut out = LocksImage::default();
    for f in &files.fds {
        if !matches!(
            f.kind.base(),
            FdKind::Path { .. } | FdKind::Object { .. } | FdKind::Dup { .. }
        ) {
            continue;
        }
        let text = proc::read(std::path::PathBuf::from(format!(
            "/proc/{pid}/fdinfo/{}",
            f.fd
        )))?;
        for line in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let (lock, file) = parse_line(f.fd, line).map_err(|why| LockError::Unsupported {
                pid,
                fd: f.fd,
                line: line.trim().to_string(),
                why,
            })?;
            let owner = (lock.kind == LockKind::Posix).then_some(pid);
            let key = (
                owner,
                file,
                lock.kind as u8,
                lock.write,
                lock.start,
                lock.end,
            );
            if seen.0.insert(key) {
                out.locks.push(lock);
            }
        }
    }
    Ok(out)
}

fn describe(l: &FileLock) -> String {
    let ty = if l.write { "write" } else { "read" };
    let range = match l.end {
        Some(e) => format!("{}-{e}", l.start),
        None => format!("{}-EOF", l.start),
    };
    match l.kind {
        LockKind::Flock => format!("{} flock", if l.write { "exclusive" } else { "shared" }),
        LockKind::Posix => format!("POSIX {ty} lock {range}"),
        LockKind::Ofd => format!("OFD {ty} lock {range}"),
    }
}

/// Takes every lock of `locks` in the restored process `pid` (as in the image), never waiting.
pub fn restore(
    inj: &Injector,
    pid: i32,
    files: &FilesImage,
    locks: &LocksImage,
) -> Result<(), LockError> {
    for l in &locks.locks {
        let fd = l.fd as u64;
        let ret = match l.kind {
            LockKind::Flock => {
                let op = if l.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                } | libc::LOCK_NB;
                inj.raw("flock", libc::SYS_flock, [fd, op as u64, 0, 0, 0, 0])?
            }
            LockKind::Posix | LockKind::Ofd => {
                // struct flock: l_type, l_whence (i16 each, padded), l_start, l_len (i64),
                // l_pid (i32, 0 as OFD locks require, padded).
                let ty = if l.write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                } as u64;
                let len = l.end.map_or(0, |e| e - l.start + 1);
                let addr = inj.put(SCRATCH_FLOCK, &to_bytes(&[ty, l.start, len, 0]))?;
                let cmd = if l.kind == LockKind::Ofd {
                    F_OFD_SETLK
                } else {
                    libc::F_SETLK as u64
                };
                inj.raw("fcntl", libc::SYS_fcntl, [fd, cmd, addr, 0, 0, 0])?
            }
        };
        if ret < 0 {
            let file =
                files
                    .fds
                    .iter()
                    .find(|f| f.fd == l.fd)
                    .map_or_else(String::new, |f| match f.kind.base() {
                        FdKind::Path { path, .. } => path.clone(),
                        _ => "a deleted file or memfd".into(),
                    });
            return Err(LockError::Conflict {
                pid,
                fd: l.fd,
                file,
                what: describe(l),
                cause: std::io::Error::from_raw_os_error((-ret) as i32),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_lock_lines() {
        let (l, f) =
            parse_line(3, "\t1: FLOCK  ADVISORY  WRITE 5616 fe:00:10012469 0 EOF").unwrap();
        assert_eq!(f, "fe:00:10012469");
        assert_eq!(
            l,
            FileLock {
                fd: 3,
                kind: LockKind::Flock,
                write: true,
                start: 0,
                end: None
            }
        );
        let (l, _) = parse_line(4, "\t2: POSIX  ADVISORY  READ 5616 fe:00:1 50 EOF").unwrap();
        assert!(l.kind == LockKind::Posix && !l.write && l.start == 50 && l.end.is_none());
        let (l, _) = parse_line(5, "\t1: OFDLCK ADVISORY  WRITE -1 fe:00:1 20 29").unwrap();
        assert!(l.kind == LockKind::Ofd && l.write && l.start == 20 && l.end == Some(29));
        for bad in [
            "\t1: LEASE  ACTIVE    READ 1 fe:00:1 0 EOF",
            "\t1: POSIX  MANDATORY WRITE 1 fe:00:1 0 EOF",
            "\t1: POSIX  ADVISORY  UNLCK 1 fe:00:1 0 EOF",
            "\t1: POSIX  ADVISORY  WRITE 1 fe:00:1 x EOF",
            "\t1: FLOCK  ADVISORY  WRITE 1 fe:00:1 5 EOF",
            "garbage",
        ] {
            assert!(parse_line(1, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn struct_flock_layout() {
        // l_type and l_whence (SEEK_SET = 0) share the first word on little-endian x86_64.
        assert_eq!(std::mem::size_of::<libc::flock>(), 32);
        assert_eq!(std::mem::offset_of!(libc::flock, l_start), 8);
        assert_eq!(std::mem::offset_of!(libc::flock, l_len), 16);
        assert_eq!(std::mem::offset_of!(libc::flock, l_pid), 24);
    }
}
