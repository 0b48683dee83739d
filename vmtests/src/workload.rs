//! [`Workload`]: a C workload (or a script with the same contract) started by the test, waited
//! for until ready, and driven through a checkpoint: its counter, its log, signals, reaping, and
//! taking a restored copy back as the test's child.
//!
//! Must not: signal a PID that is not the test's unreaped child (checked before every signal).

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::children::{describe_status, is_our_child, our_pid, pid_of, waitpid_timeout};
use crate::{
    EXIT_TIMEOUT, POLL, ProcStat, Scratch, VisibleState, build_workloads, close_inherited_fds,
    send_signal, spawn_registered, status_field,
};

/// Hang guards, not timing assertions: each only bounds how long a broken run can take.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const COUNTER_TIMEOUT: Duration = Duration::from_secs(60);
/// For a process that something else already killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or checkpointed) workload started by this test.
#[derive(Debug)]
pub struct Workload {
    name: String,
    pid: i32,
    /// Holds the state dir; kept on failure.
    dir: Scratch,
    /// True while a process with our PID is ours to wait for (original, or restored and adopted).
    alive: bool,
}

impl Workload {
    /// Starts `name` with a fresh STATEDIR (stdin /dev/null, stdout and stderr both on the
    /// regular file STATEDIR/log) and waits until it reports `ready`.
    pub fn spawn(name: &str, args: &[&str]) -> Workload {
        Self::spawn_with_stdout(name, args, None)
    }

    /// Like [`Workload::spawn`], but with `stdout` (e.g. a pipe the test holds) instead of the
    /// log file; stderr still goes to STATEDIR/log.
    pub fn spawn_with_stdout(name: &str, args: &[&str], stdout: Option<Stdio>) -> Workload {
        Self::spawn_inner(name, args, stdout, None)
    }

    /// Like [`Workload::spawn`], but started through `setpriv` as `uid` (and gid `uid`, no
    /// supplementary groups) with the `setpriv` options `extra` (e.g. capabilities to keep);
    /// STATEDIR is given to `uid`.
    pub fn spawn_as(name: &str, args: &[&str], uid: u32, extra: &[&str]) -> Workload {
        Self::spawn_inner(name, args, None, Some((uid, extra)))
    }

    /// A workload that is a script of `vmtests/programs/` run by `interpreter` (a program from
    /// the distribution, e.g. `/usr/bin/python3`), with the same contract as the C ones.
    pub fn spawn_script(interpreter: &str, script: &str, args: &[&str]) -> Workload {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("programs")
            .join(script);
        let path = path.to_string_lossy().into_owned();
        Self::spawn_program(script, Path::new(interpreter), &[&path], args, None, None)
    }

    fn spawn_inner(
        name: &str,
        args: &[&str],
        stdout: Option<Stdio>,
        as_user: Option<(u32, &[&str])>,
    ) -> Workload {
        Self::spawn_program(
            name,
            &build_workloads().join(name),
            &[],
            args,
            stdout,
            as_user,
        )
    }

    /// Runs `bin PRE... STATEDIR ARGS...` and waits for STATEDIR/ready.
    fn spawn_program(
        name: &str,
        bin: &Path,
        pre: &[&str],
        args: &[&str],
        stdout: Option<Stdio>,
        as_user: Option<(u32, &[&str])>,
    ) -> Workload {
        let dir = Scratch::new(name);
        let log = fs::File::create(dir.join("log")).expect("create the workload log");
        let log2 = log.try_clone().expect("dup the workload log");
        let mut cmd = match as_user {
            Some((uid, extra)) => {
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))
                    .expect("chown the STATEDIR");
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .args(extra)
                    .arg("--")
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = spawn_registered(
            close_inherited_fds(&mut cmd)
                .args(pre)
                .arg(dir.path())
                .args(args)
                .stdin(Stdio::null())
                .stdout(stdout.unwrap_or_else(|| log.into()))
                .stderr(log2),
        );
        let mut wl = Workload {
            name: name.to_string(),
            pid: pid_of(&child),
            dir,
            alive: true,
        };
        drop(child); // waited for by PID: a restored copy is not a `Child`
        let deadline = Instant::now() + READY_TIMEOUT;
        while !wl.dir.join("ready").exists() {
            let mut status = 0;
            // SAFETY: valid out pointer, WNOHANG.
            if unsafe { libc::waitpid(wl.pid, &mut status, libc::WNOHANG) } == wl.pid {
                wl.alive = false;
                panic!(
                    "{name} {} before it was ready; log: {}",
                    describe_status(status),
                    wl.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready within {READY_TIMEOUT:?}; log: {}",
                wl.log()
            );
            sleep(POLL);
        }
        wl
    }

    /// The workload's PID (kept across dump and restore).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The PID as a command-line argument.
    pub fn pid_arg(&self) -> String {
        self.pid.to_string()
    }

    /// The workload's STATEDIR.
    pub fn statedir(&self) -> &Path {
        self.dir.path()
    }

    /// The workload's name, e.g. `wl_heap`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last counter value the workload published.
    pub fn counter(&self) -> u64 {
        self.number("counter")
    }

    /// The number the workload last wrote to STATEDIR/`file` (e.g. wl_lazy's `churn_ticks`).
    pub fn number(&self, file: &str) -> u64 {
        let path = self.dir.join(file);
        let text = read_published(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{file} {text:?}: {e}"))
    }

    /// The workload's stdout/stderr so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Waits until the counter has changed twice, the second time upwards: the process is
    /// running its loop (a restored copy may start below a value its original published later).
    pub fn wait_counter_advances(&self) {
        self.wait_counter_advances_as(self.pid);
    }

    /// Like [`Workload::wait_counter_advances`], for a copy of the workload that runs under
    /// another PID (e.g. restored into a new pid namespace) and writes the same STATEDIR.
    pub fn wait_counter_advances_as(&self, pid: i32) {
        let first = self.counter();
        let changed = self.wait_counter(pid, |c| c != first);
        self.wait_counter(pid, |c| c > changed);
    }

    fn wait_counter(&self, pid: i32, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + COUNTER_TIMEOUT;
        loop {
            let c = self.counter();
            if done(c) {
                return c;
            }
            if let Some(stat) = ProcStat::read(pid) {
                assert!(
                    stat.state != 'Z',
                    "{} (pid {pid}) died; log: {}",
                    self.name,
                    self.log()
                );
            } else {
                panic!("{} (pid {pid}) is gone", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {pid}) counter stuck at {c} for {COUNTER_TIMEOUT:?}, state {:?}",
                self.name,
                ProcStat::read(pid)
            );
            sleep(POLL);
        }
    }

    /// Asserts the workload runs freely: not stopped, not traced, counter advancing.
    pub fn assert_running_untraced(&self) {
        let stat = ProcStat::read(self.pid)
            .unwrap_or_else(|| panic!("{} (pid {}) is gone", self.name, self.pid));
        assert!(
            !matches!(stat.state, 't' | 'T' | 'Z' | 'X'),
            "{} (pid {}) is in state {}",
            self.name,
            self.pid,
            stat.state
        );
        assert_eq!(
            status_field(self.pid, "TracerPid").as_deref(),
            Some("0"),
            "{} (pid {}) is still traced",
            self.name,
            self.pid
        );
        self.wait_counter_advances();
    }

    /// Without any checkpoint: two captures of its visible state, the counter advancing in
    /// between, are equal (or the comparison after a restore would report noise), and on SIGTERM
    /// it exits 0 with `PASS`.
    pub fn verify_undisturbed(self) {
        let first = VisibleState::capture(self.pid);
        self.wait_counter_advances();
        first.assert_same(&VisibleState::capture(self.pid), &self.name);
        self.terminate_and_verify();
    }

    /// Sends SIGTERM, waits, and asserts exit status 0 and `PASS` in STATEDIR/result.
    pub fn terminate_and_verify(self) {
        let name = self.name.clone();
        let pid = self.pid;
        let (status, result, log) = self.terminate();
        assert!(
            status.success() && result == "PASS\n",
            "{name} (pid {pid}) {}; result: {:?}; log: {log}",
            describe_status(status.into_raw()),
            result.trim_end(),
        );
    }

    /// Sends SIGTERM, waits, and asserts exit status 1 with a `FAIL: ` result that mentions
    /// `what`: the workload's own verification caught what the test did behind its back.
    pub fn terminate_and_expect_fail(self, what: &str) {
        let (status, result, log) = self.terminate();
        assert!(
            status.code() == Some(1) && result.starts_with("FAIL: ") && result.contains(what),
            "expected a FAIL about {what:?}, got {status}, result {result:?}, log {log}"
        );
    }

    /// Sends SIGTERM and waits; returns the exit status, STATEDIR/result and the log.
    pub fn terminate(mut self) -> (ExitStatus, String, String) {
        assert!(self.alive, "{} is not running", self.name);
        self.signal(libc::SIGTERM);
        let status = waitpid_timeout(self.pid, EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name));
        self.alive = false;
        let result = fs::read_to_string(self.dir.join("result")).unwrap_or_default();
        (ExitStatus::from_raw(status), result, self.log())
    }

    /// SIGKILLs the workload and reaps it.
    pub fn kill_and_reap(&mut self) {
        assert!(self.alive, "{} is not running", self.name);
        self.signal(libc::SIGKILL);
        waitpid_timeout(self.pid, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{}: {e:#}", self.name));
        self.alive = false;
    }

    /// Reaps a workload that something else ended (e.g. `fastcr dump` without
    /// `--leave-running`) and returns its wait status.
    pub fn reap(&mut self) -> ExitStatus {
        assert!(self.alive, "{} is not ours to reap", self.name);
        let status = waitpid_timeout(self.pid, REAP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name));
        self.alive = false;
        ExitStatus::from_raw(status)
    }

    /// After `fastcr restore -d`: asserts a process with our PID exists and is our child (the
    /// subreaper adopted it), and takes charge of it again.
    pub fn adopt_restored(&mut self) {
        assert!(!self.alive, "{} was never reaped", self.name);
        let stat = ProcStat::read(self.pid)
            .unwrap_or_else(|| panic!("no process with pid {} after restore", self.pid));
        assert_eq!(
            stat.ppid,
            our_pid(),
            "restored pid {} ({stat:?}) is not the test's child",
            self.pid
        );
        self.alive = true;
    }

    /// Sends `sig` to the workload (after checking it is still our unreaped child).
    pub fn send(&self, sig: i32) {
        self.signal(sig);
    }

    fn signal(&self, sig: i32) {
        assert!(
            is_our_child(self.pid),
            "pid {} is not our child any more",
            self.pid
        );
        // The PID is our unreaped child (checked above), so it names our workload.
        send_signal(self.pid, sig);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.alive && is_our_child(self.pid) {
            // SAFETY: our unreaped child: the PID cannot have been recycled.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = waitpid_timeout(self.pid, EXIT_TIMEOUT);
        }
    }
}

/// A value a workload publishes while it runs (`wl_publish`: the target of the symlink
/// STATEDIR/name), or the contents of a file it wrote once.
pub fn read_published(path: &Path) -> std::io::Result<String> {
    match fs::read_link(path) {
        Ok(target) => Ok(target.to_string_lossy().into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => fs::read_to_string(path),
        Err(e) => Err(e),
    }
}
