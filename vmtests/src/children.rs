//! The test's children: spawning them so that they are known as ours, making the test a child
//! subreaper (so a process restored with `restore -d`, whose parent `fastcr` exits, is
//! reparented to the test), reaping by PID, and finding strays: processes reparented to the test
//! that it never spawned.
//!
//! Must not: signal or reap a process that is not the test's child: PIDs are checked against
//! /proc before every kill, and an unreaped child's PID cannot be recycled.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{EXIT_TIMEOUT, POLL, ProcStat, numeric_entries};

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

pub(crate) fn pid_of(child: &Child) -> i32 {
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
    let Ok(pids) = numeric_entries("/proc") else {
        return strays;
    };
    for pid in pids {
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

pub(crate) fn our_pid() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

pub(crate) fn is_our_child(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.ppid == our_pid())
}

/// Sends `sig` to `pid`, panicking if kill fails. The caller has just checked that `pid` names
/// the process it means (its unreaped child, or a descendant identified by its start time).
pub(crate) fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill takes integers and touches no memory; which process it reaches is the
    // caller's check (above).
    let rc = unsafe { libc::kill(pid, sig) };
    assert!(
        rc == 0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Reaps `pid`, a process that became our child (by reparenting to this subreaper); returns
/// its raw wait status, or panics if it does not exit in time.
pub fn reap_orphan(pid: i32) -> i32 {
    waitpid_timeout(pid, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("reaping pid {pid}: {e:#}"))
}

/// waitpid(pid) polling with WNOHANG until `timeout`; the raw wait status.
pub(crate) fn waitpid_timeout(pid: i32, timeout: Duration) -> Result<i32> {
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

pub(crate) fn describe_status(status: i32) -> String {
    let st = ExitStatus::from_raw(status);
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("wait status {status:#x}"),
    }
}
