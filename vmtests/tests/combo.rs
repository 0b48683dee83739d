//! The combined case: `wl_combo 512`, a 4-thread process with 512 MiB of memory and a child
//! connected to it by a pipe and a unix socketpair, with numbers in flight in both (see
//! `workloads/wl_combo.c`). Crossed with `dump` + `restore -d`, `dump --leave-running` +
//! `restore -d`, and `restore --pidns new -d` (after the original is gone). Checked: the
//! /proc-visible state of both processes (maps, fds with fdinfo, status fields) before and after,
//! the parent's 4 threads and the child's parent link, and the workload's own verification
//! (memory of both, every number through the pipe and back through the socket, the child's exit).

use std::fs;
use std::os::unix::process::ExitStatusExt;

use vmtests::restored::{Restored, find_in_new_pidns};
use vmtests::roundtrip::terminate_copy_and_verify;
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr,
    reap_orphan, require_root,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Dump,
    LeaveRunning,
    PidnsNew,
}

fn threads_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

fn combo(mode: Mode) {
    require_root();
    let mut wl = Workload::spawn("wl_combo", &["512"]);
    wl.wait_counter_advances();
    let child: i32 = fs::read_to_string(wl.statedir().join("child"))
        .expect("STATEDIR/child")
        .trim()
        .parse()
        .expect("a pid in STATEDIR/child");
    assert_eq!(threads_of(wl.pid()), 4, "the parent runs 4 threads");
    let before = VisibleState::capture(wl.pid());
    let before_child = VisibleState::capture(child);
    let images = Scratch::new("combo-img");
    let pid = wl.pid_arg();
    let mut args = vec!["dump", "-t", &pid, "-D", images.as_str()];
    if mode != Mode::Dump {
        args.push("--leave-running");
    }
    assert_success(&fastcr(&args), &args.join(" "));
    if mode == Mode::Dump {
        let status = wl.reap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "parent after the dump"
        );
    } else {
        wl.assert_running_untraced();
        before.assert_same(&VisibleState::capture(wl.pid()), "parent after the dump");
        before_child.assert_same(&VisibleState::capture(child), "child after the dump");
        let orphan = Restored::new(child);
        wl.kill_and_reap();
        orphan.signal(libc::SIGKILL);
    }
    // Killed with the tree (or by the test), the child was reparented to this subreaper. Killed
    // by the test after its parent, it may have died of SIGPIPE first (its peer was gone).
    let st = std::process::ExitStatus::from_raw(reap_orphan(child));
    let ok = match mode {
        Mode::Dump => st.signal() == Some(libc::SIGKILL),
        _ => matches!(st.signal(), Some(libc::SIGKILL | libc::SIGPIPE)),
    };
    assert!(ok, "the original child: {st}");

    if mode == Mode::PidnsNew {
        let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
        assert_success(&out, "restore --pidns new -d");
        let outer = find_in_new_pidns(wl.pid()).expect("the copy in a new pid namespace");
        let outer_child = find_in_new_pidns(child).expect("the child's copy");
        assert_eq!(
            ProcStat::read(outer_child).map(|s| s.ppid),
            Some(outer),
            "the child's copy is the parent's copy's child"
        );
        assert_eq!(threads_of(outer), 4, "the copy runs 4 threads");
        // The copy publishes the same counter; it must advance. The copy's root is this
        // subreaper's child (restore -d detached it here).
        terminate_copy_and_verify(&wl, Restored::new(outer), "combo --pidns new");
        return;
    }
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "-d"]),
        "restore -d",
    );
    wl.adopt_restored();
    assert_eq!(
        ProcStat::read(child).map(|s| s.ppid),
        Some(wl.pid()),
        "the restored child's parent"
    );
    assert_eq!(
        threads_of(wl.pid()),
        4,
        "the restored parent runs 4 threads"
    );
    before.assert_same(&VisibleState::capture(wl.pid()), "parent after restore");
    before_child.assert_same(&VisibleState::capture(child), "child after restore");
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("combo");
}

#[test]
fn combo_dump_restore() {
    combo(Mode::Dump);
}

#[test]
fn combo_leave_running_restore() {
    combo(Mode::LeaveRunning);
}

#[test]
fn combo_pidns_new() {
    combo(Mode::PidnsNew);
}
