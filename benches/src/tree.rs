//! The process-tree bench's scenarios: `wl_combo SIZE_MIB` (a 4-thread parent with SIZE_MIB MiB
//! and a child joined to it by a pipe and a socketpair, see vmtests' `workloads/wl_combo.c`).

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmtests::restored::Restored;
use vmtests::{Workload, reap_orphan};

use crate::{FrozenTime, RestoreTime};

/// The workload.
pub const TREE_WORKLOAD: &str = "wl_combo";
/// Its memory (MiB), as the issue asks: a 4-thread 512 MiB process with a child.
pub const TREE_SIZE_MIB: u64 = 512;

fn child_of(wl: &Workload) -> Result<i32> {
    let path = wl.statedir().join("child");
    fs::read_to_string(&path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("a pid in {}", path.display()))
}

/// The running tree, dumped again and again with `--leave-running`.
pub fn frozen(bin: &Path) -> FrozenTime {
    FrozenTime::start_workload(bin, TREE_WORKLOAD, &[&TREE_SIZE_MIB.to_string()])
}

/// The tree dumped once (which ends it), then restored again and again; each restored tree is
/// killed and reaped before the next.
pub struct TreeRestore {
    inner: RestoreTime,
    child: i32,
}

impl TreeRestore {
    /// Starts the tree, dumps it and reaps both processes.
    pub fn prepare(bin: &Path) -> Result<Self> {
        // The child's pid is known only once it runs: the dump of `prepare_workload` follows.
        let size = TREE_SIZE_MIB.to_string();
        let mut inner = RestoreTime::prepare_workload(bin, TREE_WORKLOAD, &[&size])?;
        let child = child_of(inner.workload())?;
        let st = ExitStatus::from_raw(reap_orphan(child));
        if st.signal() != Some(libc::SIGKILL) {
            bail!("the child was not SIGKILLed by the dump: {st}");
        }
        Ok(Self { inner, child })
    }

    /// One restore; the restored tree is then killed (the parent first, so that it does not
    /// reap its child) and reaped.
    pub fn measure_once(&mut self) -> Result<Duration> {
        let took = self.inner.restore()?;
        let child = Restored::new(self.child);
        self.inner.workload().kill_and_reap();
        child.signal(libc::SIGKILL);
        reap_orphan(self.child);
        Ok(took)
    }

    /// One last restore, stopped cleanly: the tree verifies itself.
    pub fn finish(self) -> Result<()> {
        self.inner.finish()
    }
}
