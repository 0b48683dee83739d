//! The announced fallbacks of pre-copy, each forced: without BPF (`--no-bpf`) the task set and
//! layout come from /proc and pre-copy still runs on userfaultfd + PAGEMAP_SCAN; without async
//! write-protect (`--no-wp-async`) the dump copies with the process stopped. Both say so in the
//! stats, and both images restore a process that passes its own verification.

use serde_json::Value;
use vmtests::roundtrip::{dump, reap_dumped, restore};
use vmtests::{Scratch, Workload, require_root};

fn dump_restore(extra: &[&str]) -> Value {
    require_root();
    let mut wl = Workload::spawn("wl_dirty", &["64", "10"]);
    wl.wait_counter_advances();
    let images = Scratch::new("fallback-img");
    let mut flags = vec!["--pre-copy", "2", "--json"];
    flags.extend_from_slice(extra);
    let out = dump(&wl, &images, &flags);
    let stats: Value = serde_json::from_slice(&out.stdout).expect("dump --json prints JSON");
    reap_dumped(&mut wl);
    restore(&mut wl, &images, &[]);
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    stats
}

#[test]
fn without_bpf_precopy_runs_on_pagemap_scan_alone() {
    let s = dump_restore(&["--no-bpf"]);
    assert_eq!(s["task_tracking"], "proc", "stats: {s}");
    assert_eq!(s["precopy_mode"], "uffd-wp-async", "stats: {s}");
    assert_eq!(s["rounds"].as_array().map(Vec::len), Some(2), "stats: {s}");
}

#[test]
fn without_wp_async_the_dump_stops_the_world() {
    let s = dump_restore(&["--no-wp-async"]);
    let mode = s["precopy_mode"].as_str().unwrap_or_default();
    assert!(mode.starts_with("stop-the-world"), "stats: {s}");
    assert_eq!(s["rounds"].as_array().map(Vec::len), Some(0), "stats: {s}");
    assert_eq!(
        s["residual_pages"], s["pages_written"],
        "everything is copied frozen: {s}"
    );
}

#[test]
fn with_everything_precopy_uses_bpf_and_wp_async() {
    let s = dump_restore(&[]);
    assert_eq!(s["task_tracking"], "bpf", "stats: {s}");
    assert_eq!(s["precopy_mode"], "uffd-wp-async", "stats: {s}");
    let residual = s["residual_pages"].as_u64().unwrap_or(u64::MAX);
    let written = s["pages_written"].as_u64().unwrap_or(0);
    assert!(
        residual < written,
        "pre-copy copied nothing before the freeze: {s}"
    );
}
