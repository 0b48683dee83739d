//! BPF task tracking against real processes: a process forked by a tracked process is reported
//! and tracked (from BPF, before userspace reads anything), its exit is reported and untracks it,
//! and forks of untracked processes are not reported.
//!
//! Each test drives its own `sh` child through stdin, so the fork happens exactly when the test
//! says: the shell starts `sleep` in the background (the grandchild), prints its pid, waits for a
//! second line, then kills and reaps it and exits.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use cr_user::bpf::{TaskEvent, TaskEventKind, TaskTracker};

/// Shell script: fork on the first line of stdin, report the grandchild's pid, end on the
/// second line.
const SCRIPT: &str = "read go; sleep 1000 & echo $!; read done; kill $!; wait";

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("vmtests need root: run cargo xtask test as root");
    }
}

/// A shell child of this test, killed (with its grandchild) by pid on drop.
struct Forker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    grandchild: Option<i32>,
}

impl Forker {
    fn spawn() -> Self {
        let mut child = Command::new("sh")
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
            grandchild: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Makes the shell fork `sleep`; returns the grandchild's pid.
    fn fork(&mut self) -> u32 {
        writeln!(self.stdin, "go").expect("write go");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read grandchild pid");
        let pid: i32 = line.trim().parse().expect("grandchild pid");
        self.grandchild = Some(pid);
        pid.cast_unsigned()
    }

    /// Lets the shell kill its grandchild and exit; waits for the shell.
    fn finish(&mut self) {
        writeln!(self.stdin, "done").expect("write done");
        let status = self.child.wait().expect("wait sh");
        assert!(status.success(), "sh exited with {status}");
        self.grandchild = None;
    }
}

impl Drop for Forker {
    fn drop(&mut self) {
        if let Some(pid) = self.grandchild {
            // SAFETY: plain integers; `pid` is the grandchild this test created (the shell is
            // still alive and has not reaped it, so the pid cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains until `done` holds for the events collected so far, or 5 s pass.
fn drain_until(
    tracker: &mut TaskTracker,
    seen: &mut Vec<TaskEvent>,
    mut done: impl FnMut(&[TaskEvent]) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        seen.extend(tracker.drain().expect("drain"));
        if done(seen) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is(ev: &TaskEvent, kind: TaskEventKind) -> bool {
    ev.kind() == Some(kind)
}

#[test]
fn fork_of_tracked_process_is_tracked_and_its_exit_reported() {
    require_root();
    let mut sh = Forker::spawn();
    let sh_pid = sh.pid();
    let mut tracker = TaskTracker::attach(sh_pid).expect("attach");
    assert_eq!(
        tracker.tracked_tgids().expect("tracked"),
        BTreeSet::from([sh_pid])
    );

    let grandchild = sh.fork();
    let mut events = Vec::new();
    let forked = drain_until(&mut tracker, &mut events, |evs| {
        evs.iter()
            .any(|e| is(e, TaskEventKind::Fork) && e.tgid == grandchild)
    });
    assert!(forked, "no Fork event for {grandchild}: {events:#?}");
    let fork = events
        .iter()
        .find(|e| is(e, TaskEventKind::Fork) && e.tgid == grandchild)
        .expect("fork event");
    assert_eq!(fork.parent_tgid, sh_pid);
    assert_eq!(fork.pid, grandchild, "a new process's pid is its tgid");
    // The grandchild was inserted by BPF itself, before this test could react.
    assert!(
        tracker
            .tracked_tgids()
            .expect("tracked")
            .contains(&grandchild),
        "grandchild {grandchild} not tracked"
    );

    sh.finish();
    let exited = drain_until(&mut tracker, &mut events, |evs| {
        [grandchild, sh_pid].iter().all(|&t| {
            evs.iter()
                .any(|e| is(e, TaskEventKind::Exit) && e.tgid == t)
        })
    });
    assert!(exited, "missing Exit events: {events:#?}");
    let fork_at = events
        .iter()
        .position(|e| is(e, TaskEventKind::Fork) && e.tgid == grandchild)
        .expect("fork");
    let exit_at = events
        .iter()
        .position(|e| is(e, TaskEventKind::Exit) && e.tgid == grandchild)
        .expect("exit");
    assert!(fork_at < exit_at, "exit reported before fork: {events:#?}");
    assert!(events[fork_at].ts_ns <= events[exit_at].ts_ns);
    let tracked = tracker.tracked_tgids().expect("tracked");
    assert!(
        !tracked.contains(&grandchild) && !tracked.contains(&sh_pid),
        "exited processes still tracked: {tracked:?}"
    );
    assert_eq!(tracker.lost_events().expect("stats"), 0);
}

#[test]
fn fork_of_untracked_process_is_not_reported() {
    require_root();
    // Track a process that does nothing, so the programs are attached and running.
    let idle = Forker::spawn();
    let mut tracker = TaskTracker::attach(idle.pid()).expect("attach");

    let mut other = Forker::spawn();
    let other_pid = other.pid();
    let grandchild = other.fork();
    other.finish();

    // The untracked shell has forked, exec'd and exited by now; give the ring buffer a moment
    // in case an event were (wrongly) in flight.
    std::thread::sleep(Duration::from_millis(50));
    let events = tracker.drain().expect("drain");
    let stray: Vec<_> = events
        .iter()
        .filter(|e| {
            e.tgid == grandchild
                || e.pid == grandchild
                || e.tgid == other_pid
                || e.parent_tgid == other_pid
        })
        .collect();
    assert!(stray.is_empty(), "untracked process reported: {stray:#?}");
    assert_eq!(
        tracker.tracked_tgids().expect("tracked"),
        BTreeSet::from([idle.pid()])
    );
}

#[test]
fn thread_of_tracked_process_is_a_thread_event() {
    require_root();
    // Track this test process itself and start a thread: same tgid, reported as Thread, not
    // tracked as a new process.
    let me = std::process::id();
    let mut tracker = TaskTracker::attach(me).expect("attach");
    let handle = std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        std::thread::sleep(Duration::from_millis(10));
        tid.cast_unsigned()
    });
    let tid = handle.join().expect("join");
    let mut events = Vec::new();
    let seen = drain_until(&mut tracker, &mut events, |evs| {
        evs.iter()
            .any(|e| is(e, TaskEventKind::ThreadExit) && e.pid == tid)
    });
    assert!(seen, "no ThreadExit for our thread: {events:#?}");
    let thread = events
        .iter()
        .find(|e| is(e, TaskEventKind::Thread) && e.pid == tid)
        .expect("Thread event");
    assert_eq!(thread.parent_tgid, me);
    assert_eq!(thread.tgid, me);
    assert_ne!(tid, me, "a thread has its own tid");
    // Other tests of this binary may spawn processes meanwhile (they are our forks too), so
    // look only at what concerns this thread's tid.
    assert!(
        !events
            .iter()
            .any(|e| is(e, TaskEventKind::Fork) && e.pid == thread.pid),
        "thread reported as a process: {events:#?}"
    );
    let tracked = tracker.tracked_tgids().expect("tracked");
    assert!(tracked.contains(&me) && !tracked.contains(&thread.pid));
}

#[test]
fn kerndat_probe_finds_everything_dump_and_restore_need() {
    require_root();
    let kerndat = cr_user::kerndat::probe();
    println!("{}", kerndat.render_table());
    let missing: Vec<_> = kerndat.missing_required();
    assert!(
        missing.is_empty(),
        "required features missing: {missing:#?}"
    );
    // DESIGN §3: on the project's machines BPF task tracking works end to end and every
    // mode is supported; soft-dirty is the one thing known to be absent.
    for name in [
        "bpf-task-tracking",
        "bpf-mmap-lock-guard",
        "uffd-wp-async",
        "uffd-events",
        "pagemap-scan",
        "timer-restore-ids",
        "kcmp",
    ] {
        let f = kerndat.feature(name).expect(name);
        assert!(f.is_ok(), "{name}: {f:?}");
    }
    // The probes clean up: no probe cgroup left behind.
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/unified")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fastcr-check-"))
        .collect();
    assert!(leftovers.is_empty(), "probe cgroups left: {leftovers:?}");
}
