//! Multi-threaded processes (`wl_threads`: main + 4 workers, each in a different kind of wait,
//! see `workloads/wl_threads.c`) through every way fastcr checkpoints and restores:
//! - `dump` → reap → `restore -d`;
//! - `dump --leave-running` → the original keeps running → SIGKILL and reap → `restore -d`;
//! - `dump` → reap → `restore --lazy -d`;
//! - `dump --leave-running` → `restore --pidns new -d` while the original still runs;
//! - `dump --pre-copy auto` → reap → `restore -d`;
//! - `migrate --lazy` to a `receive --pidns new` across a veth (`vmtests::netns::NetPair`).
//!
//! After the restore, beside the workload's own verification (every thread checks its TID,
//! TLS, robust list, clear_child_tid, rseq, signal mask, alternate stack, name and vector
//! registers; thread 1 must still hold its mutex) and the `VisibleState` comparison: the
//! process has exactly the original threads (/proc/PID/task, by TID as seen from the
//! process's own pid namespace, i.e. the NSpid inner TIDs for a copy in a new one), each with
//! the same comm and SigBlk, none stopped or traced.
//!
//! The workload runs in `pipe` mode (thread 3 polls a pipe) in most tests; the default `epoll`
//! mode (thread 3 in epoll_wait on an eventfd) has a dump+restore test of its own.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use vmtests::migration::{Link, NsCopy, reap_killed_original, wait_both_succeed};
use vmtests::roundtrip::{assert_left_running, dump, reap_dumped, restore, verify_restored};
use vmtests::{
    Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr,
    numeric_entries, require_root,
};

/// Hang guard for one step: never a timing assertion.
const GUARD: Duration = Duration::from_secs(300);
/// wl_threads arguments: 64 MiB of heap, thread 3 polls a pipe.
const ARGS: &[&str] = &["64", "pipe"];
/// The port `receive` listens on (every test has its own pair of namespaces).
const PORT: u16 = 7421;

// ---------------------------------------------------------------------------------------------
// Threads as /proc shows them

/// One thread of a process as /proc/PID/task/TID shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadInfo {
    /// /proc/PID/task/TID/comm, without the newline.
    comm: String,
    /// `SigBlk:` of its status: its own signal mask.
    sigblk: String,
}

/// The threads of `pid`, keyed by TID as seen from the process's own pid namespace (the last
/// NSpid entry: the TID itself for a process in ours). Also asserts that none is stopped, traced
/// or dead.
fn threads_of(pid: i32) -> BTreeMap<i32, ThreadInfo> {
    let dir = format!("/proc/{pid}/task");
    let mut out = BTreeMap::new();
    for tid in numeric_entries(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let path = Path::new(&dir).join(tid.to_string());
        let status = fs::read_to_string(path.join("status"))
            .unwrap_or_else(|e| panic!("read {}/status: {e}", path.display()));
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {key} in {}/status", path.display()))
        };
        let inner: i32 = field("NSpid")
            .split_whitespace()
            .last()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad NSpid in {}/status", path.display()));
        let state = field("State");
        assert!(
            !state.starts_with(['t', 'T', 'Z', 'X']),
            "thread {tid} (inner {inner}) of {pid} is in state {state}"
        );
        assert_eq!(
            field("TracerPid"),
            "0",
            "thread {tid} (inner {inner}) of {pid} is traced"
        );
        let comm = fs::read_to_string(path.join("comm"))
            .unwrap_or_else(|e| panic!("read {}/comm: {e}", path.display()));
        out.insert(
            inner,
            ThreadInfo {
                comm: comm.trim_end().to_string(),
                sigblk: field("SigBlk"),
            },
        );
    }
    out
}

/// The NSpid of every thread of `pid`, each starting with the thread's TID here.
fn task_nspids(pid: i32) -> Vec<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for tid in numeric_entries(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let status = fs::read_to_string(format!("{dir}/{tid}/status"))
            .unwrap_or_else(|e| panic!("read {dir}/{tid}/status: {e}"));
        let ids: Vec<i32> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap_or_else(|| panic!("no NSpid in {dir}/{tid}/status"))
            .split_whitespace()
            .map(|s| s.parse().expect("NSpid holds numbers"))
            .collect();
        assert_eq!(ids.first(), Some(&tid), "NSpid of {dir}/{tid}: {ids:?}");
        out.push(ids);
    }
    out
}

/// The worker TIDs wl_threads wrote to STATEDIR/tids at start.
fn worker_tids(wl: &Workload) -> Vec<i32> {
    let path = wl.statedir().join("tids");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let tids: Vec<i32> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("tids {text:?}: {e}")))
        .collect();
    assert_eq!(tids.len(), 4, "tids {text:?}");
    tids
}

/// The threads of the original: exactly its main thread and the four workers it reported.
fn original_threads(wl: &Workload) -> BTreeMap<i32, ThreadInfo> {
    let threads = threads_of(wl.pid());
    let mut want: Vec<i32> = worker_tids(wl);
    want.push(wl.pid());
    want.sort_unstable();
    assert_eq!(
        threads.keys().copied().collect::<Vec<_>>(),
        want,
        "threads of the original: {threads:?}"
    );
    threads
}

/// Panics unless `pid` has exactly the threads in `before` (same TIDs, comms and masks).
fn assert_same_threads(before: &BTreeMap<i32, ThreadInfo>, pid: i32, context: &str) {
    let after = threads_of(pid);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{context}: /proc/{pid}/task lists other TIDs (before {before:?}, after {after:?})"
    );
    for (tid, info) in before {
        assert_eq!(
            Some(info),
            after.get(tid),
            "{context}: thread {tid} of {pid} differs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Restored in place

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `dump` (kills the process), `restore -d`.
    Dump,
    /// `dump --leave-running`, SIGKILL the original, `restore -d`.
    LeaveRunning,
    /// `dump`, `restore --lazy -d`.
    Lazy,
    /// `dump --pre-copy auto` (kills the process), `restore -d`.
    PreCopy,
}

fn dump_and_restore(args: &[&str], mode: Mode) {
    require_root();
    let mut wl = Workload::spawn("wl_threads", args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let threads = original_threads(&wl);
    let images = Scratch::new("threads-img");
    let pid = wl.pid_arg();

    let flags: &[&str] = match mode {
        Mode::LeaveRunning => &["--leave-running"],
        Mode::PreCopy => &["--pre-copy", "auto", "--json"],
        Mode::Dump | Mode::Lazy => &[],
    };
    let out = dump(&wl, &images, flags);
    if matches!(mode, Mode::PreCopy) {
        eprintln!(
            "pre-copy stats: {}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
    assert!(
        images.join(&format!("threads-{pid}.img")).is_file(),
        "no threads-{pid}.img in the images"
    );
    if matches!(mode, Mode::LeaveRunning) {
        assert_left_running(&wl, &before, VisibleState::capture);
        assert_same_threads(&threads, wl.pid(), "after dump --leave-running");
        wl.kill_and_reap();
    } else {
        reap_dumped(&mut wl);
    }

    let flags: &[&str] = if matches!(mode, Mode::Lazy) {
        &["--lazy", "--json"]
    } else {
        &[]
    };
    let out = restore(&mut wl, &images, flags);
    if matches!(mode, Mode::Lazy) {
        eprintln!(
            "lazy stats: {}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
    assert_no_stray_children("restore -d");
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    assert_same_threads(&threads, wl.pid(), "after restore");
    verify_restored(wl, "wl_threads after restore");
}

#[test]
fn threads_dump_restore() {
    dump_and_restore(ARGS, Mode::Dump);
}

#[test]
fn threads_leave_running_restore() {
    dump_and_restore(ARGS, Mode::LeaveRunning);
}

#[test]
fn threads_lazy_restore() {
    dump_and_restore(ARGS, Mode::Lazy);
}

#[test]
fn threads_precopy() {
    dump_and_restore(ARGS, Mode::PreCopy);
}

/// Thread 3 in epoll_wait on an eventfd (wl_threads' default mode).
#[test]
fn threads_epoll_dump_restore() {
    dump_and_restore(&["64", "epoll"], Mode::Dump);
}

// ---------------------------------------------------------------------------------------------
// Copies in a new pid namespace

/// Same visible state and threads as the original before the checkpoint, except for the pid
/// fields as seen from here; every thread's inner TID (NSpid) is the original's.
fn assert_same_copy(
    copy: &NsCopy,
    before: &VisibleState,
    threads: &BTreeMap<i32, ThreadInfo>,
    what: &str,
) {
    copy.assert_same_state(before, what);
    assert_same_threads(threads, copy.outer(), what);
    // Every thread is in both namespaces: NSpid is [TID here, TID inside].
    for ids in task_nspids(copy.outer()) {
        assert_eq!(
            ids.len(),
            2,
            "{what}: a thread of the copy {} has NSpid {ids:?}",
            copy.outer()
        );
    }
}

/// `dump --leave-running`, then `restore --pidns new -d` while the original still runs: the
/// copy's threads have the original TIDs inside its namespace; then the original is killed and
/// the copy must PASS.
#[test]
fn threads_pidns_new() {
    require_root();
    let mut wl = Workload::spawn("wl_threads", ARGS);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let threads = original_threads(&wl);
    let images = Scratch::new("threads-pidns-img");
    dump(&wl, &images, &["--leave-running"]);
    wl.assert_running_untraced();
    assert_same_threads(&threads, wl.pid(), "after dump --leave-running");

    let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
    assert_success(&out, "restore --pidns new -d");
    let copy = NsCopy::find(&wl);
    // Both run at the same time: the original was never disturbed.
    assert_same_threads(&threads, wl.pid(), "the original beside its copy");
    assert_same_copy(
        &copy,
        &before,
        &threads,
        "copy restored into a new pid namespace",
    );

    // Both write the same STATEDIR: from here on only the copy does.
    wl.kill_and_reap();
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the copy");
    assert_no_stray_children("threads restore --pidns new");
}

// ---------------------------------------------------------------------------------------------
// Migration

/// `migrate --lazy` across a veth to `receive --pidns new`: the copy has the original's threads
/// (inner TIDs), the same visible state, and PASSes.
#[test]
fn threads_migrate_lazy() {
    require_root();
    let link = Link::new("thr", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_threads", ARGS);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let threads = original_threads(&wl);

    let mut recv = link.receive(&token, true, GUARD);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    // Both sides must succeed; either's failure is shown with the other's output.
    wait_both_succeed(&mut mig, &mut recv);
    eprintln!(
        "migrate stats: {}\nreceive stats: {}",
        mig.stdout().trim_end(),
        recv.stdout().trim_end()
    );
    reap_killed_original(&mut wl);

    let copy = NsCopy::find(&wl);
    assert_same_copy(&copy, &before, &threads, "the migrated copy");
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the copy");
    assert_no_stray_children("threads migrate --lazy");
}
