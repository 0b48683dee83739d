//! `inventory.img`: what the image dir holds and how it was made.

use serde::{Deserialize, Serialize};

/// The root record of an image dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// fastcr version that wrote the image.
    pub tool_version: String,
    /// Pid of the dumped root task.
    pub root_pid: i32,
    /// Every dumped process, root first.
    pub pids: Vec<i32>,
    /// Dumped with `--shell-job`: standard streams were left to the restorer.
    pub shell_job: bool,
    /// Wall-clock time of the dump (ms since the epoch).
    pub created_unix_ms: u64,
    /// Parent image dir of an incremental image: pages marked in-parent are read from it.
    pub parent: Option<String>,
    /// A `pre-dump` image: pages only, not restorable alone.
    pub pre_dump: bool,
    /// Write tracking left running in the process for the next incremental dump.
    pub tracking: Option<TrackingLink>,
}

/// Where a pre-dump left its userfaultfd: an fd in the dumped process itself (a one-shot CLI
/// cannot hold it between runs; async write-protect needs nobody to serve it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingLink {
    /// The fd number in the process.
    pub fd: i32,
}
