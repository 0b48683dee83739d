//! A side of a lazy live migration killed during the lazy phase (the copy already runs on the
//! destination while its memory still arrives): set up as in `migrate.rs`, `receive --pidns new`
//! in namespace b, `migrate --lazy` in namespace a, across a veth ([`Link`]).
//!
//! Every test checks the workload itself, not only fastcr's exit codes:
//! - `receive` killed: the copy dies with it, and the source thaws the original, which runs on
//!   untraced and PASSes;
//! - `migrate` killed: `receive` kills the copy and reports the lost link, and the original stays
//!   stopped (by the SIGSTOP queued before the hand-over) until the test continues it; then it
//!   PASSes.
//!
//! A kill lands inside the lazy phase only if the phase is long enough: each test tries growing
//! sizes of wl_heap until one did, and fails if none did.
//!
//! Timing is never asserted: every wait has a generous hang guard, and measured durations are
//! only printed.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmtests::background::Bg;
use vmtests::migration::{
    GUARD, Link, NsCopy, me, reap_killed_original, receive, result, wait_one_line_error,
};
use vmtests::restored::{Restored, find_in_new_pidns, pidns_init_of, reap_within, wait_until};
use vmtests::{ProcStat, Workload, assert_no_stray_children, require_root, status_field};

/// The port `receive` listens on; every test has its own pair of namespaces.
const PORT: u16 = 7411;
/// fastcr's link timeout (`cr_user::migrate::LINK_TIMEOUT`); only used to print how long a side
/// took next to it.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls for the copy of `wl` in a new pid namespace below the test (inner pid == the
/// original's); `None` once `give_up` says so.
fn wait_for_copy(wl: &Workload, mut give_up: impl FnMut() -> bool) -> Option<i32> {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(outer) = find_in_new_pidns(wl.pid()) {
            return Some(outer);
        }
        if give_up() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "no copy of pid {} in a new pid namespace within {GUARD:?}",
            wl.pid()
        );
        sleep(Duration::from_millis(2));
    }
}

/// Whether the copy runs on its own: restored name, not stopped, not traced (the destination
/// detached it after `Go`, i.e. it was resumed).
fn copy_resumed(outer: i32, name: &str) -> bool {
    ProcStat::read(outer)
        .is_some_and(|s| s.comm == name && !matches!(s.state, 't' | 'T' | 'Z' | 'X'))
        && status_field(outer, "TracerPid").as_deref() == Some("0")
}

/// Sends SIGCONT to the original, which must still be our child.
fn continue_original(wl: &Workload) {
    let stat = ProcStat::read(wl.pid()).expect("the original is gone");
    assert_eq!(stat.ppid, me(), "the original is not our child: {stat:?}");
    // SAFETY: our unreaped child (checked above): the PID names the original.
    let rc = unsafe { libc::kill(wl.pid(), libc::SIGCONT) };
    assert!(rc == 0, "SIGCONT: {}", std::io::Error::last_os_error());
}

/// How a side the test SIGKILLed ended, for messages: killed, or exited before the kill.
fn how_it_ended(status: ExitStatus) -> String {
    if status.signal() == Some(libc::SIGKILL) {
        "killed".to_string()
    } else {
        format!("it had exited: {status}")
    }
}

/// Sizes tried, in MiB, until a kill lands inside the lazy phase.
const LAZY_KILL_SIZES: &[&str] = &["1024", "2048", "4096"];

/// What became of one attempt at killing a side during the lazy phase.
enum Attempt {
    /// The kill landed during the lazy phase and everything was checked.
    Tested,
    /// The lazy phase was already over: nothing was tested; try a bigger size.
    TooLate,
}

/// The side of a lazy migration a test kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// `receive`.
    Dest,
    /// `migrate`.
    Source,
}

/// A lazy migration of wl_heap whose copy runs (or whose `Victim` has already exited).
struct LazyRun {
    /// Keeps the namespaces and token files until the test is done.
    _link: Link,
    wl: Workload,
    recv: Bg,
    mig: Bg,
    copy: Restored,
    outer: i32,
    /// Pid 1 of the copy's namespace: receive's child until receive dies, then ours.
    init: i32,
}

/// Starts `migrate --lazy` of wl_heap SIZE_MIB over a new link named `tag` and waits until the
/// copy is resumed or `victim` has exited (a side exiting before any copy appears fails).
fn start_lazy_until_resumed(tag: &str, size_mib: &str, victim: Victim, extra: &[&str]) -> LazyRun {
    let link = Link::new(tag, PORT);
    let token = link.token("token");
    let wl = Workload::spawn("wl_heap", &[size_mib]);
    wl.wait_counter_advances();

    let mut recv = receive(&link, &token, true);
    let mut args = vec!["--lazy"];
    args.extend_from_slice(extra);
    let mut mig = link.migrate(wl.pid(), &token, &args);
    let outer = wait_for_copy(&wl, || {
        mig.try_wait().is_some() || recv.try_wait().is_some()
    })
    .unwrap_or_else(|| {
        panic!(
            "no copy appeared before a side exited:\n{}\n{}",
            mig.output(),
            recv.output()
        )
    });
    let copy = Restored::new(outer);
    wait_until("the copy is resumed", GUARD, || {
        copy_resumed(outer, "wl_heap")
            || match victim {
                Victim::Dest => recv.try_wait().is_some(),
                Victim::Source => mig.try_wait().is_some(),
            }
    });
    let init = pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init in the namespace of the copy {outer}"));
    LazyRun {
        _link: link,
        wl,
        recv,
        mig,
        copy,
        outer,
        init,
    }
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `receive` as soon as the copy runs; checks that
/// the copy dies, that the source reports the lost link and thaws the original, which PASSes.
fn kill_dest_during_lazy_phase(size_mib: &str) -> Attempt {
    let LazyRun {
        _link,
        mut wl,
        mut recv,
        mut mig,
        copy,
        outer,
        init,
    } = start_lazy_until_resumed("killdst", size_mib, Victim::Dest, &[]);
    let rss_at_kill = status_field(outer, "RssAnon");
    let recv_status = recv.kill_and_reap();
    let killed_at = Instant::now();
    let done_before_kill = recv.stdout().contains('{');
    eprintln!(
        "{size_mib} MiB: receive killed with the copy at RssAnon {rss_at_kill:?} ({}); stats \
         printed before: {done_before_kill}",
        how_it_ended(recv_status)
    );

    // Only `Done` (every page in place, the namespace released) lets migrate succeed.
    let mig_status = mig.wait(GUARD);
    if mig_status.success() {
        eprintln!(
            "{size_mib} MiB: the lazy phase was over before receive was killed: {}",
            mig.output()
        );
        reap_killed_original(&mut wl);
        // The copy may run on (released): kill it and reap what is ours.
        drop(NsCopy::from_parts(copy, init));
        return Attempt::TooLate;
    }
    assert!(
        !done_before_kill,
        "receive had finished, yet migrate failed: {}\n{}",
        recv.output(),
        mig.output()
    );
    // receive is reaped: the copy (dead or alive) and init descend from the test.
    wait_until("the copy is dead", GUARD, || !copy.is_alive());
    let copy_status = copy
        .stat()
        .filter(|s| s.ppid == me())
        .map(|_| reap_within(outer, GUARD, "the dead copy"));
    eprintln!("the copy died: {copy_status:?}");
    if ProcStat::read(init).is_some_and(|s| s.ppid == me()) {
        let status = reap_within(init, GUARD, "the copy's namespace init");
        eprintln!("the copy's namespace init {status}");
    }
    if let Some(status) = copy_status {
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the copy must be SIGKILLed with its destination, but it {status}"
        );
    }
    assert!(
        result(&wl).is_empty(),
        "the copy ran to its end: {:?}",
        result(&wl)
    );
    let line = wait_one_line_error(&mut mig);
    eprintln!(
        "migrate failed {:?} after the kill: {line}",
        killed_at.elapsed()
    );
    assert!(
        line.contains("the original was thawed"),
        "migrate should say it thawed the original: {line}"
    );
    wl.assert_running_untraced();
    wl.terminate_and_verify();
    Attempt::Tested
}

/// Runs `attempt` with each of [`LAZY_KILL_SIZES`] until a kill of `victim` lands inside the
/// lazy phase, checking for stray children after each; panics if none did.
fn until_tested(victim: Victim, attempt: &dyn Fn(&str) -> Attempt) {
    require_root();
    let (side, command) = match victim {
        Victim::Dest => ("destination", "receive"),
        Victim::Source => ("source", "migrate"),
    };
    for size in LAZY_KILL_SIZES {
        let attempt = attempt(size);
        assert_no_stray_children(&format!("{side} killed ({size} MiB)"));
        if matches!(attempt, Attempt::Tested) {
            return;
        }
    }
    panic!(
        "the lazy phase was always over before {command} could be killed ({LAZY_KILL_SIZES:?} \
         MiB): the {side}'s death was never tested"
    );
}

#[test]
fn migrate_dest_dies_during_lazy_phase_kills_copy() {
    until_tested(Victim::Dest, &kill_dest_during_lazy_phase);
}

/// Lazy migration of wl_heap SIZE_MIB; SIGKILLs `migrate` as soon as the copy runs; checks that
/// receive kills the copy and fails with the lost link, and that the original is left stopped
/// (then continued by the test, it PASSes).
fn kill_source_during_lazy_phase(size_mib: &str, extra: &[&str]) -> Attempt {
    let LazyRun {
        _link,
        mut wl,
        mut recv,
        mut mig,
        copy,
        outer,
        init,
    } = start_lazy_until_resumed("killsrc", size_mib, Victim::Source, extra);
    let rss_at_kill = status_field(outer, "RssAnon");
    let mig_status = mig.kill_and_reap();
    let killed_at = Instant::now();
    eprintln!(
        "{size_mib} MiB: migrate killed with the copy at RssAnon {rss_at_kill:?} ({})",
        how_it_ended(mig_status)
    );
    let recv_status = recv.wait(GUARD);
    eprintln!(
        "receive ended {:?} after the kill (link timeout {LINK_TIMEOUT:?}): {}",
        killed_at.elapsed(),
        recv.output()
    );
    if recv_status.success() {
        // Every page was in place before the kill: the copy runs on, complete.
        eprintln!("{size_mib} MiB: the lazy phase was over before migrate was killed");
        // The original is stopped (queued SIGSTOP) or was killed by the source: either way,
        // only the copy runs; end it and the original.
        drop(NsCopy::from_parts(copy, init));
        drop(wl);
        return Attempt::TooLate;
    }
    assert!(
        mig_status.signal() == Some(libc::SIGKILL),
        "migrate exited by itself before the kill ({mig_status}) although receive failed: {}\n{}",
        mig.output(),
        recv.output()
    );
    let line = wait_one_line_error(&mut recv);
    eprintln!("receive: {line}");
    assert!(
        line.contains("link") && line.contains("lost"),
        "receive should report the lost link: {line}"
    );
    // receive killed and reaped the copy (its child) before it exited.
    wait_until("the copy is gone", GUARD, || copy.stat().is_none());
    drop(copy);
    assert!(
        result(&wl).is_empty(),
        "the copy ran to its end: {:?}",
        result(&wl)
    );

    // The original: detached when migrate died, and stopped by the SIGSTOP queued before the
    // hand-over, never running beside the copy.
    wait_until("the original is detached", GUARD, || {
        status_field(wl.pid(), "TracerPid").as_deref() == Some("0")
    });
    let stat = ProcStat::read(wl.pid()).expect("the original is gone");
    assert_eq!(
        stat.state, 'T',
        "the original must be left stopped after the source died: {stat:?}"
    );
    let counter = wl.counter();
    sleep(Duration::from_millis(500));
    assert_eq!(
        wl.counter(),
        counter,
        "the stopped original advanced its counter"
    );
    assert_eq!(
        ProcStat::read(wl.pid()).map(|s| s.state),
        Some('T'),
        "the original did not stay stopped"
    );
    // What the source left behind, for the failure message should the original not survive.
    let left = format!(
        "SigBlk {:?}, /proc/PID/syscall {:?}",
        status_field(wl.pid(), "SigBlk"),
        fs::read_to_string(format!("/proc/{}/syscall", wl.pid())).unwrap_or_default()
    );
    eprintln!("the stopped original: {left}");
    continue_original(&wl);
    let deadline = Instant::now() + GUARD;
    let first = wl.counter();
    loop {
        let stat = ProcStat::read(wl.pid()).expect("the original is gone");
        if stat.state == 'Z' {
            let status = wl.reap();
            panic!(
                "the original died after SIGCONT: it {status}; before the SIGCONT: {left}; \
                 log: {}",
                wl.log()
            );
        }
        if wl.counter() != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the continued original does not advance its counter: {stat:?}"
        );
        sleep(Duration::from_millis(10));
    }
    wl.assert_running_untraced();
    wl.terminate_and_verify();
    Attempt::Tested
}

#[test]
fn migrate_source_dies_during_lazy_phase() {
    until_tested(Victim::Source, &|size| {
        kill_source_during_lazy_phase(size, &[])
    });
}

/// The same with the background stream spliced: the page stream helper, running its vmsplice
/// loop when its fastcr dies, ends it on the closed pipe and exits; the original stays stopped.
#[test]
fn migrate_source_dies_during_spliced_lazy_phase() {
    until_tested(Victim::Source, &|size| {
        kill_source_during_lazy_phase(size, &["--splice"])
    });
}
