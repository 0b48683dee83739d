//! Harness for the privileged end-to-end tests (root, BPF, userfaultfd).
//!
//! Owns: building the C workloads (`vmtests/workloads/*.c`, the ZDTM-style contract described in
//! `workloads/wl_common.h`), spawning them, driving the `fastcr` binary, and comparing the
//! /proc-visible state of a process before a checkpoint and after its restore.
//!
//! Must not: touch any process the test did not start (everything is killed by PID, and only after
//! checking it is still our child), or skip silently: [`require_root`] panics.
//!
//! The test process makes itself a child subreaper, so a process restored with `restore -d`
//! (whose parent, `fastcr`, exits) is reparented to the test and can be waited for like the
//! original workload.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

mod cli;
pub mod migration;
pub mod netns;
pub mod objects;
pub mod restored;
mod state;

pub use cli::{assert_one_line_error, assert_success, fastcr, run};
pub use state::{FdState, VisibleState};

/// Hang guards, not timing assertions: each only bounds how long a broken run can take.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const COUNTER_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// For a process that something else already killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(10);

/// Root of all the temporary directories the tests create.
pub const SCRATCH_ROOT: &str = "/tmp/fastcr-vmtests";

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

/// The cargo workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmtests lives inside the workspace")
        .to_path_buf()
}

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

/// Panics unless running as root: vmtests are never skipped silently.
pub fn require_root() {
    assert!(
        euid() == 0,
        "vmtests need root: run cargo xtask test as root"
    );
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    cr_user::sys::process::geteuid()
}

/// Makes this process a child subreaper (once), so restored processes become our children.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert!(
            rc == 0,
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Scratch directories

/// A fresh directory under [`SCRATCH_ROOT`], removed on drop unless the test is failing (so a
/// failure leaves its images and workload logs behind for inspection).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/fastcr-vmtests/<tag>-<pid>-<seq>-<nanos>`.
    pub fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            PathBuf::from(SCRATCH_ROOT).join(format!("{tag}-{}-{seq}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a `&str` (all scratch paths are ASCII).
    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("scratch paths are UTF-8")
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Children bookkeeping

/// PIDs this process spawned itself. Anything else that shows up as our child was reparented to
/// us (we are a subreaper): a stray left behind by `fastcr`.
fn known_children() -> &'static Mutex<HashSet<i32>> {
    static KNOWN: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    KNOWN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Makes `cmd` start with only stdin, stdout and stderr open: a program from the distribution
/// would otherwise inherit what the test harness holds (cargo's jobserver pipe, say), which
/// leads outside any dump. The C workloads close them themselves.
pub fn close_inherited_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and only calls close_range, which
    // is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    }
}

/// Spawns `cmd` and records its PID as one of ours, atomically with respect to
/// [`stray_children`].
pub fn spawn_registered(cmd: &mut Command) -> Child {
    become_subreaper();
    let mut known = known_children().lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    known.insert(pid_of(&child));
    child
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

/// A helper process (e.g. `strace`) that is SIGKILLed and reaped on drop if still around, so a
/// failing test does not leak it.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The helper's PID.
    pub fn pid(&self) -> i32 {
        pid_of(&self.0)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Our children that we did not spawn ourselves, as `(pid, comm, state)`.
pub fn stray_children() -> Vec<(i32, String, char)> {
    let known = known_children().lock().unwrap_or_else(|e| e.into_inner());
    let me = i32::try_from(std::process::id()).expect("pids fit in i32");
    let mut strays = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return strays;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = ProcStat::read(pid)
            && stat.ppid == me
            && !known.contains(&pid)
        {
            strays.push((pid, stat.comm, stat.state));
        }
    }
    strays
}

/// Panics if a process that we did not spawn has become our child; kills and reaps such strays
/// first, since they are ours to clean up.
pub fn assert_no_stray_children(context: &str) {
    let strays = stray_children();
    if strays.is_empty() {
        return;
    }
    for &(pid, _, _) in &strays {
        // SAFETY: `pid` is our child (its ppid is us), so it cannot be recycled before we reap it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = waitpid_timeout(pid, EXIT_TIMEOUT);
    }
    panic!("{context}: stray processes reparented to the test: {strays:?}");
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

/// The fields of /proc/PID/stat the tests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// `comm`, without the parentheses.
    pub comm: String,
    /// `R`, `S`, `t`, `T`, `Z`...
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Start time in clock ticks since boot: with the PID, identifies a process.
    pub starttime: u64,
}

impl ProcStat {
    /// Reads /proc/PID/stat; `None` if there is no such process.
    pub fn read(pid: i32) -> Option<ProcStat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
        // rest[0] is field 3 (state); starttime is field 22.
        Some(ProcStat {
            comm,
            state: rest.first()?.chars().next()?,
            ppid: rest.get(1)?.parse().ok()?,
            starttime: rest.get(19)?.parse().ok()?,
        })
    }
}

/// One field of /proc/PID/status, e.g. `status_field(pid, "TracerPid")`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Whether a process (or zombie) with this PID exists.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A PID that no process uses right now (searched downwards from the top of the PID space).
pub fn unused_pid() -> i32 {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|&pid| !pid_exists(pid))
        .expect("some PID is free")
}

fn our_pid() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

fn is_our_child(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.ppid == our_pid())
}

/// Reaps `pid`, a process that became our child (by reparenting to this subreaper); returns
/// its raw wait status, or panics if it does not exit in time.
pub fn reap_orphan(pid: i32) -> i32 {
    waitpid_timeout(pid, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("reaping pid {pid}: {e:#}"))
}

/// waitpid(pid) polling with WNOHANG until `timeout`; the raw wait status.
fn waitpid_timeout(pid: i32, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(status);
        }
        if rc < 0 {
            bail!("waitpid({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            bail!("pid {pid} did not exit within {timeout:?}");
        }
        sleep(POLL);
    }
}

fn describe_status(status: i32) -> String {
    let st = ExitStatus::from_raw(status);
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("wait status {status:#x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

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
        let path = self.dir.join("counter");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("counter {text:?}: {e}"))
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
        // SAFETY: the PID is our unreaped child (checked above), so it names our workload.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert!(
            rc == 0,
            "kill({}, {sig}): {}",
            self.pid,
            std::io::Error::last_os_error()
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::canonical_maps;

    #[test]
    fn canonical_maps_merges_split_anon_and_contiguous_file_entries() {
        let text = "\
1000-2000 rw-p 00000000 00:00 0 \n\
2000-3000 rw-p 00000000 00:00 0 \n\
3000-4000 r--p 00000000 00:00 0 \n\
5000-6000 r--p 00000000 fe:00 42                         /f\n\
6000-7000 r--p 00001000 fe:00 42                         /f\n\
7000-8000 r--p 00005000 fe:00 42                         /f\n";
        assert_eq!(
            canonical_maps(text),
            vec![
                "1000-3000 rw-p 00000000 00:00 0 ",
                "3000-4000 r--p 00000000 00:00 0 ",
                "5000-7000 r--p 00000000 fe:00 42 /f",
                "7000-8000 r--p 00005000 fe:00 42 /f",
            ]
        );
    }

    #[test]
    fn proc_stat_reads_own_process() {
        let me = our_pid();
        let stat = ProcStat::read(me).expect("our own stat");
        assert!(stat.starttime > 0);
        assert_ne!(stat.ppid, me);
    }
}
