//! Live migration (`fastcr migrate` → `fastcr receive`) between two network namespaces joined by
//! a veth ([`NetPair`]): `receive --pidns new` runs in namespace b and listens on b's address,
//! `migrate` runs in namespace a and connects across the veth. The workload runs on the same
//! host (started by the test in the root namespaces), so the destination always restores into a
//! new pid namespace, where the copy keeps the original's pid.
//!
//! Every test checks the migrated workload itself, not only fastcr's exit codes:
//! - success: the original (the test's child) was SIGKILLed by the source; the copy is the
//!   process whose NSpid is `[outer, original pid]`, a descendant of the test; its counter
//!   advances; on SIGTERM it reports PASS in STATEDIR/result; its pid namespace's init (reparented
//!   to the test, a subreaper, once `receive` has exited) exits once the copy is gone;
//! - failure: the original keeps running (or, when the source was killed after the hand-over,
//!   stays stopped until the test continues it), untraced, and PASSes later; no copy is left.
//!
//! Visible state (`VisibleState`) of the copy equals the original's before the migration, with
//! these allowed differences: `Pid` and `Tgid` in /proc/PID/status read from here are the copy's
//! outer pid (inside its namespace it has the original's pid, checked through NSpid); NSpid and
//! PPid are not compared (not part of `VisibleState`) since they differ by construction.
//!
//! `wl_lazy`'s churn: STATEDIR/churn is created before `migrate` starts, so the freeze may catch
//! the original while one of its churn children exists; that child then migrates with it (a
//! process tree), and the source's SIGKILL of the original tree leaves it to the test (a
//! subreaper) to reap.
//!
//! Timing is never asserted: every wait has a generous hang guard, and measured durations are
//! only printed.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmtests::netns::NetPair;
use vmtests::restored::{
    Restored, find_in_new_pidns, nspid, pidns_init_of, reap_within, wait_until,
};
use vmtests::{
    KillOnDrop, ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children,
    assert_one_line_error, fastcr_bin, require_root, spawn_registered, status_field,
    stray_children,
};

/// Hang guard for one step (a migration, a process exiting): never a timing assertion.
const GUARD: Duration = Duration::from_secs(300);
/// The port `receive` listens on; every test has its own pair of namespaces.
const PORT: u16 = 7411;
/// fastcr's link timeout (`cr_user::migrate::LINK_TIMEOUT`); only used to print how long a side
/// took next to it.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Background processes

/// A command (fastcr inside a network namespace) running in the background with stdout and
/// stderr in files; SIGKILLed and reaped on drop if still running.
#[derive(Debug)]
struct Bg {
    what: String,
    child: KillOnDrop,
    out: Scratch,
    status: Option<ExitStatus>,
}

impl Bg {
    fn spawn(what: &str, cmd: &mut Command) -> Bg {
        let out = Scratch::new("mig-bg");
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

    fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Its exit status if it has exited (reaping it).
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.0.try_wait().expect("try_wait");
        }
        self.status
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
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
            sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs it unless it has exited already, and reaps it.
    fn kill_and_reap(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // Our unreaped child: the PID cannot have been recycled.
        self.child.0.kill().expect("SIGKILL");
        let status = self.child.0.wait().expect("wait");
        self.status = Some(status);
        status
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.out.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.out.join("stderr")).unwrap_or_default()
    }

    /// As an `Output`, once it has exited (for `assert_one_line_error`).
    fn as_output(&self) -> Output {
        Output {
            status: self.status.expect("the process has not exited"),
            stdout: self.stdout().into_bytes(),
            stderr: self.stderr().into_bytes(),
        }
    }

    fn output(&self) -> String {
        format!(
            "{} status {:?}\n--- stdout:\n{}--- stderr:\n{}",
            self.what,
            self.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits for the one-line error exit the CLI contract prescribes.
    fn wait_one_line_error(&mut self) -> String {
        self.wait(GUARD);
        let out = self.as_output();
        assert_one_line_error(&out, &self.what);
        assert_eq!(out.status.code(), Some(1), "{}", self.output());
        self.stderr().lines().last().unwrap_or_default().to_string()
    }
}

/// Waits for both sides of a migration to exit 0; shows both outputs (and, on a hang, what
/// /proc shows of the one still running) if either does not.
fn wait_both_succeed(mig: &mut Bg, recv: &mut Bg) {
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
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
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

// ---------------------------------------------------------------------------------------------
// The two endpoints

/// A network namespace pair, token files and fastcr endpoints started in them.
struct Link {
    pair: NetPair,
    keys: Scratch,
}

impl Link {
    fn new(tag: &str) -> Link {
        require_root();
        Link {
            pair: NetPair::new(tag),
            keys: Scratch::new("mig-keys"),
        }
    }

    /// A token file `name` with 48 random hex characters (created on first use).
    fn token(&self, name: &str) -> PathBuf {
        let path = self.keys.join(name);
        if !path.exists() {
            let hex: String = random_bytes(24)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            fs::write(&path, hex).expect("write a token file");
        }
        path
    }

    fn dest_addr(&self) -> String {
        format!("{}:{PORT}", self.pair.addr_b())
    }

    /// `fastcr receive --listen ADDR_B:PORT --token-file TOKEN [--pidns new] --json` in
    /// namespace b, once it says it listens.
    fn receive(&self, token: &Path, pidns_new: bool) -> Bg {
        let mut cmd = self.pair.command_in_b(&fastcr_bin());
        cmd.args(["receive", "--listen", &self.dest_addr(), "--token-file"])
            .arg(token)
            .arg("--json");
        if pidns_new {
            cmd.args(["--pidns", "new"]);
        }
        let mut recv = Bg::spawn("fastcr receive", &mut cmd);
        wait_until("fastcr receive listens", GUARD, || {
            assert!(
                recv.try_wait().is_none(),
                "receive exited before listening: {}",
                recv.output()
            );
            recv.stdout().starts_with("listening on ")
        });
        assert_eq!(
            recv.stdout().trim_end(),
            format!("listening on {}", self.dest_addr()),
            "receive's first line"
        );
        recv
    }

    /// `fastcr migrate -t PID --to ADDR_B:PORT --token-file TOKEN --json FLAGS` in namespace a.
    fn migrate(&self, pid: i32, token: &Path, flags: &[&str]) -> Bg {
        let mut cmd = self.pair.command_in_a(&fastcr_bin());
        cmd.args(["migrate", "-t", &pid.to_string(), "--to", &self.dest_addr()])
            .arg("--token-file")
            .arg(token)
            .arg("--json")
            .args(flags);
        Bg::spawn(&format!("fastcr migrate {}", flags.join(" ")), &mut cmd)
    }

    /// A TCP connection to the destination from namespace a (made by a thread that enters the
    /// namespace: the network namespace is a per-thread attribute, and a socket stays in the
    /// namespace it was created in).
    fn connect_from_a(&self) -> TcpStream {
        let ns = PathBuf::from("/run/netns").join(self.pair.ns_a());
        let addr: SocketAddr = self.dest_addr().parse().expect("a socket address");
        std::thread::spawn(move || {
            let f = fs::File::open(&ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
            // SAFETY: setns takes an fd we hold open and a flag; it moves only this thread,
            // which ends right after the connect.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(
                rc == 0,
                "setns({}): {}",
                ns.display(),
                std::io::Error::last_os_error()
            );
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connect to {addr} from namespace a: {e}"))
        })
        .join()
        .expect("the connecting thread panicked")
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

// ---------------------------------------------------------------------------------------------
// JSON stats

/// The JSON object line of a fastcr `--json` stdout.
fn json_line(bg: &Bg) -> Value {
    let stdout = bg.stdout();
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on stdout: {}", bg.output()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{} --json {line:?}: {e}", bg.what))
}

fn num(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned `{path}` in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Processes

fn me() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

/// Reaps the original after a successful migration: the source must have SIGKILLed it.
fn reap_killed_original(wl: &mut Workload) {
    let status = wl.reap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the source must SIGKILL the original after the migration, but it {status}"
    );
}

/// Reaps the children the original had when the source froze it (a churn fork of wl_lazy): the
/// source moved them with it and SIGKILLed them with it, and being orphans they were
/// reparented to the test (a subreaper). Recognised by name, a single pid namespace level and
/// not being one of the processes the test spawned.
fn reap_killed_original_children(wl: &Workload) {
    for (pid, comm, _) in stray_children() {
        if comm != wl.name() || nspid(pid).is_none_or(|ids| ids.len() != 1) {
            continue;
        }
        let status = reap_within(pid, GUARD, "a child of the original");
        eprintln!("reaped the original's child {pid}: {status}");
        // A churn child that had already exited when the tree was frozen was a zombie: it keeps
        // its own status (0: its checks passed); a live one is SIGKILLed with the original.
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code() == Some(0),
            "the original's child {pid} must be SIGKILLed with it (or have ended cleanly before \
             the freeze), but it {status}"
        );
    }
}

/// Polls for the copy of `wl` in a new pid namespace below the test (inner pid == the
/// original's); `None` once `give_up` says so.
fn wait_for_copy(wl: &Workload, mut give_up: impl FnMut() -> bool) -> Option<i32> {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(outer) = find_in_new_pidns(wl.pid()) {
            return Some(outer);
        }
        if give_up() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "no copy of pid {} in a new pid namespace within {GUARD:?}",
            wl.pid()
        );
        sleep(Duration::from_millis(2));
    }
}

/// Whether the copy runs on its own: restored name, not stopped, not traced (the destination
/// detached it after `Go`, i.e. it was resumed).
fn copy_resumed(outer: i32, name: &str) -> bool {
    ProcStat::read(outer)
        .is_some_and(|s| s.comm == name && !matches!(s.state, 't' | 'T' | 'Z' | 'X'))
        && status_field(outer, "TracerPid").as_deref() == Some("0")
}

/// Non-panicking reap of our child `pid` (for drops), giving up after `timeout`.
fn reap_quietly(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 {
            return;
        }
        sleep(Duration::from_millis(10));
    }
}

/// The migrated copy and its pid namespace's init, once `receive` has exited (both then
/// descend from the test). On drop (a failing test), both are killed and reaped so that the next
/// test does not find them as strays.
struct MigratedCopy {
    copy: Restored,
    init: i32,
}

impl MigratedCopy {
    /// Finds the copy of `wl` (NSpid `[outer, wl.pid()]`) and its namespace's init, which must
    /// be the test's child now that `receive` has exited.
    fn find(wl: &Workload) -> MigratedCopy {
        let outer = find_in_new_pidns(wl.pid()).unwrap_or_else(|| {
            panic!(
                "no process with pid {} in a new pid namespace below the test after the \
                 migration; log: {}",
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
        let found = MigratedCopy { copy, init };
        assert_eq!(
            init_stat.ppid,
            me(),
            "init {init} ({init_stat:?}) is not the test's child after receive exited"
        );
        // The copy's parent was receive, outside the namespace: the kernel reparents it to the
        // nearest subreaper there (the test) or to the namespace's init.
        assert!(
            copy_stat.ppid == me() || copy_stat.ppid == init,
            "the copy's parent is {}, neither the test nor init {init}",
            copy_stat.ppid
        );
        found
    }

    fn outer(&self) -> i32 {
        self.copy.pid()
    }

    /// Same visible state as the original before the migration, except for the pid fields as
    /// seen from here (see the module doc).
    fn assert_same_state(&self, before: &VisibleState) {
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
        before.assert_same(&after, "the migrated copy");
    }

    /// SIGTERMs the copy, waits until it is gone, checks it reported PASS, and reaps its
    /// namespace's init (which exits once the namespace is empty).
    fn terminate_and_verify(self, wl: &Workload) {
        let outer = self.outer();
        if self.copy.stat().is_some_and(|s| s.ppid == me()) {
            self.copy.signal(libc::SIGTERM);
            let status = reap_within(outer, GUARD, "the migrated copy");
            assert!(
                status.success(),
                "the copy {status}; log: {}; result {:?}",
                wl.log(),
                result(wl)
            );
        } else {
            self.copy.terminate();
        }
        let res = result(wl);
        assert!(
            res == "PASS\n",
            "migrated {}: result {:?}; log: {}",
            wl.name(),
            res.trim_end(),
            wl.log()
        );
        let status = reap_within(self.init, GUARD, "the pid namespace's init");
        assert!(status.success(), "the namespace's init {status}");
    }
}

impl Drop for MigratedCopy {
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

fn result(wl: &Workload) -> String {
    fs::read_to_string(wl.statedir().join("result")).unwrap_or_default()
}

fn churn_ticks(wl: &Workload) -> u64 {
    let path = wl.statedir().join("churn_ticks");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("churn_ticks {text:?}: {e}"))
}

/// Sends SIGCONT to the original, which must still be our child.
fn continue_original(wl: &Workload) {
    let stat = ProcStat::read(wl.pid()).expect("the original is gone");
    assert_eq!(stat.ppid, me(), "the original is not our child: {stat:?}");
    // SAFETY: our unreaped child (checked above): the PID names the original.
    let rc = unsafe { libc::kill(wl.pid(), libc::SIGCONT) };
    assert!(rc == 0, "SIGCONT: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// Successful migrations

/// Migrates `name ARGS` with `flags` and checks everything the module doc lists; returns the
/// stats of migrate and receive.
fn migrate_and_verify(name: &str, args: &[&str], flags: &[&str]) -> (Value, Value) {
    let link = Link::new("mig");
    let token = link.token("token");
    let mut wl = Workload::spawn(name, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = link.receive(&token, true);
    let mut mig = link.migrate(wl.pid(), &token, flags);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);

    let copy = MigratedCopy::find(&wl);
    assert_eq!(
        num(&rstats, "pid_here"),
        u64::try_from(copy.outer()).expect("positive pid"),
        "receive's pid_here"
    );
    assert_eq!(
        num(&rstats, "restore.pid"),
        u64::try_from(wl.pid()).expect("positive pid"),
        "receive's restore.pid"
    );
    let lazy = flags.contains(&"--lazy");
    assert_eq!(mstats.get("lazy"), Some(&Value::Bool(lazy)), "{mstats}");
    assert_eq!(
        rstats.get("lazy").is_some_and(Value::is_object),
        lazy,
        "receive's lazy stats: {rstats}"
    );
    assert!(num(&mstats, "downtime_us") > 0, "{mstats}");
    if name != "wl_lazy" {
        copy.assert_same_state(&before);
    }
    wl.wait_counter_advances_as(copy.outer());
    assert_eq!(
        status_field(copy.outer(), "TracerPid").as_deref(),
        Some("0"),
        "the copy is still traced"
    );
    copy.terminate_and_verify(&wl);
    assert_no_stray_children(&format!("migrate {name} {}", flags.join(" ")));
    (mstats, rstats)
}

#[test]
fn migrate_lazy_wl_heap_256() {
    let (mstats, _) = migrate_and_verify("wl_heap", &["256"], &["--lazy"]);
    // 256 MiB is 65536 pages, all of them sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 60_000, "{mstats}");
    assert!(num(&mstats, "bulk_pages") > 0, "{mstats}");
}

#[test]
fn migrate_wl_heap_256() {
    let (mstats, rstats) = migrate_and_verify("wl_heap", &["256"], &[]);
    // Non-lazy: all the memory travels in the image, nothing afterwards.
    assert!(num(&mstats, "bytes_sent") >= 256 << 20, "{mstats}");
    assert!(num(&rstats, "image_bytes") >= 256 << 20, "{rstats}");
    assert_eq!(num(&mstats, "bulk_pages"), 0, "{mstats}");
    assert_eq!(num(&mstats, "requests_served"), 0, "{mstats}");
}

#[test]
fn migrate_precopy_wl_dirty() {
    // 256 MiB, 1 % of the pages dirtied per 100 ms.
    let (mstats, _) = migrate_and_verify("wl_dirty", &["256", "10"], &["--pre-copy", "auto"]);
    let rounds = mstats
        .pointer("/dump/rounds")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no dump.rounds array: {mstats}"));
    assert!(!rounds.is_empty(), "no pre-copy round: {mstats}");
    assert!(num(&mstats, "dump.pages_written") > 0, "{mstats}");
}

/// wl_lazy 512 MiB, churning (munmap, mremap, MADV_DONTNEED, fork) before the migration and
/// from its first instruction on the destination, i.e. during the lazy phase. The freeze may
/// catch it while a churn child exists: the tree (parent and child) then moves as a whole.
/// A fork racing the freeze makes fastcr try the dump again (as a tree if the child is still
/// there).
#[test]
fn migrate_lazy_with_churn() {
    let link = Link::new("churn");
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_lazy", &["512"]);
    wl.wait_counter_advances();
    assert_eq!(
        churn_ticks(&wl),
        0,
        "wl_lazy churned before STATEDIR/churn existed"
    );
    fs::write(wl.statedir().join("churn"), b"").expect("create STATEDIR/churn");
    wait_until("the original churns", GUARD, || churn_ticks(&wl) >= 1);

    let mut recv = link.receive(&token, true);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);
    reap_killed_original_children(&wl);
    let copy = MigratedCopy::find(&wl);
    // 512 MiB is 131072 pages, all sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 120_000, "{mstats}");
    // How much of the churn overlapped the lazy phase varies: reported, not required.
    eprintln!(
        "lazy phase: forks {:?}, layout events {:?}",
        rstats.pointer("/lazy/forks"),
        rstats.pointer("/lazy/layout_events")
    );

    wait_until("the copy has churned 3 times", GUARD, || {
        assert!(copy.copy.is_alive(), "the copy died; log: {}", wl.log());
        churn_ticks(&wl) >= 3
    });
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl);
    let ticks = churn_ticks(&wl);
    assert!(ticks >= 3, "churn_ticks {ticks} after the end");
    eprintln!("churn ticks: {ticks}");
    assert_no_stray_children("migrate_lazy_with_churn");
}

// ---------------------------------------------------------------------------------------------
// Refused peers

/// `receive` with token A, `migrate` with token B: the handshake fails before anything is sent;
/// the original never stops running; receive rejects the peer and keeps waiting.
#[test]
fn migrate_wrong_token_is_refused() {
    let link = Link::new("token");
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = link.receive(&link.token("token-a"), true);
    let mut mig = link.migrate(wl.pid(), &link.token("token-b"), &["--lazy"]);
    let line = mig.wait_one_line_error();
    eprintln!("migrate with the wrong token: {line}");
    assert!(
        line.contains("token"),
        "the error should name the token: {line}"
    );
    wait_until("receive reports the rejected peer", GUARD, || {
        recv.stderr().contains("fastcr: rejected connection from ")
    });
    eprintln!("receive: {}", recv.stderr().trim_end());
    assert!(
        recv.try_wait().is_none(),
        "receive must keep waiting for a real source: {}",
        recv.output()
    );
    assert_eq!(
        find_in_new_pidns(wl.pid()),
        None,
        "receive restored something although the peer was refused"
    );
    assert!(
        !recv.stdout().contains('{'),
        "receive printed stats: {}",
        recv.output()
    );

    wl.assert_running_untraced();
    before.assert_same(
        &VisibleState::capture(wl.pid()),
        "after the refused migration",
    );
    let status = recv.kill_and_reap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "receive ended by itself: {}",
        recv.output()
    );
    wl.terminate_and_verify();
    assert_no_stray_children("migrate_wrong_token_is_refused");
}

/// A stranger (an HTTP request followed by random bytes, then random bytes only) is rejected and
/// `receive` keeps listening; a real migration still succeeds after it.
#[test]
fn migrate_garbage_peer_is_refused() {
    let link = Link::new("garbage");
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();

    let mut recv = link.receive(&token, true);
    let mut payloads = Vec::new();
    let mut http = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    http.extend(random_bytes(64 << 10));
    payloads.push(http);
    payloads.push(random_bytes(4096));
    for (i, payload) in payloads.iter().enumerate() {
        let mut s = link.connect_from_a();
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("SO_RCVTIMEO");
        // The server may hang up after the first bytes: write errors are expected.
        let _ = s.write_all(payload);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        eprintln!(
            "garbage peer {i}: the server answered {} bytes and closed",
            answer.len()
        );
        wait_until(&format!("receive reports garbage peer {i}"), GUARD, || {
            recv.stderr()
                .matches("fastcr: rejected connection from ")
                .count()
                > i
        });
        assert!(
            recv.try_wait().is_none(),
            "receive must keep listening after a garbage peer: {}",
            recv.output()
        );
    }
    eprintln!("receive: {}", recv.stderr().trim_end());
    assert_eq!(
        find_in_new_pidns(wl.pid()),
        None,
        "a garbage peer got a restore"
    );

    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    eprintln!("migrate stats: {}", json_line(&mig));
    reap_killed_original(&mut wl);
    let copy = MigratedCopy::find(&wl);
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl);
    assert_no_stray_children("migrate_garbage_peer_is_refused");
}

// ---------------------------------------------------------------------------------------------
// Failures on either side

/// The destination restores into our pid namespace (no `--pidns new`) while the original still
/// has the pid: the restore fails before the resume, and the source thaws the original.
#[test]
fn migrate_dest_failure_before_resume_thaws_original() {
    let link = Link::new("pidinuse");
    let token = link.token("token");
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = link.receive(&token, false);
    let mut mig = link.migrate(wl.pid(), &token, &[]);
    let mline = mig.wait_one_line_error();
    let rline = recv.wait_one_line_error();
    eprintln!("migrate: {mline}\nreceive: {rline}");
    assert!(
        rline.contains("in use"),
        "receive should say the pid is in use: {rline}"
    );
    assert!(
        mline.contains("the original was thawed and runs on"),
        "migrate should say the original runs on: {mline}"
    );
    assert!(
        mline.contains("in use"),
        "migrate should relay why: {mline}"
    );
    assert_eq!(find_in_new_pidns(wl.pid()), None, "a copy exists");

    wl.assert_running_untraced();
    before.assert_same(
        &VisibleState::capture(wl.pid()),
        "after the failed migration",
    );
    wl.terminate_and_verify();
    assert_no_stray_children("migrate_dest_failure_before_resume_thaws_original");
}

/// Sizes tried, in MiB, until a kill lands inside the lazy phase.
const LAZY_KILL_SIZES: &[&str] = &["1024", "2048", "4096"];

/// What became of one attempt at killing a side during the lazy phase.
enum Attempt {
    /// The kill landed during the lazy phase and everything was checked.
    Tested,
    /// The lazy phase was already over: nothing was tested; try a bigger size.
    TooLate,
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `receive` as soon as the copy runs; checks that
/// the copy dies, that the source reports the lost link and thaws the original, which PASSes.
fn kill_dest_during_lazy_phase(size_mib: &str) -> Attempt {
    let link = Link::new("killdst");
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_heap", &[size_mib]);
    wl.wait_counter_advances();

    let mut recv = link.receive(&token, true);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    let outer = wait_for_copy(&wl, || {
        mig.try_wait().is_some() || recv.try_wait().is_some()
    })
    .unwrap_or_else(|| {
        panic!(
            "no copy appeared before a side exited:\n{}\n{}",
            mig.output(),
            recv.output()
        )
    });
    let copy = Restored::new(outer);
    wait_until("the copy is resumed", GUARD, || {
        copy_resumed(outer, "wl_heap") || recv.try_wait().is_some()
    });
    // Init (pid 1 of the copy's namespace) is receive's child until receive dies, then ours.
    let init = pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init in the namespace of the copy {outer}"));
    let rss_at_kill = status_field(outer, "RssAnon");
    let recv_status = recv.kill_and_reap();
    let killed_at = Instant::now();
    let done_before_kill = recv.stdout().contains('{');
    eprintln!(
        "{size_mib} MiB: receive killed with the copy at RssAnon {rss_at_kill:?} ({}); stats \
         printed before: {done_before_kill}",
        if recv_status.signal() == Some(libc::SIGKILL) {
            "killed".to_string()
        } else {
            format!("it had exited: {recv_status}")
        }
    );

    // Only `Done` (every page in place, the namespace released) lets migrate succeed.
    let mig_status = mig.wait(GUARD);
    if mig_status.success() {
        eprintln!(
            "{size_mib} MiB: the lazy phase was over before receive was killed: {}",
            mig.output()
        );
        reap_killed_original(&mut wl);
        // The copy may run on (released): kill it and reap what is ours.
        drop(MigratedCopy { copy, init });
        return Attempt::TooLate;
    }
    assert!(
        !done_before_kill,
        "receive had finished, yet migrate failed: {}\n{}",
        recv.output(),
        mig.output()
    );
    // receive is reaped: the copy (dead or alive) and init descend from the test.
    wait_until("the copy is dead", GUARD, || !copy.is_alive());
    let copy_status = copy
        .stat()
        .filter(|s| s.ppid == me())
        .map(|_| reap_within(outer, GUARD, "the dead copy"));
    eprintln!("the copy died: {copy_status:?}");
    if ProcStat::read(init).is_some_and(|s| s.ppid == me()) {
        let status = reap_within(init, GUARD, "the copy's namespace init");
        eprintln!("the copy's namespace init {status}");
    }
    if let Some(status) = copy_status {
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the copy must be SIGKILLed with its destination, but it {status}"
        );
    }
    assert!(
        result(&wl).is_empty(),
        "the copy ran to its end: {:?}",
        result(&wl)
    );
    let line = mig.wait_one_line_error();
    eprintln!(
        "migrate failed {:?} after the kill: {line}",
        killed_at.elapsed()
    );
    assert!(
        line.contains("the original was thawed"),
        "migrate should say it thawed the original: {line}"
    );
    wl.assert_running_untraced();
    wl.terminate_and_verify();
    Attempt::Tested
}

#[test]
fn migrate_dest_dies_during_lazy_phase_kills_copy() {
    require_root();
    for size in LAZY_KILL_SIZES {
        let attempt = kill_dest_during_lazy_phase(size);
        assert_no_stray_children(&format!("destination killed ({size} MiB)"));
        if matches!(attempt, Attempt::Tested) {
            return;
        }
    }
    panic!(
        "the lazy phase was always over before receive could be killed ({LAZY_KILL_SIZES:?} \
         MiB): the destination's death was never tested"
    );
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `migrate` as soon as the copy runs; checks that
/// receive kills the copy and fails with the lost link, and that the original is left stopped
/// (then continued by the test, it PASSes).
fn kill_source_during_lazy_phase(size_mib: &str) -> Attempt {
    let link = Link::new("killsrc");
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_heap", &[size_mib]);
    wl.wait_counter_advances();

    let mut recv = link.receive(&token, true);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    let outer = wait_for_copy(&wl, || {
        mig.try_wait().is_some() || recv.try_wait().is_some()
    })
    .unwrap_or_else(|| {
        panic!(
            "no copy appeared before a side exited:\n{}\n{}",
            mig.output(),
            recv.output()
        )
    });
    let copy = Restored::new(outer);
    wait_until("the copy is resumed", GUARD, || {
        copy_resumed(outer, "wl_heap") || mig.try_wait().is_some()
    });
    let init = pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init in the namespace of the copy {outer}"));
    let rss_at_kill = status_field(outer, "RssAnon");
    let mig_status = mig.kill_and_reap();
    let killed_at = Instant::now();
    eprintln!(
        "{size_mib} MiB: migrate killed with the copy at RssAnon {rss_at_kill:?} ({})",
        if mig_status.signal() == Some(libc::SIGKILL) {
            "killed".to_string()
        } else {
            format!("it had exited: {mig_status}")
        }
    );
    let recv_status = recv.wait(GUARD);
    eprintln!(
        "receive ended {:?} after the kill (link timeout {LINK_TIMEOUT:?}): {}",
        killed_at.elapsed(),
        recv.output()
    );
    if recv_status.success() {
        // Every page was in place before the kill: the copy runs on, complete.
        eprintln!("{size_mib} MiB: the lazy phase was over before migrate was killed");
        // The original is stopped (queued SIGSTOP) or was killed by the source: either way,
        // only the copy runs; end it and the original.
        drop(MigratedCopy { copy, init });
        drop(wl);
        return Attempt::TooLate;
    }
    assert!(
        mig_status.signal() == Some(libc::SIGKILL),
        "migrate exited by itself before the kill ({mig_status}) although receive failed: {}\n{}",
        mig.output(),
        recv.output()
    );
    let line = recv.wait_one_line_error();
    eprintln!("receive: {line}");
    assert!(
        line.contains("link") && line.contains("lost"),
        "receive should report the lost link: {line}"
    );
    // receive killed and reaped the copy (its child) before it exited.
    wait_until("the copy is gone", GUARD, || copy.stat().is_none());
    drop(copy);
    assert!(
        result(&wl).is_empty(),
        "the copy ran to its end: {:?}",
        result(&wl)
    );

    // The original: detached when migrate died, and stopped by the SIGSTOP queued before the
    // hand-over, never running beside the copy.
    wait_until("the original is detached", GUARD, || {
        status_field(wl.pid(), "TracerPid").as_deref() == Some("0")
    });
    let stat = ProcStat::read(wl.pid()).expect("the original is gone");
    assert_eq!(
        stat.state, 'T',
        "the original must be left stopped after the source died: {stat:?}"
    );
    let counter = wl.counter();
    sleep(Duration::from_millis(500));
    assert_eq!(
        wl.counter(),
        counter,
        "the stopped original advanced its counter"
    );
    assert_eq!(
        ProcStat::read(wl.pid()).map(|s| s.state),
        Some('T'),
        "the original did not stay stopped"
    );
    // What the source left behind, for the failure message should the original not survive.
    let left = format!(
        "SigBlk {:?}, /proc/PID/syscall {:?}",
        status_field(wl.pid(), "SigBlk"),
        fs::read_to_string(format!("/proc/{}/syscall", wl.pid())).unwrap_or_default()
    );
    eprintln!("the stopped original: {left}");
    continue_original(&wl);
    let deadline = Instant::now() + GUARD;
    let first = wl.counter();
    loop {
        let stat = ProcStat::read(wl.pid()).expect("the original is gone");
        if stat.state == 'Z' {
            let status = wl.reap();
            panic!(
                "the original died after SIGCONT: it {status}; before the SIGCONT: {left}; \
                 log: {}",
                wl.log()
            );
        }
        if wl.counter() != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the continued original does not advance its counter: {stat:?}"
        );
        sleep(Duration::from_millis(10));
    }
    wl.assert_running_untraced();
    wl.terminate_and_verify();
    Attempt::Tested
}

#[test]
fn migrate_source_dies_during_lazy_phase() {
    require_root();
    for size in LAZY_KILL_SIZES {
        let attempt = kill_source_during_lazy_phase(size);
        assert_no_stray_children(&format!("source killed ({size} MiB)"));
        if matches!(attempt, Attempt::Tested) {
            return;
        }
    }
    panic!(
        "the lazy phase was always over before migrate could be killed ({LAZY_KILL_SIZES:?} \
         MiB): the source's death was never tested"
    );
}
