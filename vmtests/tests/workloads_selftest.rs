//! The workloads verify themselves: without any checkpoint each must run its loop and report
//! `PASS` on SIGTERM. A failure here is a workload bug, not a fastcr bug.

use vmtests::{VisibleState, Workload, assert_no_stray_children, require_root};

fn selftest(name: &str, args: &[&str]) {
    require_root();
    let wl = Workload::spawn(name, args);
    wl.assert_running_untraced();
    // Two captures of an undisturbed workload must compare equal, or the comparison used after a
    // restore would report noise.
    let first = VisibleState::capture(wl.pid());
    wl.wait_counter_advances();
    first.assert_same(&VisibleState::capture(wl.pid()), name);
    wl.terminate_and_verify();
    assert_no_stray_children(name);
}

#[test]
fn wl_heap_passes_undisturbed() {
    selftest("wl_heap", &["64"]);
}

#[test]
fn wl_filemap_passes_undisturbed() {
    selftest("wl_filemap", &[]);
}

#[test]
fn wl_sleep_passes_undisturbed() {
    selftest("wl_sleep", &[]);
}

#[test]
fn wl_signals_passes_undisturbed() {
    selftest("wl_signals", &[]);
}

#[test]
fn wl_files_passes_undisturbed() {
    selftest("wl_files", &[]);
}
