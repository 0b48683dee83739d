//! Real programs from the distribution, dumped, killed and restored, then checked from outside
//! and by themselves:
//! - `python3` running `programs/wl_python.py`: four worker threads extending SHA-256 chains,
//!   a shared dict under a lock, a thread blocked in a `Condition`, a 32 MiB pattern; on SIGTERM
//!   it recomputes everything and reports PASS (dump + restore, and dump --leave-running);
//! - a shell pipeline `seq | tr | cat -n | awk` under `sh`: `seq` counts, `tr` maps digits to
//!   letters, `cat -n` numbers the lines, and `awk` checks every line (its number and its
//!   letters must both be the next integer) and appends `ok N` to a file every 20000 lines, or
//!   `BAD ...` and exits. After the restore the file must keep growing with `ok` lines past the
//!   last one before the dump, and never say `BAD`: every stage's state and the data in flight in
//!   the three pipes came back exactly.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use vmtests::restored::{Restored, reap_within, wait_until};
use vmtests::roundtrip::{assert_left_running, dump, reap_dumped, restore, verify_restored};
use vmtests::{
    ProcStat, Scratch, VisibleState, Workload, assert_no_stray_children, assert_success,
    close_inherited_fds, fastcr, reap_orphan, require_root, spawn_registered,
};

const PYTHON: &str = "/usr/bin/python3";
const GUARD: Duration = Duration::from_secs(60);

fn python(leave_running: bool) {
    require_root();
    let mut wl = Workload::spawn_script(PYTHON, "wl_python.py", &[]);
    wl.wait_counter_advances();
    let before = VisibleState::capture(wl.pid());
    let images = Scratch::new("python-img");
    if leave_running {
        dump(&wl, &images, &["--leave-running"]);
        assert_left_running(&wl, &before, VisibleState::capture);
        wl.kill_and_reap();
    } else {
        dump(&wl, &images, &[]);
        let status = reap_dumped(&mut wl);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "python after the dump: {status}"
        );
    }
    restore(&mut wl, &images, &[]);
    before.assert_same(&VisibleState::capture(wl.pid()), "after restore");
    verify_restored(wl, "python");
}

#[test]
fn python_threads_dump_restore() {
    python(false);
}

#[test]
fn python_threads_leave_running_restore() {
    python(true);
}

/// The last `ok N` of the pipeline's report, and whether it said `BAD`.
fn report(path: &std::path::Path) -> (u64, Option<String>) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let bad = text
        .lines()
        .find(|l| l.starts_with("BAD"))
        .map(str::to_owned);
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ok ")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    (last, bad)
}

/// The children of `pid`, from /proc.
fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn shell_pipeline_keeps_streaming() {
    require_root();
    let dir = Scratch::new("pipeline");
    let out = dir.join("report");
    let script = format!(
        "seq 1 4000000000 | tr 0-9 a-j | cat -n | awk 'BEGIN {{ for (i = 0; i < 10; i++) \
         m[sprintf(\"%c\", 97 + i)] = i }} {{ n++; d = \"\"; for (i = 1; i <= length($2); i++) \
         d = d m[substr($2, i, 1)]; if ($1 != n || d != n \"\") {{ print \"BAD line \" n \": \" \
         $0; fflush(); exit 1 }} if (n % 20000 == 0) {{ print \"ok \" n; fflush() }} }}' > {}",
        out.display()
    );
    let mut sh = Command::new("setsid");
    sh.args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("log")).expect("pipeline log"));
    let child = spawn_registered(close_inherited_fds(&mut sh));
    let root = i32::try_from(child.id()).expect("pid");
    drop(child);
    wait_until("the pipeline reports", GUARD, || report(&out).0 >= 40000);
    let stages = children(root);
    assert_eq!(stages.len(), 4, "sh should run 4 stages: {stages:?}");

    let images = Scratch::new("pipeline-img");
    let root_arg = root.to_string();
    assert_success(
        &fastcr(&["dump", "-t", &root_arg, "-D", images.as_str()]),
        "dump of the pipeline",
    );
    let (at_dump, bad) = report(&out);
    assert_eq!(bad, None, "the pipeline failed before the dump");
    let status = reap_within(root, GUARD, "sh after the dump");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "sh after the dump: {status:?}"
    );
    for &p in &stages {
        let st = ExitStatus::from_raw(reap_orphan(p));
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "stage {p} after the dump: {st}"
        );
    }

    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "-d"]),
        "restore -d of the pipeline",
    );
    assert_eq!(
        ProcStat::read(root).map(|s| s.ppid),
        Some(i32::try_from(std::process::id()).expect("pid")),
        "the restored sh is the test's child"
    );
    assert_eq!(
        children(root),
        stages,
        "the restored sh has its 4 stages again"
    );
    wait_until("the restored pipeline reports past the dump", GUARD, || {
        let (last, bad) = report(&out);
        bad.is_some() || last >= at_dump + 100000
    });
    let (last, bad) = report(&out);
    assert_eq!(bad, None, "the restored pipeline found a wrong line");
    eprintln!("pipeline: ok {at_dump} at the dump, ok {last} after the restore");

    // Ended by the test: sh first (it would reap its stages itself), then the stages, which it
    // leaves to this subreaper; each was checked to be our descendant.
    let restored: Vec<Restored> = stages.iter().map(|&p| Restored::new(p)).collect();
    Restored::new(root).signal(libc::SIGKILL);
    let _ = reap_within(root, GUARD, "the restored sh");
    for r in &restored {
        r.signal(libc::SIGKILL);
    }
    for &p in &stages {
        let _ = reap_orphan(p);
    }
    assert_no_stray_children("pipeline");
}

// ---------------------------------------------------------------------------------------------
// redis-server

/// A minimal RESP client: one command, one reply (simple string, integer, bulk or nil), as text.
struct Redis {
    conn: std::io::BufReader<std::net::TcpStream>,
}

impl Redis {
    fn connect(port: u16) -> std::io::Result<Redis> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Redis {
            conn: std::io::BufReader::new(s),
        })
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        use std::io::{BufRead, Read, Write};
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.conn
            .get_mut()
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("redis {args:?}: write: {e}"));
        let mut line = String::new();
        self.conn
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("redis {args:?}: read: {e}"));
        let line = line.trim_end().to_string();
        match line.strip_prefix('$') {
            Some("-1") => "(nil)".into(),
            Some(len) => {
                let len: usize = len
                    .parse()
                    .unwrap_or_else(|e| panic!("bulk length {line}: {e}"));
                let mut data = vec![0u8; len + 2];
                self.conn
                    .read_exact(&mut data)
                    .unwrap_or_else(|e| panic!("redis {args:?}: bulk: {e}"));
                String::from_utf8_lossy(&data[..len]).into_owned()
            }
            None => line,
        }
    }
}

/// Socket fds of `pid`.
fn sockets_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

const KEYS: usize = 1000;

/// redis-server holding a dataset, dumped, killed and restored: every key is there again, the
/// counter goes on from its value, and new clients are accepted. With `keep_client`, a client
/// stays connected across the dump (`--tcp-established`) and keeps working on the same
/// connection after the restore.
fn redis(keep_client: bool) {
    require_root();
    let dir = Scratch::new("redis");
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let port_arg = port.to_string();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut cmd = Command::new("/usr/bin/redis-server");
    cmd.args([
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir_arg,
    ])
    .stdin(Stdio::null())
    .stdout(fs::File::create(dir.join("log")).expect("redis log"))
    .stderr(Stdio::null());
    let child = spawn_registered(close_inherited_fds(&mut cmd));
    let pid = i32::try_from(child.id()).expect("pid");
    drop(child);
    let mut client = None;
    wait_until("redis accepts connections", GUARD, || {
        client = Redis::connect(port).ok();
        client.is_some()
    });
    let mut c = client.expect("connected");
    assert_eq!(c.cmd(&["PING"]), "+PONG");
    for i in 0..KEYS {
        assert_eq!(
            c.cmd(&["SET", &format!("k{i}"), &format!("value-{i}")]),
            "+OK"
        );
    }
    for _ in 0..7 {
        c.cmd(&["INCR", "counter"]);
    }
    let listening = 1;
    let kept = if keep_client {
        Some(c)
    } else {
        drop(c);
        None
    };
    // Redis closes a client's socket once it sees it gone.
    let expected = listening + usize::from(keep_client);
    wait_until(
        "redis holds only its listener (and the kept client)",
        GUARD,
        || sockets_of(pid) == expected,
    );

    let images = Scratch::new("redis-img");
    let pid_arg = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_arg, "-D", images.as_str()];
    if keep_client {
        args.push("--tcp-established");
    }
    assert_success(&fastcr(&args), &args.join(" "));
    let st = reap_within(pid, GUARD, "redis after the dump");
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "redis after the dump: {st:?}"
    );
    assert_success(
        &fastcr(&["restore", "-D", images.as_str(), "-d"]),
        "restore -d of redis",
    );
    let restored = Restored::new(pid);
    if let Some(mut c) = kept {
        // The same connection, across the dump and restore.
        assert_eq!(c.cmd(&["PING"]), "+PONG", "the kept client after restore");
        assert_eq!(c.cmd(&["GET", "k5"]), "value-5");
    }
    let mut fresh = Redis::connect(port).expect("a new client after restore");
    for i in 0..KEYS {
        assert_eq!(
            fresh.cmd(&["GET", &format!("k{i}")]),
            format!("value-{i}"),
            "key k{i} after restore"
        );
    }
    assert_eq!(fresh.cmd(&["INCR", "counter"]), ":8", "the counter goes on");
    let mut another = Redis::connect(port).expect("a second new client");
    assert_eq!(another.cmd(&["DBSIZE"]), format!(":{}", KEYS + 1));
    drop((fresh, another));
    restored.signal(libc::SIGTERM);
    let st = reap_within(pid, GUARD, "the restored redis");
    assert_eq!(
        st.code(),
        Some(0),
        "the restored redis exits cleanly on SIGTERM: {st:?}"
    );
    assert_no_stray_children("redis");
}

#[test]
fn redis_dataset_and_new_clients() {
    redis(false);
}

#[test]
fn redis_client_connection_kept_with_tcp_established() {
    redis(true);
}
