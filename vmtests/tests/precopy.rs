//! Pre-copy (`fastcr dump --pre-copy`) restores exactly the frozen moment.
//!
//! `wl_dirty SIZE_MIB PERMILLE` keeps dirtying its memory at a known rate while the dump copies
//! it, and verifies every page against its in-memory record of the last write (see
//! `workloads/wl_dirty.c`): a write that happened during pre-copy but is missing from the image
//! makes the restored process FAIL. Each case: 256 MiB × dirty rate {0, 1 %, 10 % of the pages
//! per 100 ms} × mode:
//! - `precopy3`: `dump --pre-copy 3` (the process is killed) → reap → `restore -d`;
//! - `precopy_auto_leave_running`: `dump --pre-copy auto --leave-running` → the original keeps
//!   running → SIGKILL and reap → `restore -d`;
//! - `stw` / `stw_leave_running`: the same without `--pre-copy` (stop-the-world copy), the
//!   baseline that must pass too.
//!
//! After the restore: same PID, our child, /proc-visible state equal to the one before the dump,
//! the counter advances, the workload's own verification passes. The `--json` stats must be
//! coherent (rounds present, the residue no larger than the first round, every residual page
//! written). The `churn` cases munmap, mmap and mremap small regions every ~20 ms during the
//! dump: their final state must be in the image (the workload checks them; its mappings change
//! all the time, so /proc/PID/maps is not compared).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use vmtests::roundtrip::{dump, reap_dumped, restore};
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_success, fastcr,
    reap_orphan, require_root,
};

const SIZE_MIB: &str = "256";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `dump --pre-copy 3`, which ends the process.
    PreCopy3,
    /// `dump --pre-copy auto --leave-running`.
    PreCopyAutoLeaveRunning,
    /// `dump` (stop-the-world), which ends the process.
    Stw,
    /// `dump --leave-running` (stop-the-world).
    StwLeaveRunning,
}

impl Mode {
    fn dump_flags(self) -> &'static [&'static str] {
        match self {
            // --verify-final-scan: a final scan limited to the hinted pages must find every
            // page a walk of all memory finds at the same moment, or the dump fails.
            Mode::PreCopy3 => &["--pre-copy", "3", "--verify-final-scan"],
            Mode::PreCopyAutoLeaveRunning => &[
                "--pre-copy",
                "auto",
                "--leave-running",
                "--verify-final-scan",
            ],
            Mode::Stw => &[],
            Mode::StwLeaveRunning => &["--leave-running"],
        }
    }

    fn leaves_running(self) -> bool {
        matches!(self, Mode::PreCopyAutoLeaveRunning | Mode::StwLeaveRunning)
    }

    fn pre_copy(self) -> bool {
        matches!(self, Mode::PreCopy3 | Mode::PreCopyAutoLeaveRunning)
    }
}

/// Dumps a running `wl_dirty` with `mode`, restores it and checks everything the module doc
/// lists. `permille` is the share of pages dirtied per 100 ms, in thousandths.
fn dump_and_restore(permille: u32, churn: bool, mode: Mode) {
    require_root();
    let permille = permille.to_string();
    let mut args = vec![SIZE_MIB, permille.as_str()];
    if churn {
        args.push("churn");
    }
    let mut wl = Workload::spawn("wl_dirty", &args);
    wl.wait_counter_advances();
    let before = (!churn).then(|| VisibleState::capture(wl.pid()));
    let images = Scratch::new("precopy-img");

    let mut flags = vec!["--json"];
    flags.extend_from_slice(mode.dump_flags());
    let out = dump(&wl, &images, &flags);
    let stats = stdout_stats(&out.stdout);
    check_stats(&stats, mode);
    if mode.pre_copy() && churn {
        // Its munmap/mmap/mremap are VMA events: the final scan cannot be limited to hints.
        let over = final_scan_over(&stats);
        assert!(over.contains("layout changed"), "final_scan {over:?}");
    }

    if mode.leaves_running() {
        wl.assert_running_untraced();
        if let Some(before) = &before {
            before.assert_same(&VisibleState::capture(wl.pid()), "after the dump");
        }
        wl.kill_and_reap();
    } else {
        reap_dumped(&mut wl);
    }

    restore(&mut wl, &images, &[]);
    assert_no_stray_children("restore -d");
    if let Some(before) = &before {
        before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    }
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

/// Coherence of the `--json` stats of a dump.
fn check_stats(stats: &Json, mode: Mode) {
    let num = |key: &str| -> f64 {
        stats
            .find(key)
            .and_then(Json::as_f64)
            .unwrap_or_else(|| panic!("no numeric `{key}` in the dump stats: {stats:?}"))
    };
    let pages_written = num("pages_written");
    assert!(pages_written > 0.0, "no page written: {stats:?}");
    num("frozen_time_us");
    if !mode.pre_copy() {
        return;
    }
    let rounds = match stats.find("rounds") {
        Some(Json::Arr(rounds)) => rounds,
        other => panic!("`rounds` is not an array: {other:?} in {stats:?}"),
    };
    assert!(!rounds.is_empty(), "no pre-copy round: {stats:?}");
    if mode == Mode::PreCopy3 {
        // N counts the full rounds; the short closing rounds driven by BPF hints come after.
        let full = rounds
            .iter()
            .filter(|r| r.find("hinted_only") == Some(&Json::Bool(false)))
            .count();
        assert!(full <= 3, "--pre-copy 3 ran {full} full rounds: {stats:?}");
        assert!(full >= 1, "no full round: {stats:?}");
    }
    for round in rounds {
        for key in ["pages", "time_us"] {
            assert!(
                round.find(key).and_then(Json::as_f64).is_some(),
                "round without a numeric `{key}`: {round:?}"
            );
        }
    }
    let first_round = rounds[0]
        .find("pages")
        .and_then(Json::as_f64)
        .unwrap_or(0.0);
    assert!(
        first_round > 0.0,
        "the first round copied nothing: {stats:?}"
    );
    let residual = num("residual_pages");
    assert!(
        residual <= first_round,
        "residual_pages {residual} > pages of the first round {first_round}: {stats:?}"
    );
    assert!(
        pages_written >= residual,
        "pages_written {pages_written} < residual_pages {residual}: {stats:?}"
    );
    num("precopy_time_us");
    num("dirty_rate_pages_per_s");
    let over = final_scan_over(stats);
    assert!(
        over.starts_with("hinted: ") || over.starts_with("all memory"),
        "final_scan {over:?}"
    );
    eprintln!("final scan over {over}");
    let steps = stats
        .find("frozen_steps")
        .unwrap_or_else(|| panic!("no `frozen_steps`: {stats:?}"));
    for key in [
        "stop_us",
        "registers_us",
        "final_scan_us",
        "residual_copy_us",
        "metadata_us",
    ] {
        assert!(
            steps.find(key).and_then(Json::as_f64).is_some(),
            "frozen_steps without a numeric `{key}`: {steps:?}"
        );
    }
}

#[test]
fn precopy3_rate0() {
    dump_and_restore(0, false, Mode::PreCopy3);
}

#[test]
fn precopy3_rate1pct() {
    dump_and_restore(10, false, Mode::PreCopy3);
}

#[test]
fn precopy3_rate10pct() {
    dump_and_restore(100, false, Mode::PreCopy3);
}

#[test]
fn precopy_auto_leave_running_rate0() {
    dump_and_restore(0, false, Mode::PreCopyAutoLeaveRunning);
}

#[test]
fn precopy_auto_leave_running_rate1pct() {
    dump_and_restore(10, false, Mode::PreCopyAutoLeaveRunning);
}

#[test]
fn precopy_auto_leave_running_rate10pct() {
    dump_and_restore(100, false, Mode::PreCopyAutoLeaveRunning);
}

#[test]
fn precopy3_churn() {
    dump_and_restore(10, true, Mode::PreCopy3);
}

#[test]
fn precopy_auto_leave_running_churn() {
    dump_and_restore(10, true, Mode::PreCopyAutoLeaveRunning);
}

/// What the final scan walked (`final_scan` of the stats).
fn final_scan_over(stats: &Json) -> String {
    match stats.find("final_scan") {
        Some(Json::Str(s)) => s.clone(),
        other => panic!("`final_scan` is not a string: {other:?}"),
    }
}

/// The final scan is limited to the hinted pages when nothing else touched the process's
/// memory, and walks all of it when another process did: here this test keeps rewriting a
/// word of `wl_dirty`'s cold region with `process_vm_writev` (the same bytes, so the workload's
/// own check still holds) while the second dump runs. Both images restore and verify.
#[test]
fn precopy_final_scan_hinted_unless_another_process_writes() {
    require_root();
    let mut wl = Workload::spawn("wl_dirty", &[SIZE_MIB, "10"]);
    wl.wait_counter_advances();
    let flags = [
        "--json",
        "--pre-copy",
        "auto",
        "--leave-running",
        "--verify-final-scan",
    ];
    let quiet = Scratch::new("precopy-quiet-img");
    let stats = stdout_stats(&dump(&wl, &quiet, &flags).stdout);
    check_stats(&stats, Mode::PreCopyAutoLeaveRunning);
    let over = final_scan_over(&stats);
    assert!(over.starts_with("hinted: "), "final_scan {over:?}");

    let layout = std::fs::read_to_string(wl.statedir().join("layout")).expect("read layout");
    let mut it = layout.split_whitespace();
    let hot = it.next().and_then(|a| u64::from_str_radix(a, 16).ok());
    let pages = it.next().and_then(|n| n.parse::<u64>().ok());
    let (Some(hot), Some(pages)) = (hot, pages) else {
        panic!("bad layout {layout:?}");
    };
    let cold = hot + pages * 4096;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pid = wl.pid();
    let busy = Scratch::new("precopy-busy-img");
    let (out, writes) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rewrite_word(pid, cold);
                writes += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            writes
        });
        let out = dump(&wl, &busy, &flags);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, writer.join().expect("writer thread"))
    });
    let stats = stdout_stats(&out.stdout);
    check_stats(&stats, Mode::PreCopyAutoLeaveRunning);
    let over = final_scan_over(&stats);
    assert!(
        over.starts_with("all memory") && over.contains("mmap lock"),
        "final_scan {over:?} after {writes} writes by another process"
    );

    wl.kill_and_reap();
    restore(&mut wl, &busy, &[]);
    assert_no_stray_children("restore -d");
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

/// Reads the 8 bytes at `addr` of `pid` and writes them back with `process_vm_writev`.
fn rewrite_word(pid: i32, addr: u64) {
    let mut word = 0u64;
    let local = libc::iovec {
        iov_base: (&raw mut word).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: `local` is 8 writable bytes of ours, `remote` 8 bytes of the workload (our child,
    // mapped for its whole life).
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    assert_eq!(
        n,
        8,
        "process_vm_readv: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above; the same bytes go back.
    let n = unsafe { libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0) };
    assert_eq!(
        n,
        8,
        "process_vm_writev: {}",
        std::io::Error::last_os_error()
    );
}

/// A fork and a new thread while the rounds run: `wl_dirty spawn` forks a child (which keeps
/// dirtying its own copy of memory) and starts a thread (writing a region of its own) once
/// STATEDIR/spawn exists, created here while `dump --pre-copy 12` copies. The image must hold
/// both processes and the thread: after the restore the child is the parent's child again, and
/// the parent's PASS covers the thread's region and the child's own verification (exit 0).
#[test]
fn precopy_fork_and_thread_during_rounds() {
    require_root();
    let mut wl = Workload::spawn("wl_dirty", &["512", "10", "spawn"]);
    wl.wait_counter_advances();
    let images = Scratch::new("precopy-spawn-img");
    let pid = wl.pid_arg();
    let args = [
        "dump",
        "-t",
        &pid,
        "-D",
        images.as_str(),
        "--pre-copy",
        "12",
        "--json",
    ];
    let dump = std::process::Command::new(vmtests::fastcr_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fastcr dump");
    // Round 0 copies 512 MiB, which takes a few hundred milliseconds: the fork lands in it
    // or in a later round.
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::write(wl.statedir().join("spawn"), b"").expect("create STATEDIR/spawn");
    let out = dump.wait_with_output().expect("wait for fastcr dump");
    assert_success(&out, &args.join(" "));
    let stats = stdout_stats(&out.stdout);
    eprintln!("dump stats: {stats:?}");
    let child: i32 = std::fs::read_to_string(wl.statedir().join("spawned"))
        .expect("the workload never spawned (STATEDIR/spawned)")
        .trim()
        .parse()
        .expect("STATEDIR/spawned holds a pid");
    let status = wl.reap();
    assert!(
        status.signal().is_some(),
        "the dump should have killed the process, but it {status}"
    );
    // The original child, killed with the tree, was reparented to this subreaper: reaped here,
    // its pid is free for the restore.
    let status = reap_orphan(child);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the dump should have SIGKILLed the child too, status {status:#x}"
    );
    let tracked = stats
        .find("precopy_processes")
        .and_then(Json::as_f64)
        .unwrap_or(0.0);
    assert_eq!(
        tracked, 2.0,
        "both processes should have been pre-copied: {stats:?}"
    );
    assert_eq!(
        stats.find("precopy_mode"),
        Some(&Json::Str("uffd-wp-async".into())),
        "{stats:?}"
    );

    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    assert_success(&out, "restore -d");
    wl.adopt_restored();
    let ppid = ProcStat::read(child).map(|s| s.ppid);
    assert_eq!(
        ppid,
        Some(wl.pid()),
        "restored child {child} should be the parent's child"
    );
    let threads = std::fs::read_dir(format!("/proc/{}/task", wl.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        threads, 2,
        "the restored parent should have its spawned thread"
    );
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children("precopy_fork_and_thread_during_rounds");
}

#[test]
fn stw_rate0() {
    dump_and_restore(0, false, Mode::Stw);
}

#[test]
fn stw_rate10pct() {
    dump_and_restore(100, false, Mode::Stw);
}

#[test]
fn stw_leave_running_rate1pct() {
    dump_and_restore(10, false, Mode::StwLeaveRunning);
}

#[test]
fn stw_leave_running_rate10pct() {
    dump_and_restore(100, false, Mode::StwLeaveRunning);
}

#[test]
fn stw_churn() {
    dump_and_restore(10, true, Mode::Stw);
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader for the stats (vmtests has no JSON dependency).

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// `key` in this object or, depth first, in a nested object (not inside arrays).
    fn find(&self, key: &str) -> Option<&Json> {
        let Json::Obj(map) = self else {
            return None;
        };
        map.get(key)
            .or_else(|| map.values().find_map(|inner| inner.find(key)))
    }

    fn parse(text: &str) -> Option<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        (p.i == p.s.len()).then_some(v)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn lit(&mut self, word: &str, v: Json) -> Option<Json> {
        self.s[self.i..].starts_with(word.as_bytes()).then(|| {
            self.i += word.len();
            v
        })
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut map = BTreeMap::new();
                if self.eat(b'}').is_some() {
                    return Some(Json::Obj(map));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.string()? else {
                        return None;
                    };
                    self.eat(b':')?;
                    map.insert(k, self.value()?);
                    if self.eat(b'}').is_some() {
                        return Some(Json::Obj(map));
                    }
                    self.eat(b',')?;
                }
            }
            b'[' => {
                self.i += 1;
                let mut arr = Vec::new();
                if self.eat(b']').is_some() {
                    return Some(Json::Arr(arr));
                }
                loop {
                    arr.push(self.value()?);
                    if self.eat(b']').is_some() {
                        return Some(Json::Arr(arr));
                    }
                    self.eat(b',')?;
                }
            }
            b'"' => self.string(),
            b't' => self.lit("true", Json::Bool(true)),
            b'f' => self.lit("false", Json::Bool(false)),
            b'n' => self.lit("null", Json::Null),
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Json::Num)
            }
        }
    }

    /// A string without escapes beyond `\"`, `\\` and `\/` (enough for stats keys and values).
    fn string(&mut self) -> Option<Json> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok().map(Json::Str);
                }
                b'\\' => {
                    out.push(*self.s.get(self.i + 1)?);
                    self.i += 2;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

/// The stats object printed by `--json`: the whole stdout, or one line of it.
fn stdout_stats(stdout: &[u8]) -> Json {
    let text = String::from_utf8_lossy(stdout);
    Json::parse(text.trim())
        .filter(|v| matches!(v, Json::Obj(_)))
        .or_else(|| {
            text.lines()
                .rev()
                .filter_map(|l| Json::parse(l.trim()))
                .find(|v| matches!(v, Json::Obj(_)))
        })
        .unwrap_or_else(|| panic!("no JSON stats object on the dump's stdout: {text:?}"))
}

#[test]
fn json_reader_reads_stats() {
    let v = Json::parse(
        r#"{"frozen_time_us": 12, "rounds": [{"pages": 3, "time_us": 1.5e2}], "x": {"residual_pages": 0, "s": "a\"b", "t": true, "n": null}}"#,
    )
    .expect("valid JSON");
    assert_eq!(v.find("frozen_time_us"), Some(&Json::Num(12.0)));
    assert_eq!(v.find("residual_pages"), Some(&Json::Num(0.0)));
    assert_eq!(v.find("s"), Some(&Json::Str("a\"b".into())));
    let Some(Json::Arr(rounds)) = v.find("rounds") else {
        panic!("rounds");
    };
    assert_eq!(rounds[0].find("time_us"), Some(&Json::Num(150.0)));
    assert!(Json::parse("{\"a\": 1,}").is_none());
    assert!(Json::parse("{\"a\": 1} trailing").is_none());
}
