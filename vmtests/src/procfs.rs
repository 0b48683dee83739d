//! What /proc shows of a process that the harness reads directly: the fields of /proc/PID/stat
//! and /proc/PID/status it uses, and whether a PID is taken.
//!
//! Must not: write to /proc or signal anything; these are reads only.

use std::fs;
use std::io;
use std::path::Path;

/// The fields of /proc/PID/stat the tests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// `comm`, without the parentheses.
    pub comm: String,
    /// `R`, `S`, `t`, `T`, `Z`...
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Start time in clock ticks since boot: with the PID, identifies a process.
    pub starttime: u64,
}

impl ProcStat {
    /// Reads /proc/PID/stat; `None` if there is no such process.
    pub fn read(pid: i32) -> Option<ProcStat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
        // rest[0] is field 3 (state); starttime is field 22.
        Some(ProcStat {
            comm,
            state: rest.first()?.chars().next()?,
            ppid: rest.get(1)?.parse().ok()?,
            starttime: rest.get(19)?.parse().ok()?,
        })
    }
}

/// One field of /proc/PID/status, e.g. `status_field(pid, "TracerPid")`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The entries of `dir` whose names are numbers (PIDs in /proc, TIDs in /proc/PID/task, fds in
/// /proc/PID/fd), in ascending order; the other entries are left out.
pub fn numeric_entries(dir: impl AsRef<Path>) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(n) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Whether a process (or zombie) with this PID exists.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A PID that no process uses right now (searched downwards from the top of the PID space).
pub fn unused_pid() -> i32 {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|&pid| !pid_exists(pid))
        .expect("some PID is free")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::our_pid;

    #[test]
    fn proc_stat_reads_own_process() {
        let me = our_pid();
        let stat = ProcStat::read(me).expect("our own stat");
        assert!(stat.starttime > 0);
        assert_ne!(stat.ppid, me);
    }
}
