//! Live migration (`fastcr migrate` → `fastcr receive`) between two network namespaces joined by
//! a veth ([`Link`]): `receive --pidns new` runs in namespace b and listens on b's address,
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
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmtests::migration::{self, Bg, Link, NsCopy, me, reap_killed_original, result};
use vmtests::restored::{
    Restored, find_in_new_pidns, nspid, pidns_init_of, reap_within, wait_until,
};
use vmtests::{
    ProcStat, VisibleState, Workload, assert_no_stray_children, assert_one_line_error,
    require_root, status_field, stray_children,
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

/// Waits for the one-line error exit the CLI contract prescribes; the last line of stderr.
fn wait_one_line_error(bg: &mut Bg) -> String {
    bg.wait(GUARD);
    let out = bg.as_output();
    assert_one_line_error(&out, &bg.what);
    assert_eq!(out.status.code(), Some(1), "{}", bg.output());
    bg.stderr().lines().last().unwrap_or_default().to_string()
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

/// `receive` in namespace b (see [`Link::receive`]), once it listens; its first line must name
/// the address it listens on.
fn receive(link: &Link, token: &Path, pidns_new: bool) -> Bg {
    let recv = link.receive(token, pidns_new, GUARD);
    assert_eq!(
        recv.stdout().trim_end(),
        format!("listening on {}", link.dest_addr()),
        "receive's first line"
    );
    recv
}

/// A TCP connection to the destination from namespace a (made by a thread that enters the
/// namespace: the network namespace is a per-thread attribute, and a socket stays in the
/// namespace it was created in).
fn connect_from_a(link: &Link) -> TcpStream {
    let ns = PathBuf::from("/run/netns").join(link.pair.ns_a());
    let addr: SocketAddr = link.dest_addr().parse().expect("a socket address");
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

fn random_bytes(n: usize) -> Vec<u8> {
    migration::random_bytes(n).expect("read /dev/urandom")
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
    let link = Link::new("mig", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn(name, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &token, true);
    let mut mig = link.migrate(wl.pid(), &token, flags);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);

    let copy = NsCopy::find(&wl);
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
        copy.assert_same_state(&before, "the migrated copy");
    }
    wl.wait_counter_advances_as(copy.outer());
    assert_eq!(
        status_field(copy.outer(), "TracerPid").as_deref(),
        Some("0"),
        "the copy is still traced"
    );
    copy.terminate_and_verify(&wl, "the migrated copy");
    assert_no_stray_children(&format!("migrate {name} {}", flags.join(" ")));
    (mstats, rstats)
}

#[test]
fn migrate_lazy_wl_heap_256() {
    let (mstats, _) = migrate_and_verify("wl_heap", &["256"], &["--lazy"]);
    // 256 MiB is 65536 pages, all of them sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 60_000, "{mstats}");
    assert!(num(&mstats, "bulk_pages") > 0, "{mstats}");
    // It writes its counter (and stack) all the time: some pages are hot.
    assert!(num(&mstats, "hot_pages") > 0, "{mstats}");
    // The background pages were copied out of the original (the default).
    assert_eq!(num(&mstats, "spliced_processes"), 0, "{mstats}");
}

#[test]
fn migrate_lazy_splice_wl_heap_256() {
    let (mstats, _) = migrate_and_verify("wl_heap", &["256"], &["--lazy", "--splice"]);
    assert!(num(&mstats, "dest.pages_placed") > 60_000, "{mstats}");
    assert!(num(&mstats, "bulk_pages") > 0, "{mstats}");
    // The background pages left the original through a helper thread's pipe.
    assert_eq!(num(&mstats, "spliced_processes"), 1, "{mstats}");
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
    // The rounds' copies went over while the process ran (at least the 65536 pages of the
    // first round), and the image leaves them to the parent the destination wrote from them:
    // after the freeze only the residue was sent.
    let streamed = num(&mstats, "precopy_pages_streamed");
    assert!(streamed >= 65_536, "{mstats}");
    let in_parent = num(&mstats, "dump.pages_in_parent");
    assert!(
        in_parent > 0,
        "the image stored every page itself: {mstats}"
    );
    assert!(
        num(&mstats, "dump.pages_written") < in_parent,
        "the residue should be the smaller part: {mstats}"
    );
}

/// wl_lazy 512 MiB, churning (munmap, mremap, MADV_DONTNEED, fork) before the migration and
/// from its first instruction on the destination, i.e. during the lazy phase. The freeze may
/// catch it while a churn child exists: the tree (parent and child) then moves as a whole.
/// A fork racing the freeze makes fastcr try the dump again (as a tree if the child is still
/// there).
#[test]
fn migrate_lazy_with_churn() {
    let link = Link::new("churn", PORT);
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

    let mut recv = receive(&link, &token, true);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);
    reap_killed_original_children(&wl);
    let copy = NsCopy::find(&wl);
    // 512 MiB is 131072 pages, all sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 120_000, "{mstats}");
    // How much of the churn overlapped the lazy phase varies: reported, not required.
    eprintln!(
        "lazy phase: forks {:?}, layout events {:?}",
        rstats.pointer("/lazy/forks"),
        rstats.pointer("/lazy/layout_events")
    );

    wait_until("the copy has churned 3 times", GUARD, || {
        assert!(copy.copy().is_alive(), "the copy died; log: {}", wl.log());
        churn_ticks(&wl) >= 3
    });
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the migrated copy");
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
    let link = Link::new("token", PORT);
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &link.token("token-a"), true);
    let mut mig = link.migrate(wl.pid(), &link.token("token-b"), &["--lazy"]);
    let line = wait_one_line_error(&mut mig);
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
    let link = Link::new("garbage", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();

    let mut recv = receive(&link, &token, true);
    let mut payloads = Vec::new();
    let mut http = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    http.extend(random_bytes(64 << 10));
    payloads.push(http);
    payloads.push(random_bytes(4096));
    for (i, payload) in payloads.iter().enumerate() {
        let mut s = connect_from_a(&link);
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
    let copy = NsCopy::find(&wl);
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the migrated copy");
    assert_no_stray_children("migrate_garbage_peer_is_refused");
}

// ---------------------------------------------------------------------------------------------
// Failures on either side

/// The destination restores into our pid namespace (no `--pidns new`) while the original still
/// has the pid: the restore fails before the resume, and the source thaws the original.
#[test]
fn migrate_dest_failure_before_resume_thaws_original() {
    let link = Link::new("pidinuse", PORT);
    let token = link.token("token");
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &token, false);
    let mut mig = link.migrate(wl.pid(), &token, &[]);
    let mline = wait_one_line_error(&mut mig);
    let rline = wait_one_line_error(&mut recv);
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

/// The side of a lazy migration a test kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// `receive`.
    Dest,
    /// `migrate`.
    Source,
}

/// A lazy migration of wl_heap whose copy runs (or whose `Victim` has already exited).
struct LazyRun {
    /// Keeps the namespaces and token files until the test is done.
    _link: Link,
    wl: Workload,
    recv: Bg,
    mig: Bg,
    copy: Restored,
    outer: i32,
    /// Pid 1 of the copy's namespace: receive's child until receive dies, then ours.
    init: i32,
}

/// Starts `migrate --lazy` of wl_heap SIZE_MIB over a new link named `tag` and waits until the
/// copy is resumed or `victim` has exited (a side exiting before any copy appears fails).
fn start_lazy_until_resumed(tag: &str, size_mib: &str, victim: Victim, extra: &[&str]) -> LazyRun {
    let link = Link::new(tag, PORT);
    let token = link.token("token");
    let wl = Workload::spawn("wl_heap", &[size_mib]);
    wl.wait_counter_advances();

    let mut recv = receive(&link, &token, true);
    let mut args = vec!["--lazy"];
    args.extend_from_slice(extra);
    let mut mig = link.migrate(wl.pid(), &token, &args);
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
        copy_resumed(outer, "wl_heap")
            || match victim {
                Victim::Dest => recv.try_wait().is_some(),
                Victim::Source => mig.try_wait().is_some(),
            }
    });
    let init = pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init in the namespace of the copy {outer}"));
    LazyRun {
        _link: link,
        wl,
        recv,
        mig,
        copy,
        outer,
        init,
    }
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `receive` as soon as the copy runs; checks that
/// the copy dies, that the source reports the lost link and thaws the original, which PASSes.
fn kill_dest_during_lazy_phase(size_mib: &str) -> Attempt {
    let LazyRun {
        _link,
        mut wl,
        mut recv,
        mut mig,
        copy,
        outer,
        init,
    } = start_lazy_until_resumed("killdst", size_mib, Victim::Dest, &[]);
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
        drop(NsCopy::from_parts(copy, init));
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
    let line = wait_one_line_error(&mut mig);
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

/// Runs `attempt` with each of [`LAZY_KILL_SIZES`] until a kill of `victim` lands inside the
/// lazy phase, checking for stray children after each; panics if none did.
fn until_tested(victim: Victim, attempt: &dyn Fn(&str) -> Attempt) {
    require_root();
    let (side, command) = match victim {
        Victim::Dest => ("destination", "receive"),
        Victim::Source => ("source", "migrate"),
    };
    for size in LAZY_KILL_SIZES {
        let attempt = attempt(size);
        assert_no_stray_children(&format!("{side} killed ({size} MiB)"));
        if matches!(attempt, Attempt::Tested) {
            return;
        }
    }
    panic!(
        "the lazy phase was always over before {command} could be killed ({LAZY_KILL_SIZES:?} \
         MiB): the {side}'s death was never tested"
    );
}

#[test]
fn migrate_dest_dies_during_lazy_phase_kills_copy() {
    until_tested(Victim::Dest, &kill_dest_during_lazy_phase);
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `migrate` as soon as the copy runs; checks that
/// receive kills the copy and fails with the lost link, and that the original is left stopped
/// (then continued by the test, it PASSes).
fn kill_source_during_lazy_phase(size_mib: &str, extra: &[&str]) -> Attempt {
    let LazyRun {
        _link,
        mut wl,
        mut recv,
        mut mig,
        copy,
        outer,
        init,
    } = start_lazy_until_resumed("killsrc", size_mib, Victim::Source, extra);
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
        drop(NsCopy::from_parts(copy, init));
        drop(wl);
        return Attempt::TooLate;
    }
    assert!(
        mig_status.signal() == Some(libc::SIGKILL),
        "migrate exited by itself before the kill ({mig_status}) although receive failed: {}\n{}",
        mig.output(),
        recv.output()
    );
    let line = wait_one_line_error(&mut recv);
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
    until_tested(Victim::Source, &|size| {
        kill_source_during_lazy_phase(size, &[])
    });
}

/// The same with the background stream spliced: the page stream helper, running its vmsplice
/// loop when its fastcr dies, ends it on the closed pipe and exits; the original stays stopped.
#[test]
fn migrate_source_dies_during_spliced_lazy_phase() {
    until_tested(Victim::Source, &|size| {
        kill_source_during_lazy_phase(size, &["--splice"])
    });
}
