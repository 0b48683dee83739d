//! The process-tree bench's scenarios: `wl_combo SIZE_MIB` (a 4-thread parent with SIZE_MIB MiB
//! and a child joined to it by a pipe and a socketpair, see vmtests' `workloads/wl_combo.c`).

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmtests::restored::Restored;
use vmtests::{Scratch, Workload, reap_orphan};

use crate::{fastcr, micros, parse_stats};

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
pub struct TreeFrozen {
    bin: PathBuf,
    wl: Workload,
}

impl TreeFrozen {
    /// Starts the tree and waits until it runs.
    pub fn start(bin: &Path) -> Self {
        let wl = Workload::spawn(TREE_WORKLOAD, &[&TREE_SIZE_MIB.to_string()]);
        wl.wait_counter_advances();
        Self {
            bin: bin.to_path_buf(),
            wl,
        }
    }

    /// One `dump --leave-running`: the time the tree was frozen.
    pub fn measure_once(&self) -> Result<Duration> {
        let images = Scratch::new("bench-tree-frozen-img");
        let pid = self.wl.pid_arg();
        let args = [
            "dump",
            "-t",
            &pid,
            "-D",
            images.as_str(),
            "--leave-running",
            "--json",
        ];
        let out = fastcr(&self.bin, &args)?;
        micros(&parse_stats(&out.stdout)?, "frozen_time_us")
    }

    /// Stops the tree; it must have survived every dump intact (its own verification).
    pub fn finish(self) {
        self.wl.assert_running_untraced();
        self.wl.terminate_and_verify();
    }
}

/// The tree dumped once (which ends it), then restored again and again; each restored tree is
/// killed and reaped before the next.
pub struct TreeRestore {
    bin: PathBuf,
    wl: Workload,
    child: i32,
    images: Scratch,
}

impl TreeRestore {
    /// Starts the tree, dumps it and reaps both processes.
    pub fn prepare(bin: &Path) -> Result<Self> {
        let mut wl = Workload::spawn(TREE_WORKLOAD, &[&TREE_SIZE_MIB.to_string()]);
        wl.wait_counter_advances();
        let child = child_of(&wl)?;
        let images = Scratch::new("bench-tree-restore-img");
        let pid = wl.pid_arg();
        fastcr(bin, &["dump", "-t", &pid, "-D", images.as_str()])?;
        let status = wl.reap();
        if status.success() {
            bail!("the parent exited by itself ({status}) instead of being ended by the dump");
        }
        let st = ExitStatus::from_raw(reap_orphan(child));
        if st.signal() != Some(libc::SIGKILL) {
            bail!("the child was not SIGKILLed by the dump: {st}");
        }
        Ok(Self {
            bin: bin.to_path_buf(),
            wl,
            child,
            images,
        })
    }

    fn restore(&mut self) -> Result<Duration> {
        let out = fastcr(
            &self.bin,
            &["restore", "-D", self.images.as_str(), "-d", "--json"],
        )?;
        let stats = parse_stats(&out.stdout);
        self.wl.adopt_restored();
        let stats = stats?;
        self.wl.wait_counter_advances();
        micros(&stats, "restore_time_us")
    }

    /// One restore; the restored tree is then killed (the parent first, so that it does not
    /// reap its child) and reaped.
    pub fn measure_once(&mut self) -> Result<Duration> {
        let took = self.restore()?;
        let child = Restored::new(self.child);
        self.wl.kill_and_reap();
        child.signal(libc::SIGKILL);
        reap_orphan(self.child);
        Ok(took)
    }

    /// One last restore, stopped cleanly: the tree verifies itself.
    pub fn finish(mut self) -> Result<()> {
        self.restore()?;
        self.wl.terminate_and_verify();
        Ok(())
    }
}
