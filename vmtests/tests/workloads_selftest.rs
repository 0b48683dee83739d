//! The workloads verify themselves: without any checkpoint each must run its loop and report
//! `PASS` on SIGTERM. A failure here is a workload bug, not a fastcr bug.

use std::fs;
use std::os::unix::fs::FileExt;

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

#[test]
fn wl_pipe_passes_undisturbed() {
    selftest("wl_pipe", &[]);
}

#[test]
fn wl_heap_1gib_passes_undisturbed() {
    selftest("wl_heap", &["1024"]);
}

/// Terminates `wl` and asserts it reported a failure mentioning `what`.
fn expect_fail(wl: Workload, what: &str) {
    let (status, result, log) = wl.terminate();
    assert!(
        status.code() == Some(1) && result.starts_with("FAIL: ") && result.contains(what),
        "expected a FAIL about {what:?}, got {status}, result {result:?}, log {log}"
    );
}

/// The oracle is not vacuous: one word of the pattern changed behind the workload's back (through
/// /proc/PID/mem) must make it fail.
#[test]
fn wl_heap_detects_a_changed_word() {
    require_root();
    let size_mib = 32u64; // not 64: that is the size of the untouched region
    let wl = Workload::spawn("wl_heap", &["32"]);
    let maps = fs::read_to_string(format!("/proc/{}/maps", wl.pid())).expect("read maps");
    let start = maps
        .lines()
        .find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (rest.starts_with("rw-p") && b - a == size_mib << 20).then_some(a)
        })
        .expect("the pattern region in maps");
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", wl.pid()))
        .expect("open /proc/PID/mem");
    mem.write_all_at(&[0x5a; 8], start + 12345 * 8)
        .expect("write into the workload");
    expect_fail(wl, "big region");
}

/// The oracle is not vacuous: the file behind a MAP_PRIVATE mapping changed on disk must make
/// wl_filemap fail.
#[test]
fn wl_filemap_detects_a_changed_file() {
    require_root();
    let wl = Workload::spawn("wl_filemap", &[]);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(wl.statedir().join("private.dat"))
        .expect("open private.dat");
    file.write_all_at(b"changed", 3 * 4096 + 100)
        .expect("write private.dat");
    drop(file);
    expect_fail(wl, "private");
}
