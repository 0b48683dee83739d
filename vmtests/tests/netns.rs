//! `NetPair`: the two namespaces exist, TCP crosses the veth from a to b (and arrives from a's
//! address), and both namespaces are gone after the drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use vmtests::netns::{NetPair, list_netns};
use vmtests::{KillOnDrop, require_root, spawn_registered};

const PORT: &str = "7231";

/// Listens on ADDR:PORT, says so on stdout, accepts one connection and sends it the peer's
/// address.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
s.settimeout(30)
c, peer = s.accept()
c.sendall(("peer %s\n" % peer[0]).encode())
c.close()
"#;

/// Connects to ADDR:PORT and copies what it receives to stdout.
const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
data = b""
while True:
    chunk = c.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"#;

/// Debian's python3 (installed by `cargo xtask setup`), else whatever `python3` is on PATH.
fn python3() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.is_file() {
        return system.to_path_buf();
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("python3"))
            .find(|p| p.is_file())
    });
    found.expect("python3 is missing: install it (cargo xtask setup does)")
}

#[test]
fn tcp_crosses_the_veth_and_drop_removes_the_namespaces() {
    require_root();
    let python = python3();
    let pair = NetPair::new("selftest");
    let (ns_a, ns_b) = (pair.ns_a().to_string(), pair.ns_b().to_string());
    let listed = list_netns();
    assert!(
        listed.contains(&ns_a) && listed.contains(&ns_b),
        "{ns_a} and {ns_b} not in ip netns list: {listed:?}"
    );
    assert_ne!(pair.addr_a(), pair.addr_b());

    let mut server = KillOnDrop(spawn_registered(
        pair.command_in_b(&python)
            .args(["-c", SERVER, &pair.addr_b(), PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    ));
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the server's stdout");
    assert_eq!(line, "listening\n", "the server in {ns_b} did not start");

    let out = pair
        .command_in_a(&python)
        .args(["-c", CLIENT, &pair.addr_b(), PORT])
        .stdin(Stdio::null())
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "client in {ns_a} -> {}:{PORT}: {}; stderr: {}",
        pair.addr_b(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("peer {}\n", pair.addr_a()),
        "the connection did not come from namespace a's address"
    );
    let status = server.0.wait().expect("wait for the server");
    assert!(status.success(), "server in {ns_b}: {status}");

    drop(pair);
    let listed = list_netns();
    assert!(
        !listed.contains(&ns_a) && !listed.contains(&ns_b),
        "{ns_a} or {ns_b} still in ip netns list after the drop: {listed:?}"
    );
}

#[test]
fn pairs_of_one_process_have_distinct_names_and_subnets() {
    require_root();
    let first = NetPair::new("distinct");
    let second = NetPair::new("distinct");
    assert_ne!(first.ns_a(), second.ns_a());
    assert_ne!(first.ns_b(), second.ns_b());
    assert_ne!(first.ns_a(), first.ns_b());
    assert_ne!(first.addr_a(), second.addr_a());
}
