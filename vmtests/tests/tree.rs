//! Process trees: `wl_tree` (a root, C1 with its child G in C1's process group, C2, and a zombie
//! Z; a pipe with data in flight from the root to C1; COW-shared memory; see
//! `workloads/wl_tree.c`) dumped with `fastcr dump -t ROOT` and brought back by `restore -d`,
//! `restore --pidns new -d` or a migration.
//!
//! Checked for every process of the tree, from /proc (as seen from the test):
//! - before the dump: the shape the workload built (parent, process group and session of each
//!   process; Z a zombie; C2 stopped by job control), and each live process's [`VisibleState`];
//! - after the restore: the same pids (or, in a new pid namespace, processes whose NSpid is
//!   `[outer, original pid]`), with the same parents, groups and sessions (mapped to the outer
//!   pids in a new namespace), Z a zombie again, C2 stopped again (its parent checks at the end
//!   that SIGCONT continues it), each live process running untraced with the same
//!   visible state (in a new namespace `Pid` and `Tgid` read from here are the outer pids);
//! - the root's counter advances, and on SIGTERM the tree verifies itself (sequence through the
//!   pipe, memory, ids, Z's exit status 42) and the root reports PASS.
//!
//! The test is a child subreaper: when an original tree is killed (by `fastcr dump`, by the
//! migration source or by the test), its root is reaped through [`Workload`] and its other
//! processes, reparented to the test, are reaped here (Z's status must still be 42). A
//! [`TreeGuard`] kills and reaps whatever is left of a tree when a test fails, so the next test
//! does not find strays.
//!
//! Modes: `dump` + `restore -d`, `dump --leave-running` (also with `--pre-copy auto`) +
//! `restore -d`, `dump` +
//! `restore --lazy -d`, `dump --leave-running` + `restore --pidns new -d` beside the running
//! original, and `migrate` (plain and `--lazy`) to `receive --pidns new` across a veth pair.
//! `dump --pre-copy auto --leave-running` pre-copies every process of the tree; the fork of a
//! new process during the rounds is covered by `precopy.rs`.
//!
//! Pipe fds are compared with their flags exactly: the shared pipes are inherited from fastcr,
//! as they were from the forks, so they do not gain `O_LARGEFILE` (which `open(2)` of
//! `/proc/PID/fd/N` would add); `tree_restore_keeps_pipe_fd_flags` checks that bit outright.
//!
//! Timing is never asserted: every wait has a generous hang guard.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmtests::migration::{Link, me};
use vmtests::restored::{descends_from_test, find_in_new_pidns, nspid, pidns_init_of, wait_until};
use vmtests::roundtrip::dump;
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_one_line_error,
    assert_success, fastcr, require_root, status_field,
};

/// Hang guard for one step (a restore, a migration, a process exiting): never a timing assertion.
const GUARD: Duration = Duration::from_secs(300);
/// wl_tree's SIZE_MIB: the root's memory, COW-shared with its children at the dump.
const SIZE_MIB: &str = "32";
/// The port `receive` listens on; every test has its own pair of network namespaces.
const PORT: u16 = 7421;

// ---------------------------------------------------------------------------------------------
// The tree's processes

/// The pids of wl_tree's processes, from STATEDIR/pids ("root c1 c2 z g").
#[derive(Clone, Copy, Debug)]
struct TreePids {
    root: i32,
    c1: i32,
    c2: i32,
    z: i32,
    g: i32,
}

impl TreePids {
    fn read(wl: &Workload) -> TreePids {
        let path = wl.statedir().join("pids");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        let v: Vec<i32> = text
            .split_whitespace()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("pids {text:?}: {e}")))
            .collect();
        let [root, c1, c2, z, g] = v[..] else {
            panic!("pids file {text:?}: want 5 pids");
        };
        assert_eq!(root, wl.pid(), "the pids file names another root");
        TreePids { root, c1, c2, z, g }
    }

    /// Every process, parents before children.
    fn all(&self) -> [(&'static str, i32); 5] {
        [
            ("root", self.root),
            ("c1", self.c1),
            ("g", self.g),
            ("c2", self.c2),
            ("z", self.z),
        ]
    }

    /// The processes that run (all but Z).
    fn live(&self) -> [(&'static str, i32); 4] {
        [
            ("root", self.root),
            ("c1", self.c1),
            ("g", self.g),
            ("c2", self.c2),
        ]
    }

    /// Everything but the root.
    fn descendants(&self) -> [(&'static str, i32); 4] {
        [
            ("c1", self.c1),
            ("g", self.g),
            ("c2", self.c2),
            ("z", self.z),
        ]
    }
}

/// State, parent, process group and session of a process, from /proc/PID/stat (pids as seen
/// from the test's pid namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    state: char,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

impl Ids {
    fn read(pid: i32) -> Option<Ids> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest: Vec<&str> = text
            .get(text.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        // rest[0] is field 3 (state), then ppid, pgrp, session.
        Some(Ids {
            state: rest.first()?.chars().next()?,
            ppid: rest.get(1)?.parse().ok()?,
            pgid: rest.get(2)?.parse().ok()?,
            sid: rest.get(3)?.parse().ok()?,
        })
    }
}

/// Asserts the shape wl_tree builds. `here` maps a pid of the original tree to the pid, in the
/// test's namespace, of the process to check (itself, or its copy in a new pid namespace);
/// `root_ppid` is the root's expected parent (the test, as spawner or subreaper). Live processes
/// must run untraced; Z must be a zombie.
fn assert_shape(pids: &TreePids, here: &dyn Fn(i32) -> i32, root_ppid: i32, context: &str) {
    let (root, c1) = (here(pids.root), here(pids.c1));
    // name, pid, parent, group, session
    let expected = [
        ("root", pids.root, root_ppid, root, root),
        ("c1", pids.c1, root, c1, root),
        ("g", pids.g, c1, c1, root),
        ("c2", pids.c2, root, root, root),
        ("z", pids.z, root, root, root),
    ];
    for (name, pid, ppid, pgid, sid) in expected {
        let at = here(pid);
        let got = Ids::read(at)
            .unwrap_or_else(|| panic!("{context}: no process {name} (pid {at}, originally {pid})"));
        assert_eq!(
            (got.ppid, got.pgid, got.sid),
            (ppid, pgid, sid),
            "{context}: {name} (pid {at}): (parent, group, session) {got:?}"
        );
        if name == "z" {
            assert_eq!(got.state, 'Z', "{context}: z (pid {at}) is not a zombie");
        } else if name == "c2" {
            // Stopped by job control (SIGSTOP from the root), and so it must stay.
            assert_eq!(
                got.state, 'T',
                "{context}: c2 (pid {at}) is not stopped by job control"
            );
            assert_eq!(
                status_field(at, "TracerPid").as_deref(),
                Some("0"),
                "{context}: c2 (pid {at}) is traced"
            );
        } else {
            assert!(
                !matches!(got.state, 'Z' | 'X' | 't' | 'T'),
                "{context}: {name} (pid {at}) is in state {}",
                got.state
            );
            assert_eq!(
                status_field(at, "TracerPid").as_deref(),
                Some("0"),
                "{context}: {name} (pid {at}) is traced"
            );
        }
    }
}

/// The visible state of every live process of the tree, by original pid.
fn capture(pids: &TreePids, here: &dyn Fn(i32) -> i32) -> BTreeMap<i32, VisibleState> {
    pids.live()
        .iter()
        .map(|&(_, pid)| {
            let at = here(pid);
            let mut st = VisibleState::capture(at);
            if at != pid {
                // Read from here, a copy in a new pid namespace shows its outer pid.
                for key in ["Pid", "Tgid"] {
                    assert_eq!(
                        st.status.get(key),
                        Some(&at.to_string()),
                        "status {key} of pid {at}"
                    );
                    st.status.insert(key.to_string(), pid.to_string());
                }
            }
            (pid, st)
        })
        .collect()
}

/// `O_LARGEFILE` in fdinfo `flags:` (octal).
const O_LARGEFILE: u32 = 0o100_000;

/// Compares the visible state of every live process, fd flags included.
fn assert_same_states(
    pids: &TreePids,
    before: &BTreeMap<i32, VisibleState>,
    after: &BTreeMap<i32, VisibleState>,
    context: &str,
) {
    for (name, pid) in pids.live() {
        before[&pid].assert_same(&after[&pid], &format!("{context}: {name} (pid {pid})"));
    }
}

/// The exit status of a wl_tree process the test reaped, as text.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// Records the processes of a tree (pid and start time) and, on drop, SIGKILLs those still alive
/// that descend from the test and reaps those that are the test's children, so a failing test
/// leaves nothing behind. Processes that are gone, or whose pid names another process now, are
/// left alone.
struct TreeGuard {
    procs: Vec<(i32, u64)>,
}

impl TreeGuard {
    fn new() -> TreeGuard {
        TreeGuard { procs: Vec::new() }
    }

    fn watch(&mut self, pid: i32) {
        if let Some(stat) = ProcStat::read(pid) {
            self.procs.push((pid, stat.starttime));
        }
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut left = false;
            for &(pid, starttime) in &self.procs {
                let Some(stat) = ProcStat::read(pid).filter(|s| s.starttime == starttime) else {
                    continue;
                };
                left = true;
                if !matches!(stat.state, 'Z' | 'X') && descends_from_test(pid) {
                    // SAFETY: kill takes integers; the pid names the process recorded (same
                    // start time), which descends from the test.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if stat.ppid == me() {
                    let mut status = 0;
                    // SAFETY: valid out pointer; WNOHANG never blocks.
                    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                }
            }
            if !left || Instant::now() > deadline {
                return;
            }
            sleep(Duration::from_millis(10));
        }
    }
}

/// Spawns wl_tree, waits for its loop, checks its shape; returns it with its pids, a guard
/// watching them and the visible state of its live processes.
fn spawn_tree() -> (Workload, TreePids, TreeGuard, BTreeMap<i32, VisibleState>) {
    require_root();
    let wl = Workload::spawn("wl_tree", &[SIZE_MIB]);
    let pids = TreePids::read(&wl);
    let mut guard = TreeGuard::new();
    for (_, pid) in pids.all() {
        guard.watch(pid);
    }
    wl.wait_counter_advances();
    assert_shape(&pids, &|p| p, me(), "before the dump");
    let before = capture(&pids, &|p| p);
    eprintln!("wl_tree pids: {pids:?}");
    (wl, pids, guard, before)
}

/// Reaps the processes of the original tree other than its root, once the root is gone: each is
/// reparented to the test (a subreaper) and reaped as it becomes the test's child. With `kill`,
/// the test SIGKILLs each live one once it is its child; without, they must end by themselves
/// (killed by fastcr) and each live one must have been SIGKILLed. Z must report its status 42.
fn reap_descendants(pids: &TreePids, kill: bool, context: &str) {
    let mut pending: Vec<(&str, i32, u64)> = pids
        .descendants()
        .iter()
        .filter_map(|&(name, pid)| ProcStat::read(pid).map(|s| (name, pid, s.starttime)))
        .collect();
    let deadline = Instant::now() + GUARD;
    while !pending.is_empty() {
        pending.retain(|&(name, pid, starttime)| {
            let Some(stat) = ProcStat::read(pid).filter(|s| s.starttime == starttime) else {
                eprintln!("{context}: {name} (pid {pid}) was reaped by another process");
                return false;
            };
            if stat.ppid != me() {
                return true;
            }
            if kill && stat.state != 'Z' {
                // SAFETY: the pid is our unreaped child (checked above): it names this process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let mut raw = 0;
            // SAFETY: valid out pointer; WNOHANG never blocks.
            let rc = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
            if rc == 0 {
                return true;
            }
            assert_eq!(
                rc,
                pid,
                "{context}: waitpid({pid}): {}",
                std::io::Error::last_os_error()
            );
            let status = ExitStatus::from_raw(raw);
            if name == "z" {
                assert_eq!(
                    status.code(),
                    Some(42),
                    "{context}: the original z {}",
                    describe(status)
                );
            } else if !kill {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "{context}: the original {name} (pid {pid}) must be SIGKILLed by fastcr, \
                     but it {}",
                    describe(status)
                );
            }
            false
        });
        assert!(
            Instant::now() < deadline,
            "{context}: the original processes {pending:?} did not end within {GUARD:?}"
        );
        sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs the original tree and reaps all of it: the root first (our child), then each
/// descendant once it is reparented to the test.
fn kill_original_tree(wl: &mut Workload, pids: &TreePids) {
    wl.kill_and_reap();
    reap_descendants(pids, true, "killing the original tree");
}

/// After `fastcr dump` (which kills the tree): reaps the root and every other process, all of
/// which fastcr must have SIGKILLed.
fn reap_dumped_tree(wl: &mut Workload, pids: &TreePids, context: &str) {
    let status = wl.reap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{context}: the root must be SIGKILLed, but it {}",
        describe(status)
    );
    reap_descendants(pids, false, context);
}

/// Once the root has verified the tree and exited, none of its processes may be left.
fn assert_tree_gone(pids: &TreePids, here: &dyn Fn(i32) -> i32, context: &str) {
    for (name, pid) in pids.all() {
        let at = here(pid);
        wait_until(
            &format!("{context}: {name} (pid {at}) is gone"),
            GUARD,
            || ProcStat::read(at).is_none(),
        );
    }
}

/// The one JSON object line of a fastcr `--json` stdout.
fn json_line(stdout: &str, what: &str) -> Value {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("{what}: no JSON line on stdout: {stdout:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} --json {line:?}: {e}"))
}

fn num(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned {pointer} in {v}"))
}

/// The images must hold P1 with the sequence numbers in flight at the dump (C1 always leaves
/// some queued): `fastcr show --json` lists each saved pipe with its data.
fn assert_pipe_data_in_flight(images: &Scratch) {
    let out = fastcr(&["show", images.as_str(), "--json"]);
    assert_success(&out, "show --json");
    let shown: Value = serde_json::from_slice(&out.stdout).expect("show --json prints JSON");
    let mut lens = Vec::new();
    let mut stack = vec![&shown];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(pipes)) = map.get("pipes") {
                    lens.extend(
                        pipes
                            .iter()
                            .filter_map(|p| p.get("data")?.as_array().map(Vec::len)),
                    );
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    eprintln!("pipe data in the images: {lens:?} bytes");
    assert!(
        lens.iter().any(|&n| n >= 8 && n % 8 == 0),
        "no pipe with whole sequence numbers in flight in the images: {lens:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Restore in the test's pid namespace

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `dump` (kills the tree), `restore -d`.
    Dump,
    /// `dump --leave-running`, the original keeps running and is then killed, `restore -d`.
    LeaveRunning,
    /// `dump`, `restore --lazy -d`.
    Lazy,
    /// `dump --pre-copy auto --leave-running --json` (every process of the tree pre-copied),
    /// then as `LeaveRunning`.
    PreCopy,
}

/// Dumps wl_tree the way `mode` says, restores it with `restore -d` and checks everything the
/// module doc lists; with `no_largefile`, also that no restored pipe fd has `O_LARGEFILE`.
fn dump_restore(mode: Mode, no_largefile: bool) {
    let (mut wl, pids, mut guard, before) = spawn_tree();
    let images = Scratch::new("tree-img");
    let root = wl.pid_arg();
    let context = format!("{mode:?}");

    match mode {
        Mode::Dump | Mode::Lazy => {
            assert_success(
                &fastcr(&["dump", "-t", &root, "-D", images.as_str()]),
                "dump",
            );
            reap_dumped_tree(&mut wl, &pids, "after dump");
            assert_pipe_data_in_flight(&images);
        }
        Mode::LeaveRunning | Mode::PreCopy => {
            let mut args = vec![
                "dump",
                "-t",
                &root,
                "-D",
                images.as_str(),
                "--leave-running",
            ];
            if mode == Mode::PreCopy {
                args.extend(["--pre-copy", "auto", "--json"]);
            }
            let out = fastcr(&args);
            assert_success(&out, &args.join(" "));
            if mode == Mode::PreCopy {
                let stats = json_line(&String::from_utf8_lossy(&out.stdout), "dump --pre-copy");
                eprintln!("dump --pre-copy stats: {stats}");
                assert_eq!(stats["precopy_mode"], "uffd-wp-async", "{stats}");
                // The root, C1, G and C2: every live process.
                assert_eq!(stats["precopy_processes"], 4, "{stats}");
            }
            assert_shape(&pids, &|p| p, me(), "after dump --leave-running");
            wl.assert_running_untraced();
            assert_same_states(
                &pids,
                &before,
                &capture(&pids, &|p| p),
                "after dump --leave-running",
            );
            kill_original_tree(&mut wl, &pids);
            assert_pipe_data_in_flight(&images);
        }
    }
    let mut args = vec!["restore", "-D", images.as_str(), "-d"];
    if matches!(mode, Mode::Lazy) {
        args.extend(["--lazy", "--json"]);
    }
    let out = fastcr(&args);
    assert_success(&out, &args.join(" "));
    if matches!(mode, Mode::Lazy) {
        let stats = json_line(&String::from_utf8_lossy(&out.stdout), "restore --lazy");
        eprintln!("restore --lazy stats: {stats}");
        // The memory of the whole tree (at least the root's SIZE_MIB) came in lazily.
        assert!(num(&stats, "/lazy/lazy_pages") >= 32 << 8, "{stats}");
        assert!(num(&stats, "/lazy/pages_placed") > 0, "{stats}");
    }
    // The restored processes have the same pids, but are other processes (start times).
    for (_, pid) in pids.all() {
        guard.watch(pid);
    }
    wl.adopt_restored();
    assert_no_stray_children(&format!("{context}: after restore -d"));
    assert_shape(&pids, &|p| p, me(), &format!("{context}: after restore"));
    let after = capture(&pids, &|p| p);
    let what = format!("{context}: after restore");
    assert_same_states(&pids, &before, &after, &what);
    if no_largefile {
        for (pid, st) in &after {
            for (fd, f) in st.fds.iter().filter(|(_, f)| f.target.starts_with("pipe:")) {
                let flags = u32::from_str_radix(&f.flags, 8)
                    .unwrap_or_else(|e| panic!("pid {pid} fd {fd}: flags {:?}: {e}", f.flags));
                assert_eq!(
                    flags & O_LARGEFILE,
                    0,
                    "pid {pid} fd {fd}: a restored pipe fd has O_LARGEFILE ({})",
                    f.flags
                );
            }
        }
    }
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_tree_gone(&pids, &|p| p, &context);
    assert_no_stray_children(&format!("tree {context}"));
}

#[test]
fn tree_dump_restore() {
    dump_restore(Mode::Dump, false);
}

/// The restored pipe fds must have exactly the file flags they had (F_GETFL shows them), and
/// never `O_LARGEFILE`, which pipe(2) never sets.
#[test]
fn tree_restore_keeps_pipe_fd_flags() {
    dump_restore(Mode::Dump, true);
}

#[test]
fn tree_leave_running_restore() {
    dump_restore(Mode::LeaveRunning, false);
}

#[test]
fn tree_lazy_restore() {
    dump_restore(Mode::Lazy, false);
}

/// `dump --pre-copy auto`: each process of the tree has its own tracking and shadow; the
/// restored tree holds the frozen moment (the pipe sequence has no gap, memory verifies).
#[test]
fn tree_precopy_restore() {
    dump_restore(Mode::PreCopy, false);
}

// ---------------------------------------------------------------------------------------------
// Copies in a new pid namespace

/// A copy of the tree in a new pid namespace below the test, found by the original pids.
struct Copy {
    /// Original pid → pid here (the copy's outer pid).
    outer: BTreeMap<i32, i32>,
    /// Init (pid 1) of the copy's namespace, as a pid here; the test's child once the fastcr
    /// that made it has exited.
    init: i32,
}

impl Copy {
    /// Finds every process of the copy: NSpid `[outer, original pid]`, descending from the
    /// test.
    fn find(pids: &TreePids, guard: &mut TreeGuard) -> Copy {
        let mut outer = BTreeMap::new();
        for (name, pid) in pids.all() {
            let at = find_in_new_pidns(pid).unwrap_or_else(|| {
                panic!("no copy of {name} (pid {pid}) in a new pid namespace below the test")
            });
            assert_ne!(at, pid, "the copy of {name} must have another pid here");
            assert_eq!(
                nspid(at),
                Some(vec![at, pid]),
                "NSpid of the copy of {name}"
            );
            guard.watch(at);
            outer.insert(pid, at);
        }
        let root = outer[&pids.root];
        let init = pidns_init_of(root)
            .unwrap_or_else(|| panic!("no init (pid 1) in the namespace of the copy {root}"));
        guard.watch(init);
        let init_stat = ProcStat::read(init).expect("the namespace's init is gone");
        assert_eq!(
            init_stat.ppid,
            me(),
            "init {init} ({init_stat:?}) is not the test's child after fastcr exited"
        );
        eprintln!("copy: {outer:?} (original → here), init {init}");
        Copy { outer, init }
    }

    fn here(&self) -> impl Fn(i32) -> i32 + '_ {
        |pid| self.outer[&pid]
    }

    /// Checks the copy's shape and visible state against the original's before the dump.
    fn assert_same(&self, pids: &TreePids, before: &BTreeMap<i32, VisibleState>, context: &str) {
        // The copy's root was fastcr's child; fastcr has exited, so the kernel reparented the
        // root to the nearest subreaper in fastcr's namespace: the test.
        assert_shape(pids, &self.here(), me(), context);
        assert_same_states(pids, before, &capture(pids, &self.here()), context);
    }

    /// SIGTERMs the copy's root (the test's child), which verifies the tree and must PASS;
    /// then reaps the namespace's init, which exits once the namespace is empty.
    fn terminate_and_verify(&self, wl: &Workload, pids: &TreePids) {
        let root = self.outer[&pids.root];
        let stat = ProcStat::read(root).expect("the copy's root is gone");
        assert_eq!(
            stat.ppid,
            me(),
            "the copy's root is not the test's child: {stat:?}"
        );
        // SAFETY: our unreaped child (checked above): the pid names the copy's root.
        let rc = unsafe { libc::kill(root, libc::SIGTERM) };
        assert!(rc == 0, "SIGTERM: {}", std::io::Error::last_os_error());
        let status = reap_child(root, "the copy's root");
        let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
        assert!(
            status.success() && result == "PASS\n",
            "the copy {}; result {:?}; log: {}",
            describe(status),
            result.trim_end(),
            wl.log()
        );
        assert_tree_gone(pids, &self.here(), "the copy");
        let status = reap_child(self.init, "the copy's namespace init");
        assert!(
            status.success(),
            "the namespace's init {}",
            describe(status)
        );
    }
}

/// Waits for the test's child `pid` to exit and reaps it.
fn reap_child(pid: i32, what: &str) -> ExitStatus {
    let deadline = Instant::now() + GUARD;
    loop {
        let mut raw = 0;
        // SAFETY: valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
        if rc == pid {
            return ExitStatus::from_raw(raw);
        }
        assert!(
            rc == 0,
            "waitpid({pid}) for {what}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) did not exit within {GUARD:?}"
        );
        sleep(Duration::from_millis(10));
    }
}

/// `dump --leave-running`, then `restore --pidns new -d` while the original runs: a copy with
/// the same pids inside its namespace; the original is killed, the copy PASSes.
#[test]
fn tree_pidns_new() {
    let (mut wl, pids, mut guard, before) = spawn_tree();
    let images = Scratch::new("tree-pidns-img");
    dump(&wl, &images, &["--leave-running"]);
    assert_shape(&pids, &|p| p, me(), "after dump --leave-running");
    wl.assert_running_untraced();

    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]),
        "restore --pidns new -d",
    );
    assert_pipe_data_in_flight(&images);
    let copy = Copy::find(&pids, &mut guard);
    copy.assert_same(&pids, &before, "the copy in a new pid namespace");
    // Both trees run side by side.
    assert_shape(&pids, &|p| p, me(), "the original beside its copy");
    wl.assert_running_untraced();

    kill_original_tree(&mut wl, &pids);
    wl.wait_counter_advances_as(copy.outer[&pids.root]);
    copy.terminate_and_verify(&wl, &pids);
    assert_no_stray_children("tree_pidns_new");
}

// ---------------------------------------------------------------------------------------------
// Migration

/// Migrates wl_tree (`migrate FLAGS` in network namespace a, `receive --pidns new` in b): the
/// source must kill the original tree; the copy has the original's shape and visible state and
/// PASSes.
fn migrate_tree(flags: &[&str]) {
    let (mut wl, pids, mut guard, before) = spawn_tree();
    let link = Link::new("tree", PORT);
    let token = link.token("token");
    let mut recv = link.receive(&token, true, GUARD);
    let mut mig = link.migrate(wl.pid(), &token, flags);
    let mig_status = mig.wait(GUARD);
    if !mig_status.success() {
        // Say what fastcr answered before anything else (e.g. a mode not supported for trees).
        assert_one_line_error(&mig.as_output(), &mig.what);
        panic!("migrate failed: {}\n{}", mig.output(), recv.output());
    }
    let recv_status = recv.wait(GUARD);
    assert!(recv_status.success(), "receive failed: {}", recv.output());
    let mstats = json_line(&mig.stdout(), &mig.what);
    let rstats = json_line(&recv.stdout(), &recv.what);
    eprintln!("migrate stats: {mstats}\nreceive stats: {rstats}");
    let lazy = flags.contains(&"--lazy");
    assert_eq!(mstats.get("lazy"), Some(&Value::Bool(lazy)), "{mstats}");
    if lazy {
        // The memory of the whole tree (at least the root's SIZE_MIB) was sent after the resume.
        assert!(num(&rstats, "/lazy/lazy_pages") >= 32 << 8, "{rstats}");
        assert!(num(&mstats, "/dest/pages_placed") > 0, "{mstats}");
    } else {
        assert!(num(&rstats, "/image_bytes") >= 32 << 20, "{rstats}");
    }
    assert_eq!(
        num(&rstats, "/restore/pid"),
        u64::try_from(pids.root).expect("positive pid"),
        "receive's restore.pid"
    );

    reap_dumped_tree(&mut wl, &pids, "after the migration");
    let copy = Copy::find(&pids, &mut guard);
    assert_eq!(
        num(&rstats, "/pid_here"),
        u64::try_from(copy.outer[&pids.root]).expect("positive pid"),
        "receive's pid_here"
    );
    copy.assert_same(&pids, &before, "the migrated copy");
    wl.wait_counter_advances_as(copy.outer[&pids.root]);
    copy.terminate_and_verify(&wl, &pids);
    assert_no_stray_children(&format!("migrate {}", flags.join(" ")));
}

#[test]
fn tree_migrate() {
    migrate_tree(&[]);
}

#[test]
fn tree_migrate_lazy() {
    migrate_tree(&["--lazy"]);
}
