//! Successful live migrations (`fastcr migrate` → `fastcr receive`), lazy and not, between two
//! network namespaces joined by a veth ([`Link`]): `receive --pidns new` runs in namespace b and
//! listens on b's address, `migrate` runs in namespace a and connects across the veth. The
//! workload runs on the same host (started by the test in the root namespaces), so the
//! destination always restores into a new pid namespace, where the copy keeps the original's pid.
//! Refused peers and a destination that fails before the resume: `migrate_refused.rs`; a side
//! killed during the lazy phase: `migrate_killed.rs`.
//!
//! Every test checks the migrated workload itself, not only fastcr's exit codes: the original
//! (the test's child) was SIGKILLed by the source; the copy is the process whose NSpid is
//! `[outer, original pid]`, a descendant of the test; its counter advances; on SIGTERM it reports
//! PASS in STATEDIR/result; its pid namespace's init (reparented to the test, a subreaper, once
//! `receive` has exited) exits once the copy is gone.
//!
//! Visible state (`VisibleState`) of the copy equals the original's before the migration, with
//! these allowed differences: `Pid` and `Tgid` in /proc/PID/status read from here are the copy's
//! outer pid (inside its namespace it has the original's pid, checked through NSpid); NSpid and
//! PPid are not compared (not part of `VisibleState`) since they differ by construction.
//!
//! `wl_lazy`'s churn: STATEDIR/churn is created before `migrate` starts, so the freeze may catch
//! the original while one of its churn children exists; that child then migrates with it (a
//! process tree), and the source's SIGKILL of the original tree leaves it to the test (a
//! subreaper) to reap.
//!
//! Timing is never asserted: every wait has a generous hang guard, and measured durations are
//! only printed.

use std::fs;
use std::os::unix::process::ExitStatusExt;

use serde_json::Value;
use vmtests::migration::{
    GUARD, Link, NsCopy, json_line, num, reap_killed_original, receive, wait_both_succeed,
};
use vmtests::restored::{nspid, reap_within, wait_until};
use vmtests::{VisibleState, Workload, assert_no_stray_children, status_field, stray_children};

/// The port `receive` listens on; every test has its own pair of namespaces.
const PORT: u16 = 7411;

/// Reaps the children the original had when the source froze it (a churn fork of wl_lazy): the
/// source moved them with it and SIGKILLed them with it, and being orphans they were
/// reparented to the test (a subreaper). Recognised by name, a single pid namespace level and
/// not being one of the processes the test spawned.
fn reap_killed_original_children(wl: &Workload) {
    for (pid, comm, _) in stray_children() {
        if comm != wl.name() || nspid(pid).is_none_or(|ids| ids.len() != 1) {
            continue;
        }
        let status = reap_within(pid, GUARD, "a child of the original");
        eprintln!("reaped the original's child {pid}: {status}");
        // A churn child that had already exited when the tree was frozen was a zombie: it keeps
        // its own status (0: its checks passed); a live one is SIGKILLed with the original.
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code() == Some(0),
            "the original's child {pid} must be SIGKILLed with it (or have ended cleanly before \
             the freeze), but it {status}"
        );
    }
}

/// Migrates `name ARGS` with `flags` and checks everything the module doc lists; returns the
/// stats of migrate and receive.
fn migrate_and_verify(name: &str, args: &[&str], flags: &[&str]) -> (Value, Value) {
    let link = Link::new("mig", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn(name, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &token, true);
    let mut mig = link.migrate(wl.pid(), &token, flags);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);

    let copy = NsCopy::find(&wl);
    assert_eq!(
        num(&rstats, "pid_here"),
        u64::try_from(copy.outer()).expect("positive pid"),
        "receive's pid_here"
    );
    assert_eq!(
        num(&rstats, "restore.pid"),
        u64::try_from(wl.pid()).expect("positive pid"),
        "receive's restore.pid"
    );
    let lazy = flags.contains(&"--lazy");
    assert_eq!(mstats.get("lazy"), Some(&Value::Bool(lazy)), "{mstats}");
    assert_eq!(
        rstats.get("lazy").is_some_and(Value::is_object),
        lazy,
        "receive's lazy stats: {rstats}"
    );
    assert!(num(&mstats, "downtime_us") > 0, "{mstats}");
    if name != "wl_lazy" {
        copy.assert_same_state(&before, "the migrated copy");
    }
    wl.wait_counter_advances_as(copy.outer());
    assert_eq!(
        status_field(copy.outer(), "TracerPid").as_deref(),
        Some("0"),
        "the copy is still traced"
    );
    copy.terminate_and_verify(&wl, "the migrated copy");
    assert_no_stray_children(&format!("migrate {name} {}", flags.join(" ")));
    (mstats, rstats)
}

#[test]
fn migrate_lazy_wl_heap_256() {
    let (mstats, _) = migrate_and_verify("wl_heap", &["256"], &["--lazy"]);
    // 256 MiB is 65536 pages, all of them sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 60_000, "{mstats}");
    assert!(num(&mstats, "bulk_pages") > 0, "{mstats}");
    // It writes its counter (and stack) all the time: some pages are hot.
    assert!(num(&mstats, "hot_pages") > 0, "{mstats}");
    // The background pages were copied out of the original (the default).
    assert_eq!(num(&mstats, "spliced_processes"), 0, "{mstats}");
}

#[test]
fn migrate_lazy_splice_wl_heap_256() {
    let (mstats, _) = migrate_and_verify("wl_heap", &["256"], &["--lazy", "--splice"]);
    assert!(num(&mstats, "dest.pages_placed") > 60_000, "{mstats}");
    assert!(num(&mstats, "bulk_pages") > 0, "{mstats}");
    // The background pages left the original through a helper thread's pipe.
    assert_eq!(num(&mstats, "spliced_processes"), 1, "{mstats}");
}

#[test]
fn migrate_wl_heap_256() {
    let (mstats, rstats) = migrate_and_verify("wl_heap", &["256"], &[]);
    // Non-lazy: all the memory travels in the image, nothing afterwards.
    assert!(num(&mstats, "bytes_sent") >= 256 << 20, "{mstats}");
    assert!(num(&rstats, "image_bytes") >= 256 << 20, "{rstats}");
    assert_eq!(num(&mstats, "bulk_pages"), 0, "{mstats}");
    assert_eq!(num(&mstats, "requests_served"), 0, "{mstats}");
}

#[test]
fn migrate_precopy_wl_dirty() {
    // 256 MiB, 1 % of the pages dirtied per 100 ms.
    let (mstats, _) = migrate_and_verify("wl_dirty", &["256", "10"], &["--pre-copy", "auto"]);
    let rounds = mstats
        .pointer("/dump/rounds")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no dump.rounds array: {mstats}"));
    assert!(!rounds.is_empty(), "no pre-copy round: {mstats}");
    assert!(num(&mstats, "dump.pages_written") > 0, "{mstats}");
    // The rounds' copies went over while the process ran (at least the 65536 pages of the
    // first round), and the image leaves them to the parent the destination wrote from them:
    // after the freeze only the residue was sent.
    let streamed = num(&mstats, "precopy_pages_streamed");
    assert!(streamed >= 65_536, "{mstats}");
    let in_parent = num(&mstats, "dump.pages_in_parent");
    assert!(
        in_parent > 0,
        "the image stored every page itself: {mstats}"
    );
    assert!(
        num(&mstats, "dump.pages_written") < in_parent,
        "the residue should be the smaller part: {mstats}"
    );
}

/// wl_lazy 512 MiB, churning (munmap, mremap, MADV_DONTNEED, fork) before the migration and
/// from its first instruction on the destination, i.e. during the lazy phase. The freeze may
/// catch it while a churn child exists: the tree (parent and child) then moves as a whole.
/// A fork racing the freeze makes fastcr try the dump again (as a tree if the child is still
/// there).
#[test]
fn migrate_lazy_with_churn() {
    let link = Link::new("churn", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_lazy", &["512"]);
    wl.wait_counter_advances();
    assert_eq!(
        wl.number("churn_ticks"),
        0,
        "wl_lazy churned before STATEDIR/churn existed"
    );
    fs::write(wl.statedir().join("churn"), b"").expect("create STATEDIR/churn");
    wait_until("the original churns", GUARD, || {
        wl.number("churn_ticks") >= 1
    });

    let mut recv = receive(&link, &token, true);
    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    let mstats = json_line(&mig);
    let rstats = json_line(&recv);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    reap_killed_original(&mut wl);
    reap_killed_original_children(&wl);
    let copy = NsCopy::find(&wl);
    // 512 MiB is 131072 pages, all sent after the resume.
    assert!(num(&mstats, "dest.pages_placed") > 120_000, "{mstats}");
    // How much of the churn overlapped the lazy phase varies: reported, not required.
    eprintln!(
        "lazy phase: forks {:?}, layout events {:?}",
        rstats.pointer("/lazy/forks"),
        rstats.pointer("/lazy/layout_events")
    );

    wait_until("the copy has churned 3 times", GUARD, || {
        assert!(copy.copy().is_alive(), "the copy died; log: {}", wl.log());
        wl.number("churn_ticks") >= 3
    });
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the migrated copy");
    let ticks = wl.number("churn_ticks");
    assert!(ticks >= 3, "churn_ticks {ticks} after the end");
    eprintln!("churn ticks: {ticks}");
    assert_no_stray_children("migrate_lazy_with_churn");
}
