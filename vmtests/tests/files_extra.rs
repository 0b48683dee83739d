//! Regular files deleted while open or mapped: `wl_deleted` (see `workloads/wl_deleted.c`)
//! dumped and brought back by `restore -d` (after a dump or a `dump --leave-running`) or
//! `restore --pidns new -d`; and the refusal of one larger than fastcr saves.
//!
//! Checked after the restore: the same visible state (fd names still `<path> (deleted)`,
//! offsets, flags, mappings; only the recreated files' inode numbers differ), the counter
//! advances, and on SIGTERM the workload verifies contents, sizes, mode, offsets, flags, a
//! copy-on-write page of a private mapping, and that each fd is one file with what else
//! refers to it.
//!
//! File locks (`wl_locks`: flock exclusive and shared, POSIX record locks, an OFD lock) after
//! dump + restore, --leave-running + restore, and --pidns new, where a restore beside the
//! original (which still holds them) must fail clearly first.

use std::fs;

use vmtests::images::{Damage, copy_images};
use vmtests::objects::capture_without_object_inodes;
use vmtests::roundtrip::{
    as_seen_inside, assert_dump_refused, assert_left_running, dump, reap_dumped, restore,
    restore_in_new_pidns, terminate_in_pidns_and_verify, verify_restored,
};
use vmtests::{
    Scratch, VisibleState, Workload, assert_error_names, assert_no_stray_children,
    assert_one_line_error, become_subreaper, fastcr, require_root,
};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Dump,
    LeaveRunning,
    PidnsNew,
}

fn run(mode: Mode) {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_deleted", &[]);
    wl.wait_counter_advances();
    let before = capture_without_object_inodes(wl.pid());
    let images = Scratch::new("deleted-img");
    if matches!(mode, Mode::Dump) {
        dump(&wl, &images, &[]);
        reap_dumped(&mut wl);
    } else {
        dump(&wl, &images, &["--leave-running"]);
        assert_left_running(&wl, &before, capture_without_object_inodes);
        wl.kill_and_reap();
    }
    // D1 (fd and private mapping), D2 (mapping only), D3 (fd).
    assert!(images.join("object-2.img").exists() && !images.join("object-3.img").exists());

    if matches!(mode, Mode::PidnsNew) {
        let outer = restore_in_new_pidns(&wl, &images);
        let after = as_seen_inside(capture_without_object_inodes(outer), &before);
        before.assert_same(&after, "after restore --pidns new");
        terminate_in_pidns_and_verify(&wl, outer, "deleted restore --pidns new");
        return;
    }
    restore(&mut wl, &images, &[]);
    before.assert_same(&capture_without_object_inodes(wl.pid()), "after restore");
    verify_restored(wl, "deleted restore");
}

#[test]
fn deleted_dump_restore() {
    run(Mode::Dump);
}

#[test]
fn deleted_leave_running_restore() {
    run(Mode::LeaveRunning);
}

#[test]
fn deleted_pidns_new() {
    run(Mode::PidnsNew);
}

/// A deleted file above the 64 MiB limit fails the dump with one line naming the process, the
/// fd, the file and why; the process runs on undisturbed and still passes its own checks.
#[test]
fn deleted_too_big_is_refused() {
    require_root();
    let wl = Workload::spawn("wl_deleted", &["big"]);
    wl.wait_counter_advances();
    let process = format!("process {}", wl.pid());
    assert_dump_refused(
        wl,
        "dump of a 65 MiB deleted file",
        &[&process, "fd 42", "del-big (deleted)", "limit"],
    );
}

// ---------------------------------------------------------------------------------------------
// File locks: `wl_locks` holds an exclusive and a shared flock, two POSIX record locks and an
// OFD lock; on SIGTERM a helper child it forks then probes each without waiting.

/// `dump` (or `dump --leave-running` and the original killed), `restore -d`: the locks are held
/// again, the same visible state, PASS.
fn locks_restore(leave_running: bool) {
    require_root();
    let mut wl = Workload::spawn("wl_locks", &[]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let images = Scratch::new("locks-img");
    if leave_running {
        dump(&wl, &images, &["--leave-running"]);
        wl.assert_running_untraced();
        wl.kill_and_reap();
    } else {
        dump(&wl, &images, &[]);
        reap_dumped(&mut wl);
    }
    assert!(
        images.join(&format!("locks-{}.img", wl.pid())).exists(),
        "no locks image"
    );
    restore(&mut wl, &images, &[]);
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    verify_restored(wl, "locks restore");
}

/// A flock and an OFD lock shared with a child through inherited open file descriptions show
/// in both processes' fdinfo: each is saved once (the child has no locks image) and taken back
/// in the parent, without conflicting with itself.
#[test]
fn locks_tree_dump_restore() {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_locks", &["tree"]);
    wl.wait_counter_advances();
    let child = vmtests::objects::pid_file(wl.statedir(), "child-pid");
    let images = Scratch::new("locks-tree-img");
    dump(&wl, &images, &[]);
    wl.reap();
    vmtests::reap_orphan(child);
    assert!(images.join(&format!("locks-{}.img", wl.pid())).exists());
    assert!(
        !images.join(&format!("locks-{child}.img")).exists(),
        "the child's copies of the shared locks were saved again"
    );
    restore(&mut wl, &images, &[]);
    verify_restored(wl, "locks tree restore");
}

#[test]
fn locks_dump_restore() {
    locks_restore(false);
}

#[test]
fn locks_leave_running_restore() {
    locks_restore(true);
}

/// `dump --leave-running`, then `restore --pidns new -d` beside the original, which still holds
/// its locks: the restore fails with one line naming the process, the fd and the lock, and
/// leaves nothing behind. Once the original is killed, the same image restores into a new pid
/// namespace and PASSes.
#[test]
fn locks_conflict_then_pidns_new() {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_locks", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("locks-pidns-img");
    dump(&wl, &images, &["--leave-running"]);
    let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
    let process = format!("process {}", wl.pid());
    assert_error_names(
        &out,
        "restore beside the lock holder",
        &[&process, "fd 50", "exclusive flock", "conflicting lock"],
    );
    assert_no_stray_children("failed restore");
    wl.assert_running_untraced();

    wl.kill_and_reap();
    let outer = restore_in_new_pidns(&wl, &images);
    terminate_in_pidns_and_verify(&wl, outer, "locks restore --pidns new");
}

/// A damaged `locks-<pid>.img` (truncated, a byte flipped) fails the restore with one line, before any process exists; the untouched image then
/// restores and PASSes.
#[test]
fn locks_damaged_image_is_refused() {
    require_root();
    let mut wl = Workload::spawn("wl_locks", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("locks-bad-img");
    dump(&wl, &images, &[]);
    wl.reap();
    let name = format!("locks-{}.img", wl.pid());
    for damage in Damage::ALL {
        let copy = copy_images(&images);
        damage.apply(&copy.join(&name));
        let context = format!("restore with {name} {damage}");
        let out = fastcr(&["restore", "-D", copy.as_str(), "-d"]);
        assert_one_line_error(&out, &context);
        assert!(
            !vmtests::pid_exists(wl.pid()),
            "{context}: a process exists"
        );
        assert_no_stray_children(&context);
    }
    restore(&mut wl, &images, &[]);
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

// ---------------------------------------------------------------------------------------------
// The workloads' own oracles

/// Undisturbed, wl_deleted and wl_locks pass and two captures of their state are equal.
#[test]
fn wl_deleted_and_wl_locks_pass_undisturbed() {
    require_root();
    for name in ["wl_deleted", "wl_locks"] {
        Workload::spawn(name, &[]).verify_undisturbed();
    }
}

/// wl_deleted's oracle is not vacuous: the deleted file changed through its fd must make it
/// fail.
#[test]
fn wl_deleted_detects_a_changed_file() {
    use std::os::unix::fs::FileExt;
    require_root();
    let wl = Workload::spawn("wl_deleted", &[]);
    wl.wait_counter_advances();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/40", wl.pid()))
        .expect("open the deleted file");
    file.write_all_at(b"x", 70_000)
        .expect("write the deleted file");
    wl.terminate_and_expect_fail("D1: contents");
}

/// wl_locks' oracle is not vacuous: restored from an image whose locks file was removed (the
/// locks are then simply not taken), it must fail.
#[test]
fn wl_locks_detects_lost_locks() {
    require_root();
    let mut wl = Workload::spawn("wl_locks", &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("locks-lost-img");
    dump(&wl, &images, &[]);
    wl.reap();
    fs::remove_file(images.join(&format!("locks-{}.img", wl.pid()))).expect("remove locks");
    restore(&mut wl, &images, &[]);
    wl.wait_counter_advances();
    wl.terminate_and_expect_fail("the locks are not as taken");
}
