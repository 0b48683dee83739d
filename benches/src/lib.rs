//! Plumbing shared by the criterion benches in `benches/benches/`.
//!
//! Owns: deciding whether the benches can run here ([`prerequisites`]), running the `fastcr`
//! binary and reading the stats it prints with `--json`, and the two measured scenarios
//! ([`FrozenTime`], [`RestoreTime`]) over the vmtests `wl_heap` workload (a pattern-filled
//! anonymous region of a chosen size that verifies itself when it is stopped).
//!
//! Must not: touch a process it did not start. Workloads are started, signalled and reaped through
//! the vmtests harness, which only ever signals its own children by PID. Nothing here asserts a
//! timing: the figures are measurements, not pass/fail criteria.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use vmtests::{Scratch, Workload};

/// Sizes of the pattern region of the workload, in MiB.
pub const SIZES_MIB: &[u64] = &[64, 256, 1024];

/// The workload the benches checkpoint: `wl_heap STATEDIR SIZE_MIB`.
pub const WORKLOAD: &str = "wl_heap";

/// The effective uid, from /proc/self/status.
fn euid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .context("no effective uid in /proc/self/status")
}

/// The `fastcr` binary to measure: `$FASTCR_BIN` (set by `cargo xtask bench`), else the release
/// build in the workspace's target directory. A debug build is never used: its figures would
/// mean nothing.
fn fastcr_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FASTCR_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("FASTCR_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    let bin = vmtests::workspace_dir().join("target/release/fastcr");
    if !bin.is_file() {
        bail!(
            "no release fastcr at {}: run `cargo xtask bench`, or build it (`cargo xtask build`) \
             or set FASTCR_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Returns the fastcr binary to measure, or why the benches cannot run here (to be printed as
/// `skipping: <reason>`).
pub fn prerequisites() -> Result<PathBuf, String> {
    match euid() {
        Ok(0) => {}
        Ok(uid) => {
            return Err(format!(
                "the benches dump and restore real processes and need root (uid is {uid})"
            ));
        }
        Err(e) => return Err(format!("{e:#}")),
    }
    fastcr_bin().map_err(|e| format!("{e:#}"))
}

/// Parses the stats object `fastcr ... --json` prints on stdout. Anything else on stdout is
/// tolerated as long as one line holds the whole object.
pub fn parse_stats(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    if let Ok(value @ Value::Object(_)) = serde_json::from_str(text.trim()) {
        return Ok(value);
    }
    text.lines()
        .rev()
        .find_map(|line| match serde_json::from_str(line.trim()) {
            Ok(value @ Value::Object(_)) => Some(value),
            _ => None,
        })
        .with_context(|| format!("no JSON stats object in fastcr's output: {text:?}"))
}

/// Finds `key` in a stats object, at the top level or in a nested object (e.g. `{"dump": {...}}`).
fn find<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object
        .get(key)
        .or_else(|| object.values().find_map(|inner| find(inner, key)))
}

/// A duration in microseconds from a stats object.
pub fn micros(stats: &Value, key: &str) -> Result<Duration> {
    let value = find(stats, key).with_context(|| format!("no `{key}` in the stats: {stats}"))?;
    let us = value
        .as_u64()
        .or_else(|| {
            // Tolerate a float, but never a negative or fractional-garbage one.
            value
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.round() as u64)
        })
        .with_context(|| format!("`{key}` is not a non-negative number: {value}"))?;
    Ok(Duration::from_micros(us))
}

/// Runs `fastcr ARGS` (through the vmtests runner: stdin /dev/null, output captured, generous
/// timeout) and fails with its output if it did not succeed.
fn fastcr(bin: &Path, args: &[&str]) -> Result<Output> {
    let out = vmtests::run(Command::new(bin).args(args));
    if !out.status.success() {
        bail!(
            "fastcr {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The size argument of the workload.
fn size_arg(size_mib: u64) -> String {
    size_mib.to_string()
}

/// Freeze-window scenario: a running workload, dumped again and again with `--leave-running`;
/// each dump contributes its `frozen_time_us`.
#[derive(Debug)]
pub struct FrozenTime {
    bin: PathBuf,
    workload: Workload,
}

impl FrozenTime {
    /// Starts the workload with `size_mib` MiB of pattern and waits until it runs its loop.
    pub fn start(bin: &Path, size_mib: u64) -> Self {
        let workload = Workload::spawn(WORKLOAD, &[&size_arg(size_mib)]);
        workload.wait_counter_advances();
        Self {
            bin: bin.to_path_buf(),
            workload,
        }
    }

    /// One `dump --leave-running` into a fresh directory (removed afterwards); returns the time
    /// the process was frozen.
    pub fn measure_once(&self) -> Result<Duration> {
        let images = Scratch::new("bench-frozen-img");
        let pid = self.workload.pid_arg();
        let out = fastcr(
            &self.bin,
            &[
                "dump",
                "-t",
                &pid,
                "-D",
                images.as_str(),
                "--leave-running",
                "--json",
            ],
        )?;
        micros(&parse_stats(&out.stdout)?, "frozen_time_us")
    }

    /// Stops the workload and checks that it survived every dump intact (it verifies its own
    /// memory and exits 0).
    pub fn finish(self) {
        self.workload.assert_running_untraced();
        self.workload.terminate_and_verify();
    }
}

/// Restore scenario: a workload dumped once (which ends it); the image is restored again and
/// again, each restored process is killed and reaped before the next restore. Each restore
/// contributes its `restore_time_us`, which runs from reading the image until the tasks run and
/// so already contains `forking_time_us` (see `cr_user::stats::RestoreStats`); adding the two
/// would count the fork twice.
#[derive(Debug)]
pub struct RestoreTime {
    bin: PathBuf,
    workload: Workload,
    images: Scratch,
}

impl RestoreTime {
    /// Starts the workload, lets it run, dumps it (the dump ends it) and reaps it.
    pub fn prepare(bin: &Path, size_mib: u64) -> Result<Self> {
        let mut workload = Workload::spawn(WORKLOAD, &[&size_arg(size_mib)]);
        workload.wait_counter_advances();
        let images = Scratch::new("bench-restore-img");
        let pid = workload.pid_arg();
        fastcr(bin, &["dump", "-t", &pid, "-D", images.as_str()])?;
        let status = workload.reap();
        if status.success() {
            bail!("the workload exited by itself ({status}) instead of being ended by the dump");
        }
        Ok(Self {
            bin: bin.to_path_buf(),
            workload,
            images,
        })
    }

    /// Restores the process (`restore -d`), checks it runs, and returns the restore time it
    /// reported.
    fn restore(&mut self) -> Result<Duration> {
        let out = fastcr(
            &self.bin,
            &["restore", "-D", self.images.as_str(), "-d", "--json"],
        )?;
        let stats = parse_stats(&out.stdout);
        // Take charge of the restored process before anything can fail, so it is always reaped.
        self.workload.adopt_restored();
        let stats = stats?;
        self.workload.wait_counter_advances();
        let forking = micros(&stats, "forking_time_us")?;
        let total = micros(&stats, "restore_time_us")?;
        if forking > total {
            bail!("forking_time_us ({forking:?}) exceeds restore_time_us ({total:?}): {stats}");
        }
        Ok(total)
    }

    /// One restore; the restored process is then killed and reaped.
    pub fn measure_once(&mut self) -> Result<Duration> {
        let took = self.restore()?;
        self.workload.kill_and_reap();
        Ok(took)
    }

    /// One last restore whose process is stopped cleanly, so that it verifies its own memory.
    pub fn finish(mut self) -> Result<()> {
        self.restore()?;
        self.workload.terminate_and_verify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_stats_object() {
        let stats =
            parse_stats(br#"{"frozen_time_us": 1500, "pages_written": 10}"#).expect("valid stats");
        assert_eq!(
            micros(&stats, "frozen_time_us").expect("present"),
            Duration::from_micros(1500)
        );
    }

    #[test]
    fn finds_the_object_among_other_lines_and_nested_keys() {
        let stats = parse_stats(b"restored pid 42\n{\"restore\": {\"restore_time_us\": 7}}\n")
            .expect("valid stats");
        assert_eq!(
            micros(&stats, "restore_time_us").expect("present"),
            Duration::from_micros(7)
        );
    }

    #[test]
    fn rejects_missing_or_negative_values() {
        let stats = parse_stats(br#"{"a": -3}"#).expect("valid stats");
        assert!(micros(&stats, "a").is_err());
        assert!(micros(&stats, "b").is_err());
        assert!(parse_stats(b"no json here").is_err());
    }
}
