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
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use vmtests::migration::{Link, NsCopy, reap_killed_original};
use vmtests::objects::{kill_orphan, pid_file, terminate_in_pidns, without_object_inodes};
use vmtests::restored::{find_in_new_pidns, wait_until};
use vmtests::{
    Scratch, VisibleState, Workload, assert_no_stray_children, assert_one_line_error,
    assert_success, become_subreaper, fastcr, require_root,
};

/// Hang guard for a process appearing: never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);
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
    let before = without_object_inodes(VisibleState::capture(wl.pid()));
    let before_child = without_object_inodes(VisibleState::capture(child));
    let images = Scratch::new("shmem-img");
    let pid = wl.pid_arg();
    if matches!(mode, Mode::Dump) {
        assert_success(
            &fastcr(&["dump", "-t", &pid, "-D", images.as_str()]),
            "dump",
        );
        let status = wl.reap();
        assert!(
            status.signal().is_some(),
            "dump should have killed the root: {status}"
        );
        vmtests::reap_orphan(child);
    } else {
        let mut args = vec!["dump", "-t", &pid, "-D", images.as_str(), "--leave-running"];
        if matches!(mode, Mode::PreCopy) {
            args.extend(["--pre-copy", "auto"]);
        }
        assert_success(&fastcr(&args), "dump --leave-running");
        wl.assert_running_untraced();
        before.assert_same(
            &without_object_inodes(VisibleState::capture(wl.pid())),
            "after dump --leave-running",
        );
        wl.kill_and_reap();
        kill_orphan(child);
    }
    assert_objects_once(&images);

    if matches!(mode, Mode::PidnsNew) {
        let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
        assert_success(&out, "restore --pidns new -d");
        let mut outer = None;
        wait_until("the restored root in its pid namespace", GUARD, || {
            outer = find_in_new_pidns(wl.pid());
            outer.is_some()
        });
        let outer = outer.expect("found above");
        assert!(
            find_in_new_pidns(child).is_some(),
            "the restored child is not in the new pid namespace"
        );
        let status = ExitStatus::from_raw(terminate_in_pidns(outer));
        let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
        assert!(
            status.success() && result == "PASS\n",
            "restored wl_shmem {status}; result {result:?}; log: {}",
            wl.log()
        );
        assert_no_stray_children("shmem restore --pidns new");
        return;
    }
    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    assert_success(&out, "restore -d");
    wl.adopt_restored();
    before.assert_same(
        &without_object_inodes(VisibleState::capture(wl.pid())),
        "root after restore",
    );
    before_child.assert_same(
        &without_object_inodes(VisibleState::capture(child)),
        "child after restore",
    );
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("shmem restore");
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
    let images = Scratch::new("shmem-sysv-img");
    let out = fastcr(&["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]);
    assert_one_line_error(&out, "dump of SysV shared memory");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        format!("process {}", wl.pid()).as_str(),
        "mapping",
        "/SYSV",
        "SysV shared memory",
    ] {
        assert!(
            stderr.contains(want),
            "the error does not say {want:?}: {stderr}"
        );
    }
    wl.assert_running_untraced();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
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
    assert_success(
        &fastcr(&["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]),
        "dump",
    );
    wl.reap();
    vmtests::reap_orphan(child);
    let names = [
        "objects.img",
        "object-0.img",
        "object-1.img",
        "object-2.img",
    ];
    for name in names {
        for damage in ["truncated", "flipped"] {
            let copy = Scratch::new("shmem-bad-copy");
            for entry in fs::read_dir(images.path()).expect("read the image dir") {
                let entry = entry.expect("dir entry");
                fs::copy(
                    entry.path(),
                    copy.join(&entry.file_name().to_string_lossy()),
                )
                .expect("copy an image file");
            }
            let path = copy.join(name);
            let mut bytes = fs::read(&path).expect("read an image file");
            let len = bytes.len();
            if damage == "truncated" {
                bytes.truncate(len / 2);
            } else {
                bytes[len / 2] ^= 0xff;
            }
            fs::write(&path, bytes).expect("write an image file");
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
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "-d"]),
        "restore -d",
    );
    wl.adopt_restored();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("shmem restore of the untouched images");
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
    let (mig_status, recv_status) = (mig.wait(MIGRATE_GUARD), recv.wait(MIGRATE_GUARD));
    assert!(
        mig_status.success() && recv_status.success(),
        "the migration failed:\n{}\n{}",
        mig.output(),
        recv.output()
    );
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

/// Terminates `wl` and asserts it reported a failure mentioning `what`.
fn expect_fail(wl: Workload, what: &str) {
    let (status, result, log) = wl.terminate();
    assert!(
        status.code() == Some(1) && result.starts_with("FAIL: ") && result.contains(what),
        "expected a FAIL about {what:?}, got {status}, result {result:?}, log {log}"
    );
}

/// Undisturbed, wl_shmem passes and two captures of its state are equal.
#[test]
fn wl_shmem_passes_undisturbed() {
    require_root();
    become_subreaper();
    let wl = Workload::spawn("wl_shmem", &[]);
    let first = VisibleState::capture(wl.pid());
    wl.wait_counter_advances();
    first.assert_same(&VisibleState::capture(wl.pid()), "wl_shmem");
    wl.terminate_and_verify();
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
    expect_fail(wl, "memfd data");

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
    expect_fail(wl, "shared anonymous memory");
    assert_no_stray_children("wl_shmem oracle");
}
