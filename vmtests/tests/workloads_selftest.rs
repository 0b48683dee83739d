//! The workloads verify themselves: without any checkpoint each must run its loop and report
//! `PASS` on SIGTERM. A failure here is a workload bug, not a fastcr bug.

use std::fs;
use std::os::unix::fs::FileExt;

use vmtests::{Workload, assert_no_stray_children, require_root};

fn selftest(name: &str, args: &[&str]) {
    require_root();
    let wl = Workload::spawn(name, args);
    wl.assert_running_untraced();
    wl.verify_undisturbed();
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
fn wl_sigstate_passes_undisturbed() {
    selftest("wl_sigstate", &[]);
}

#[test]
fn wl_sigstate_seccomp_passes_undisturbed() {
    selftest("wl_sigstate", &["seccomp"]);
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
    wl.terminate_and_expect_fail("big region");
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
    wl.terminate_and_expect_fail("private");
}

#[test]
fn wl_dirty_passes_undisturbed() {
    selftest("wl_dirty", &["64", "100"]);
}

#[test]
fn wl_dirty_max_passes_undisturbed() {
    selftest("wl_dirty", &["64", "0", "max"]);
}

/// Churn changes the mappings all the time, so only the workload's own verification applies.
#[test]
fn wl_dirty_churn_passes_undisturbed() {
    require_root();
    let wl = Workload::spawn("wl_dirty", &["64", "10", "churn"]);
    wl.assert_running_untraced();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("wl_dirty churn");
}

/// The oracle is not vacuous: a dirtied page put back to its previous generation behind the
/// workload's back (through /proc/PID/mem), exactly what a pre-copy that missed a write would
/// leave, must make wl_dirty fail.
#[test]
fn wl_dirty_detects_a_lost_write() {
    require_root();
    // 32 MiB at 0.1 % per 100 ms: 8 writes per 100 ms over 7680 hot pages, so page 0 (the first
    // one written) is not written again for about 90 s.
    let wl = Workload::spawn("wl_dirty", &["32", "1"]);
    let layout = fs::read_to_string(wl.statedir().join("layout")).expect("read layout");
    let hot_start = layout
        .split_whitespace()
        .next()
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .unwrap_or_else(|| panic!("bad layout {layout:?}"));
    // Wait until the first write (to hot page 0) is done.
    let progress = || -> u64 {
        vmtests::read_published(&wl.statedir().join("progress"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while progress() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "wl_dirty never dirtied a page"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{}/mem", wl.pid()))
        .expect("open /proc/PID/mem");
    let mut page = vec![0u8; 4096];
    mem.read_exact_at(&mut page, hot_start)
        .expect("read hot page 0");
    // Word i holds (generation << 32 | page) ^ mix[i]: flipping the generation bits of every
    // word by (g ^ (g - 1)) turns generation g back into g - 1.
    let first = u64::from_ne_bytes(page[..8].try_into().expect("8 bytes"));
    let tag_of_first = first ^ mix_word0();
    let generation = tag_of_first >> 32;
    assert!(
        generation >= 1 && tag_of_first & 0xffff_ffff == 0,
        "hot page 0 does not hold a dirtied page 0: tag {tag_of_first:#x}"
    );
    let flip = (generation ^ (generation - 1)) << 32;
    for word in page.chunks_exact_mut(8) {
        let w = u64::from_ne_bytes((&*word).try_into().expect("8 bytes")) ^ flip;
        word.copy_from_slice(&w.to_ne_bytes());
    }
    mem.write_all_at(&page, hot_start)
        .expect("write into the workload");
    wl.terminate_and_expect_fail("hot page 0 is stale");
}

/// mix[0] of wl_dirty.c: `wl_pattern(MIX_SEED, 0)` from wl_common.h.
fn mix_word0() -> u64 {
    const MIX_SEED: u64 = 0xD1B7;
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ MIX_SEED;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

#[test]
fn wl_lazy_passes_undisturbed() {
    selftest("wl_lazy", &["64"]);
}

/// The churn a lazy-restore test turns on just before the restore, run without any checkpoint:
/// the workload's own checks of every munmap, mremap, MADV_DONTNEED and fork must pass, and its
/// forked children must all be reaped by the workload itself.
#[test]
fn wl_lazy_churn_passes() {
    require_root();
    let wl = Workload::spawn("wl_lazy", &["64"]);
    assert_eq!(
        wl.number("churn_ticks"),
        0,
        "wl_lazy churned before STATEDIR/churn existed"
    );
    fs::write(wl.statedir().join("churn"), b"").expect("create STATEDIR/churn");
    wl.wait_counter_advances();
    wl.wait_counter_advances();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while wl.number("churn_ticks") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "wl_lazy did only {} churn ticks in 60 s; log: {}",
            wl.number("churn_ticks"),
            wl.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    wl.assert_running_untraced();
    // The workload rewrites the count on SIGTERM, but its STATEDIR is gone once it is reaped: the
    // last value read while it runs is what the test can check.
    let ticks = wl.number("churn_ticks");
    assert!(ticks >= 2, "only {ticks} churn ticks ran");
    wl.terminate_and_verify();
    assert_no_stray_children("wl_lazy churn");
}

#[test]
fn wl_threads_passes_undisturbed() {
    selftest("wl_threads", &["64"]);
}

/// The mode the checkpoint tests use (thread 3 polls a pipe instead of an epoll set).
#[test]
fn wl_threads_pipe_passes_undisturbed() {
    selftest("wl_threads", &["64", "pipe"]);
}

#[test]
fn wl_tree_passes_undisturbed() {
    selftest("wl_tree", &["32"]);
}

#[test]
fn wl_cow_passes_undisturbed() {
    selftest("wl_cow", &["16"]);
}

/// The oracle is not vacuous: one word of a page the grandchild shares with the others changed
/// in the grandchild only (through /proc/PID/mem, which gives it its own copy) must make the
/// tree fail; a word changed in the parent after the marks would not be seen by the children.
#[test]
fn wl_cow_detects_a_changed_word() {
    require_root();
    let wl = Workload::spawn("wl_cow", &["16"]);
    let read = |name: &str| fs::read_to_string(wl.statedir().join(name)).expect(name);
    let grandchild: i32 = read("grandchild").trim().parse().expect("pid");
    let region = read("region");
    let addr = u64::from_str_radix(region.split_whitespace().next().expect("addr"), 16)
        .expect("hex address");
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{grandchild}/mem"))
        .expect("open /proc/PID/mem");
    // Page 2: rewritten by nobody, shared by all three.
    mem.write_all_at(&[0x5a; 8], addr + 2 * 4096 + 64)
        .expect("write into the grandchild");
    wl.terminate_and_expect_fail("the child failed");
}

#[test]
fn wl_fifo_passes_undisturbed() {
    selftest("wl_fifo", &[]);
}

#[test]
fn wl_fifo_tree_passes_undisturbed() {
    selftest("wl_fifo", &["tree"]);
}

/// The oracle is not vacuous: one byte of the FIFO's data in flight read behind the workload's
/// back (the test opens the FIFO by path) must make it fail.
#[test]
fn wl_fifo_detects_lost_fifo_data() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    require_root();
    let wl = Workload::spawn("wl_fifo", &[]);
    let mut fifo = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(wl.statedir().join("fifo1"))
        .expect("open fifo1");
    let mut byte = [0u8; 1];
    fifo.read_exact(&mut byte).expect("read one byte of fifo1");
    drop(fifo);
    wl.terminate_and_expect_fail("fifo1");
}
