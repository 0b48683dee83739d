//! Named pipes (FIFOs) and open file descriptions shared by several fds: `wl_fifo` (see
//! `workloads/wl_fifo.c`), alone or with a child that inherited its fds (`tree`), dumped and
//! brought back by `restore -d` (after a dump or a `dump --leave-running` and a kill),
//! `restore --lazy -d` or `restore --pidns new -d`.
//!
//! Checked after the restore: the same visible state (fd targets, offsets, flags) of every
//! process, the counter advances, and on SIGTERM the workload verifies the FIFOs' data in flight
//! byte for byte, their capacity and flags, that both ends still work, that dup'ed fds share
//! their offset and status flags but keep their own close-on-exec flag, and (tree) that the
//! root and its child share the offsets of the files opened before the fork.
//!
//! And the refusal: a FIFO whose path was removed between the dump and the restore fails the
//! restore with one line naming the path and the fd, and leaves no process behind.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use vmtests::objects::{kill_orphan, pid_file};
use vmtests::restored::{reap_within, wait_until};
use vmtests::roundtrip::{
    as_seen_inside, assert_left_running, dump, reap_dumped, restore, restore_in_new_pidns,
    terminate_in_pidns_and_verify, verify_restored,
};
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_error_names, assert_no_stray_children,
    assert_success, become_subreaper, fastcr, require_root,
};

/// Hang guard for a process appearing or ending: never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Dump,
    LeaveRunning,
    PidnsNew,
    /// `dump`, then `restore --lazy -d`: the files are rebuilt before the process resumes,
    /// its memory after.
    Lazy,
}

fn me() -> i32 {
    std::process::id() as i32
}

/// Waits until `pid` (a process of the original tree whose parent died) is the test's child.
fn wait_adopted(pid: i32, what: &str) {
    wait_until(
        &format!("{what} (pid {pid}) is the test's child"),
        GUARD,
        || ProcStat::read(pid).is_some_and(|s| s.ppid == me()),
    );
}

fn run(mode: Mode, tree: bool) {
    require_root();
    become_subreaper();
    let args: &[&str] = if tree { &["tree"] } else { &[] };
    let mut wl = Workload::spawn("wl_fifo", args);
    wl.wait_counter_advances();
    let child = tree.then(|| pid_file(wl.statedir(), "child"));
    let before = VisibleState::capture(wl.pid());
    let before_child = child.map(VisibleState::capture);
    let images = Scratch::new("fifo-img");
    if matches!(mode, Mode::Dump | Mode::Lazy) {
        dump(&wl, &images, &[]);
        let status = reap_dumped(&mut wl);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "dump should have killed it: {status}"
        );
        if let Some(c) = child {
            wait_adopted(c, "the original child");
            let status = reap_within(c, GUARD, "the original child");
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "original child {status}"
            );
        }
    } else {
        dump(&wl, &images, &["--leave-running"]);
        assert_left_running(&wl, &before, VisibleState::capture);
        wl.wait_counter_advances();
        wl.kill_and_reap();
        if let Some(c) = child {
            wait_adopted(c, "the original child");
            kill_orphan(c);
        }
    }
    // The FIFOs' data was saved once, whatever number of processes hold them.
    let show = fastcr(&["show", images.as_str()]);
    assert_success(&show, "show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert_eq!(
        text.matches("20000 bytes in flight").count(),
        1,
        "fifo1's data must be saved once: {text}"
    );
    assert_eq!(
        text.matches("5 bytes in flight").count(),
        1,
        "fifo2's data must be saved once: {text}"
    );

    if mode == Mode::PidnsNew {
        let outer = restore_in_new_pidns(&wl, &images);
        let after = as_seen_inside(VisibleState::capture(outer), &before);
        before.assert_same(&after, "after restore --pidns new");
        terminate_in_pidns_and_verify(&wl, outer, "fifo restore --pidns new");
        return;
    }
    let flags: &[&str] = if mode == Mode::Lazy { &["--lazy"] } else { &[] };
    restore(&mut wl, &images, flags);
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    if let (Some(c), Some(b)) = (child, before_child.as_ref()) {
        b.assert_same(&VisibleState::capture(c), "the child after restore");
    }
    verify_restored(wl, "fifo restore");
}

#[test]
fn fifo_dump_restore() {
    run(Mode::Dump, false);
}

#[test]
fn fifo_leave_running_restore() {
    run(Mode::LeaveRunning, false);
}

#[test]
fn fifo_pidns_new() {
    run(Mode::PidnsNew, false);
}

#[test]
fn fifo_tree_dump_restore() {
    run(Mode::Dump, true);
}

#[test]
fn fifo_tree_leave_running_restore() {
    run(Mode::LeaveRunning, true);
}

#[test]
fn fifo_tree_pidns_new() {
    run(Mode::PidnsNew, true);
}

#[test]
fn fifo_lazy_restore() {
    run(Mode::Lazy, false);
}

#[test]
fn fifo_tree_lazy_restore() {
    run(Mode::Lazy, true);
}

/// fifo1 removed between the dump and the restore: the restore fails with one line naming the
/// path and an fd on it, and leaves no process behind; with the FIFO made again (empty), the
/// same image restores and the workload finds its data back (fastcr refills it).
#[test]
fn fifo_removed_is_refused() {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_fifo", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("fifo-gone-img");
    dump(&wl, &images, &[]);
    let status = reap_dumped(&mut wl);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "dump: {status}");
    let fifo = wl.statedir().join("fifo1");
    fs::remove_file(&fifo).expect("remove fifo1");
    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    let path = fifo.to_string_lossy();
    assert_error_names(&out, "restore without fifo1", &[&path, "fd 30"]);
    assert!(
        ProcStat::read(wl.pid()).is_none(),
        "a process with pid {} exists after the failed restore",
        wl.pid()
    );
    assert_no_stray_children("failed fifo restore");

    // Made again: the restore succeeds and the data in flight is back.
    let c = std::ffi::CString::new(path.as_bytes()).expect("no NUL in the path");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    restore(&mut wl, &images, &[]);
    verify_restored(wl, "fifo restore after mkfifo");
}
