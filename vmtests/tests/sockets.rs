//! Sockets: `wl_sockets` (a parent and its child; unix socketpairs of every type with data
//! queued both ways, one shut down half-way, pairs and a socket shared between the two
//! processes, unix listeners on an abstract name and on a path each with an accepted
//! connection, TCP listeners on 127.0.0.1 and ::1 and a UDP socket; see
//! `workloads/wl_sockets.c`) dumped and restored; the workload checks everything itself.
//!
//! After each restore the test connects to the restored TCP v4 listener (on the port the
//! original published), sends "ping", and the workload answers "pong" while it verifies.
//!
//! Modes: `dump` + `restore -d`; `dump --pre-copy auto` + `restore --lazy -d`;
//! `dump --leave-running` + `restore -d` after the original tree is
//! killed; `dump --leave-running` + `restore --pidns new -d` (refused with one error line naming
//! the taken address while the original holds its listeners, leaving no process behind; done
//! once the original is killed). Refusals: a unix socket connected to a listener outside the
//! dump, an fd in flight in a unix socket's queue, an established TCP connection without
//! `--tcp-established`. With it, a connection to the test (outside the dump) survives `dump` +
//! `restore` and `dump --leave-running` (both leave the workload running, untraced).
//!
//! Network traffic stays on loopback. Timing is never asserted.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use vmtests::restored::{Restored, find_in_new_pidns, pidns_init_of};
use vmtests::roundtrip::assert_dump_refused;
use vmtests::{
    Scratch, Workload, assert_no_stray_children, assert_one_line_error, assert_success,
    become_subreaper, fastcr, pid_exists, reap_orphan, require_root,
};

const GUARD: Duration = Duration::from_secs(120);

/// Starts wl_sockets and returns it with its child's pid and its ports (tcp4, tcp6, udp4).
fn spawn() -> (Workload, i32, [u16; 3]) {
    require_root();
    become_subreaper();
    let wl = Workload::spawn("wl_sockets", &[]);
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", wl.pid()))
        .expect("read the workload's children");
    let child: i32 = children
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("wl_sockets has no child: {children:?}"));
    let text = fs::read_to_string(wl.statedir().join("ports")).expect("read STATEDIR/ports");
    let ports: Vec<u16> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a port"))
        .collect();
    let ports: [u16; 3] = ports.try_into().expect("three ports");
    (wl, child, ports)
}

/// Waits for the original child (reparented to the test once its parent died) and reaps it;
/// kills it first when `kill`.
fn reap_child(child: i32, kill: bool) {
    if kill {
        vmtests::restored::wait_until(
            "the original child is reparented to the test",
            GUARD,
            || vmtests::ProcStat::read(child).is_some_and(|s| s.ppid == std::process::id() as i32),
        );
        // SAFETY: kill takes integers; the pid is our unreaped child (checked above).
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    let status = reap_orphan(child);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the original child must be SIGKILLed, wait status {status:#x}"
    );
}

/// Connects to the restored TCP v4 listener and sends "ping"; the workload answers at its end.
fn connect_client(wl: &Workload, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the restored listener on port {port}: {e}"));
    s.set_read_timeout(Some(GUARD)).expect("read timeout");
    s.write_all(b"ping").expect("send ping");
    fs::write(wl.statedir().join("client"), b"").expect("write STATEDIR/client");
    s
}

fn expect_pong(mut s: TcpStream) {
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read pong");
    assert_eq!(&buf, b"pong", "the restored workload's answer");
}

fn dump(wl: &Workload, images: &Scratch, leave_running: bool) {
    dump_with(
        wl,
        images,
        if leave_running {
            &["--leave-running"]
        } else {
            &[]
        },
    );
}

fn dump_with(wl: &Workload, images: &Scratch, extra: &[&str]) {
    let pid = wl.pid_arg();
    let mut args = vec!["dump", "-t", &pid, "-D", images.as_str()];
    args.extend(extra);
    assert_success(&fastcr(&args), &args.join(" "));
}

fn restore_and_verify(wl: Workload, images: &Scratch, ports: [u16; 3], what: &str) {
    restore_with_and_verify(wl, images, ports, &[], what);
}

fn restore_with_and_verify(
    mut wl: Workload,
    images: &Scratch,
    ports: [u16; 3],
    extra: &[&str],
    what: &str,
) {
    let mut args = vec!["restore", "-D", images.as_str(), "-d"];
    args.extend(extra);
    assert_success(&fastcr(&args), &format!("{what}: {}", args.join(" ")));
    wl.adopt_restored();
    wl.wait_counter_advances();
    let client = connect_client(&wl, ports[0]);
    wl.terminate_and_verify();
    expect_pong(client);
    assert_no_stray_children(what);
}

#[test]
fn sockets_dump_restore() {
    let (mut wl, child, ports) = spawn();
    let images = Scratch::new("sockets-img");
    dump(&wl, &images, false);
    let status = wl.reap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    reap_child(child, false);
    restore_and_verify(wl, &images, ports, "dump + restore");
}

/// `dump --pre-copy auto` (memory copied in rounds while the tree runs; sockets in the freeze)
/// and `restore --lazy`.
#[test]
fn sockets_precopy_lazy_restore() {
    let (mut wl, child, ports) = spawn();
    let images = Scratch::new("sockets-precopy-img");
    dump_with(&wl, &images, &["--pre-copy", "auto"]);
    let status = wl.reap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    reap_child(child, false);
    restore_with_and_verify(
        wl,
        &images,
        ports,
        &["--lazy"],
        "dump --pre-copy + restore --lazy",
    );
}

#[test]
fn sockets_leave_running_restore() {
    let (mut wl, child, ports) = spawn();
    let images = Scratch::new("sockets-lr-img");
    dump(&wl, &images, true);
    wl.assert_running_untraced();
    // The original goes on with its sockets as they were: its own verification passes (the
    // queues were peeked, not consumed), and it ends its child itself.
    assert!(vmtests::ProcStat::read(wl.pid()).is_some_and(|s| s.ppid == std::process::id() as i32));
    // SAFETY: kill takes integers; the pid is our unreaped child (checked above).
    unsafe { libc::kill(wl.pid(), libc::SIGTERM) };
    let status = wl.reap();
    let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
    assert!(
        status.success() && result == "PASS\n",
        "the original after dump --leave-running: {status:?}, {result:?}; log: {}",
        wl.log()
    );
    assert!(
        !pid_exists(child),
        "the original child (pid {child}) must have been reaped by its parent"
    );
    fs::remove_file(wl.statedir().join("result")).expect("remove the original's result");
    restore_and_verify(wl, &images, ports, "dump --leave-running + restore");
}

#[test]
fn sockets_pidns_new() {
    let (mut wl, child, ports) = spawn();
    let images = Scratch::new("sockets-pidns-img");
    dump(&wl, &images, true);
    wl.assert_running_untraced();

    // The original still holds its listeners: refused, naming the address, nothing left over.
    let out = fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]);
    assert_one_line_error(&out, "restore --pidns new beside the original");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named = [
        format!("@fastcr-wl-sockets-{}", wl.pid()),
        wl.statedir().join("unix.sock").display().to_string(),
        format!("127.0.0.1:{}", ports[0]),
        format!("[::1]:{}", ports[1]),
        format!("127.0.0.1:{}", ports[2]),
    ];
    assert!(
        stderr.contains("cannot bind a socket to ")
            && stderr.contains("Address already in use")
            && named.iter().any(|n| stderr.contains(n.as_str())),
        "the error must name one of the taken addresses {named:?}: {stderr}"
    );
    assert_no_stray_children("the refused restore");
    wl.assert_running_untraced();

    wl.kill_and_reap();
    reap_child(child, true);
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "--pidns", "new", "-d"]),
        "restore --pidns new -d",
    );
    let outer = find_in_new_pidns(wl.pid()).expect("the copy in its pid namespace");
    let init = pidns_init_of(outer).expect("the namespace's init");
    let copy = Restored::new(outer);
    wl.wait_counter_advances_as(outer);
    let client = connect_client(&wl, ports[0]);
    // The copy is the test's child (the restorer's parent adopts it), its namespace's init too.
    copy.signal(libc::SIGTERM);
    let status = reap_orphan(outer);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the copy: wait status {status:#x}; log: {}",
        wl.log()
    );
    expect_pong(client);
    let result = fs::read_to_string(wl.statedir().join("result")).unwrap_or_default();
    assert_eq!(result, "PASS\n", "the copy's result; log: {}", wl.log());
    let status = reap_orphan(init);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the namespace's init: wait status {status:#x}"
    );
    assert!(!pid_exists(outer));
    assert_no_stray_children("sockets --pidns new");
}

/// A dump of a process whose socket leads outside the dump must fail with one line naming the
/// pid, the fd and `why`, and leave the workload running untraced (it then PASSes).
fn assert_refused(wl: Workload, fd: i32, why: &str) {
    let process = format!("process {}:", wl.pid());
    let fd = format!("fd {fd} ");
    assert_dump_refused(wl, why, &[&process, &fd, why]);
}

#[test]
fn sockets_refuse_unix_peer_outside() {
    require_root();
    let dir = Scratch::new("sockets-outside");
    let path = dir.join("outside.sock");
    let listener = UnixListener::bind(&path).expect("bind the outside listener");
    let wl = Workload::spawn(
        "wl_sockets",
        &["outside", path.to_str().expect("utf-8 path")],
    );
    assert_refused(wl, 3, "unix socket connected outside the dump");
    drop(listener);
}

/// A TCP listener of the test on 127.0.0.1 and its port, as an argument for wl_sockets.
fn loopback_listener() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let port = listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string();
    (listener, port)
}

#[test]
fn sockets_refuse_established_tcp() {
    require_root();
    let (listener, port) = loopback_listener();
    let wl = Workload::spawn("wl_sockets", &["tcpconn", &port]);
    let (_conn, _) = listener.accept().expect("accept the workload's connection");
    assert_refused(wl, 3, "established TCP connection");
}

#[test]
fn sockets_refuse_fds_in_flight() {
    require_root();
    let wl = Workload::spawn("wl_sockets", &["rights", "-"]);
    // The fd travels to the other end (fd 4), whose queue holds it.
    assert_refused(wl, 4, "file descriptors in flight (SCM_RIGHTS)");
}

/// Starts `wl_sockets tcpecho` connected to a listener of the test, sends it "queued-to-wl"
/// and waits until those bytes wait unread in its receive queue. Returns it with the test's
/// end of the connection.
fn spawn_tcpecho() -> (Workload, TcpStream) {
    require_root();
    let (listener, port) = loopback_listener();
    let wl = Workload::spawn("wl_sockets", &["tcpecho", &port]);
    let (mut conn, _) = listener.accept().expect("accept the workload's connection");
    conn.set_read_timeout(Some(GUARD)).expect("read timeout");
    conn.write_all(b"queued-to-wl")
        .expect("send to the workload");
    vmtests::restored::wait_until("the workload has our bytes queued", GUARD, || {
        wl.statedir().join("queued").exists()
    });
    (wl, conn)
}

/// The connection still works from the test's side: the rest of the message goes, the
/// workload (terminated by `end`) checks it all and answers "after", then closes.
fn finish_tcpecho(mut conn: TcpStream, end: impl FnOnce()) {
    conn.write_all(b"+more").expect("send after the dump");
    end();
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .expect("read the workload's answer and its close");
    assert_eq!(got, b"after", "the workload's answer");
}

/// `dump --tcp-established` (the workload is killed, its connection ends silently) and
/// `restore`: the test, outside the dump, keeps its connection; the workload reads the bytes
/// queued before the dump and those sent after the restore, and answers.
#[test]
fn sockets_tcp_established_dump_restore() {
    let (mut wl, conn) = spawn_tcpecho();
    let images = Scratch::new("sockets-tcp-img");
    dump_with(&wl, &images, &["--tcp-established"]);
    let status = wl.reap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "-d"]),
        "restore of an established connection",
    );
    wl.adopt_restored();
    wl.wait_counter_advances();
    finish_tcpecho(conn, || wl.terminate_and_verify());
    assert_no_stray_children("tcp established");
}

/// `dump --leave-running --tcp-established`: the original's connection goes on (repair mode
/// is switched off again).
#[test]
fn sockets_tcp_established_leave_running() {
    let (wl, conn) = spawn_tcpecho();
    let images = Scratch::new("sockets-tcp-lr-img");
    dump_with(&wl, &images, &["--leave-running", "--tcp-established"]);
    wl.assert_running_untraced();
    wl.wait_counter_advances();
    finish_tcpecho(conn, || wl.terminate_and_verify());
}
