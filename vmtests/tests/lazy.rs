//! Lazy restore (`restore --lazy`) and restore into a new pid namespace (`restore --pidns new`),
//! driven through the `fastcr` CLI:
//! - `--lazy -d`: the process resumes before its anonymous memory is in, fastcr fills it and
//!   returns; the workload verifies all of it;
//! - `--lazy` without `-d`, with wl_lazy's churn (MADV_DONTNEED, mremap, munmap + mmap, fork)
//!   running from the first instruction after the restore, i.e. during the lazy phase;
//! - the fault handler (fastcr) dies during the lazy phase: the restored process must die with
//!   it (SIGKILL), never run on with memory missing;
//! - `--pidns new` (with and without `--lazy`): a copy restored while the original still runs;
//! - a corrupt pages file: the lazy restore fails with one error line and leaves no process.
//!
//! Every workload verifies itself on SIGTERM; a test fails unless it reports PASS.

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmtests::background::Bg;
use vmtests::restored::{
    Restored, find_in_new_pidns, nspid, pidns_init_of, reap_within, try_reap_within, wait_until,
};
use vmtests::roundtrip::{dump, reap_dumped};
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_one_line_error,
    assert_success, fastcr, require_root, status_field,
};

/// Hang guards only: a broken run fails after this long instead of hanging.
const GUARD: Duration = Duration::from_secs(180);

/// Spawns `name ARGS`, waits for its loop, and dumps it (the dump kills it; it is reaped).
/// Returns the workload, its state before the dump and the image directory.
fn spawn_and_dump(name: &str, args: &[&str]) -> (Workload, VisibleState, Scratch) {
    require_root();
    let mut wl = Workload::spawn(name, args);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let images = Scratch::new(&format!("{name}-lazy-img"));
    dump(&wl, &images, &[]);
    reap_dumped(&mut wl);
    (wl, before, images)
}

/// The `"lazy"` object of fastcr's `--json` output (one JSON line on stdout).
fn lazy_json(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on fastcr's stdout: {stdout:?}"));
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("fastcr --json {line:?}: {e}"));
    let lazy = v.get("lazy").cloned().unwrap_or(Value::Null);
    assert!(lazy.is_object(), "no \"lazy\" stats in {line}");
    lazy
}

fn field(obj: &Value, key: &str) -> u64 {
    obj.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no numeric {key:?} in {obj}"))
}

fn result(wl: &Workload) -> String {
    fs::read_to_string(wl.statedir().join("result")).unwrap_or_default()
}

/// `restore --lazy -d`: returns once every page is in; the process is then the test's, with
/// the same visible state, and all of its memory verifies.
#[test]
fn lazy_restore_wl_heap() {
    let (mut wl, before, images) = spawn_and_dump("wl_heap", &["256"]);
    let out = fastcr(&["restore", "-D", images.as_str(), "--lazy", "-d", "--json"]);
    assert_success(&out, "restore --lazy -d");
    wl.adopt_restored();
    assert_no_stray_children("restore --lazy -d");
    wl.wait_counter_advances();
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore --lazy");
    assert_eq!(
        status_field(wl.pid(), "TracerPid").as_deref(),
        Some("0"),
        "the restored process is still traced"
    );

    let lazy = lazy_json(&String::from_utf8_lossy(&out.stdout));
    eprintln!("lazy stats: {lazy}");
    // 256 MiB is 65536 pages, all of them lazy (plus smaller regions).
    assert!(field(&lazy, "lazy_pages") > 60_000, "lazy stats {lazy}");
    assert!(field(&lazy, "pages_placed") > 0, "lazy stats {lazy}");
    assert!(
        field(&lazy, "time_to_all_pages_us") > 0,
        "lazy stats {lazy}"
    );

    wl.terminate_and_verify();
    assert_no_stray_children("lazy_restore_wl_heap");
}

/// `restore --lazy` without `-d`, with the churn running during the lazy phase: fastcr serves
/// the faults, fills the rest, then waits for the process and exits with its status.
#[test]
fn lazy_restore_with_churn() {
    let (wl, _before, images) = spawn_and_dump("wl_lazy", &["512"]);
    // Before the restore, so the churn runs from the first instruction after it.
    fs::write(wl.statedir().join("churn"), b"").expect("create STATEDIR/churn");
    let ticks_before = wl.number("churn_ticks");
    assert_eq!(ticks_before, 0, "wl_lazy churned before the dump");

    let mut restore = Bg::fastcr(&["restore", "-D", images.as_str(), "--lazy", "--json"]);
    wait_until("the restored wl_lazy runs under fastcr", GUARD, || {
        assert!(
            restore.try_wait().is_none(),
            "fastcr restore --lazy exited before the process ran: {}",
            restore.output()
        );
        ProcStat::read(wl.pid()).is_some_and(|s| s.ppid == restore.pid())
    });
    let copy = Restored::new(wl.pid());
    wait_until("wl_lazy has churned 3 times", GUARD, || {
        assert!(
            copy.is_alive(),
            "restored wl_lazy died; log: {}; fastcr: {}",
            wl.log(),
            restore.output()
        );
        wl.number("churn_ticks") >= 3
    });
    wl.wait_counter_advances();

    copy.signal(libc::SIGTERM);
    let status = restore.wait(GUARD);
    let res = result(&wl);
    assert!(
        res == "PASS\n",
        "wl_lazy result {:?}; log: {}; fastcr: {}",
        res.trim_end(),
        wl.log(),
        restore.output()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "fastcr must mirror the workload's exit 0: {}",
        restore.output()
    );
    assert!(wl.number("churn_ticks") >= 3);
    // The lazy phase may end before the first churn tick, so forks and layout events are only
    // reported, not required.
    let lazy = lazy_json(&restore.stdout());
    eprintln!("lazy stats with churn: {lazy}");
    assert!(field(&lazy, "lazy_pages") > 100_000, "lazy stats {lazy}");
    drop(copy);
    assert_no_stray_children("lazy_restore_with_churn");
}

/// What happened when fastcr was killed during a lazy restore.
enum HandlerDeath {
    /// The restored process died: the test passes if by SIGKILL.
    Died(std::process::ExitStatus),
    /// It survived: the lazy phase was already over (it was released); try a bigger image.
    Survived,
}

/// Dumps wl_heap SIZE_MIB, restores it with `--lazy` (no `-d`), SIGKILLs fastcr as soon as the
/// restored process runs on its own (restored name, not traced), and reports what became of it.
fn kill_handler_during_lazy_phase(size_mib: &str) -> HandlerDeath {
    let (mut wl, _before, images) = spawn_and_dump("wl_heap", &[size_mib]);
    let mut restore = Bg::fastcr(&["restore", "-D", images.as_str(), "--lazy", "--json"]);
    // After the detach: the name is restored before it, and the process is traced until then.
    wait_until("the restored wl_heap runs", GUARD, || {
        assert!(
            restore.try_wait().is_none(),
            "fastcr restore --lazy exited before the process ran: {}",
            restore.output()
        );
        ProcStat::read(wl.pid()).is_some_and(|s| {
            s.ppid == restore.pid() && s.comm == "wl_heap" && !matches!(s.state, 't' | 'T' | 'Z')
        }) && status_field(wl.pid(), "TracerPid").as_deref() == Some("0")
    });
    let rss_at_kill = status_field(wl.pid(), "RssAnon");
    let printed_before_kill = !restore.stdout().is_empty();
    let fastcr_status = restore.kill_and_reap();
    assert_eq!(
        fastcr_status.signal(),
        Some(libc::SIGKILL),
        "fastcr: {}",
        restore.output()
    );
    let stats_printed = !restore.stdout().is_empty();
    eprintln!(
        "{size_mib} MiB: killed fastcr with the restored process at RssAnon {rss_at_kill:?}; \
         stats printed before the kill: {printed_before_kill}, after: {stats_printed}"
    );
    // fastcr is reaped, so the restored process (dead or alive) is now the test's child.
    let stat = ProcStat::read(wl.pid()).expect("the restored process vanished unreaped");
    assert_eq!(
        stat.ppid,
        i32::try_from(std::process::id()).expect("pid"),
        "the restored process {stat:?} was not reparented to the test"
    );
    match try_reap_within(wl.pid(), Duration::from_secs(20)) {
        Some(status) => {
            assert!(
                !stats_printed,
                "the restored process died although fastcr had finished the lazy phase (stats \
                 printed: {}); it {status}; log: {}",
                restore.stdout(),
                wl.log()
            );
            HandlerDeath::Died(status)
        }
        None => {
            // Released before the kill: it must be whole and working.
            wl.adopt_restored();
            wl.wait_counter_advances();
            wl.terminate_and_verify();
            HandlerDeath::Survived
        }
    }
}

#[test]
fn lazy_handler_death_kills_the_restored_process() {
    let mut tries = Vec::new();
    for size_mib in ["1024", "2048", "4096"] {
        match kill_handler_during_lazy_phase(size_mib) {
            HandlerDeath::Died(status) => {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "the restored process must be SIGKILLed with its handler, but it {status}"
                );
                assert_no_stray_children("lazy handler death");
                return;
            }
            HandlerDeath::Survived => tries.push(size_mib),
        }
        assert_no_stray_children("lazy handler death (lazy phase already over)");
    }
    panic!(
        "the lazy phase was always over before fastcr could be killed ({tries:?} MiB): the \
         handler's death was never tested"
    );
}

/// `dump --leave-running`, then `restore --pidns new -d` while the original still runs: the copy
/// has the image's PID inside its namespace and another one here, and verifies itself.
fn pidns_new(lazy: bool) {
    require_root();
    let mut wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let images = Scratch::new("pidns-img");
    dump(&wl, &images, &["--leave-running"]);
    wl.assert_running_untraced();

    let mut args = vec!["restore", "-D", images.as_str(), "--pidns", "new", "-d"];
    if lazy {
        args.extend(["--lazy", "--json"]);
    }
    let out = fastcr(&args);
    assert_success(&out, "restore --pidns new -d");
    let outer = find_in_new_pidns(wl.pid()).unwrap_or_else(|| {
        panic!(
            "no process with pid {} in a new pid namespace below the test; restore stdout: {}",
            wl.pid(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let copy = Restored::new(outer);
    assert_ne!(outer, wl.pid(), "the copy must have another pid here");
    assert_eq!(
        nspid(outer),
        Some(vec![outer, wl.pid()]),
        "NSpid of the copy"
    );

    // Both run at the same time: the original was never disturbed.
    let orig = ProcStat::read(wl.pid()).expect("the original is gone");
    assert!(
        !matches!(orig.state, 't' | 'T' | 'Z'),
        "original in state {orig:?}"
    );
    assert!(copy.is_alive(), "the copy is not running");

    // The namespace's init, reparented to the test (a subreaper) when fastcr exited.
    let me = i32::try_from(std::process::id()).expect("pid");
    let init = pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init (pid 1) in the namespace of the copy {outer}"));
    let init_stat = ProcStat::read(init).expect("init is gone");
    assert_eq!(
        init_stat.ppid, me,
        "init {init} ({init_stat:?}) is not the test's child"
    );
    // The copy's parent was fastcr, outside the namespace. The kernel picks the new parent from
    // fastcr's namespace (its nearest subreaper, the test), not the copy's init.
    let copy_parent = copy.stat().expect("the copy is gone").ppid;
    assert!(
        copy_parent == init || copy_parent == me,
        "the copy's parent is {copy_parent}, neither the namespace's init {init} nor the test"
    );
    eprintln!(
        "copy {outer} (pid {} inside), parent {}, init {init}",
        wl.pid(),
        if copy_parent == me {
            "the test"
        } else {
            "init"
        }
    );

    // Same state as the original, except for the pids as seen from here.
    let mut after = VisibleState::capture(outer);
    for key in ["Pid", "Tgid"] {
        assert_eq!(
            after.status.get(key).map(String::as_str),
            Some(outer.to_string().as_str()),
            "status {key} of the copy"
        );
        if let Some(v) = before.status.get(key) {
            after.status.insert(key.to_string(), v.clone());
        }
    }
    before.assert_same(&after, "copy restored into a new pid namespace");

    if lazy {
        let lazy = lazy_json(&String::from_utf8_lossy(&out.stdout));
        eprintln!("lazy stats (pidns new): {lazy}");
        // 64 MiB is 16384 pages.
        assert!(field(&lazy, "lazy_pages") > 15_000, "lazy stats {lazy}");
        assert!(field(&lazy, "pages_placed") > 0, "lazy stats {lazy}");
    }

    // Both write the same STATEDIR: from here on only the copy does.
    wl.kill_and_reap();
    wl.wait_counter_advances_as(outer);
    if copy.stat().is_some_and(|s| s.ppid == me) {
        copy.signal(libc::SIGTERM);
        let status = reap_within(outer, GUARD, "the copy");
        assert!(
            status.success(),
            "the copy {status}; log: {}; result: {:?}",
            wl.log(),
            result(&wl)
        );
    } else {
        copy.terminate();
    }
    let res = result(&wl);
    assert!(
        res == "PASS\n",
        "copy in the new pid namespace: result {:?}; log: {}",
        res.trim_end(),
        wl.log()
    );
    // Init exits once its namespace is empty.
    let status = reap_within(init, GUARD, "the pid namespace's init");
    assert!(status.success(), "the namespace's init {status}");
    assert_no_stray_children("restore --pidns new");
}

#[test]
fn pidns_new_restores_while_original_runs() {
    pidns_new(false);
}

#[test]
fn pidns_new_lazy() {
    pidns_new(true);
}

/// A page of the image changed on disk: the lazy restore must fail with one error line, kill
/// the restored process (it must not run on with the page missing) and leave nothing behind.
#[test]
fn lazy_restore_image_corrupt_is_refused_cleanly() {
    let (wl, _before, images) = spawn_and_dump("wl_heap", &["256"]);
    let pages = images.join(&format!("pages-{}.img", wl.pid()));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pages)
        .unwrap_or_else(|e| panic!("open {}: {e}", pages.display()));
    let len = file.metadata().expect("stat the pages file").len();
    // The middle of the file lies in the 256 MiB region, which is restored lazily.
    let at = len / 2 + 123;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read a page byte");
    byte[0] ^= 0xff;
    file.write_all_at(&byte, at).expect("write a page byte");
    drop(file);

    let started = Instant::now();
    let out = fastcr(&["restore", "-D", images.as_str(), "--lazy", "-d"]);
    assert_one_line_error(&out, "restore --lazy of a corrupt image");
    eprintln!(
        "refused after {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    assert!(
        ProcStat::read(wl.pid()).is_none(),
        "a process with the image's pid {} is left: {:?}",
        wl.pid(),
        ProcStat::read(wl.pid())
    );
    assert!(
        result(&wl).is_empty(),
        "the restored process ran to its end: {:?}",
        result(&wl)
    );
    assert_no_stray_children("corrupt lazy restore");
}
