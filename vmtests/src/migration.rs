//! Shared pieces of the live-migration tests (`fastcr migrate` → `fastcr receive`).
//!
//! Owns: a network namespace pair with token files ([`Link`]), fastcr endpoints started in the
//! background inside those namespaces ([`Bg`]) and waiting for them to succeed or fail the way
//! the CLI contract says, their `--json` stats, reaping the original after the source killed it
//! ([`reap_killed_original`]), and the migrated (or `--pidns new` restored) copy with its pid
//! namespace's init ([`NsCopy`]).
//!
//! Must not: signal or reap a process the test did not start: [`Bg`] kills only its own child,
//! and [`NsCopy`] signals the copy and init only after checking that they are the test's
//! children. Nothing here asserts a timing; every wait is a hang guard.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::background::Bg;
use crate::netns::NetPair;
use crate::restored::{Restored, find_in_new_pidns, nspid, pidns_init_of, reap_within, wait_until};
use crate::{ProcStat, Scratch, VisibleState, Workload, assert_one_line_error, fastcr_bin};

/// Hang guard for one step (a migration, a process exiting, reaping the copy and its init):
/// never a timing assertion.
pub const GUARD: Duration = Duration::from_secs(300);

/// The test's (or bench's) own pid.
pub fn me() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

/// `n` bytes from /dev/urandom.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// 48 random hex characters (24 bytes from /dev/urandom): the content of a token file.
pub fn random_hex() -> std::io::Result<String> {
    Ok(random_bytes(24)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Reaps our child `pid` without panicking (for drops), giving up after `timeout`.
pub fn reap_quietly(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: valid out pointer; WNOHANG never blocks.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
            return;
        }
        sleep(Duration::from_millis(10));
    }
}

/// STATEDIR/result of `wl` (empty while it has not written one).
pub fn result(wl: &Workload) -> String {
    fs::read_to_string(wl.statedir().join("result")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The two endpoints

/// A network namespace pair (source in a, destination in b), token files, and fastcr endpoints
/// started in them; `receive` listens on b's address and `port`.
pub struct Link {
    pub pair: NetPair,
    keys: Scratch,
    port: u16,
}

impl Link {
    /// A new namespace pair named after `tag`; `receive` will listen on `port`.
    pub fn new(tag: &str, port: u16) -> Link {
        crate::require_root();
        Link {
            pair: NetPair::new(tag),
            keys: Scratch::new("mig-keys"),
            port,
        }
    }

    /// A token file `name` with 48 random hex characters (created on first use).
    pub fn token(&self, name: &str) -> PathBuf {
        let path = self.keys.join(name);
        if !path.exists() {
            let hex = random_hex().expect("read /dev/urandom");
            fs::write(&path, hex).expect("write a token file");
        }
        path
    }

    /// `ADDR_B:PORT`, where `receive` listens.
    pub fn dest_addr(&self) -> String {
        format!("{}:{}", self.pair.addr_b(), self.port)
    }

    /// `fastcr receive --listen ADDR_B:PORT --token-file TOKEN --json [--pidns new]` in
    /// namespace b, once its stdout starts with `listening on ` (hang guard `timeout`).
    pub fn receive(&self, token: &Path, pidns_new: bool, timeout: Duration) -> Bg {
        let mut cmd = self.pair.command_in_b(&fastcr_bin());
        cmd.args(["receive", "--listen", &self.dest_addr(), "--token-file"])
            .arg(token)
            .arg("--json");
        if pidns_new {
            cmd.args(["--pidns", "new"]);
        }
        let mut recv = Bg::spawn("fastcr receive", &mut cmd);
        wait_until("fastcr receive listens", timeout, || {
            assert!(
                recv.try_wait().is_none(),
                "receive exited before listening: {}",
                recv.output()
            );
            recv.stdout().starts_with("listening on ")
        });
        recv
    }

    /// `fastcr migrate -t PID --to ADDR_B:PORT --token-file TOKEN --json FLAGS` in namespace a.
    pub fn migrate(&self, pid: i32, token: &Path, flags: &[&str]) -> Bg {
        let mut cmd = self.pair.command_in_a(&fastcr_bin());
        cmd.args(["migrate", "-t", &pid.to_string(), "--to", &self.dest_addr()])
            .arg("--token-file")
            .arg(token)
            .arg("--json")
            .args(flags);
        Bg::spawn(&format!("fastcr migrate {}", flags.join(" ")), &mut cmd)
    }
}

/// [`Link::receive`] in namespace b; its first line must name the address it listens on.
pub fn receive(link: &Link, token: &Path, pidns_new: bool) -> Bg {
    let recv = link.receive(token, pidns_new, GUARD);
    assert_eq!(
        recv.stdout().trim_end(),
        format!("listening on {}", link.dest_addr()),
        "receive's first line"
    );
    recv
}

/// Waits for the one-line error exit the CLI contract prescribes; the last line of stderr.
pub fn wait_one_line_error(bg: &mut Bg) -> String {
    bg.wait(GUARD);
    let out = bg.as_output();
    assert_one_line_error(&out, &bg.what);
    assert_eq!(out.status.code(), Some(1), "{}", bg.output());
    bg.stderr().lines().last().unwrap_or_default().to_string()
}

/// Waits for both sides of a migration to exit 0; shows both outputs (and, on a hang, what
/// /proc shows of the one still running) if either does not.
pub fn wait_both_succeed(mig: &mut Bg, recv: &mut Bg) {
    let deadline = Instant::now() + GUARD;
    loop {
        let (m, r) = (mig.try_wait(), recv.try_wait());
        if let (Some(m), Some(r)) = (m, r) {
            assert!(
                m.success() && r.success(),
                "the migration failed:\n{}\n{}",
                mig.output(),
                recv.output()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the migration did not end within {GUARD:?}:\n{}\n{}\n{}{}",
            mig.output(),
            recv.output(),
            proc_summary(mig.pid()),
            proc_summary(recv.pid())
        );
        sleep(Duration::from_millis(10));
    }
}

/// State, per-thread wait channels and open fd kinds of `pid`, for failure messages.
fn proc_summary(pid: i32) -> String {
    let Some(stat) = ProcStat::read(pid) else {
        return format!("pid {pid}: gone\n");
    };
    let mut out = format!("pid {pid}: {stat:?}\n");
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let wchan = fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            out.push_str(&format!("  task {:?}: wchan {wchan}\n", t.file_name()));
        }
    }
    let mut kinds = BTreeMap::<String, usize>::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let target = fs::read_link(fd.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = target.split(':').next().unwrap_or_default().to_string();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    out.push_str(&format!("  fds: {kinds:?}\n"));
    out
}

/// The JSON object line of a fastcr `--json` stdout.
pub fn json_line(bg: &Bg) -> Value {
    let stdout = bg.stdout();
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on stdout: {}", bg.output()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{} --json {line:?}: {e}", bg.what))
}

/// The unsigned number at `path` (keys joined by `.`, e.g. `dest.pages_placed`) in `v`.
pub fn num(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned `{path}` in {v}"))
}

// ---------------------------------------------------------------------------------------------
// The original and its copy

/// Reaps the original after a successful migration: the source must have SIGKILLed it.
pub fn reap_killed_original(wl: &mut Workload) {
    let status = wl.reap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the source must SIGKILL the original after the migration, but it {status}"
    );
}

/// A copy of `wl` in a new pid namespace (its inner pid is the original's) and that namespace's
/// init, once the fastcr that restored it has exited (both then descend from the test). On drop
/// (a failing test), both are killed and whatever is the test's child is reaped, so that the
/// next test does not find them as strays.
pub struct NsCopy {
    copy: Restored,
    init: i32,
}

impl NsCopy {
    /// Takes over a copy and init found some other way (dropping it kills and reaps them).
    pub fn from_parts(copy: Restored, init: i32) -> NsCopy {
        NsCopy { copy, init }
    }

    /// Finds the copy of `wl` (NSpid `[outer, wl.pid()]`) and its namespace's init, which must
    /// be the test's child; the copy's parent must be the test or that init.
    pub fn find(wl: &Workload) -> NsCopy {
        let outer = find_in_new_pidns(wl.pid()).unwrap_or_else(|| {
            panic!(
                "no process with pid {} in a new pid namespace below the test; log: {}",
                wl.pid(),
                wl.log()
            )
        });
        assert_ne!(outer, wl.pid(), "the copy must have another pid here");
        assert_eq!(
            nspid(outer),
            Some(vec![outer, wl.pid()]),
            "NSpid of the copy"
        );
        let copy = Restored::new(outer);
        let init = pidns_init_of(outer)
            .unwrap_or_else(|| panic!("no init (pid 1) in the namespace of the copy {outer}"));
        let init_stat = ProcStat::read(init).expect("init is gone");
        let copy_stat = copy.stat().expect("the copy is gone");
        eprintln!(
            "copy {outer} (pid {} inside, state {}), parent {}, init {init} (parent {})",
            wl.pid(),
            copy_stat.state,
            copy_stat.ppid,
            init_stat.ppid
        );
        let found = NsCopy { copy, init };
        assert_eq!(
            init_stat.ppid,
            me(),
            "init {init} ({init_stat:?}) is not the test's child"
        );
        // The copy's parent was the restoring fastcr, outside the namespace: the kernel
        // reparents it to the nearest subreaper there (the test) or to the namespace's init.
        assert!(
            copy_stat.ppid == me() || copy_stat.ppid == init,
            "the copy's parent is {}, neither the test nor init {init}",
            copy_stat.ppid
        );
        found
    }

    /// The copy itself.
    pub fn copy(&self) -> &Restored {
        &self.copy
    }

    /// The copy's pid as seen from here.
    pub fn outer(&self) -> i32 {
        self.copy.pid()
    }

    /// Same visible state as the original `before`, except for the pid fields as seen from
    /// here: `Pid` and `Tgid` must be the copy's outer pid.
    pub fn assert_same_state(&self, before: &VisibleState, what: &str) {
        let outer = self.outer().to_string();
        let mut after = VisibleState::capture(self.outer());
        for key in ["Pid", "Tgid"] {
            assert_eq!(
                after.status.get(key),
                Some(&outer),
                "status {key} of the copy"
            );
            if let Some(v) = before.status.get(key) {
                after.status.insert(key.to_string(), v.clone());
            }
        }
        before.assert_same(&after, what);
    }

    /// SIGTERMs the copy, waits until it is gone, checks it reported PASS, and reaps its
    /// namespace's init (which exits once the namespace is empty). `what` names the copy in
    /// messages.
    pub fn terminate_and_verify(self, wl: &Workload, what: &str) {
        let outer = self.outer();
        if self.copy.stat().is_some_and(|s| s.ppid == me()) {
            self.copy.signal(libc::SIGTERM);
            let status = reap_within(outer, GUARD, what);
            assert!(
                status.success(),
                "{what} {status}; log: {}; result {:?}",
                wl.log(),
                result(wl)
            );
        } else {
            self.copy.terminate();
        }
        let res = result(wl);
        assert!(
            res == "PASS\n",
            "{what} ({}): result {:?}; log: {}",
            wl.name(),
            res.trim_end(),
            wl.log()
        );
        let status = reap_within(self.init, GUARD, "the pid namespace's init");
        assert!(status.success(), "the namespace's init {status}");
    }
}

impl Drop for NsCopy {
    fn drop(&mut self) {
        // A failing test: kill the copy (init then exits) and reap whatever is ours.
        if self.copy.is_alive() && self.copy.stat().is_some_and(|s| s.ppid == me()) {
            // SAFETY: our unreaped child (checked just above): the PID names the copy.
            unsafe { libc::kill(self.copy.pid(), libc::SIGKILL) };
        }
        if self.copy.stat().is_some_and(|s| s.ppid == me()) {
            reap_quietly(self.copy.pid(), Duration::from_secs(30));
        }
        if ProcStat::read(self.init).is_some_and(|s| s.ppid == me()) {
            if self.copy.is_alive() {
                // SAFETY: our unreaped child: killing init takes its namespace down.
                unsafe { libc::kill(self.init, libc::SIGKILL) };
            }
            reap_quietly(self.init, Duration::from_secs(30));
        }
    }
}
