//! `tree.img`: the processes of a dumped tree and how they hang together (absent for a single
//! process).

use serde::{Deserialize, Serialize};

/// One process of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeProc {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid (0 for the root: its parent is not dumped).
    pub ppid: i32,
    /// Session id.
    pub sid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Command name (what a zombie shows).
    pub comm: String,
    /// A zombie (exited, not yet reaped by its parent): its raw wait status. It has no other
    /// image files.
    pub zombie: Option<i32>,
}

/// Every process, parents before their children, the root first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeImage {
    /// The processes.
    pub procs: Vec<TreeProc>,
}

impl TreeImage {
    /// The children of `pid`, in order.
    pub fn children(&self, pid: i32) -> impl Iterator<Item = &TreeProc> {
        self.procs
            .iter()
            .filter(move |p| p.ppid == pid && p.pid != pid)
    }

    /// Checks the shape: the first entry is the root, pids are unique and positive, every other
    /// process's parent comes before it.
    pub fn validate(&self, root: i32) -> Result<(), String> {
        let Some(first) = self.procs.first() else {
            return Err("empty process tree".into());
        };
        if first.pid != root || first.zombie.is_some() {
            return Err(format!("tree does not start with the live root {root}"));
        }
        for (i, p) in self.procs.iter().enumerate() {
            if p.pid <= 0 || self.procs[..i].iter().any(|q| q.pid == p.pid) {
                return Err(format!("bad or repeated pid {}", p.pid));
            }
            if i > 0
                && !self.procs[..i]
                    .iter()
                    .any(|q| q.pid == p.ppid && q.zombie.is_none())
            {
                return Err(format!(
                    "process {} comes before its parent {}",
                    p.pid, p.ppid
                ));
            }
        }
        Ok(())
    }
}
