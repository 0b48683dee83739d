//! Processes stopped by job control (`SIGSTOP`): a checkpoint keeps them stopped, and a restore
//! brings them back stopped.
//!
//! `wl_threads` (main + 4 workers, 64 MiB, see `workloads/wl_threads.c`) is stopped by the test
//! with SIGSTOP (by pid) and checkpointed while stopped:
//! - `dump` → reap → `restore -d`;
//! - `dump --leave-running`: the original is still stopped and untraced afterwards (and PASSes
//!   once continued), then SIGKILL → `restore -d`;
//! - `dump` → reap → `restore --lazy -d`;
//! - `dump --pre-copy auto` → reap → `restore -d`.
//!
//! After the restore every thread is in state `T` and untraced, the visible state is the
//! original's, and `show` says the process was stopped. Then SIGCONT: the counter advances and
//! the workload verifies itself (memory, each thread's TID, TLS, masks, ...) on SIGTERM.
//! A stopped child in a tree is covered by `tree.rs` (wl_tree's C2).
//!
//! Timing is never asserted: every wait has a generous hang guard.

use std::fs;
use std::time::Duration;

use vmtests::restored::wait_until;
use vmtests::roundtrip::{dump, reap_dumped, restore};
use vmtests::{
    Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr,
    numeric_entries, require_root,
};

/// Hang guard for one step: never a timing assertion.
const GUARD: Duration = Duration::from_secs(120);

/// The state letter (`/proc/PID/task/TID/stat` field 3) and tracer of every thread of `pid`.
fn thread_states(pid: i32) -> Vec<(i32, char, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for tid in numeric_entries(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let path = format!("{dir}/{tid}");
        let stat = fs::read_to_string(format!("{path}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|r| r.chars().next())
            .unwrap_or('?');
        let status = fs::read_to_string(format!("{path}/status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((tid, state, tracer));
    }
    out.sort_unstable();
    out
}

/// Waits until every thread of `pid` is stopped by job control (`T`) and untraced.
fn wait_stopped(pid: i32, what: &str) {
    wait_until(
        &format!("every thread of {pid} is stopped and untraced {what}"),
        GUARD,
        || {
            let t = thread_states(pid);
            !t.is_empty() && t.iter().all(|(_, s, tracer)| *s == 'T' && tracer == "0")
        },
    );
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Dump,
    LeaveRunning,
    Lazy,
    PreCopy,
}

fn stopped_dump_restore(mode: Mode) {
    require_root();
    let mut wl = Workload::spawn("wl_threads", &["64", "pipe"]);
    wl.wait_counter_advances();
    wl.send(libc::SIGSTOP);
    wait_stopped(wl.pid(), "after SIGSTOP");
    let before = VisibleState::capture(wl.pid());
    let nthreads = thread_states(wl.pid()).len();
    assert_eq!(nthreads, 5, "wl_threads has main + 4 workers");
    let images = Scratch::new("stopped-img");
    let pid = wl.pid_arg();

    let flags: &[&str] = match mode {
        Mode::LeaveRunning => &["--leave-running"],
        Mode::PreCopy => &["--pre-copy", "auto"],
        Mode::Dump | Mode::Lazy => &[],
    };
    dump(&wl, &images, flags);
    assert!(
        images.join(&format!("stopped-{pid}.img")).is_file(),
        "no stopped-{pid}.img in the images of a stopped process"
    );
    let show = fastcr(&["show", images.as_str()]);
    assert_success(&show, "show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("stopped by job control (signal 19)"),
        "show does not say the process was stopped:\n{text}"
    );
    if matches!(mode, Mode::LeaveRunning) {
        // Left as it was: still stopped, every thread, and nobody traces it.
        let after = thread_states(wl.pid());
        assert!(
            after.iter().all(|(_, s, t)| *s == 'T' && t == "0"),
            "after dump --leave-running the original is not stopped as before: {after:?}"
        );
        before.assert_same(
            &VisibleState::capture(wl.pid()),
            "after dump --leave-running",
        );
        wl.kill_and_reap();
    } else {
        reap_dumped(&mut wl);
    }

    let flags: &[&str] = if matches!(mode, Mode::Lazy) {
        &["--lazy"]
    } else {
        &[]
    };
    restore(&mut wl, &images, flags);
    assert_no_stray_children("restore -d");
    wait_stopped(wl.pid(), "after the restore");
    assert_eq!(
        thread_states(wl.pid()).len(),
        nthreads,
        "the restored process has other threads"
    );
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    wl.send(libc::SIGCONT);
    wl.assert_running_untraced();
    wl.terminate_and_verify();
    assert_no_stray_children("wl_threads after restore");
}

#[test]
fn stopped_dump_restore_plain() {
    stopped_dump_restore(Mode::Dump);
}

#[test]
fn stopped_leave_running_restore() {
    stopped_dump_restore(Mode::LeaveRunning);
}

#[test]
fn stopped_lazy_restore() {
    stopped_dump_restore(Mode::Lazy);
}

#[test]
fn stopped_precopy_restore() {
    stopped_dump_restore(Mode::PreCopy);
}
