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

pub mod migrate;
pub mod tree;

/// Sizes of the pattern region of the workload, in MiB.
pub const SIZES_MIB: &[u64] = &[64, 256, 1024];

/// The workload the benches checkpoint: `wl_heap STATEDIR SIZE_MIB`.
pub const WORKLOAD: &str = "wl_heap";

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
    let uid = vmtests::euid();
    if uid != 0 {
        return Err(format!(
            "the benches dump and restore real processes and need root (uid is {uid})"
        ));
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
pub fn fastcr(bin: &Path, args: &[&str]) -> Result<Output> {
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
        Self::start_workload(bin, WORKLOAD, &[&size_arg(size_mib)])
    }

    /// [`FrozenTime::start`] for workload `name` with `args`.
    pub fn start_workload(bin: &Path, name: &str, args: &[&str]) -> Self {
        let workload = Workload::spawn(name, args);
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
        Self::prepare_workload(bin, WORKLOAD, &[&size_arg(size_mib)])
    }

    /// [`RestoreTime::prepare`] for workload `name` with `args`.
    pub fn prepare_workload(bin: &Path, name: &str, args: &[&str]) -> Result<Self> {
        let mut workload = Workload::spawn(name, args);
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

    /// The workload (restored, between [`RestoreTime::restore`] and its end).
    pub fn workload(&mut self) -> &mut Workload {
        &mut self.workload
    }

    /// Restores the process (`restore -d`), checks it runs, and returns the restore time it
    /// reported.
    pub fn restore(&mut self) -> Result<Duration> {
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

// ---------------------------------------------------------------------------------------------
// Pre-copy: frozen time under a known dirty rate, and the workload's slowdown while tracked.

/// The workload of the pre-copy benches: `wl_dirty STATEDIR SIZE_MIB PERMILLE_PER_100MS [max]`,
/// which dirties PERMILLE/1000 of its pages every 100 ms (or as fast as it can with `max`) and
/// verifies every page when it is stopped.
pub const DIRTY_WORKLOAD: &str = "wl_dirty";

/// `(size in MiB, dirty rates in permille of the pages per 100 ms)` of the pre-copy frozen-time
/// benches. At 4 GiB, 10 % asks for 4 GiB/s of writes, more than one core sustains: the
/// workload writes what it can (the bench prints the rate it reached). Each 4 GiB group takes
/// several minutes on 2 CPUs.
pub const PRECOPY_CASES: &[(u64, &[u64])] = &[
    (256, &[1, 10, 100]),
    (1024, &[1, 10, 100]),
    (4096, &[1, 10, 100]),
];

/// Sizes (MiB) of the write-cost bench.
pub const WRITE_COST_SIZES_MIB: &[u64] = &[256, 1024];

/// Page writes per measured operation of the write-cost bench: criterion's table is in
/// milliseconds, so the cost of 1000 page writes reads in microseconds per page.
pub const WRITES_PER_OP: u64 = 1000;

/// A dirty rate in permille per 100 ms as criterion parameter text: `0.1%`, `1%`, `10%`.
pub fn rate_label(permille: u64) -> String {
    if permille.is_multiple_of(10) {
        format!("{}%", permille / 10)
    } else {
        format!("{}.{}%", permille / 10, permille % 10)
    }
}

/// Whether this fastcr has `dump --pre-copy` (the pre-copy benches measure only the
/// stop-the-world baseline until it does).
pub fn supports_pre_copy(bin: &Path) -> bool {
    dump_has_option(bin, "--pre-copy")
}

/// Whether this fastcr's `dump` has `option` (a bench of an older binary leaves out what it
/// lacks).
pub fn dump_has_option(bin: &Path, option: &str) -> bool {
    let out = vmtests::run(Command::new(bin).args(["dump", "--help"]));
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(option)
}

/// `wl_dirty`'s STATEDIR/progress: its CLOCK_MONOTONIC time in ns and its total page writes.
fn read_progress(statedir: &Path) -> Result<(u64, u64)> {
    let path = statedir.join("progress");
    let text =
        vmtests::read_published(&path).with_context(|| format!("read {}", path.display()))?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(t)), Some(Ok(w))) => Ok((t, w)),
        _ => bail!("bad progress {text:?}"),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `wl_dirty`'s progress file.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Pre-copy frozen-time scenario: a running `wl_dirty` of a given size and dirty rate, dumped
/// again and again with `--leave-running`, with or without `--pre-copy auto`; each dump
/// contributes its `frozen_time_us`. Both modes run against the same workload, so the
/// stop-the-world baseline and the pre-copy figure see the same dirty rate.
#[derive(Debug)]
pub struct DirtyFrozen {
    bin: PathBuf,
    workload: Workload,
    started: (u64, u64),
}

/// How [`DirtyFrozen::measure_once`] dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpMode {
    /// `dump --leave-running`: every page copied in the freeze.
    StopTheWorld,
    /// `dump --pre-copy auto --leave-running`.
    PreCopy,
    /// The same with `--full-final-scan`: the final scan walks all memory, as before the
    /// hinted final scan (the comparison that shows what the hints save).
    PreCopyFullScan,
}

impl DirtyFrozen {
    /// Starts `wl_dirty SIZE_MIB PERMILLE` and waits until it runs its loop.
    pub fn start(bin: &Path, size_mib: u64, permille: u64) -> Result<Self> {
        let workload = Workload::spawn(
            DIRTY_WORKLOAD,
            &[&size_arg(size_mib), &permille.to_string()],
        );
        workload.wait_counter_advances();
        let started = read_progress(workload.statedir())?;
        Ok(Self {
            bin: bin.to_path_buf(),
            workload,
            started,
        })
    }

    /// One `dump --leave-running --json` (plus `--pre-copy auto` when `pre_copy`) into a fresh
    /// directory (removed afterwards); returns the time the process was frozen.
    pub fn measure_once(&self, copy: DumpMode) -> Result<Duration> {
        let images = Scratch::new("bench-precopy-img");
        let pid = self.workload.pid_arg();
        let mut args = vec![
            "dump",
            "-t",
            &pid,
            "-D",
            images.as_str(),
            "--leave-running",
            "--json",
        ];
        match copy {
            DumpMode::StopTheWorld => {}
            DumpMode::PreCopy => args.extend_from_slice(&["--pre-copy", "auto"]),
            DumpMode::PreCopyFullScan => {
                args.extend_from_slice(&["--pre-copy", "auto", "--full-final-scan"]);
            }
        }
        let out = fastcr(&self.bin, &args)?;
        micros(&parse_stats(&out.stdout)?, "frozen_time_us")
    }

    /// The dirty rate the workload achieved since it started, in pages per second (the frozen
    /// periods included, so slightly below the asked rate).
    pub fn achieved_rate(&self) -> Result<f64> {
        let (t0, w0) = self.started;
        let (t1, w1) = read_progress(self.workload.statedir())?;
        Ok((w1.saturating_sub(w0)) as f64 / (t1.saturating_sub(t0).max(1) as f64 / 1e9))
    }

    /// Stops the workload and checks that it survived every dump intact.
    pub fn finish(self) {
        self.workload.assert_running_untraced();
        self.workload.terminate_and_verify();
    }
}

/// Slowdown scenario: `wl_dirty SIZE_MIB 0 max` dirties pages as fast as it can and publishes
/// its progress every 5 ms. [`WriteCost::untracked`] measures the time per page write while
/// nothing watches it; [`WriteCost::tracked`] while `fastcr dump --pre-copy 5 --leave-running`
/// runs its rounds (write-protect faults, plus the copy competing for memory bandwidth).
#[derive(Debug)]
pub struct WriteCost {
    bin: PathBuf,
    workload: Workload,
}

/// Untracked measurement window.
const UNTRACKED_WINDOW: Duration = Duration::from_millis(300);

impl WriteCost {
    /// Starts the workload and waits until it runs its loop.
    pub fn start(bin: &Path, size_mib: u64) -> Self {
        let workload = Workload::spawn(DIRTY_WORKLOAD, &[&size_arg(size_mib), "0", "max"]);
        workload.wait_counter_advances();
        Self {
            bin: bin.to_path_buf(),
            workload,
        }
    }

    /// The time [`WRITES_PER_OP`] page writes took between two progress reports.
    fn cost(from: (u64, u64), to: (u64, u64)) -> Result<Duration> {
        let writes = to.1.saturating_sub(from.1);
        if writes == 0 || to.0 <= from.0 {
            bail!("no page written between {from:?} and {to:?}");
        }
        let ns = u128::from(to.0 - from.0) * u128::from(WRITES_PER_OP) / u128::from(writes);
        Ok(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// Cost of [`WRITES_PER_OP`] page writes with nobody tracking the workload.
    pub fn untracked(&self) -> Result<Duration> {
        let from = read_progress(self.workload.statedir())?;
        std::thread::sleep(UNTRACKED_WINDOW);
        Self::cost(from, read_progress(self.workload.statedir())?)
    }

    /// Cost of [`WRITES_PER_OP`] page writes during the pre-copy rounds of a
    /// `dump --pre-copy 5 --leave-running`: the progress reports between the start of the dump
    /// and the end of its `precopy_time_us` (so the window also holds fastcr's start-up, a few
    /// ms of untracked writes, and never the frozen window).
    pub fn tracked(&self) -> Result<Duration> {
        let images = Scratch::new("bench-writecost-img");
        let pid = self.workload.pid_arg();
        let stdout = Scratch::new("bench-writecost-out");
        let out_path = stdout.join("stdout");
        let out_file = fs::File::create(&out_path).context("create stdout file")?;
        let start = monotonic_ns();
        let mut dump = vmtests::KillOnDrop(vmtests::spawn_registered(
            Command::new(&self.bin)
                .args([
                    "dump",
                    "-t",
                    &pid,
                    "-D",
                    images.as_str(),
                    "--pre-copy",
                    "5",
                    "--leave-running",
                    "--json",
                ])
                .stdin(std::process::Stdio::null())
                .stdout(out_file)
                .stderr(std::process::Stdio::null()),
        ));
        let mut samples: Vec<(u64, u64)> = Vec::new();
        let status = loop {
            if let Ok(sample) = read_progress(self.workload.statedir())
                && samples.last() != Some(&sample)
            {
                samples.push(sample);
            }
            if let Some(status) = dump.0.try_wait().context("wait for fastcr dump")? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let stdout = fs::read(&out_path).unwrap_or_default();
        if !status.success() {
            bail!(
                "fastcr dump --pre-copy failed ({status}): {}",
                String::from_utf8_lossy(&stdout)
            );
        }
        let precopy = micros(&parse_stats(&stdout)?, "precopy_time_us")?;
        let end = start + u64::try_from(precopy.as_nanos()).unwrap_or(u64::MAX);
        let window: Vec<&(u64, u64)> = samples
            .iter()
            .filter(|(t, _)| *t >= start && *t <= end)
            .collect();
        match (window.first(), window.last()) {
            (Some(&&from), Some(&&to)) if to.0 > from.0 => Self::cost(from, to),
            _ => bail!(
                "fewer than two progress reports within the {precopy:?} of pre-copy \
                 (samples {samples:?}, window {start}..{end})"
            ),
        }
    }

    /// Stops the workload and checks that it survived every dump intact.
    pub fn finish(self) {
        self.workload.assert_running_untraced();
        self.workload.terminate_and_verify();
    }
}

/// A criterion group that runs one operation per sample: the target times are tiny on purpose,
/// so criterion runs one warm-up operation and then exactly `sample_size` operations (it warns
/// that it cannot fit them in the target time; that is expected).
pub fn one_op_per_sample<'a>(
    c: &'a mut criterion::Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(criterion::SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(1))
        .measurement_time(std::time::Duration::from_millis(1));
    group
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
    fn labels_rates_and_costs() {
        assert_eq!(rate_label(1), "0.1%");
        assert_eq!(rate_label(10), "1%");
        assert_eq!(rate_label(100), "10%");
        assert_eq!(
            WriteCost::cost((1_000, 10), (2_001_000, 2_010)).expect("writes"),
            Duration::from_millis(1)
        );
        assert!(WriteCost::cost((1_000, 10), (2_000, 10)).is_err());
    }

    #[test]
    fn rejects_missing_or_negative_values() {
        let stats = parse_stats(br#"{"a": -3}"#).expect("valid stats");
        assert!(micros(&stats, "a").is_err());
        assert!(micros(&stats, "b").is_err());
        assert!(parse_stats(b"no json here").is_err());
    }
}
