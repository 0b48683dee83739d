//! Memory shared copy-on-write in a tree: `wl_cow 128` (a parent with 128 MiB of patterned
//! private memory and 1 MiB it made read-only, a child and a grandchild that each rewrote a
//! known subset of pages; see `workloads/wl_cow.c`). Crossed with `dump` + `restore -d`, `dump
//! --leave-running` + `restore -d`, `dump --leave-running` + `restore --pidns new -d` (after
//! the original is gone) and `dump` + `restore --lazy -d`. Checked:
//! - the image stores the shared pages once: `fastcr show --json` says the child stores about
//!   the pages it (or its parent, after the fork) rewrote, and refers to its parent for the
//!   rest; the grandchild likewise to the child;
//! - after the restore (not lazy), most of the pages no process rewrote are one physical page
//!   again in the parent and the child, and in the child and the grandchild (same PFN in
//!   `/proc/PID/pagemap` at the same address); a lazy restore fills private copies;
//! - the workload's own verification: each process's memory, and that a write in one after the
//!   restore is not seen by the others (parent → child → grandchild and back);
//! - after `dump --leave-running` the original still shares its pages (the dump reads a
//!   process with children without unsharing them).

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use serde_json::Value;
use vmtests::restored::{find_in_new_pidns, wait_until};
use vmtests::roundtrip::terminate_copy_and_verify;
use vmtests::{
    ProcStat, Scratch, Workload, assert_no_stray_children, assert_success, fastcr, reap_orphan,
    require_root,
};

const SIZE_MIB: &str = "128";
/// Pages the child drops with `MADV_DONTNEED` at the end of the region.
const DROPPED: u64 = 64;
const GUARD: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Dump,
    LeaveRunning,
    PidnsNew,
    Lazy,
}

/// The workload's pids and its region (`STATEDIR/region`: "ADDR_HEX PAGES").
struct Cow {
    child: i32,
    grandchild: i32,
    addr: u64,
    pages: u64,
}

fn read_pid(wl: &Workload, name: &str) -> i32 {
    fs::read_to_string(wl.statedir().join(name))
        .unwrap_or_else(|e| panic!("STATEDIR/{name}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("STATEDIR/{name}: {e}"))
}

impl Cow {
    fn read(wl: &Workload) -> Cow {
        let region = fs::read_to_string(wl.statedir().join("region")).expect("STATEDIR/region");
        let mut it = region.split_whitespace();
        let addr = u64::from_str_radix(it.next().expect("address"), 16).expect("hex address");
        let pages = it.next().expect("pages").parse().expect("page count");
        Cow {
            child: read_pid(wl, "child"),
            grandchild: read_pid(wl, "grandchild"),
            addr,
            pages,
        }
    }
}

/// The PFN of each page of `[addr, addr + pages)` in `pid` (`None`: not present).
fn pfns(pid: i32, addr: u64, pages: u64) -> Vec<Option<u64>> {
    let f = fs::File::open(format!("/proc/{pid}/pagemap")).expect("open pagemap");
    let mut buf = vec![0u8; pages as usize * 8];
    f.read_exact_at(&mut buf, addr / 4096 * 8)
        .expect("read pagemap");
    buf.chunks_exact(8)
        .map(|w| {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            (w >> 63 == 1).then_some(w & ((1 << 55) - 1))
        })
        .collect()
}

/// Pages of the region that are the same physical page in `a` and `b`.
fn same_pages(a: i32, b: i32, cow: &Cow) -> u64 {
    let (pa, pb) = (pfns(a, cow.addr, cow.pages), pfns(b, cow.addr, cow.pages));
    pa.iter()
        .zip(&pb)
        .filter(|(x, y)| x.is_some_and(|x| x != 0) && x == y)
        .count() as u64
}

/// Pages of the region neither the child nor the parent rewrote after the fork.
fn unmodified_by_child(pages: u64) -> u64 {
    (0..pages - DROPPED)
        .filter(|i| i % 8 != 1 && i % 16 != 3)
        .count() as u64
}

/// Pages of the region the grandchild did not rewrite and the child did not drop.
fn unmodified_by_grandchild(pages: u64) -> u64 {
    (0..pages - DROPPED).filter(|i| i % 8 != 5).count() as u64
}

/// The `pages` summary of process `pid` in `fastcr show --json`.
fn stored(show: &Value, pid: i32) -> (u64, u64) {
    let p = show["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["pid"] == pid))
        .unwrap_or_else(|| panic!("process {pid} in show --json"));
    let n = |k: &str| {
        p["pages"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("pages.{k}"))
    };
    (n("stored"), n("cow_parent"))
}

/// Checks what the image stores; returns the pages its children leave to their parents.
fn check_image(images: &Scratch, wl: &Workload, cow: &Cow) -> u64 {
    let out = fastcr(&["show", images.as_str(), "--json"]);
    assert_success(&out, "show --json");
    let show: Value = serde_json::from_slice(&out.stdout).expect("show --json output");
    let n = cow.pages;
    let (root_stored, root_cow) = stored(&show, wl.pid());
    let (child_stored, child_cow) = stored(&show, cow.child);
    let (grand_stored, grand_cow) = stored(&show, cow.grandchild);
    eprintln!(
        "pages stored / shared with the parent: root {root_stored}/{root_cow}, child \
         {child_stored}/{child_cow}, grandchild {grand_stored}/{grand_cow} (region {n} pages)"
    );
    assert_eq!(root_cow, 0, "the root has no parent to share with");
    assert!(root_stored >= n, "the root stores its whole region");
    // The child's own pages: the ones it rewrote (1 in 8), the ones its parent rewrote after
    // the fork (1 in 16: its copy is the older one) and some of stack, libc data and the like.
    assert!(
        child_stored <= n / 8 + n / 16 + 2048,
        "the child stores {child_stored} pages, more than it has of its own"
    );
    assert!(
        child_cow >= unmodified_by_child(n) * 95 / 100,
        "the child refers to its parent for only {child_cow} pages"
    );
    assert!(
        grand_stored <= n / 8 + 2048,
        "the grandchild stores {grand_stored} pages, more than it has of its own"
    );
    assert!(
        grand_cow >= unmodified_by_grandchild(n) * 95 / 100,
        "the grandchild refers to the child for only {grand_cow} pages"
    );
    let files: u64 = fs::read_dir(images.path())
        .expect("image dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    eprintln!("pages files: {} MiB", files >> 20);
    assert!(
        files < (n * 4096) * 3 / 2,
        "the pages files hold {files} bytes for a {n}-page region shared three ways"
    );
    child_cow + grand_cow
}

/// Checks the restored tree (pids here) shares the pages nobody rewrote.
fn check_shared(parent: i32, child: i32, grandchild: i32, cow: &Cow, lazy: bool) {
    let pc = same_pages(parent, child, cow);
    let cg = same_pages(child, grandchild, cow);
    eprintln!(
        "after restore: {pc} pages shared by the parent and the child (of {}), {cg} by the \
         child and the grandchild (of {})",
        unmodified_by_child(cow.pages),
        unmodified_by_grandchild(cow.pages)
    );
    if lazy {
        // Filled one process at a time from the image: private copies.
        return;
    }
    assert!(
        pc >= unmodified_by_child(cow.pages) * 9 / 10,
        "only {pc} pages are shared by the restored parent and child"
    );
    assert!(
        cg >= unmodified_by_grandchild(cow.pages) * 9 / 10,
        "only {cg} pages are shared by the restored child and grandchild"
    );
}

fn cow_tree(mode: Mode) {
    require_root();
    let mut wl = Workload::spawn("wl_cow", &[SIZE_MIB]);
    wl.wait_counter_advances();
    let cow = Cow::read(&wl);
    // Before anything: the workload does share its pages (the premise of the test).
    let live = same_pages(wl.pid(), cow.child, &cow);
    assert!(
        live >= unmodified_by_child(cow.pages) * 9 / 10,
        "the original shares only {live} pages"
    );
    let images = Scratch::new("cow-img");
    let pid = wl.pid_arg();
    let mut args = vec!["dump", "-t", &pid, "-D", images.as_str(), "--json"];
    if matches!(mode, Mode::LeaveRunning | Mode::PidnsNew) {
        args.push("--leave-running");
    }
    let out = fastcr(&args);
    assert_success(&out, &args.join(" "));
    let stats: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the dump's JSON stats");
    let shared = check_image(&images, &wl, &cow);
    assert_eq!(
        stats["pages_cow_shared"].as_u64(),
        Some(shared),
        "the dump's stats count the shared pages: {stats}"
    );
    if matches!(mode, Mode::LeaveRunning | Mode::PidnsNew) {
        wl.assert_running_untraced();
        // The dump read the parent and the child without unsharing their pages.
        let kept = same_pages(wl.pid(), cow.child, &cow);
        assert!(
            kept >= unmodified_by_child(cow.pages) * 9 / 10,
            "after dump --leave-running the original shares only {kept} pages"
        );
        // Killing the parent closes the child's pipe: the child then checks itself, wakes the
        // grandchild, reaps it and exits (reparented to this subreaper).
        wl.kill_and_reap();
        reap_orphan(cow.child);
    } else {
        wl.reap();
        // Killed with the tree: both are reparented to this subreaper.
        reap_orphan(cow.child);
        reap_orphan(cow.grandchild);
    }

    if mode == Mode::PidnsNew {
        let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
        assert_success(&out, "restore --pidns new -d");
        let outer = find_in_new_pidns(wl.pid()).expect("the parent's copy");
        let outer_child = find_in_new_pidns(cow.child).expect("the child's copy");
        let outer_grand = find_in_new_pidns(cow.grandchild).expect("the grandchild's copy");
        // Killed on drop should the test fail: held until the copy has ended.
        let copy = vmtests::restored::Restored::new(outer);
        assert_eq!(ProcStat::read(outer_child).map(|s| s.ppid), Some(outer));
        assert_eq!(
            ProcStat::read(outer_grand).map(|s| s.ppid),
            Some(outer_child)
        );
        check_shared(outer, outer_child, outer_grand, &cow, false);
        terminate_copy_and_verify(&wl, copy, "cow --pidns new");
        return;
    }
    let mut args = vec!["restore", "-D", images.as_str(), "-d"];
    if mode == Mode::Lazy {
        args.push("--lazy");
    }
    assert_success(&fastcr(&args), &args.join(" "));
    wl.adopt_restored();
    assert_eq!(
        ProcStat::read(cow.child).map(|s| s.ppid),
        Some(wl.pid()),
        "the restored child's parent"
    );
    assert_eq!(
        ProcStat::read(cow.grandchild).map(|s| s.ppid),
        Some(cow.child),
        "the restored grandchild's parent"
    );
    if mode == Mode::Lazy {
        // The lazy phase is over once every page is in; wait for fastcr to let go.
        wait_until("the lazy phase ends", GUARD, || {
            vmtests::status_field(wl.pid(), "TracerPid").as_deref() == Some("0")
        });
    }
    check_shared(
        wl.pid(),
        cow.child,
        cow.grandchild,
        &cow,
        mode == Mode::Lazy,
    );
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children(&format!("cow {mode:?}"));
}

#[test]
fn cow_dump_restore() {
    cow_tree(Mode::Dump);
}

#[test]
fn cow_leave_running_restore() {
    cow_tree(Mode::LeaveRunning);
}

#[test]
fn cow_leave_running_restore_pidns_new() {
    cow_tree(Mode::PidnsNew);
}

#[test]
fn cow_lazy_restore() {
    cow_tree(Mode::Lazy);
}

/// References that lead nowhere fail the restore with one line, before any process exists:
/// the child's page index put in the root's place (the root has no parent to refer to).
#[test]
fn cow_broken_reference_is_refused() {
    require_root();
    let mut wl = Workload::spawn("wl_cow", &["8"]);
    wl.wait_counter_advances();
    let cow = Cow::read(&wl);
    let images = Scratch::new("cow-bad");
    let pid = wl.pid_arg();
    assert_success(
        &fastcr(&["dump", "-t", &pid, "-D", images.as_str(), "--leave-running"]),
        "dump --leave-running",
    );
    wl.kill_and_reap();
    reap_orphan(cow.child);
    for kind in ["pagemap", "pages"] {
        fs::copy(
            images.join(&format!("{kind}-{}.img", cow.child)),
            images.join(&format!("{kind}-{}.img", wl.pid())),
        )
        .expect("copy the child's page files over the root's");
    }
    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    vmtests::assert_one_line_error(&out, "restore with a root referring to a parent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parent process"), "{err}");
    assert!(!vmtests::pid_exists(wl.pid()), "nothing was restored");
    assert_no_stray_children("cow broken reference");
}
