//! `cargo xtask test`: the one command CI calls, so that local runs and CI agree.
//!
//! Steps, in order: setup, fmt, clippy (host, then cr-ebpf for `bpfel-unknown-none`), unit and
//! integration tests, the release build of fastcr, the privileged vmtests against that binary, and
//! a compile-only pass over the benches. Every step runs even after an earlier one failed (unless
//! `--fail-fast`), because one report with all failures is more useful than one at a time; the
//! vmtests need the release build and are not run without it. It ends with a summary and the
//! test counts, and fails if any step failed, naming it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::util::{cargo, cargo_nightly, euid, run, run_tee, step};
use crate::{build, setup};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Stop at the first failing step.
    #[arg(long)]
    fail_fast: bool,
}

#[derive(Debug)]
enum Status {
    Passed,
    Failed(String),
    Skipped(String),
}

#[derive(Debug)]
struct StepReport {
    name: &'static str,
    status: Status,
    took: Duration,
    /// cargo test's `test result:` lines, for the final counts.
    results: Vec<String>,
}

/// Passed/failed/ignored counts summed over cargo's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    fn from_lines(lines: &[String]) -> Self {
        let mut counts = Self::default();
        for line in lines {
            let Some(rest) = line.trim().strip_prefix("test result:") else {
                continue;
            };
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(label), Some(number)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(number) = number.parse::<u64>() else {
                    continue;
                };
                match label {
                    "passed" => counts.passed += number,
                    "failed" => counts.failed += number,
                    "ignored" => counts.ignored += number,
                    _ => {}
                }
            }
        }
        counts
    }
}

struct Runner {
    fail_fast: bool,
    reports: Vec<StepReport>,
}

impl Runner {
    fn failed(&self) -> bool {
        self.reports
            .iter()
            .any(|r| matches!(r.status, Status::Failed(_)))
    }

    fn stop(&self) -> bool {
        self.fail_fast && self.failed()
    }

    /// Runs one step and records how it went.
    /// `f` may append the lines of a test run's stdout to the vector it is given.
    fn step(&mut self, name: &'static str, f: impl FnOnce(&mut Vec<String>) -> Result<()>) -> bool {
        if self.stop() {
            self.skip(name, "an earlier step failed (--fail-fast)");
            return false;
        }
        step(name);
        let start = Instant::now();
        let mut lines = Vec::new();
        let status = match f(&mut lines) {
            Ok(()) => Status::Passed,
            Err(e) => {
                println!("{name}: FAILED: {e:#}");
                Status::Failed(format!("{e:#}"))
            }
        };
        let results = test_results(&lines);
        let passed = matches!(status, Status::Passed);
        self.reports.push(StepReport {
            name,
            status,
            took: start.elapsed(),
            results,
        });
        passed
    }

    fn skip(&mut self, name: &'static str, reason: &str) {
        println!("\n==> {name}\nskipping: {reason}");
        self.reports.push(StepReport {
            name,
            status: Status::Skipped(reason.to_owned()),
            took: Duration::ZERO,
            results: Vec::new(),
        });
    }

    fn summary(&self) {
        step("summary");
        for report in &self.reports {
            let (word, detail) = match &report.status {
                Status::Passed => ("ok", String::new()),
                Status::Failed(why) => ("FAILED", format!("  {why}")),
                Status::Skipped(why) => ("skipped", format!("  ({why})")),
            };
            println!(
                "  {word:<8} {:<40} {:>7.1}s{detail}",
                report.name,
                report.took.as_secs_f64()
            );
        }
        println!("\ntest counts:");
        let mut any = false;
        let mut total = Counts::default();
        for report in self.reports.iter().filter(|r| !r.results.is_empty()) {
            any = true;
            let counts = Counts::from_lines(&report.results);
            total.passed += counts.passed;
            total.failed += counts.failed;
            total.ignored += counts.ignored;
            println!(
                "  {}: {} passed, {} failed, {} ignored",
                report.name, counts.passed, counts.failed, counts.ignored
            );
            for line in &report.results {
                println!("    {line}");
            }
        }
        if any {
            println!(
                "  total: {} passed, {} failed, {} ignored",
                total.passed, total.failed, total.ignored
            );
        } else {
            println!("  (no test step produced results)");
        }
    }
}

fn test_results(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.trim_start().starts_with("test result:"))
        .map(|line| line.trim().to_owned())
        .collect()
}

/// Runs the vmtests against `fastcr`, as root, one test at a time.
pub(crate) fn vmtests(fastcr: &Path, lines: &mut Vec<String>) -> Result<()> {
    run_tee(
        cargo()
            .env("FASTCR_BIN", fastcr)
            .args(["test", "-p", "vmtests", "--", "--test-threads=1"]),
        lines,
    )
}

/// `cargo xtask test`.
pub(crate) fn cmd(options: &Options) -> Result<()> {
    let mut runner = Runner {
        fail_fast: options.fail_fast,
        reports: Vec::new(),
    };
    // Nothing else can run without the toolchain: a setup failure ends the run.
    if !runner.step("setup", |_| setup::ensure()) {
        runner.summary();
        bail!("step `setup` failed");
    }
    runner.step("fmt: cargo fmt --all -- --check", |_| {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    });
    runner.step("clippy: workspace (host)", |_| {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "cr-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    runner.step("clippy: cr-ebpf (bpfel-unknown-none)", |_| {
        run(cargo_nightly().args([
            "clippy",
            "-p",
            "cr-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
    });
    runner.step("tests: unit + integration", |lines| {
        run_tee(
            cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "vmtests",
                "--exclude",
                "cr-ebpf",
            ]),
            lines,
        )
    });
    let mut fastcr = None;
    runner.step("build: fastcr (release)", |_| {
        fastcr = Some(build::fastcr()?);
        Ok(())
    });
    match (&fastcr, euid()) {
        (_, Ok(uid)) if uid != 0 => runner.skip("vmtests", "the vmtests need root"),
        (None, _) => runner.skip("vmtests", "the release build of fastcr failed"),
        (Some(bin), _) => {
            let bin = bin.clone();
            runner.step("vmtests", |lines| vmtests(&bin, lines));
        }
    }
    runner.step("benches: cargo bench --no-run", |_| {
        run(cargo().args(["bench", "--no-run"]))
    });

    runner.summary();
    let failed: Vec<&str> = runner
        .reports
        .iter()
        .filter(|r| matches!(r.status, Status::Failed(_)))
        .map(|r| r.name)
        .collect();
    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join("; "));
    }
    println!("\nall steps passed");
    Ok(())
}

/// `cargo xtask vmtest`: only the privileged tests, against a fresh release build.
pub(crate) fn vmtest_cmd() -> Result<()> {
    step("setup");
    setup::ensure()?;
    if euid()? != 0 {
        bail!("the vmtests need root");
    }
    let fastcr = build::fastcr()?;
    step("vmtests");
    let mut lines = Vec::new();
    let result = vmtests(&fastcr, &mut lines);
    let counts = Counts::from_lines(&lines);
    println!(
        "vmtests: {} passed, {} failed, {} ignored",
        counts.passed, counts.failed, counts.ignored
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_every_result_line() {
        let lines = vec![
            "running 3 tests".to_owned(),
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s".to_owned(),
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s".to_owned(),
        ];
        assert_eq!(
            Counts::from_lines(&lines),
            Counts {
                passed: 5,
                failed: 1,
                ignored: 1
            }
        );
        assert_eq!(test_results(&lines).len(), 2);
    }
}
