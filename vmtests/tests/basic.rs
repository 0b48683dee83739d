//! Each workload × two modes, driven through the `fastcr` CLI:
//! - `dump`: dump (which kills the process) → reap it → `restore -d`;
//! - `leave_running`: `dump --leave-running` → the original keeps running → SIGKILL and reap it →
//!   `restore -d`.
//!
//! After the restore: same PID, the restored process is our child (we are a subreaper),
//! /proc-visible state equals the one before the dump, the counter advances, and the workload's
//! own verification passes. Plus `restore` without `-d`, which must mirror the exit status.

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmtests::roundtrip::{assert_left_running, dump, reap_dumped, restore};
use vmtests::{
    KillOnDrop, ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, fastcr_bin,
    require_root, spawn_registered,
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

    match mode {
        Mode::Dump => {
            dump(&wl, &images, &[]);
            reap_dumped(&mut wl);
        }
        Mode::LeaveRunning => {
            dump(&wl, &images, &["--leave-running"]);
            assert_left_running(&wl, &before, VisibleState::capture);
            wl.kill_and_reap();
        }
    }

    restore(&mut wl, &images, &[]);
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

#[test]
fn pipe_dump_restore() {
    dump_and_restore("wl_pipe", &[], Mode::Dump);
}

#[test]
fn pipe_leave_running_restore() {
    dump_and_restore("wl_pipe", &[], Mode::LeaveRunning);
}

/// Kills a restored workload on drop (if it is still the child of `parent` or of the test), so a
/// failing test does not leave it running.
struct RestoredUnder {
    pid: i32,
    parent: i32,
}

impl Drop for RestoredUnder {
    fn drop(&mut self) {
        let me = i32::try_from(std::process::id()).expect("pid");
        if ProcStat::read(self.pid).is_some_and(|s| s.ppid == self.parent || s.ppid == me) {
            // SAFETY: the PID is the unreaped child of our fastcr child or of us.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// `restore` without `-d` waits for the restored process and exits with its exit code: 0 when
/// the workload passes, 1 when its verification fails.
fn restore_attached(spoil: bool) {
    require_root();
    let mut wl = Workload::spawn("wl_filemap", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("attached-img");
    dump(&wl, &images, &[]);
    wl.reap();

    let mut restore = KillOnDrop(spawn_registered(
        Command::new(fastcr_bin())
            .args(["restore", "-D", images.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    ));
    let guard = RestoredUnder {
        pid: wl.pid(),
        parent: restore.pid(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ProcStat::read(wl.pid()).is_none_or(|s| s.ppid != restore.pid()) {
        assert!(
            restore.0.try_wait().expect("try_wait").is_none(),
            "fastcr restore exited before the process ran"
        );
        assert!(
            Instant::now() < deadline,
            "the restored process never appeared"
        );
        sleep(Duration::from_millis(10));
    }
    wl.wait_counter_advances();
    if spoil {
        // A MAP_PRIVATE page the workload never wrote now differs from what it read: it must fail.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(wl.statedir().join("private.dat"))
            .expect("open private.dat");
        file.write_all_at(b"changed", 3 * 4096 + 100)
            .expect("write private.dat");
    }
    // SAFETY: the PID is the child of our fastcr child (checked above), so it names the workload.
    unsafe { libc::kill(wl.pid(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = restore.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "fastcr restore did not exit");
        sleep(Duration::from_millis(10));
    };
    drop(guard);
    let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
    if spoil {
        assert!(result.starts_with("FAIL: "), "result {result:?}");
        assert_eq!(status.code(), Some(1), "fastcr restore must mirror exit 1");
    } else {
        assert_eq!(result, "PASS\n", "log: {}", wl.log());
        assert_eq!(status.code(), Some(0), "fastcr restore must mirror exit 0");
    }
    assert_no_stray_children("restore without -d");
}

#[test]
fn restore_attached_mirrors_exit_0() {
    restore_attached(false);
}

#[test]
fn restore_attached_mirrors_exit_1() {
    restore_attached(true);
}
