//! `cargo xtask run`: the demo, a live migration between two network namespaces. Installs what
//! is missing, builds fastcr, runs `fastcr check`, then:
//!
//! 1. creates two network namespaces, `fcr-demo-<pid>-a` and `fcr-demo-<pid>-b`, joined by a veth
//!    pair (10.232.1.1/24 in a, 10.232.1.2/24 in b, `lo` and the veth up), and a token file of
//!    32 random hex characters (mode 0600) that both ends share;
//! 2. starts a small counter (`xtask/demo/counter.c`, compiled here with gcc) in the root
//!    namespaces and shows it count;
//! 3. starts `fastcr receive --pidns new` in namespace b, waits until it listens, then runs
//!    `fastcr migrate --lazy` in namespace a: the counter resumes on the destination before its
//!    memory has arrived, the rest follows in the background, and the source kills the original
//!    once every page is in place; the migration stats are printed;
//! 4. reaps the original, finds the copy (it runs in a new pid namespace under the original's
//!    pid: its `NSpid` is `<pid here> <original pid>`) and shows it carry on counting, then prints
//!    the destination's restore and lazy stats;
//! 5. stops the copy with SIGTERM, reaps it and its pid namespace's init, checks the counter's
//!    self-check verdict (PASS) and prints a summary with the downtime and the time until every
//!    page was on the destination.
//!
//! xtask makes itself a child subreaper, so that when `fastcr receive` exits, the copy and the
//! namespace's init (its children) are reparented to xtask, which can then reap them.
//!
//! Only processes this command started are ever signalled, by pid: its own children, and the
//! copy, after checking that the pid is still the copy (its `NSpid`, and that it descends from
//! this process). On failure, whatever is still running is killed and the namespaces deleted
//! (Drop guards).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use crate::util::{kill, run, step, target_dir, wait_for, workspace_root};
use crate::{build, setup};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Hang guard for `fastcr receive` to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Hang guard for the whole migration (fastcr's own link timeout is 10 s).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the Drop guard waits for a killed process to be gone.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The veth end in namespace a, and its address.
const VETH_A: &str = "veth-a";
const ADDR_A: &str = "10.232.1.1";
/// The veth end in namespace b, and its address (where `fastcr receive` listens).
const VETH_B: &str = "veth-b";
const ADDR_B: &str = "10.232.1.2";
const PORT: u16 = 7070;

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// Runs `ip ARGS` quietly; fails with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}` (iproute2)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// Where `ip netns add NAME` keeps the namespace.
fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Two network namespaces joined by a veth pair; both are deleted on drop (the veth goes with
/// them). The veth is created directly inside the namespaces, so it never exists in the root
/// namespace, and the root namespace gets no address or route into them.
struct NetPair {
    a: String,
    b: String,
}

impl NetPair {
    fn new() -> Result<NetPair> {
        let base = format!("fcr-demo-{}", std::process::id());
        // From here on, dropping `pair` (also on an error below) deletes what exists.
        let pair = NetPair {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        for ns in [&pair.a, &pair.b] {
            // Left behind by an earlier run that had our pid and was killed before its drop ran:
            // the name is ours now.
            if netns_path(ns).exists() {
                ip(&["netns", "delete", ns])?;
            }
            ip(&["netns", "add", ns])?;
        }
        ip(&[
            "-n", &pair.a, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B, "netns",
            &pair.b,
        ])?;
        for (ns, dev, addr) in [(&pair.a, VETH_A, ADDR_A), (&pair.b, VETH_B, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    /// `ip netns exec NS program`: `ip` execs the program in place, so the child's pid is the
    /// program's. (It also gets a private mount namespace, a copy of ours: same filesystem.)
    fn command_in(ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if netns_path(ns).exists()
                && let Err(e) = ip(&["netns", "delete", ns])
            {
                eprintln!("demo: {e:#}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

fn read_counter(state: &Path) -> Option<u64> {
    fs::read_to_string(state.join("counter"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Prints the counter a few times over about a second and a half; returns the values seen.
fn show_counting(state: &Path, label: &str) -> Result<Vec<u64>> {
    let mut seen = Vec::new();
    for _ in 0..6 {
        thread::sleep(Duration::from_millis(250));
        seen.push(read_counter(state).context("reading the demo's counter file")?);
    }
    let shown: Vec<String> = seen.iter().map(u64::to_string).collect();
    println!("{label}: counter {}", shown.join(" "));
    if seen.first() == seen.last() {
        bail!("{label}: the counter is not advancing");
    }
    Ok(seen)
}

/// The parent pid of `pid`, from /proc/PID/stat (the field after the parenthesised comm).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pids of `pid` in each pid namespace from ours down to its own (`NSpid` in
/// /proc/PID/status).
fn nspid(pid: i32) -> Option<Vec<i32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

/// Whether `pid` descends from this process (a bounded walk up the parent chain).
fn descends_from_us(pid: i32) -> bool {
    let me = my_pid();
    let mut cur = pid;
    for _ in 0..64 {
        match parent_of(cur) {
            Some(parent) if parent == me => return true,
            Some(parent) if parent > 1 => cur = parent,
            _ => return false,
        }
    }
    false
}

fn my_pid() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is the migrated copy of `original`: it has pid `original` in a pid namespace
/// one level below ours, and descends from this process.
fn is_copy(pid: i32, original: i32) -> bool {
    nspid(pid).is_some_and(|ids| ids == [pid, original]) && descends_from_us(pid)
}

/// The copy of `original`, as a pid here.
fn find_copy(original: i32) -> Option<i32> {
    all_pids().into_iter().find(|&pid| is_copy(pid, original))
}

/// The init (pid 1) of the pid namespace `pid` is in, as a pid here: it descends from us, is in
/// the same pid namespace and has pid 1 there.
fn pidns_init_of(pid: i32) -> Option<i32> {
    let ns_of = |p: i32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let ns = ns_of(pid)?;
    all_pids().into_iter().find(|&p| {
        nspid(p).is_some_and(|ids| ids.len() == 2 && ids[1] == 1)
            && ns_of(p).as_ref() == Some(&ns)
            && descends_from_us(p)
    })
}

/// Whether `pid` runs in the named network namespace (same nsfs inode).
fn in_netns(pid: i32, ns: &str) -> bool {
    let Ok(link) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
        return false;
    };
    fs::metadata(netns_path(ns))
        .is_ok_and(|meta| link.to_string_lossy() == format!("net:[{}]", meta.ino()))
}

fn signal(pid: i32, sig: Signal) -> Result<()> {
    let target = Pid::from_raw(pid).context("not a valid pid")?;
    rustix::process::kill_process(target, sig).with_context(|| format!("kill({pid}, {sig:?})"))
}

fn describe_wait(status: WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exit status {code}")
    } else if let Some(sig) = status.terminating_signal() {
        format!("killed by signal {sig}")
    } else {
        format!("wait status {:#x}", status.as_raw())
    }
}

/// Waits until `pid` (a descendant: ours or a child of `fastcr receive`) has exited. Reaps it if
/// it is our child (a child subreaper adopts orphans); returns its status then, or `None` when
/// someone else reaped it.
fn reap_descendant(pid: i32, what: &str, timeout: Duration) -> Result<Option<WaitStatus>> {
    let target = Pid::from_raw(pid).context("not a valid pid")?;
    wait_for(&format!("{what} (pid {pid}) to exit"), timeout, || {
        match parent_of(pid) {
            // Ours: poll it. An error means it is no longer our child (reaped already).
            Some(parent) if parent == my_pid() => {
                match rustix::process::waitpid(Some(target), WaitOptions::NOHANG) {
                    Ok(Some(status)) => Some(Some(status)),
                    Ok(None) => None,
                    Err(_) => Some(None),
                }
            }
            Some(_) => None,
            // Gone from /proc: reaped by its parent.
            None => Some(None),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The demo's processes

/// Everything the demo started; whatever still runs is killed when it is dropped.
struct Demo {
    /// The original counter's pid (also its pid inside the copy's namespace).
    original: i32,
    counter: Option<Child>,
    receive: Option<Child>,
    migrate: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for mut child in [
            self.migrate.take(),
            self.counter.take(),
            self.receive.take(),
        ]
        .into_iter()
        .flatten()
        {
            // Our own, unreaped children: the pids cannot have been reused. Errors mean they are
            // gone already.
            let _ = child.kill();
            let _ = child.wait();
        }
        // A copy may be running (fastcr receive released it); it is now ours, or dying.
        if let Some(copy) = find_copy(self.original) {
            let init = pidns_init_of(copy);
            if signal(copy, Signal::Kill).is_ok() {
                let _ = reap_descendant(copy, "the copy", CLEANUP_TIMEOUT);
            }
            if let Some(init) = init {
                let _ = reap_descendant(init, "the copy's pid namespace init", CLEANUP_TIMEOUT);
            }
        }
    }
}

/// Compiles the demo counter into `<target>/xtask/demo/counter`.
fn compile_counter(out_dir: &Path) -> Result<PathBuf> {
    let source = workspace_root().join("xtask/demo/counter.c");
    let bin = out_dir.join("counter");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&source))
    .context("compiling the demo counter")?;
    Ok(bin)
}

/// Writes 32 random hex characters to `path`, readable by root only.
fn write_token(path: &Path) -> Result<()> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        bail!("{} has mode {mode:o}, not 600", path.display());
    }
    Ok(())
}

/// The command line, for printing.
fn shell_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Waits for our child `child` to exit within `timeout`.
fn wait_child(child: &mut Child, what: &str, timeout: Duration) -> Result<ExitStatus> {
    wait_for(what, timeout, || child.try_wait().ok().flatten())
}

/// The value of row `key` in a fastcr stats table (`  key   value`).
fn table_value<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(key)?;
        rest.starts_with(' ').then(|| rest.trim())
    })
}

/// `cargo xtask run`.
pub(crate) fn cmd() -> Result<()> {
    step("setup");
    setup::ensure()?;
    let fastcr = build::fastcr()?;

    step("fastcr check");
    run(Command::new(&fastcr).arg("check"))
        .context("fastcr check: a required kernel feature is missing")?;

    step("demo: compile xtask/demo/counter.c");
    let out_dir = target_dir().join("xtask").join("demo");
    let state = out_dir.join("state");
    if state.exists() {
        fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let counter_bin = compile_counter(&out_dir)?;

    step("demo: two network namespaces joined by a veth pair, and a shared token");
    let net = NetPair::new()?;
    println!(
        "netns {} ({VETH_A} {ADDR_A}/24)  <--veth-->  netns {} ({VETH_B} {ADDR_B}/24)",
        net.a, net.b
    );
    let token = out_dir.join("token");
    write_token(&token)?;
    println!(
        "token: {} (32 random hex characters, mode 600)",
        token.display()
    );
    // The copy and its pid namespace's init are children of `fastcr receive`: once it exits,
    // they must be reparented to us (not to the system's init) for us to reap them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("prctl(PR_SET_CHILD_SUBREAPER)")?;

    step("demo: start the counter");
    let child = Command::new(&counter_bin)
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the demo counter")?;
    let mut demo = Demo {
        original: i32::try_from(child.id()).context("pid out of range")?,
        counter: Some(child),
        receive: None,
        migrate: None,
    };
    let original = demo.original;
    println!("counter: pid {original}, state in {}", state.display());
    wait_for("the counter to be ready", STARTUP_TIMEOUT, || {
        state.join("ready").exists().then_some(())
    })?;
    let before = show_counting(&state, "before the migration")?;

    let dest = format!("{ADDR_B}:{PORT}");
    step(&format!(
        "fastcr receive in netns {} (restores into a new pid namespace)",
        net.b
    ));
    let receive_out = out_dir.join("receive.out");
    let mut receive_cmd = NetPair::command_in(&net.b, &fastcr);
    receive_cmd
        .args(["receive", "--listen", &dest, "--token-file"])
        .arg(&token)
        .args(["--pidns", "new", "--stats"]);
    println!("$ {}", shell_line(&receive_cmd));
    let stdout = File::create(&receive_out)
        .with_context(|| format!("creating {}", receive_out.display()))?;
    demo.receive = Some(
        receive_cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .context("starting fastcr receive")?,
    );
    let listening = wait_for("fastcr receive to listen", LISTEN_TIMEOUT, || {
        if let Some(receive) = demo.receive.as_mut()
            && let Ok(Some(status)) = receive.try_wait()
        {
            demo.receive = None;
            return Some(Err(status));
        }
        let out = fs::read_to_string(&receive_out).unwrap_or_default();
        let line = out.lines().next()?;
        (out.contains('\n') && line.starts_with("listening on ")).then(|| Ok(line.to_owned()))
    })?;
    match listening {
        Ok(line) => println!("{line}"),
        Err(status) => bail!("fastcr receive exited before listening ({status})"),
    }

    step(&format!(
        "fastcr migrate --lazy in netns {} (resume on the destination first, memory follows)",
        net.a
    ));
    let migrate_out = out_dir.join("migrate.out");
    let mut migrate_cmd = NetPair::command_in(&net.a, &fastcr);
    migrate_cmd
        .args(["migrate", "-t", &original.to_string(), "--to", &dest])
        .args(["--lazy", "--token-file"])
        .arg(&token)
        .arg("--stats");
    println!("$ {}", shell_line(&migrate_cmd));
    let stdout = File::create(&migrate_out)
        .with_context(|| format!("creating {}", migrate_out.display()))?;
    let started = Instant::now();
    let migrate = demo.migrate.insert(
        migrate_cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .context("starting fastcr migrate")?,
    );
    let status = wait_child(migrate, "fastcr migrate", MIGRATE_TIMEOUT)?;
    demo.migrate = None;
    let elapsed = started.elapsed();
    let migrate_stats = fs::read_to_string(&migrate_out)
        .with_context(|| format!("reading {}", migrate_out.display()))?;
    print!("{migrate_stats}");
    if !status.success() {
        bail!("fastcr migrate failed ({status})");
    }
    println!("fastcr migrate: done in {:.2} s", elapsed.as_secs_f64());

    step("demo: the original is gone; find the copy");
    let status = {
        let counter = demo
            .counter
            .as_mut()
            .context("the original counter is not our child any more")?;
        wait_child(counter, "the original counter to exit", EXIT_TIMEOUT)?
    };
    demo.counter = None;
    println!("the original counter (pid {original}) ended: {status}");
    if status.signal() != Some(Signal::Kill as i32) {
        bail!("the source should have SIGKILLed the original after the migration: {status}");
    }
    let receive_status = {
        let receive = demo
            .receive
            .as_mut()
            .context("fastcr receive is not running")?;
        wait_child(receive, "fastcr receive to exit", EXIT_TIMEOUT)?
    };
    demo.receive = None;
    if !receive_status.success() {
        bail!("fastcr receive failed ({receive_status})");
    }
    let copy = wait_for(
        "the copy of the counter in a new pid namespace",
        STARTUP_TIMEOUT,
        || find_copy(original),
    )?;
    if !in_netns(copy, &net.b) {
        bail!(
            "the copy (pid {copy}) is not in network namespace {}",
            net.b
        );
    }
    let parent = match parent_of(copy) {
        Some(p) if p == my_pid() => {
            format!("{p} (this xtask: it adopted the copy when fastcr receive exited)")
        }
        Some(p) => p.to_string(),
        None => "?".to_owned(),
    };
    println!(
        "the copy: pid {copy} here, pid {original} inside its new pid namespace, netns {}; parent {parent}",
        net.b,
    );
    let after = show_counting(
        &state,
        &format!(
            "after the migration (pid {copy} here, {original} inside its namespace, network namespace {})",
            net.b
        ),
    )?;
    let (last_before, first_after) = (before.last().copied(), after.first().copied());
    if first_after < last_before {
        bail!(
            "the copy started counting again instead of carrying on: {first_after:?} < {last_before:?}"
        );
    }

    step("fastcr receive's stats (the destination)");
    let receive_stats = fs::read_to_string(&receive_out)
        .with_context(|| format!("reading {}", receive_out.display()))?;
    for line in receive_stats
        .lines()
        .filter(|l| !l.starts_with("listening on "))
    {
        println!("{line}");
    }

    step("demo: stop the copy and collect its verdict");
    if !is_copy(copy, original) {
        bail!("pid {copy} is no longer the copy (NSpid or parentage changed)");
    }
    let init = pidns_init_of(copy);
    println!("$ kill -TERM {copy}");
    kill(u32::try_from(copy).context("pid out of range")?, "TERM")?;
    let copy_status = reap_descendant(copy, "the copy", EXIT_TIMEOUT)?;
    let copy_ended = copy_status.map_or_else(|| "reaped by its parent".to_owned(), describe_wait);
    println!("the copy (pid {copy}) ended: {copy_ended}");
    match init {
        Some(init) => {
            let init_status = reap_descendant(init, "the pid namespace's init", EXIT_TIMEOUT)?;
            println!(
                "its pid namespace's init (pid {init}) ended: {}",
                init_status.map_or_else(|| "reaped by its parent".to_owned(), describe_wait)
            );
        }
        None => println!("its pid namespace's init is gone already"),
    }
    let verdict = fs::read_to_string(state.join("result"))
        .context("the counter wrote no result")?
        .trim()
        .to_owned();
    println!("counter verdict: {verdict}");
    if !verdict.starts_with("PASS") {
        bail!("the migrated counter failed its self-check: {verdict}");
    }
    if let Some(status) = copy_status
        && status.exit_status() != Some(0)
    {
        bail!("the copy ended with {}", describe_wait(status));
    }

    let downtime = table_value(&migrate_stats, "downtime").unwrap_or("?");
    let all_pages = table_value(&migrate_stats, "time_to_all_pages").unwrap_or("?");
    println!(
        "\ndemo: live migration worked, netns {} -> netns {}",
        net.a, net.b
    );
    println!("  downtime {downtime}; every page on the destination {all_pages} after the resume");
    println!(
        "  the copy carried on counting ({} before the migration, {} after) and passed its self-check ({verdict})",
        last_before.unwrap_or_default(),
        after.last().copied().unwrap_or_default(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table_value;

    #[test]
    fn table_value_reads_a_row_not_its_prefixes() {
        let table = "migration stats\n  mode                           lazy\n  downtime                   7.610 ms\n    frozen_dump              2.347 ms\n  time_to_all_pages         21.862 ms\n";
        assert_eq!(table_value(table, "downtime"), Some("7.610 ms"));
        assert_eq!(table_value(table, "time_to_all_pages"), Some("21.862 ms"));
        assert_eq!(table_value(table, "frozen_dump"), Some("2.347 ms"));
        assert_eq!(table_value(table, "time"), None);
        assert_eq!(table_value(table, "rtt"), None);
    }
}
