//! `locks-<pid>.img`: the file locks a process holds (absent: none).

use serde::{Deserialize, Serialize};

/// Which kind of lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `flock(2)`: whole file, owned by the open file description.
    Flock,
    /// POSIX record lock (`F_SETLK`): a range, owned by the process.
    Posix,
    /// Open file description lock (`F_OFD_SETLK`): a range, owned by the description.
    Ofd,
}

/// One lock, as `/proc/PID/fdinfo/N` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// The fd it is taken back on.
    pub fd: i32,
    /// Its kind.
    pub kind: LockKind,
    /// Write (exclusive) rather than read (shared).
    pub write: bool,
    /// First byte (0 for flock).
    pub start: u64,
    /// Last byte, `None` to the end of the file (and beyond).
    pub end: Option<u64>,
}

/// The locks of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocksImage {
    /// In the order they are taken back.
    pub locks: Vec<FileLock>,
}

impl LocksImage {
    /// Checks what decoding cannot: ranges that end before they start, flocks with a range.
    pub fn validate(&self) -> Result<(), String> {
        for l in &self.locks {
            let bad_range = l.end.is_some_and(|e| e < l.start) || l.start > i64::MAX as u64;
            let bad_flock = l.kind == LockKind::Flock && (l.start != 0 || l.end.is_some());
            if bad_range || bad_flock || l.fd < 0 {
                return Err(format!("bad lock {l:?}"));
            }
        }
        Ok(())
    }
}
