//! `cargo xtask run`: the demo. Installs what is missing, builds fastcr, runs `fastcr check`, then
//! checkpoints and restores a small counter (`xtask/demo/counter.c`, compiled here with gcc),
//! showing it count before the dump and carry on counting after the restore.
//!
//! Only the counter this command starts is ever signalled, by its pid, and only after checking
//! that the pid still belongs to it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{kill, run, step, target_dir, wait_for, workspace_root};
use crate::{build, setup};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Compiles the demo counter into `<target>/xtask/demo/counter`.
fn compile_counter(out_dir: &Path) -> Result<PathBuf> {
    let source = workspace_root().join("xtask/demo/counter.c");
    let bin = out_dir.join("counter");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&source))
    .context("compiling the demo counter")?;
    Ok(bin)
}

fn read_counter(state: &Path) -> Option<u64> {
    fs::read_to_string(state.join("counter"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Prints the counter a few times over about a second and a half; returns the last value.
fn show_counting(state: &Path, label: &str) -> Result<u64> {
    let mut seen = Vec::new();
    for _ in 0..6 {
        thread::sleep(Duration::from_millis(250));
        seen.push(read_counter(state).context("reading the demo's counter file")?);
    }
    let shown: Vec<String> = seen.iter().map(u64::to_string).collect();
    println!("{label}: counter {}", shown.join(" "));
    if seen.first() == seen.last() {
        bail!("{label}: the counter is not advancing");
    }
    seen.last().copied().context("no counter value")
}

/// The parent pid of `pid`, from /proc/PID/stat (the field after the parenthesised comm).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes this command started; whatever is still running is killed when it is dropped.
struct Demo {
    counter_bin: PathBuf,
    counter: Option<Child>,
    pid: u32,
    restore: Option<Child>,
}

impl Demo {
    /// True if `pid` is the demo counter: either still our child, or the restored copy, whose
    /// parent is our `fastcr restore` (or whose executable is the counter).
    fn owns_restored(&self) -> bool {
        let Some(restore) = &self.restore else {
            return false;
        };
        let exe_matches = fs::read_link(format!("/proc/{}/exe", self.pid))
            .is_ok_and(|exe| exe == self.counter_bin);
        exe_matches || parent_of(self.pid) == Some(restore.id())
    }

    /// Waits for the original counter to be gone after a dump that kills it, and reaps it so its
    /// pid is free for the restore.
    fn reap_dumped(&mut self) -> Result<()> {
        let Some(child) = self.counter.as_mut() else {
            return Ok(());
        };
        let status = wait_for("the dumped counter to exit", EXIT_TIMEOUT, || {
            child.try_wait().ok().flatten()
        })?;
        println!(
            "dump: the original counter (pid {}) is gone: {status}",
            self.pid
        );
        self.counter = None;
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.counter.take() {
            // Our own child: kill and reap it. Errors mean it is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.restore.is_some() {
            if self.owns_restored() {
                let _ = kill(self.pid, "KILL");
            }
            if let Some(mut restore) = self.restore.take() {
                let _ = restore.kill();
                let _ = restore.wait();
            }
        }
    }
}

/// `cargo xtask run`.
pub(crate) fn cmd() -> Result<()> {
    step("setup");
    setup::ensure()?;
    let fastcr = build::fastcr()?;

    step("fastcr check");
    run(Command::new(&fastcr).arg("check"))
        .context("fastcr check: a required kernel feature is missing")?;

    step("demo: compile xtask/demo/counter.c");
    let out_dir = target_dir().join("xtask").join("demo");
    let state = out_dir.join("state");
    let images = out_dir.join("images");
    for dir in [&state, &images] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let counter_bin = compile_counter(&out_dir)?;

    step("demo: start the counter");
    let child = Command::new(&counter_bin)
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the demo counter")?;
    let mut demo = Demo {
        counter_bin,
        pid: child.id(),
        counter: Some(child),
        restore: None,
    };
    println!("counter: pid {}, state in {}", demo.pid, state.display());
    wait_for("the counter to be ready", STARTUP_TIMEOUT, || {
        state.join("ready").exists().then_some(())
    })?;
    let before = show_counting(&state, "before the dump")?;

    step("fastcr dump (the process is killed after a successful dump)");
    run(Command::new(&fastcr)
        .args(["dump", "-t", &demo.pid.to_string(), "-D"])
        .arg(&images)
        .arg("--stats"))?;
    demo.reap_dumped()?;
    let at_dump = read_counter(&state).context("reading the counter after the dump")?;
    println!("dump: the counter stopped at {at_dump} (it showed {before} just before the dump)");

    step("fastcr restore (waits for the restored counter, exits with its status)");
    println!(
        "$ {} restore -D {} --stats",
        fastcr.display(),
        images.display()
    );
    let restore = Command::new(&fastcr)
        .args(["restore", "-D"])
        .arg(&images)
        .arg("--stats")
        .stdin(Stdio::null())
        .spawn()
        .context("starting fastcr restore")?;
    demo.restore = Some(restore);
    wait_for("the restored counter to advance", RESTORE_TIMEOUT, || {
        if let Some(restore) = demo.restore.as_mut()
            && let Ok(Some(status)) = restore.try_wait()
        {
            // Reported below by the caller through the timeout; print the cause now.
            println!("fastcr restore exited early: {status}");
            demo.restore = None;
            return Some(false);
        }
        read_counter(&state)
            .is_some_and(|n| n > at_dump)
            .then_some(true)
    })
    .and_then(|advanced| {
        if advanced {
            Ok(())
        } else {
            bail!("fastcr restore exited before the counter ran again")
        }
    })?;
    let after = show_counting(&state, "after the restore")?;
    println!("restore: counting resumed from {at_dump} (now {after}), not from 0");

    step("demo: stop the restored counter and collect its verdict");
    if !demo.owns_restored() {
        bail!(
            "pid {} is not the restored counter (neither its executable nor its parent match)",
            demo.pid
        );
    }
    kill(demo.pid, "TERM")?;
    let status = {
        let restore = demo
            .restore
            .as_mut()
            .context("fastcr restore is no longer running")?;
        wait_for("the restored counter to exit", EXIT_TIMEOUT, || {
            restore.try_wait().ok().flatten()
        })?
    };
    demo.restore = None;
    let verdict = fs::read_to_string(state.join("result"))
        .context("the counter wrote no result")?
        .trim()
        .to_owned();
    println!("counter verdict: {verdict}; fastcr restore exited with {status}");
    if !status.success() || !verdict.starts_with("PASS") {
        bail!("the restored counter failed its self-check: {verdict} ({status})");
    }
    println!("\ndemo: checkpoint and restore worked");
    Ok(())
}
