//! Processes a test reaches by PID without having spawned them: the restored process that is the
//! child of a `fastcr` still running (a lazy restore without `-d`, see [`crate::background`]), and
//! a copy restored into a new pid namespace (a child of that namespace's init).
//!
//! Must not: signal a PID without first checking that it still names the same process (PID and
//! start time) and that the process descends from the test, so nothing the test did not start
//! (directly or through `fastcr`) is ever touched.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{EXIT_TIMEOUT, POLL, ProcStat, numeric_entries, our_pid, send_signal, status_field};

/// Whether `pid` is the test or descends from it (walking the parent links up from `pid`).
pub fn descends_from_test(pid: i32) -> bool {
    let me = our_pid();
    let mut cur = pid;
    // A process tree deeper than this is not one a test builds.
    for _ in 0..64 {
        if cur == me {
            return true;
        }
        match ProcStat::read(cur) {
            Some(stat) if stat.ppid > 0 => cur = stat.ppid,
            _ => return false,
        }
    }
    false
}

/// The `NSpid:` line of /proc/PID/status: the PID in each pid namespace it is in, outermost
/// first (as seen from ours).
pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    status_field(pid, "NSpid")?
        .split_whitespace()
        .map(|s| s.parse().ok())
        .collect()
}

/// The PID (in our namespace) of the process that descends from the test and has PID `inner`
/// in a pid namespace one level below ours; `None` if there is none.
pub fn find_in_new_pidns(inner: i32) -> Option<i32> {
    numeric_entries("/proc").ok()?.into_iter().find(|&pid| {
        nspid(pid).is_some_and(|ids| ids.len() == 2 && ids[0] == pid && ids[1] == inner)
            && descends_from_test(pid)
    })
}

/// The init (pid 1) of the pid namespace `pid` is in, as a PID in our namespace: the process
/// that descends from the test, is in the same pid namespace and has PID 1 there.
pub fn pidns_init_of(pid: i32) -> Option<i32> {
    let ns_of = |p: i32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let ns = ns_of(pid)?;
    numeric_entries("/proc").ok()?.into_iter().find(|&p| {
        nspid(p).is_some_and(|ids| ids.last() == Some(&1) && ids.len() > 1)
            && ns_of(p).as_ref() == Some(&ns)
            && descends_from_test(p)
    })
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `timeout` (a
/// hang guard, never a timing assertion).
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        sleep(POLL);
    }
}

/// Reaps our child `pid` if it exits within `timeout`; `None` if it is still running then.
pub fn try_reap_within(pid: i32, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(ExitStatus::from_raw(status));
        }
        assert!(
            rc == 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if Instant::now() > deadline {
            return None;
        }
        sleep(POLL);
    }
}

/// Reaps our child `pid`, which must exit within `timeout`.
pub fn reap_within(pid: i32, timeout: Duration, what: &str) -> ExitStatus {
    try_reap_within(pid, timeout)
        .unwrap_or_else(|| panic!("{what} (pid {pid}) did not exit within {timeout:?}"))
}

/// A restored process the test reaches only by PID: not its child (a child of a `fastcr` that
/// still runs, or of a pid namespace's init). Identified by PID and start time; SIGKILLed on drop
/// if still around, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct Restored {
    pid: i32,
    starttime: u64,
}

impl Restored {
    /// Takes charge of `pid`, which must exist, be alive and descend from the test.
    pub fn new(pid: i32) -> Restored {
        let stat = ProcStat::read(pid).unwrap_or_else(|| panic!("no process with pid {pid}"));
        assert!(
            !matches!(stat.state, 'Z' | 'X'),
            "restored pid {pid} is dead: {stat:?}"
        );
        assert!(
            descends_from_test(pid),
            "pid {pid} ({stat:?}) does not descend from the test"
        );
        Restored {
            pid,
            starttime: stat.starttime,
        }
    }

    /// Its PID in our namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its /proc/PID/stat, while the PID still names this process (zombie included).
    pub fn stat(&self) -> Option<ProcStat> {
        ProcStat::read(self.pid).filter(|s| s.starttime == self.starttime)
    }

    /// Whether it still runs (exists and is not a zombie).
    pub fn is_alive(&self) -> bool {
        self.stat().is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
    }

    /// Sends `sig`; panics if the process is gone or no longer descends from the test.
    pub fn signal(&self, sig: i32) {
        let stat = self
            .stat()
            .unwrap_or_else(|| panic!("restored pid {} is gone", self.pid));
        assert!(
            descends_from_test(self.pid),
            "restored pid {} ({stat:?}) no longer descends from the test",
            self.pid
        );
        // The PID was just checked to name our descendant.
        send_signal(self.pid, sig);
    }

    /// Waits until its parent (not the test) has reaped it.
    pub fn wait_gone(&self, timeout: Duration) {
        wait_until(
            &format!("restored pid {} is reaped by its parent", self.pid),
            timeout,
            || self.stat().is_none(),
        );
    }

    /// SIGTERMs it and waits until its parent has reaped it (the workload then has written
    /// STATEDIR/result).
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
        self.wait_gone(EXIT_TIMEOUT);
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.is_alive() && descends_from_test(self.pid) {
            // SAFETY: the PID names this process (same start time) and it descends from us.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}
