//! Memory shared as kernel objects: `wl_shmem` (a parent and its child sharing `MAP_SHARED`
//! anonymous memory and a sealed memfd, mapped twice, plus an unmapped memfd; see
//! `workloads/wl_shmem.c`), dumped with `fastcr dump -t ROOT` and brought back by
//! `restore -d` (after a dump or a `dump --leave-running`, also with `--pre-copy auto`),
//! `restore --pidns new -d` or
//! `migrate --lazy` to `receive --pidns new`.
//!
//! Checked: each object's contents are saved once (one `object-N.img` per object, whichever
//! processes map or hold it); after the restore both processes run untraced with the same
//! visible state (only the recreated objects' inode numbers differ), and on SIGTERM the
//! workload verifies itself: contents, sizes, seals, names, offsets and flags, and a handshake
//! in which each process must see the other's writes through the shared memory and through the
//! memfd (one through its fd, the other through its mapping).

use std::fs;
use std::time::Duration;

use vmtests::images::{Damage, copy_images};
use vmtests::migration::{Link, NsCopy, reap_killed_original, wait_both_succeed};
use vmtests::objects::{capture_without_object_inodes, kill_orphan, pid_file};
use vmtests::restored::find_in_new_pidns;
use vmtests::roundtrip::{
    assert_dump_refused, assert_left_running, dump, reap_dumped, restore, restore_in_new_pidns,
    terminate_in_pidns_and_verify, verify_restored,
};
use vmtests::{
    Scratch, Workload, assert_no_stray_children, assert_one_line_error, assert_success,
    become_subreaper, fastcr, require_root,
};

/// Hang guard for a migration.
const MIGRATE_GUARD: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug)]
enum Mode {
    Dump,
    LeaveRunning,
    PidnsNew,
    PreCopy,
}

/// Each object of wl_shmem is in the image exactly once: the shared anonymous memory, the
/// memfd held and mapped by both processes, the unmapped one and the one sealed against writes.
fn assert_objects_once(images: &Scratch) {
    let mut names: Vec<String> = fs::read_dir(images.path())
        .expect("read the image dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("object"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "object-0.img",
            "object-1.img",
            "object-2.img",
            "object-3.img",
            "objects.img"
        ],
        "one contents file per object"
    );
    let show = fastcr(&["show", images.as_str()]);
    assert_success(&show, "show");
    let show = fastcr(&["show", images.as_str(), "--json"]);
    assert_success(&show, "show --json");
    let json: serde_json::Value =
        serde_json::from_slice(&show.stdout).expect("show --json prints JSON");
    let kinds: Vec<String> = json["objects"]["objects"]
        .as_array()
        .expect("show --json lists the objects")
        .iter()
        .map(|o| o["kind"].to_string())
        .collect();
    assert_eq!(kinds.len(), 4, "objects: {kinds:?}");
    for want in ["SharedAnon", "wl-shmem", "wl-plain", "wl-sealed"] {
        assert!(
            kinds.iter().any(|k| k.contains(want)),
            "no {want} among the objects: {kinds:?}"
        );
    }
}

fn run(mode: Mode) {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_shmem", &[]);
    wl.wait_counter_advances();
    let child = pid_file(wl.statedir(), "child-pid");
    let before = capture_without_object_inodes(wl.pid());
    let before_child = capture_without_object_inodes(child);
    let images = Scratch::new("shmem-img");
    if matches!(mode, Mode::Dump) {
        dump(&wl, &images, &[]);
        reap_dumped(&mut wl);
        vmtests::reap_orphan(child);
    } else {
        let flags: &[&str] = if matches!(mode, Mode::PreCopy) {
            &["--leave-running", "--pre-copy", "auto"]
        } else {
            &["--leave-running"]
        };
        dump(&wl, &images, flags);
        assert_left_running(&wl, &before, capture_without_object_inodes);
        wl.kill_and_reap();
        kill_orphan(child);
    }
    assert_objects_once(&images);

    if matches!(mode, Mode::PidnsNew) {
        let outer = restore_in_new_pidns(&wl, &images);
        assert!(
            find_in_new_pidns(child).is_some(),
            "the restored child is not in the new pid namespace"
        );
        terminate_in_pidns_and_verify(&wl, outer, "shmem restore --pidns new");
        return;
    }
    restore(&mut wl, &images, &[]);
    before.assert_same(
        &capture_without_object_inodes(wl.pid()),
        "root after restore",
    );
    before_child.assert_same(&capture_without_object_inodes(child), "child after restore");
    verify_restored(wl, "shmem restore");
}

#[test]
fn shmem_dump_restore() {
    run(Mode::Dump);
}

#[test]
fn shmem_leave_running_restore() {
    run(Mode::LeaveRunning);
}

/// `dump --pre-copy auto --leave-running`: the objects are read in the freeze, after the rounds.
#[test]
fn shmem_precopy_restore() {
    run(Mode::PreCopy);
}

#[test]
fn shmem_pidns_new() {
    run(Mode::PidnsNew);
}

/// A SysV shared memory segment fails the dump with one line naming the process, the mapping
/// and why; the tree runs on undisturbed and still passes its own checks.
#[test]
fn shmem_sysv_is_refused() {
    require_root();
    become_subreaper();
    let wl = Workload::spawn("wl_shmem", &["sysv"]);
    wl.wait_counter_advances();
    let process = format!("process {}", wl.pid());
    assert_dump_refused(
        wl,
        "dump of SysV shared memory",
        &[&process, "mapping", "/SYSV", "SysV shared memory"],
    );
}

/// Damaged `objects.img` or object contents (truncated, a byte flipped) fail the restore with
/// one line, before any process exists; the untouched image then restores and PASSes.
#[test]
fn shmem_damaged_objects_are_refused() {
    require_root();
    become_subreaper();
    let mut wl = Workload::spawn("wl_shmem", &[]);
    wl.wait_counter_advances();
    let child = pid_file(wl.statedir(), "child-pid");
    let images = Scratch::new("shmem-bad-img");
    dump(&wl, &images, &[]);
    wl.reap();
    vmtests::reap_orphan(child);
    let names = [
        "objects.img",
        "object-0.img",
        "object-1.img",
        "object-2.img",
    ];
    for name in names {
        for damage in Damage::ALL {
            let copy = copy_images(&images);
            damage.apply(&copy.join(name));
            let context = format!("restore with {name} {damage}");
            let out = fastcr(&["restore", "-D", copy.as_str(), "-d"]);
            assert_one_line_error(&out, &context);
            assert!(
                !vmtests::pid_exists(wl.pid()) && !vmtests::pid_exists(child),
                "{context}: a restored process exists"
            );
            assert_no_stray_children(&context);
        }
    }
    restore(&mut wl, &images, &[]);
    verify_restored(wl, "shmem restore of the untouched images");
}

/// The port `receive` listens on (every test has its own pair of network namespaces).
const PORT: u16 = 7441;

/// `migrate --lazy` across a veth to `receive --pidns new`: the objects travel with the image
/// (files of the image dir), the copy of the tree shares them again and PASSes.
#[test]
fn shmem_migrate_lazy() {
    require_root();
    become_subreaper();
    let link = Link::new("shm", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_shmem", &[]);
    wl.wait_counter_advances();
    let child = pid_file(wl.statedir(), "child-pid");
    let mut recv = link.receive(&token, true, MIGRATE_GUARD);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    reap_killed_original(&mut wl);
    vmtests::reap_orphan(child);
    let copy = NsCopy::find(&wl);
    assert!(
        find_in_new_pidns(child).is_some(),
        "the migrated child is not in the new pid namespace"
    );
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the migrated tree");
    assert_no_stray_children("shmem migrate --lazy");
}

// ---------------------------------------------------------------------------------------------
// The workload's own oracle

/// Undisturbed, wl_shmem passes and two captures of its state are equal.
#[test]
fn wl_shmem_passes_undisturbed() {
    require_root();
    become_subreaper();
    Workload::spawn("wl_shmem", &[]).verify_undisturbed();
    assert_no_stray_children("wl_shmem undisturbed");
}

/// The oracle is not vacuous: a byte of the memfd's pattern and one of the shared anonymous
/// memory changed behind the workload's back must make it fail.
#[test]
fn wl_shmem_detects_changed_contents() {
    use std::os::unix::fs::FileExt;
    require_root();
    become_subreaper();
    let wl = Workload::spawn("wl_shmem", &[]);
    wl.wait_counter_advances();
    let memfd = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/30", wl.pid()))
        .expect("open the memfd");
    memfd.write_all_at(b"x", 100).expect("write the memfd");
    wl.terminate_and_expect_fail("memfd data");

    let wl = Workload::spawn("wl_shmem", &[]);
    wl.wait_counter_advances();
    let maps = fs::read_to_string(format!("/proc/{}/maps", wl.pid())).expect("read maps");
    let start = maps
        .lines()
        .find(|l| l.ends_with("/dev/zero (deleted)"))
        .and_then(|l| l.split('-').next())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .expect("the shared anonymous mapping");
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", wl.pid()))
        .expect("open /proc/PID/mem");
    mem.write_all_at(&[0xff], start + 8)
        .expect("write the shared memory");
    wl.terminate_and_expect_fail("shared anonymous memory");
    assert_no_stray_children("wl_shmem oracle");
}
