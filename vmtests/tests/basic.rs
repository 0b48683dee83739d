//! Each workload × two modes, driven through the `fastcr` CLI:
//! - `dump`: dump (which kills the process) → reap it → `restore -d`;
//! - `leave_running`: `dump --leave-running` → the original keeps running → SIGKILL and reap it →
//!   `restore -d`.
//!
//! After the restore: same PID, the restored process is our child (we are a subreaper),
//! /proc-visible state equals the one before the dump, the counter advances, and the workload's
//! own verification passes.

use std::os::unix::process::ExitStatusExt;

use vmtests::{
    Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr, require_root,
};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Dump,
    LeaveRunning,
}

fn dump_and_restore(name: &str, args: &[&str], mode: Mode) {
    require_root();
    let mut wl = Workload::spawn(name, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let images = Scratch::new(&format!("{name}-img"));
    let pid = wl.pid_arg();

    match mode {
        Mode::Dump => {
            let out = fastcr(&["dump", "-t", &pid, "-D", images.as_str()]);
            assert_success(&out, "dump");
            let status = wl.reap();
            assert!(
                status.signal().is_some(),
                "{name}: dump should have killed the process, but it {status}"
            );
        }
        Mode::LeaveRunning => {
            let out = fastcr(&["dump", "-t", &pid, "-D", images.as_str(), "--leave-running"]);
            assert_success(&out, "dump --leave-running");
            wl.assert_running_untraced();
            before.assert_same(
                &VisibleState::capture(wl.pid()),
                "after dump --leave-running",
            );
            wl.kill_and_reap();
        }
    }

    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    assert_success(&out, "restore -d");
    wl.adopt_restored();
    assert_no_stray_children("restore -d");
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

#[test]
fn heap_dump_restore() {
    dump_and_restore("wl_heap", &["256"], Mode::Dump);
}

#[test]
fn heap_leave_running_restore() {
    dump_and_restore("wl_heap", &["256"], Mode::LeaveRunning);
}

/// The acceptance case: 1 GiB of pattern-filled memory must verify after a restore.
#[test]
fn heap_1gib_dump_restore() {
    dump_and_restore("wl_heap", &["1024"], Mode::Dump);
}

#[test]
fn filemap_dump_restore() {
    dump_and_restore("wl_filemap", &[], Mode::Dump);
}

#[test]
fn filemap_leave_running_restore() {
    dump_and_restore("wl_filemap", &[], Mode::LeaveRunning);
}

#[test]
fn sleep_dump_restore() {
    dump_and_restore("wl_sleep", &[], Mode::Dump);
}

#[test]
fn sleep_leave_running_restore() {
    dump_and_restore("wl_sleep", &[], Mode::LeaveRunning);
}

#[test]
fn signals_dump_restore() {
    dump_and_restore("wl_signals", &[], Mode::Dump);
}

#[test]
fn signals_leave_running_restore() {
    dump_and_restore("wl_signals", &[], Mode::LeaveRunning);
}

#[test]
fn files_dump_restore() {
    dump_and_restore("wl_files", &[], Mode::Dump);
}

#[test]
fn files_leave_running_restore() {
    dump_and_restore("wl_files", &[], Mode::LeaveRunning);
}
