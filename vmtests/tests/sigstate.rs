//! Pending signals, POSIX timers, limits and identity (`wl_sigstate`: two threads, signals
//! queued process-wide and per thread, four POSIX timers, a periodic ITIMER_REAL caught with
//! its SIGALRM pending, lowered rlimits, a personality flag, no_new_privs and changed
//! capability sets; see `workloads/wl_sigstate.c`):
//! - `dump` → reap → `restore -d`;
//! - `dump --leave-running` → the original keeps running → SIGKILL and reap → `restore -d`;
//! - `dump --leave-running` → `restore --pidns new -d` while the original still runs;
//! - `migrate --lazy` to a `receive --pidns new` across a veth;
//! - the same with a seccomp filter in both threads (it still refuses its syscall after the
//!   restore, and each thread has as many filters as before);
//! - a process in seccomp strict mode (× dump and --leave-running) is still in it after the
//!   restore: a forbidden syscall gets it killed;
//! - a hard limit the restorer cannot raise is restored lower, with a warning naming it;
//! - an image without `sigstate-<pid>.img` (as older versions wrote) still restores;
//! - a process of an ordinary user with an ambient capability gets its capabilities back
//!   (the uid change of the restore would otherwise clear them).
//!
//! Beside the workload's own verification (each thread takes its pending signals with
//! `sigtimedwait` and checks code, value, pid and timer id; timers, limits, personality,
//! no_new_privs and capabilities are read back) the test compares what /proc shows before the
//! dump and after the restore: the visible state, the pending sets (`SigPnd`/`ShdPnd` of each
//! thread), `/proc/PID/timers` and `/proc/PID/limits`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use vmtests::migration::{Link, NsCopy, reap_killed_original, wait_both_succeed};
use vmtests::roundtrip::{assert_left_running, dump, reap_dumped, restore, verify_restored};
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr,
    fastcr_bin, numeric_entries, require_root, restored, run, status_field,
};

const WORKLOAD: &str = "wl_sigstate";
/// Hang guard for one step: never a timing assertion.
const GUARD: Duration = Duration::from_secs(300);
/// The port `receive` listens on (every test has its own pair of namespaces).
const PORT: u16 = 7431;
/// SIGRTMIN+6 (glibc's SIGRTMIN is 34): timer B's signal, handled, so it may or may not be
/// pending at any moment.
const TIMER_B_SIGNAL: u32 = 40;

/// What /proc shows of the signal and limit state of a process.
#[derive(Debug, PartialEq, Eq)]
struct SigView {
    /// `SigPnd` of each thread (keyed by its index in tid order) and `ShdPnd`, without timer
    /// B's signal.
    pending: BTreeMap<String, u64>,
    /// `/proc/PID/timers`, with the notified pid/tid left out (it differs in a new pid
    /// namespace) when `strip_ids`.
    timers: String,
    /// `/proc/PID/limits`.
    limits: String,
    /// `Seccomp_filters` of each thread.
    filters: Vec<String>,
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in status"))
        .trim()
}

fn hex_field(status: &str, key: &str) -> u64 {
    let v = field(status, key);
    u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{key}: {v}: {e}"))
}

fn sig_view(pid: i32, strip_ids: bool) -> SigView {
    let mask = !(1u64 << (TIMER_B_SIGNAL - 1));
    let mut pending = BTreeMap::new();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    pending.insert("ShdPnd".to_string(), hex_field(&status, "ShdPnd") & mask);
    let tids = numeric_entries(format!("/proc/{pid}/task")).expect("read task dir");
    assert_eq!(tids.len(), 2, "threads of {pid}: {tids:?}");
    let mut filters = Vec::new();
    for (i, tid) in tids.iter().enumerate() {
        let s =
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("read task status");
        pending.insert(format!("SigPnd[{i}]"), hex_field(&s, "SigPnd") & mask);
        filters.push(field(&s, "Seccomp_filters").to_string());
    }
    let timers = fs::read_to_string(format!("/proc/{pid}/timers")).expect("read timers");
    let timers = if strip_ids {
        timers
            .lines()
            .map(|l| match l.split_once('.') {
                Some((head, _)) if l.starts_with("notify:") => head.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        timers
    };
    assert!(
        timers.lines().filter(|l| l.starts_with("ID:")).count() == 4,
        "timers of {pid}: {timers}"
    );
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    SigView {
        pending,
        timers,
        limits,
        filters,
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `dump` (kills the process), `restore -d`.
    Dump,
    /// `dump --leave-running`, SIGKILL the original, `restore -d`.
    LeaveRunning,
}

fn dump_and_restore(mode: Mode, args: &[&str]) {
    require_root();
    let mut wl = Workload::spawn(WORKLOAD, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let view = sig_view(wl.pid(), false);
    // The workload left signals pending in both queues of both threads.
    assert!(
        view.pending.values().all(|&p| p != 0),
        "pending sets before the dump: {:?}",
        view.pending
    );
    let images = Scratch::new("sigstate-img");
    let pid = wl.pid_arg();
    let flags: &[&str] = if matches!(mode, Mode::LeaveRunning) {
        &["--leave-running"]
    } else {
        &[]
    };
    dump(&wl, &images, flags);
    assert!(
        images.join(&format!("sigstate-{pid}.img")).is_file(),
        "no sigstate-{pid}.img in the images"
    );
    if matches!(mode, Mode::LeaveRunning) {
        assert_left_running(&wl, &before, VisibleState::capture);
        // The freeze neither took nor added a signal.
        assert_eq!(
            view,
            sig_view(wl.pid(), false),
            "after dump --leave-running"
        );
        wl.kill_and_reap();
    } else {
        reap_dumped(&mut wl);
    }
    restore(&mut wl, &images, &[]);
    assert_no_stray_children("restore -d");
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    assert_eq!(view, sig_view(wl.pid(), false), "after restore");
    verify_restored(wl, "wl_sigstate after restore");
}

#[test]
fn sigstate_dump_restore() {
    dump_and_restore(Mode::Dump, &[]);
}

#[test]
fn sigstate_leave_running_restore() {
    dump_and_restore(Mode::LeaveRunning, &[]);
}

/// With a seccomp filter (getpriority fails with EPERM) in both threads: it is saved with
/// `PTRACE_SECCOMP_GET_FILTER`, and after the restore each thread has as many filters as before
/// (`Seccomp_filters`) and the workload finds getpriority still refused.
#[test]
fn sigstate_seccomp_dump_restore() {
    dump_and_restore(Mode::Dump, &["seccomp"]);
}

#[test]
fn sigstate_seccomp_leave_running_restore() {
    dump_and_restore(Mode::LeaveRunning, &["seccomp"]);
}

/// `dump --leave-running`, then `restore --pidns new -d` while the original still runs; the
/// original is killed and the copy must PASS (its signals carry the pid the original had,
/// which is the copy's own inside its namespace).
#[test]
fn sigstate_pidns_new() {
    pidns_new(&[]);
}

#[test]
fn sigstate_seccomp_pidns_new() {
    pidns_new(&["seccomp"]);
}

fn pidns_new(args: &[&str]) {
    require_root();
    let mut wl = Workload::spawn(WORKLOAD, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let view = sig_view(wl.pid(), true);
    let images = Scratch::new("sigstate-pidns-img");
    dump(&wl, &images, &["--leave-running"]);
    wl.assert_running_untraced();
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]),
        "restore --pidns new -d",
    );
    let copy = NsCopy::find(&wl);
    copy.assert_same_state(&before, "copy restored into a new pid namespace");
    assert_eq!(view, sig_view(copy.outer(), true), "the copy");
    assert_eq!(
        view,
        sig_view(wl.pid(), true),
        "the original beside its copy"
    );
    // Both write the same STATEDIR: from here on only the copy does.
    wl.kill_and_reap();
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the copy");
    assert_no_stray_children("sigstate restore --pidns new");
}

/// `migrate --lazy` (the source holds the process frozen until the destination is ready) to a
/// `receive --pidns new` across a veth: the copy has the same signal state and PASSes, filter
/// included.
#[test]
fn sigstate_migrate_lazy() {
    require_root();
    let link = Link::new("sig", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn(WORKLOAD, &["seccomp"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let view = sig_view(wl.pid(), true);
    let mut recv = link.receive(&token, true, GUARD);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    reap_killed_original(&mut wl);
    let copy = NsCopy::find(&wl);
    copy.assert_same_state(&before, "the migrated copy");
    assert_eq!(view, sig_view(copy.outer(), true), "the migrated copy");
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the copy");
    assert_no_stray_children("sigstate migrate --lazy");
}

/// Waits until `pid` is single-threaded, in seccomp strict mode and asleep (in `read`).
fn wait_strict(pid: i32, what: &str) {
    restored::wait_until(what, GUARD, || {
        status_field(pid, "Seccomp").as_deref() == Some("1")
            && status_field(pid, "Threads").as_deref() == Some("1")
            && ProcStat::read(pid).is_some_and(|s| s.state == 'S')
    });
}

/// SIGTERMs the strict-mode workload: it then calls getpid, which strict mode answers with
/// SIGKILL (it would exit with status 3 without strict mode).
fn assert_killed_by_strict_mode(wl: Workload, what: &str) {
    let (status, _, log) = wl.terminate();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what}: the workload {status} instead of being killed by strict mode; log: {log}"
    );
}

/// A thread in seccomp strict mode: the dump suspends it for its injected syscalls and the
/// restore sets it again as the thread's last injected step. The restored process is in strict
/// mode, asleep in `read` as before, and strict mode kills it for a forbidden syscall.
fn strict_mode(mode: Mode) {
    require_root();
    let mut wl = Workload::spawn(WORKLOAD, &["strict"]);
    wait_strict(wl.pid(), "the workload sleeps in strict mode");
    let images = Scratch::new("sigstate-strict-img");
    let flags: &[&str] = if matches!(mode, Mode::LeaveRunning) {
        &["--leave-running"]
    } else {
        &[]
    };
    dump(&wl, &images, flags);
    if matches!(mode, Mode::LeaveRunning) {
        // The original is left as it was, strict mode included.
        wait_strict(
            wl.pid(),
            "the original sleeps in strict mode after the dump",
        );
        assert_eq!(
            status_field(wl.pid(), "TracerPid").as_deref(),
            Some("0"),
            "the original is still traced"
        );
        wl.kill_and_reap();
    } else {
        wl.reap();
    }
    restore(&mut wl, &images, &[]);
    wait_strict(wl.pid(), "the restored process sleeps in strict mode");
    assert_killed_by_strict_mode(wl, "the restored process");
    assert_no_stray_children("strict mode after restore");
}

#[test]
fn sigstate_seccomp_strict_dump_restore() {
    strict_mode(Mode::Dump);
}

#[test]
fn sigstate_seccomp_strict_leave_running_restore() {
    strict_mode(Mode::LeaveRunning);
}

/// The control for the strict-mode tests: the workload, never dumped, is killed the same way.
#[test]
fn sigstate_seccomp_strict_kills_undisturbed() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &["strict"]);
    wait_strict(wl.pid(), "the workload sleeps in strict mode");
    assert_killed_by_strict_mode(wl, "the undisturbed workload");
}

/// The restorer runs with a hard RLIMIT_MSGQUEUE below the dumped one and, without
/// CAP_SYS_RESOURCE, cannot raise it: the restore warns, naming the limit, keeps the lower one,
/// and the process (which does not check that limit) runs on and PASSes.
#[test]
fn sigstate_hard_limit_not_raised() {
    require_root();
    let mut wl = Workload::spawn(WORKLOAD, &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("sigstate-rlimit-img");
    dump(&wl, &images, &[]);
    wl.reap();
    let out = run(Command::new("prlimit")
        .arg("--msgqueue=4096:4096")
        .arg(fastcr_bin())
        .args(["restore", "-D", images.as_str(), "-d"]));
    assert_success(&out, "restore with a lower hard RLIMIT_MSGQUEUE");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RLIMIT_MSGQUEUE") && stderr.contains("CAP_SYS_RESOURCE"),
        "no warning naming RLIMIT_MSGQUEUE: {stderr}"
    );
    wl.adopt_restored();
    let limits = fs::read_to_string(format!("/proc/{}/limits", wl.pid())).expect("read limits");
    let msgqueue = limits
        .lines()
        .find(|l| l.starts_with("Max msgqueue size"))
        .expect("msgqueue line");
    assert_eq!(
        msgqueue.split_whitespace().collect::<Vec<_>>(),
        ["Max", "msgqueue", "size", "4096", "4096", "bytes"],
        "limits of the restored process: {limits}"
    );
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("restore with a lower hard limit");
}

/// Images of older versions have no `sigstate-<pid>.img`: such an image (here `wl_signals`'s,
/// whose state does not need the file) still restores and PASSes.
#[test]
fn image_without_sigstate_restores() {
    require_root();
    let mut wl = Workload::spawn("wl_signals", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("sigstate-old-img");
    dump(&wl, &images, &[]);
    wl.reap();
    let file = images.join(&format!("sigstate-{}.img", wl.pid()));
    fs::remove_file(&file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
    restore(&mut wl, &images, &[]);
    verify_restored(wl, "restore without sigstate");
}

/// The control for the tests above: `wl_sigstate` restored from an image whose
/// `sigstate-<pid>.img` was removed has lost its pending signals, timers and limits, and its
/// own verification says so.
#[test]
fn sigstate_workload_detects_lost_state() {
    require_root();
    let mut wl = Workload::spawn(WORKLOAD, &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("sigstate-lost-img");
    dump(&wl, &images, &[]);
    wl.reap();
    let file = images.join(&format!("sigstate-{}.img", wl.pid()));
    fs::remove_file(&file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
    restore(&mut wl, &images, &[]);
    wl.wait_counter_advances();
    let (status, result, log) = wl.terminate();
    assert!(
        !status.success() && result.starts_with("FAIL: "),
        "wl_sigstate without its signal state: {status}, result {result:?}; log: {log}"
    );
    assert_no_stray_children("restore of wl_sigstate without sigstate");
}

/// `wl_signals` run as uid 65534 with CAP_NET_BIND_SERVICE inheritable, permitted, effective and
/// ambient (through `setpriv`): the restore changes uid from root to 65534, which clears the
/// permitted, effective and ambient sets unless they are kept and set again. The visible state
/// compares the uids and every capability set.
#[test]
fn sigstate_user_capabilities() {
    require_root();
    let caps = [
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
    ];
    let mut wl = Workload::spawn_as("wl_signals", &[], 65534, &caps);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    assert_eq!(
        before.status.get("CapAmb").map(String::as_str),
        Some("0000000000000400"),
        "the workload did not start with its ambient capability: {:?}",
        before.status
    );
    let images = Scratch::new("sigstate-caps-img");
    dump(&wl, &images, &[]);
    wl.reap();
    restore(&mut wl, &images, &[]);
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    verify_restored(wl, "restore of a user process with capabilities");
}
