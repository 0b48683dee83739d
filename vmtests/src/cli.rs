//! Running commands (fastcr above all): finding the `fastcr` binary under test, running a command
//! to completion with its output captured, and judging that output the way the CLI contract says.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{POLL, Scratch, spawn_registered, workspace_dir};

/// Hang guard for one command, not a timing assertion.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// The `fastcr` binary under test: `$FASTCR_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/debug/fastcr`.
pub fn fastcr_bin() -> PathBuf {
    let bin = std::env::var_os("FASTCR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/debug/fastcr"));
    assert!(
        bin.is_file(),
        "fastcr binary {} not found: build it (cargo build -p cr-user) or set FASTCR_BIN",
        bin.display()
    );
    bin
}

/// Runs `cmd` to completion with stdin /dev/null and stdout/stderr captured through files (a
/// pipe could be held open forever by a process `cmd` leaves behind), killing it after a
/// generous timeout.
pub fn run(cmd: &mut Command) -> Output {
    let tmp = Scratch::new("cmd");
    let out = fs::File::create(tmp.join("stdout")).expect("create stdout file");
    let err = fs::File::create(tmp.join("stderr")).expect("create stderr file");
    let mut child = spawn_registered(cmd.stdin(Stdio::null()).stdout(out).stderr(err));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
            }
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: fs::read(tmp.join("stdout")).unwrap_or_default(),
        stderr: fs::read(tmp.join("stderr")).unwrap_or_default(),
    }
}

/// Runs `fastcr ARGS`.
pub fn fastcr(args: &[&str]) -> Output {
    run(Command::new(fastcr_bin()).args(args))
}

fn show_output(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics unless the command succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", show_output(out));
}

/// Panics unless the command failed the way the CLI contract says: non-zero exit (not a signal),
/// no panic, and the error is one line starting with `Error: `, the last on stderr. Log lines
/// (e.g. a warning that BPF is unavailable to an unprivileged user) may precede it; a second
/// `Error: ` line or a multi-line error chain may not.
pub fn assert_one_line_error(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit: {}",
        show_output(out)
    );
    assert!(
        !stderr.contains("panicked"),
        "{what}: fastcr panicked: {}",
        show_output(out)
    );
    let errors = lines.iter().filter(|l| l.starts_with("Error: ")).count();
    assert!(
        errors == 1 && lines.last().is_some_and(|l| l.starts_with("Error: ")),
        "{what}: expected the error as one last line starting with \"Error: \" on stderr: {}",
        show_output(out)
    );
}

/// [`assert_one_line_error`], and the error names each of `wants` (a process, an fd, a path,
/// why).
pub fn assert_error_names(out: &Output, what: &str, wants: &[&str]) {
    assert_one_line_error(out, what);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in wants {
        assert!(
            stderr.contains(want),
            "the error does not say {want:?}: {stderr}"
        );
    }
}
