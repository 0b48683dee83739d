//! Incremental images: `pre-dump` while the process runs, further pre-dumps and a final
//! `dump --prev-images-dir` that store only what changed, and a restore that reads through the
//! whole chain. `wl_dirty` keeps writing all along and verifies every page after the restore,
//! so a write lost anywhere in the chain fails the test.

use std::fs;
use std::os::unix::process::ExitStatusExt;

use serde_json::Value;
use vmtests::{
    Scratch, VisibleState, Workload, assert_one_line_error, assert_success, fastcr, require_root,
};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn chain(workload_args: &[&str], pre_dumps: usize, leave_running: bool) {
    require_root();
    let mut wl = Workload::spawn("wl_dirty", workload_args);
    wl.wait_counter_advances();
    let pid = wl.pid_arg();
    let before = VisibleState::capture(wl.pid());
    let dirs: Vec<Scratch> = (0..=pre_dumps)
        .map(|i| Scratch::new(&format!("chain{i}")))
        .collect();
    for i in 0..pre_dumps {
        let mut args = vec!["pre-dump", "-t", &pid, "-D", dirs[i].as_str(), "--json"];
        if i > 0 {
            args.extend_from_slice(&["--prev-images-dir", dirs[i - 1].as_str()]);
        }
        let out = fastcr(&args);
        assert_success(&out, "pre-dump");
        let s = json(&out);
        if i > 0 {
            assert!(
                s["pages_in_parent"].as_u64().unwrap_or(0) > 0,
                "pre-dump {i} referenced nothing: {s}"
            );
        }
        wl.assert_running_untraced();
        // Tracking lives in the process between runs, as one userfaultfd fd.
        let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            fds.iter()
                .filter(|t| t.as_str() == "anon_inode:[userfaultfd]")
                .count(),
            1,
            "fds after pre-dump {i}: {fds:?}"
        );
        // A pre-dump alone cannot be restored.
        let out = fastcr(&["restore", "-D", dirs[i].as_str(), "-d"]);
        assert_one_line_error(&out, "restore of a pre-dump image");
        wl.wait_counter_advances();
    }
    let last = dirs[pre_dumps].as_str();
    let mut args = vec![
        "dump",
        "-t",
        &pid,
        "-D",
        last,
        "--prev-images-dir",
        dirs[pre_dumps - 1].as_str(),
        "--json",
    ];
    if leave_running {
        args.push("--leave-running");
    }
    let out = fastcr(&args);
    assert_success(&out, "dump --prev-images-dir");
    let s = json(&out);
    let stored = s["pages_written"].as_u64().unwrap_or(u64::MAX);
    let in_parent = s["pages_in_parent"].as_u64().unwrap_or(0);
    assert!(
        in_parent > stored,
        "the final dump should mostly reference its parents: {s}"
    );
    if leave_running {
        wl.assert_running_untraced();
        // The tracking fd is gone again: the process is as it was before the first pre-dump.
        before.assert_same(&VisibleState::capture(wl.pid()), "after the final dump");
        wl.kill_and_reap();
    } else {
        let status = wl.reap();
        assert!(
            status.signal().is_some(),
            "dump should have killed the workload, but it {status}"
        );
    }
    let out = fastcr(&["restore", "-D", last, "-d"]);
    assert_success(&out, "restore through the chain");
    wl.adopt_restored();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

#[test]
fn one_pre_dump_then_dump() {
    chain(&["64", "10"], 1, false);
}

#[test]
fn three_pre_dumps_then_dump_leave_running() {
    chain(&["64", "10"], 3, true);
}

#[test]
fn chain_survives_mmap_munmap_mremap_churn() {
    chain(&["64", "10", "churn"], 2, false);
}

#[test]
fn dump_refuses_a_parent_without_tracking_and_a_stray_tracking_fd() {
    require_root();
    let wl = Workload::spawn("wl_dirty", &["16", "10"]);
    wl.wait_counter_advances();
    let pid = wl.pid_arg();
    let full = Scratch::new("full");
    assert_success(
        &fastcr(&["dump", "-t", &pid, "-D", full.as_str(), "--leave-running"]),
        "dump",
    );
    let child = Scratch::new("child");
    let out = fastcr(&[
        "dump",
        "-t",
        &pid,
        "-D",
        child.as_str(),
        "--prev-images-dir",
        full.as_str(),
    ]);
    assert_one_line_error(&out, "dump with a parent that has no tracking");
    wl.assert_running_untraced();
    let pre = Scratch::new("pre");
    assert_success(
        &fastcr(&["pre-dump", "-t", &pid, "-D", pre.as_str()]),
        "pre-dump",
    );
    // Without --prev-images-dir the tracking fd is an fd like any other, and refused by name.
    let out = fastcr(&["dump", "-t", &pid, "-D", child.as_str()]);
    assert_one_line_error(&out, "plain dump of a pre-dumped process");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--prev-images-dir"),
        "error does not point to --prev-images-dir: {err}"
    );
    wl.assert_running_untraced();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}
