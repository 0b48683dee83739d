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
    /// Parent image dir for incremental images (none yet).
    pub parent: Option<String>,
}
