//! Process trees: a process with its children, grandchildren and zombies. `dump.rs` saves a
//! whole tree; `restore.rs` recreates its processes with their pids, parents, sessions and
//! process groups before each one is rebuilt by transplant.

pub mod dump;
pub mod precopy;
pub mod restore;

use crate::image::tree::{TreeImage, TreeProc};
use crate::proc::{self, ProcError};

/// The children of every thread of `pid`.
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in proc::threads(pid)? {
        let path = std::path::PathBuf::from(format!("/proc/{pid}/task/{tid}/children"));
        match std::fs::read_to_string(&path) {
            Ok(text) => out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok()),
            ),
            // The thread exited meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ProcError::Read { path, source }),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Whether `pid` has any child.
pub fn has_children(pid: i32) -> Result<bool, ProcError> {
    Ok(!children(pid)?.is_empty())
}

/// The raw wait status a zombie will report (`exit_code`, the last field of `/proc/PID/stat`).
fn zombie_status(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().last()?.parse().ok()
}

/// Lists `root` and its descendants, parents before children (depth first).
pub fn collect(root: i32) -> Result<TreeImage, ProcError> {
    let mut procs = Vec::new();
    let mut stack = vec![(root, 0)];
    while let Some((pid, ppid)) = stack.pop() {
        let stat = proc::stat::stat(pid)?;
        let zombie = (stat.state == 'Z').then(|| zombie_status(pid).unwrap_or(0));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        procs.push(TreeProc {
            pid,
            ppid,
            sid: stat.sid,
            pgid: stat.pgid,
            comm,
            zombie,
        });
        if zombie.is_none() {
            for c in children(pid)?.into_iter().rev() {
                stack.push((c, pid));
            }
        }
    }
    Ok(TreeImage { procs })
}
