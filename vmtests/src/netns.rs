//! Two network namespaces joined by a veth pair, so that the source and the destination of a
//! migration test talk across a real network stack instead of loopback.
//!
//! Everything is done with the `ip` tool (iproute2, installed by `cargo xtask setup`); a missing
//! tool or a failing step panics with the command and its stderr.
//!
//! Layout of pair N (N in 1..=254):
//!
//! ```text
//!   netns fcr-<tag>-<pid>-<seq>-a            netns fcr-<tag>-<pid>-<seq>-b
//!   lo up, veth-a 10.231.N.1/24 up  <---->   veth-b 10.231.N.2/24 up, lo up
//! ```
//!
//! Uniqueness: the namespace names contain our PID and a per-process sequence number, so they
//! never clash between the pairs of one test binary or between concurrent test binaries. The veth
//! is created directly inside the two namespaces (`ip -n A link add ... peer ... netns B`), so its
//! names never exist in the root namespace and can be the same in every pair. N is derived from the
//! PID and the sequence number only to make pairs easy to tell apart in logs; it need not be
//! unique: the addresses and the only route to 10.231.N.0/24 exist inside the pair's own two
//! namespaces, each with its own routing table, so two pairs that happen to share N (two test
//! binaries, or more than 254 pairs) cannot see each other's traffic. The root namespace gets no
//! address or route at all, so the pair is not reachable from the test process itself: run the
//! endpoints with [`NetPair::command_in_a`] and [`NetPair::command_in_b`].

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The veth end in namespace a.
const VETH_A: &str = "veth-a";
/// The veth end in namespace b.
const VETH_B: &str = "veth-b";

/// Two network namespaces joined by a veth pair; both are deleted on drop.
#[derive(Debug)]
pub struct NetPair {
    ns_a: String,
    ns_b: String,
    /// The third octet of 10.231.N.0/24, in 1..=254.
    subnet: u8,
}

impl NetPair {
    /// Creates netns `fcr-<tag>-<pid>-<n>-a` and `...-b` joined by a veth pair, addresses
    /// 10.231.N.1/24 (a) and 10.231.N.2/24 (b), both `lo` and veth up. Unique per process and
    /// call. `tag` is made of ASCII letters, digits, `-` and `_`. Needs root.
    pub fn new(tag: &str) -> NetPair {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        crate::require_root();
        assert!(
            !tag.is_empty()
                && tag.len() <= 64
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "NetPair tag {tag:?}: use 1 to 64 ASCII letters, digits, '-' or '_'"
        );
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("fcr-{tag}-{pid}-{seq}");
        // From here on, dropping `pair` (also when a step below panics) deletes what exists.
        let pair = NetPair {
            ns_a: format!("{base}-a"),
            ns_b: format!("{base}-b"),
            subnet: subnet_for(pid, seq),
        };
        for ns in [&pair.ns_a, &pair.ns_b] {
            // Left behind by an earlier test binary that had our PID and was killed before its
            // drop ran: the name is ours now.
            if netns_exists(ns) {
                ip(&["netns", "delete", ns]);
            }
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "-n", &pair.ns_a, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B,
            "netns", &pair.ns_b,
        ]);
        for (ns, dev, addr) in [
            (&pair.ns_a, VETH_A, pair.addr_a()),
            (&pair.ns_b, VETH_B, pair.addr_b()),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// The address of namespace a: `10.231.N.1`.
    pub fn addr_a(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    /// The address of namespace b: `10.231.N.2`.
    pub fn addr_b(&self) -> String {
        format!("10.231.{}.2", self.subnet)
    }

    /// The name of namespace a (as `ip netns list` shows it).
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    /// The name of namespace b.
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    /// A `Command` that runs `program` inside namespace a: `ip netns exec NS_A program`; add the
    /// program's arguments to it. `ip` execs the program in place (no fork), so a spawned child's
    /// PID is the program's. Note that `ip netns exec` also puts the program into a new mount
    /// namespace of its own (a copy of ours, with /sys remounted for the network namespace).
    pub fn command_in_a(&self, program: &Path) -> Command {
        command_in(&self.ns_a, program)
    }

    /// Like [`NetPair::command_in_a`], for namespace b.
    pub fn command_in_b(&self, program: &Path) -> Command {
        command_in(&self.ns_b, program)
    }
}

impl Drop for NetPair {
    /// Deletes both namespaces; the veth goes with them. A namespace some process still runs in
    /// lives on, nameless, until that process exits. Never panics: failures are printed.
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            if !netns_exists(ns) {
                continue;
            }
            match Command::new("ip").args(["netns", "delete", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "NetPair: ip netns delete {ns}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim_end()
                ),
                Err(e) => eprintln!("NetPair: ip netns delete {ns}: {e}"),
            }
        }
    }
}

/// N of 10.231.N.0/24 for the `seq`-th pair of process `pid`: always in 1..=254.
fn subnet_for(pid: u32, seq: u32) -> u8 {
    let n = (pid % 250).wrapping_add(seq) % 254 + 1;
    u8::try_from(n).expect("n is in 1..=254")
}

fn command_in(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `ip ARGS`; panics with its stderr unless it succeeds.
fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("the `ip` tool is missing: install iproute2 (cargo xtask setup does)");
        }
        panic!("run ip {}: {e}", args.join(" "))
    });
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

/// Whether a named network namespace exists (/run/netns/NAME, where `ip netns add` puts it).
fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The names `ip netns list` shows, e.g. to check that a pair is gone.
pub fn list_netns() -> Vec<String> {
    let out = ip(&["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "NAME" or "NAME (id: 3)"
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::subnet_for;

    #[test]
    fn subnet_stays_a_valid_octet() {
        for pid in [0, 1, 249, 250, 251, 4_194_303, u32::MAX] {
            for seq in [0, 1, 3, 253, 254, 255, 1000, u32::MAX] {
                let n = subnet_for(pid, seq);
                assert!((1..=254).contains(&n), "pid {pid} seq {seq}: {n}");
            }
        }
        assert_ne!(subnet_for(100, 0), subnet_for(100, 1));
    }
}
