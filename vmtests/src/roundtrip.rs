//! The steps of a checkpoint/restore round trip of one [`Workload`] that the tests share: dump
//! it (the dump ends it, or it runs on undisturbed), restore it into the test's pid namespace
//! (`restore -d`, the subreaper adopts it) or into a new one (`restore --pidns new -d`), and
//! verify the restored process: its counter advances and on SIGTERM it reports PASS.
//!
//! What a test checks in between (images, `show`, threads, a child's state, ...) stays in the
//! test; these steps only run `fastcr` and check what every round trip must hold.
//!
//! Must not: signal or reap a process the test did not start: the original is handled through
//! [`Workload`], a copy in a new pid namespace through [`crate::objects::terminate_in_pidns`],
//! which check that the PID is the test's before they touch it. Every wait is a hang guard.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use std::time::Duration;

use crate::objects::terminate_in_pidns;
use crate::restored::{Restored, find_in_new_pidns, pidns_init_of, reap_within, wait_until};
use crate::{
    Scratch, VisibleState, Workload, assert_error_names, assert_no_stray_children, assert_success,
    fastcr,
};

/// Hang guard for the copy to appear in its new pid namespace (or count, or its init to exit):
/// never a timing assertion.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(60);
/// Hang guard for the copy of a tree to exit once SIGTERMed.
const COPY_EXIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `fastcr dump -t PID -D IMAGES FLAGS...`, which must succeed; returns its output (for the
/// stats of `--json`).
pub fn dump(wl: &Workload, images: &Scratch, flags: &[&str]) -> Output {
    let pid = wl.pid_arg();
    let mut args = vec!["dump", "-t", &pid, "-D", images.as_str()];
    args.extend_from_slice(flags);
    let out = fastcr(&args);
    assert_success(&out, &command_name("dump", flags));
    out
}

/// After a dump without `--leave-running`: reaps the original, which the dump must have killed
/// (by a signal); returns its wait status.
pub fn reap_dumped(wl: &mut Workload) -> ExitStatus {
    let status = wl.reap();
    assert!(
        status.signal().is_some(),
        "{}: dump should have killed the process, but it {status}",
        wl.name()
    );
    status
}

/// After `dump --leave-running`: the original runs on, untraced, its counter advancing, with the
/// visible state `before` (as `capture` reads it).
pub fn assert_left_running(
    wl: &Workload,
    before: &VisibleState,
    capture: impl Fn(i32) -> VisibleState,
) {
    wl.assert_running_untraced();
    before.assert_same(&capture(wl.pid()), "after dump --leave-running");
}

/// A dump fastcr must refuse: `fastcr dump` fails with one line that names each of `wants` (see
/// [`assert_error_names`]; `what` says what the dump was), and the process runs on undisturbed
/// (untraced, its counter advancing) and exits 0 with PASS on SIGTERM.
pub fn assert_dump_refused(wl: Workload, what: &str, wants: &[&str]) {
    let images = Scratch::new("refused-img");
    let out = fastcr(&["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]);
    assert_error_names(&out, what, wants);
    wl.assert_running_untraced();
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}

/// Runs `fastcr restore -D IMAGES -d FLAGS...`, which must succeed, and takes the restored
/// process back as the test's child; returns the output (for the stats of `--json`).
pub fn restore(wl: &mut Workload, images: &Scratch, flags: &[&str]) -> Output {
    let mut args = vec!["restore", "-D", images.as_str(), "-d"];
    args.extend_from_slice(flags);
    let out = fastcr(&args);
    assert_success(&out, &command_name("restore -d", flags));
    wl.adopt_restored();
    out
}

/// The restored workload runs its loop and, on SIGTERM, exits 0 with PASS; then no process the
/// test did not spawn is left as its child (`context` names the run in that message).
pub fn verify_restored(wl: Workload, context: &str) {
    wl.wait_counter_advances();
    wl.terminate_and_verify();
    assert_no_stray_children(context);
}

/// Runs `fastcr restore -D IMAGES --pidns new -d`, which must succeed, and waits for the copy
/// of `wl` in the new pid namespace (its pid there is the original's); returns the copy's pid as
/// seen from here.
pub fn restore_in_new_pidns(wl: &Workload, images: &Scratch) -> i32 {
    let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
    assert_success(&out, "restore --pidns new -d");
    let mut outer = None;
    wait_until(
        "the restored process in its pid namespace",
        APPEAR_TIMEOUT,
        || {
            outer = find_in_new_pidns(wl.pid());
            outer.is_some()
        },
    );
    outer.expect("found above")
}

/// `after`, the visible state of a copy in a new pid namespace read from here, with `Pid` and
/// `Tgid` (which read as the copy's pid here) taken from `before`, the original's: what is left
/// must be the same. Its pid inside the namespace is checked by [`restore_in_new_pidns`].
pub fn as_seen_inside(mut after: VisibleState, before: &VisibleState) -> VisibleState {
    for key in ["Pid", "Tgid"] {
        after.status.insert(key.into(), before.status[key].clone());
    }
    after
}

/// SIGTERMs the copy `outer` of `wl` in its new pid namespace and reaps it and the namespace's
/// init: it must exit 0 with PASS; then no stray children (`context` names the run).
pub fn terminate_in_pidns_and_verify(wl: &Workload, outer: i32, context: &str) {
    let status = ExitStatus::from_raw(terminate_in_pidns(outer));
    let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
    assert!(
        status.success() && result == "PASS\n",
        "restored {} {status}; result {result:?}; log: {}",
        wl.name(),
        wl.log()
    );
    assert_no_stray_children(context);
}

/// After `restore --pidns new -d` of a tree whose root's copy is `copy` (the test's child): the
/// copy runs its loop (the counter it publishes in the original's STATEDIR passes its current
/// value), and on SIGTERM it exits 0 with PASS; then its namespace's init exits 0, and no
/// stray children are left (`context` names the run).
pub fn terminate_copy_and_verify(wl: &Workload, copy: Restored, context: &str) {
    let outer = copy.pid();
    let at = wl.counter();
    wait_until("the copy counts", APPEAR_TIMEOUT, || wl.counter() > at);
    let init = pidns_init_of(outer);
    copy.signal(libc::SIGTERM);
    let st = reap_within(outer, COPY_EXIT_TIMEOUT, "the copy");
    let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
    assert!(
        st.success() && result == "PASS\n",
        "the copy {st:?}, verdict {result:?}; log: {}",
        wl.log()
    );
    let init = init.expect("the copy's namespace init");
    let st = reap_within(init, APPEAR_TIMEOUT, "the namespace init");
    assert!(st.success(), "the namespace's init: {st:?}");
    assert_no_stray_children(context);
}

/// `dump` or `restore -d` and its flags, for messages.
fn command_name(command: &str, flags: &[&str]) -> String {
    std::iter::once(command)
        .chain(flags.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
