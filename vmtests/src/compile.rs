//! Compiling the C workloads (`vmtests/workloads/*.c`, the ZDTM-style contract described in
//! `workloads/wl_common.h`) into `<workspace>/target/workloads/`.
//!
//! Must not: leave a half-written binary where a concurrent test binary could run it (each is
//! built under a private name and renamed into place).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::workspace_dir;

/// The workloads [`build_workloads`] builds, one per `vmtests/workloads/<name>.c`.
pub const WORKLOADS: &[&str] = &[
    "wl_heap",
    "wl_filemap",
    "wl_sleep",
    "wl_signals",
    "wl_files",
    "wl_pipe",
    "wl_dirty",
    "wl_writer",
    "wl_lazy",
    "wl_threads",
    "wl_tree",
    "wl_sigstate",
    "wl_shmem",
    "wl_deleted",
    "wl_locks",
    "wl_sockets",
    "wl_combo",
    "wl_cow",
    "wl_unsupported",
    "wl_fifo",
];

/// Compiles every workload into `<workspace>/target/workloads/` (once per test binary; a binary
/// is rebuilt only when older than its source or `wl_common.h`). Returns the directory.
pub fn build_workloads() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| try_build_workloads().expect("building the C workloads"))
        .clone()
}

fn mtime(path: &Path) -> Result<i64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .mtime())
}

fn try_build_workloads() -> Result<PathBuf> {
    let src_dir = workspace_dir().join("vmtests/workloads");
    let out_dir = workspace_dir().join("target/workloads");
    fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let common = mtime(&src_dir.join("wl_common.h"))?;
    for name in WORKLOADS {
        let src = src_dir.join(format!("{name}.c"));
        let out = out_dir.join(name);
        let newest_input = mtime(&src)?.max(common);
        if mtime(&out).is_ok_and(|t| t >= newest_input) {
            continue;
        }
        // Build to a private name and rename, so concurrent test binaries never see half a file.
        let tmp = out_dir.join(format!("{name}.{}.tmp", std::process::id()));
        let output = Command::new("gcc")
            // -pthread for wl_threads; harmless for the single-threaded ones.
            .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .context("run gcc")?;
        if !output.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "gcc {}: {}",
                src.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::rename(&tmp, &out).with_context(|| format!("rename to {}", out.display()))?;
    }
    Ok(out_dir)
}
