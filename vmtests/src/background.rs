//! [`Bg`]: a command (`fastcr` above all: a lazy restore without `-d`, `migrate`, `receive`)
//! running in the background while the test watches it, with stdout and stderr in files.
//!
//! Must not: signal anything but its own child, which it SIGKILLs and reaps on drop if it still
//! runs. Every wait is a hang guard given by the caller, never a timing assertion.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{KillOnDrop, POLL, Scratch, describe_status, fastcr_bin, spawn_registered};

/// A command running in the background with stdout and stderr in files; SIGKILLed and reaped on
/// drop if still running.
#[derive(Debug)]
pub struct Bg {
    /// What it is, for messages (`fastcr receive`, `fastcr migrate --lazy`, …).
    pub what: String,
    child: KillOnDrop,
    out: Scratch,
    status: Option<ExitStatus>,
}

impl Bg {
    /// Starts `cmd` with stdin from /dev/null and stdout and stderr in files.
    pub fn spawn(what: &str, cmd: &mut Command) -> Bg {
        let out = Scratch::new("bg");
        let stdout = fs::File::create(out.join("stdout")).expect("create stdout file");
        let stderr = fs::File::create(out.join("stderr")).expect("create stderr file");
        let child = spawn_registered(cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr));
        Bg {
            what: what.to_string(),
            child: KillOnDrop(child),
            out,
            status: None,
        }
    }

    /// Starts `fastcr ARGS` (in the test's own namespaces).
    pub fn fastcr(args: &[&str]) -> Bg {
        let what = format!("fastcr {}", args.join(" "));
        Bg::spawn(&what, Command::new(fastcr_bin()).args(args))
    }

    /// The PID of the command.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Its exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.0.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits until it has exited (panics after `timeout`, showing its output); its status.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) did not exit within {timeout:?}; {}",
                self.what,
                self.pid(),
                self.output()
            );
            sleep(POLL);
        }
    }

    /// SIGKILLs it unless it has exited already, and reaps it.
    pub fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // `Child::kill` signals the PID of our unreaped child: it cannot have been recycled.
        self.child.0.kill().expect("SIGKILL");
        let status = self.child.0.wait().expect("wait");
        self.status = Some(status);
        status
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.out.join("stdout")).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.out.join("stderr")).unwrap_or_default()
    }

    /// As an `Output`, once it has exited (for `assert_one_line_error`).
    pub fn as_output(&self) -> Output {
        Output {
            status: self.status.expect("the process has not exited"),
            stdout: self.stdout().into_bytes(),
            stderr: self.stderr().into_bytes(),
        }
    }

    /// Its status and both outputs, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "{} status {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.what,
            self.status.map(|s| describe_status(s.into_raw())),
            self.stdout(),
            self.stderr()
        )
    }
}
