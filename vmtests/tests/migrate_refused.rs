//! Live migrations that do not happen: a peer `receive` refuses (the wrong token, garbage
//! instead of a source) and a destination that fails before the resume. Set up as in
//! `migrate.rs`: `receive` in namespace b, `migrate` in namespace a, across a veth ([`Link`]).
//!
//! Every test checks the workload itself, not only fastcr's exit codes: the original keeps
//! running, untraced, with the visible state it had, and PASSes later; no copy is left. After a
//! refused peer `receive` keeps listening, and a real migration through it still succeeds.
//!
//! Timing is never asserted: every wait has a generous hang guard.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use vmtests::migration::{
    self, GUARD, Link, NsCopy, json_line, reap_killed_original, receive, wait_both_succeed,
    wait_one_line_error,
};
use vmtests::restored::{find_in_new_pidns, wait_until};
use vmtests::{VisibleState, Workload, assert_no_stray_children};

/// The port `receive` listens on; every test has its own pair of namespaces.
const PORT: u16 = 7411;

/// A TCP connection to the destination from namespace a (made by a thread that enters the
/// namespace: the network namespace is a per-thread attribute, and a socket stays in the
/// namespace it was created in).
fn connect_from_a(link: &Link) -> TcpStream {
    let ns = PathBuf::from("/run/netns").join(link.pair.ns_a());
    let addr: SocketAddr = link.dest_addr().parse().expect("a socket address");
    std::thread::spawn(move || {
        let f = fs::File::open(&ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
        // SAFETY: setns takes an fd we hold open and a flag; it moves only this thread,
        // which ends right after the connect.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert!(
            rc == 0,
            "setns({}): {}",
            ns.display(),
            std::io::Error::last_os_error()
        );
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr} from namespace a: {e}"))
    })
    .join()
    .expect("the connecting thread panicked")
}

fn random_bytes(n: usize) -> Vec<u8> {
    migration::random_bytes(n).expect("read /dev/urandom")
}

// ---------------------------------------------------------------------------------------------
// Refused peers

/// `receive` with token A, `migrate` with token B: the handshake fails before anything is sent;
/// the original never stops running; receive rejects the peer and keeps waiting.
#[test]
fn migrate_wrong_token_is_refused() {
    let link = Link::new("token", PORT);
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &link.token("token-a"), true);
    let mut mig = link.migrate(wl.pid(), &link.token("token-b"), &["--lazy"]);
    let line = wait_one_line_error(&mut mig);
    eprintln!("migrate with the wrong token: {line}");
    assert!(
        line.contains("token"),
        "the error should name the token: {line}"
    );
    wait_until("receive reports the rejected peer", GUARD, || {
        recv.stderr().contains("fastcr: rejected connection from ")
    });
    eprintln!("receive: {}", recv.stderr().trim_end());
    assert!(
        recv.try_wait().is_none(),
        "receive must keep waiting for a real source: {}",
        recv.output()
    );
    assert_eq!(
        find_in_new_pidns(wl.pid()),
        None,
        "receive restored something although the peer was refused"
    );
    assert!(
        !recv.stdout().contains('{'),
        "receive printed stats: {}",
        recv.output()
    );

    wl.assert_running_untraced();
    before.assert_same(
        &VisibleState::capture(wl.pid()),
        "after the refused migration",
    );
    let status = recv.kill_and_reap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "receive ended by itself: {}",
        recv.output()
    );
    wl.terminate_and_verify();
    assert_no_stray_children("migrate_wrong_token_is_refused");
}

/// A stranger (an HTTP request followed by random bytes, then random bytes only) is rejected and
/// `receive` keeps listening; a real migration still succeeds after it.
#[test]
fn migrate_garbage_peer_is_refused() {
    let link = Link::new("garbage", PORT);
    let token = link.token("token");
    let mut wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();

    let mut recv = receive(&link, &token, true);
    let mut payloads = Vec::new();
    let mut http = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    http.extend(random_bytes(64 << 10));
    payloads.push(http);
    payloads.push(random_bytes(4096));
    for (i, payload) in payloads.iter().enumerate() {
        let mut s = connect_from_a(&link);
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("SO_RCVTIMEO");
        // The server may hang up after the first bytes: write errors are expected.
        let _ = s.write_all(payload);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        eprintln!(
            "garbage peer {i}: the server answered {} bytes and closed",
            answer.len()
        );
        wait_until(&format!("receive reports garbage peer {i}"), GUARD, || {
            recv.stderr()
                .matches("fastcr: rejected connection from ")
                .count()
                > i
        });
        assert!(
            recv.try_wait().is_none(),
            "receive must keep listening after a garbage peer: {}",
            recv.output()
        );
    }
    eprintln!("receive: {}", recv.stderr().trim_end());
    assert_eq!(
        find_in_new_pidns(wl.pid()),
        None,
        "a garbage peer got a restore"
    );

    let mut mig = link.migrate(wl.pid(), &token, &["--lazy"]);
    wait_both_succeed(&mut mig, &mut recv);
    eprintln!("migrate stats: {}", json_line(&mig));
    reap_killed_original(&mut wl);
    let copy = NsCopy::find(&wl);
    wl.wait_counter_advances_as(copy.outer());
    copy.terminate_and_verify(&wl, "the migrated copy");
    assert_no_stray_children("migrate_garbage_peer_is_refused");
}

// ---------------------------------------------------------------------------------------------
// A destination that fails before the resume

/// The destination restores into our pid namespace (no `--pidns new`) while the original still
/// has the pid: the restore fails before the resume, and the source thaws the original.
#[test]
fn migrate_dest_failure_before_resume_thaws_original() {
    let link = Link::new("pidinuse", PORT);
    let token = link.token("token");
    let wl = Workload::spawn("wl_heap", &["64"]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());

    let mut recv = receive(&link, &token, false);
    let mut mig = link.migrate(wl.pid(), &token, &[]);
    let mline = wait_one_line_error(&mut mig);
    let rline = wait_one_line_error(&mut recv);
    eprintln!("migrate: {mline}\nreceive: {rline}");
    assert!(
        rline.contains("in use"),
        "receive should say the pid is in use: {rline}"
    );
    assert!(
        mline.contains("the original was thawed and runs on"),
        "migrate should say the original runs on: {mline}"
    );
    assert!(
        mline.contains("in use"),
        "migrate should relay why: {mline}"
    );
    assert_eq!(find_in_new_pidns(wl.pid()), None, "a copy exists");

    wl.assert_running_untraced();
    before.assert_same(
        &VisibleState::capture(wl.pid()),
        "after the failed migration",
    );
    wl.terminate_and_verify();
    assert_no_stray_children("migrate_dest_failure_before_resume_thaws_original");
}
