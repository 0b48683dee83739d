//! Live-migration scenario of `benches/benches/migrate.rs`: one `fastcr migrate` of a freshly
//! started `wl_heap SIZE_MIB` to a `fastcr receive --pidns new`, across a veth between two
//! network namespaces ([`NetPair`]), and the check that the migrated copy PASSes.
//!
//! Owns: the network-namespace pair and token file of a bench run ([`Link`]), running both
//! endpoints, reading the source's `--json` stats ([`Migrated`]), and cleaning up the three
//! processes a migration leaves behind on this host: the original (our child, SIGKILLed by the
//! source), the copy and the init of its pid namespace (both reparented to the bench, a child
//! subreaper, once `receive` has exited).
//!
//! Must not: signal a process it did not start. The original is our child; the copy and init are
//! found by NSpid among the bench's descendants and signalled only after checking that they are
//! still our children (vmtests' `Restored` checks PID, start time and descent). Nothing here
//! asserts a timing; every wait is a hang guard.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use vmtests::migration::{me, random_hex, result};
use vmtests::netns::NetPair;
use vmtests::restored::{Restored, find_in_new_pidns, nspid, pidns_init_of};
use vmtests::{KillOnDrop, ProcStat, Scratch, Workload, spawn_registered};

use crate::{WORKLOAD, parse_stats};

/// Sizes of `wl_heap`'s pattern region in the migration benches, in MiB.
pub const MIGRATE_SIZES_MIB: &[u64] = &[256, 1024, 4096];

/// Hang guard for one step (a side of the migration, a process exiting): never a timing
/// assertion.
const GUARD: Duration = Duration::from_secs(300);
/// First port `receive` listens on; every migration takes the next one, so a listener never
/// waits for the previous one's socket to be released.
const FIRST_PORT: u16 = 7600;
const POLL: Duration = Duration::from_millis(5);

/// How the memory travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `migrate --lazy`: resume on the destination at once, pages afterwards (post-copy),
    /// copied out of the original (`process_vm_readv`, then a socket write).
    Lazy,
    /// `migrate --lazy --splice`: the same with the background pages spliced out of the
    /// original through a helper thread, for comparison in the same run.
    LazySplice,
    /// `migrate` without `--lazy`: the whole image (memory included) before the resume.
    StopAndCopy,
    /// `migrate --pre-copy auto`: the rounds' pages stream while the process runs, only the
    /// residue after the freeze.
    PreCopy,
}

impl Mode {
    /// The criterion function name.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Lazy => "lazy",
            Mode::LazySplice => "lazy_splice",
            Mode::StopAndCopy => "stop_and_copy",
            Mode::PreCopy => "precopy",
        }
    }
}

/// Whether the `ip` tool (iproute2) is there: the network namespaces need it.
pub fn have_ip_tool() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two network namespaces joined by a veth (source in a, destination in b) and a token file;
/// one per bench run. Deleted on drop.
#[derive(Debug)]
pub struct Link {
    bin: PathBuf,
    pair: NetPair,
    keys: Scratch,
    next_port: AtomicU16,
}

/// A `fastcr` side running in the background, output in files; SIGKILLed and reaped on drop if
/// still running.
struct Side {
    what: &'static str,
    child: KillOnDrop,
    out: Scratch,
    status: Option<ExitStatus>,
}

impl Side {
    fn spawn(what: &'static str, cmd: &mut Command) -> Result<Side> {
        let out = Scratch::new("bench-mig-out");
        let stdout = fs::File::create(out.join("stdout")).context("create stdout file")?;
        let stderr = fs::File::create(out.join("stderr")).context("create stderr file")?;
        let child = spawn_registered(cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr));
        Ok(Side {
            what,
            child: KillOnDrop(child),
            out,
            status: None,
        })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.0.try_wait().context("try_wait")?;
        }
        Ok(self.status)
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.out.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.out.join("stderr")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "{} ({:?}) stdout: {} stderr: {}",
            self.what,
            self.status,
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }

    /// Waits for exit 0 (hang guard [`GUARD`]).
    fn wait_success(&mut self) -> Result<()> {
        let deadline = Instant::now() + GUARD;
        let status = loop {
            if let Some(status) = self.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("did not exit within {GUARD:?}: {}", self.output());
            }
            sleep(POLL);
        };
        ensure!(status.success(), "failed: {}", self.output());
        Ok(())
    }
}

/// What `fastcr migrate` says when the migration failed before the destination resumed the
/// copy (`MigrateError::Thawed`).
const THAWED: &str = "the original was thawed and runs on";

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

/// A migration that failed cleanly before the resume: no copy exists, and the original was
/// thawed, ran on and then verified its memory (PASS). Returned inside the `anyhow::Error` of
/// [`Link::migrate_once`]; find it with `downcast_ref`.
#[derive(Debug, Clone)]
pub struct Thawed {
    /// The last line `fastcr migrate` printed on stderr.
    pub source: String,
    /// The last line `fastcr receive` printed on stderr.
    pub dest: String,
}

impl std::fmt::Display for Thawed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the migration failed before the resume; source: {}; destination: {}; the original \
             ran on and PASSed",
            self.source, self.dest
        )
    }
}

impl std::error::Error for Thawed {}

/// What one migration reported (`fastcr migrate --json`), once the copy has been verified.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The whole stats object of the source.
    pub stats: Value,
}

impl Migrated {
    fn u64_at(&self, pointer: &str) -> Result<u64> {
        self.stats
            .pointer(pointer)
            .and_then(Value::as_u64)
            .with_context(|| format!("no unsigned `{pointer}` in {}", self.stats))
    }

    /// `downtime_us`: source freeze to the first instruction of the copy.
    pub fn downtime(&self) -> Result<Duration> {
        self.u64_at("/downtime_us").map(Duration::from_micros)
    }

    /// `time_to_all_pages_us`: the copy's resume to every page in place (lazy only).
    pub fn time_to_all_pages(&self) -> Result<Duration> {
        ensure!(
            self.stats.get("lazy") == Some(&Value::Bool(true)),
            "time_to_all_pages of a migration that was not lazy: {}",
            self.stats
        );
        self.u64_at("/time_to_all_pages_us")
            .map(Duration::from_micros)
    }

    /// `dest.demand_faults`: faults of the copy that had to ask the source.
    pub fn demand_faults(&self) -> Result<u64> {
        self.u64_at("/dest/demand_faults")
    }

    /// `dest.fault_p50_us`: the median latency of this migration's demand faults; `None` when it
    /// had none (the destination then reports 0, which is no latency).
    pub fn fault_p50(&self) -> Result<Option<Duration>> {
        if self.demand_faults()? == 0 {
            return Ok(None);
        }
        self.u64_at("/dest/fault_p50_us")
            .map(|us| Some(Duration::from_micros(us)))
    }

    /// A one-line summary for the bench's log.
    pub fn summary(&self) -> String {
        let get = |p: &str| {
            self.stats
                .pointer(p)
                .map_or_else(|| "?".to_owned(), Value::to_string)
        };
        let mut line = format!(
            "downtime {} us (frozen dump {} us, dest restore {} us), {} bytes sent, rtt {} us",
            get("/downtime_us"),
            get("/dump/frozen_time_us"),
            get("/restore_us"),
            get("/bytes_sent"),
            get("/rtt_us"),
        );
        if self.stats.get("lazy") == Some(&Value::Bool(true)) {
            line.push_str(&format!(
                "; all pages {} us, {} demand faults (p50 {} us, p99 {} us), bulk {} MiB/s, \
                 spliced {}",
                get("/time_to_all_pages_us"),
                get("/dest/demand_faults"),
                get("/dest/fault_p50_us"),
                get("/dest/fault_p99_us"),
                self.stats
                    .get("background_mib_s")
                    .and_then(Value::as_f64)
                    .map_or_else(|| "?".to_owned(), |v| format!("{v:.0}")),
                get("/spliced_processes"),
            ));
        }
        line
    }
}

impl Link {
    /// Creates the namespace pair and a token file of 48 random hex characters.
    pub fn new(bin: &Path) -> Result<Link> {
        let keys = Scratch::new("bench-mig-keys");
        let hex = random_hex().context("read /dev/urandom")?;
        fs::write(keys.join("token"), hex).context("write the token file")?;
        Ok(Link {
            bin: bin.to_path_buf(),
            pair: NetPair::new("bench"),
            keys,
            next_port: AtomicU16::new(FIRST_PORT),
        })
    }

    fn token(&self) -> PathBuf {
        self.keys.join("token")
    }

    /// Starts `wl_heap SIZE_MIB`, waits until it runs its loop (setup, not measured), migrates
    /// it in `mode`, then checks the outcome: the source SIGKILLed the original; the copy runs
    /// in a new pid namespace with the original's pid there, its counter advances, and on
    /// SIGTERM it verifies its whole memory and reports PASS; its namespace's init exits.
    ///
    /// A migration that failed before the resume, leaving no copy and the original thawed, is
    /// checked too (the original runs on, untraced, and PASSes) and returned as a [`Thawed`]
    /// error; any other failure is a plain error.
    pub fn migrate_once(&self, size_mib: u64, mode: Mode) -> Result<Migrated> {
        let mut wl = Workload::spawn(WORKLOAD, &[&size_mib.to_string()]);
        wl.wait_counter_advances();

        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let dest = format!("{}:{port}", self.pair.addr_b());
        let mut recv = Side::spawn(
            "fastcr receive",
            self.pair
                .command_in_b(&self.bin)
                .args(["receive", "--listen", &dest, "--token-file"])
                .arg(self.token())
                .args(["--pidns", "new", "--json"]),
        )?;
        let deadline = Instant::now() + GUARD;
        while !recv.stdout().starts_with("listening on ") {
            if recv.try_wait()?.is_some() {
                bail!("receive exited before listening: {}", recv.output());
            }
            ensure!(
                Instant::now() < deadline,
                "receive not listening within {GUARD:?}: {}",
                recv.output()
            );
            sleep(POLL);
        }

        let mut cmd = self.pair.command_in_a(&self.bin);
        cmd.args([
            "migrate",
            "-t",
            &wl.pid_arg(),
            "--to",
            &dest,
            "--token-file",
        ])
        .arg(self.token())
        .arg("--json");
        match mode {
            Mode::Lazy => {
                cmd.arg("--lazy");
            }
            Mode::LazySplice => {
                cmd.args(["--lazy", "--splice"]);
            }
            Mode::PreCopy => {
                cmd.args(["--pre-copy", "auto"]);
            }
            Mode::StopAndCopy => {}
        }
        let mut mig = Side::spawn("fastcr migrate", &mut cmd)?;
        let sides = mig.wait_success().and_then(|()| recv.wait_success());
        if let Err(e) = sides {
            // The other side's account of it, once it has ended too (or been given up on).
            let _ = recv.wait_success();
            if mig.status.is_some_and(|s| s.code() == Some(1))
                && mig.stderr().contains(THAWED)
                && find_in_new_pidns(wl.pid()).is_none()
            {
                // A clean refusal: the original must be intact and run on.
                wl.assert_running_untraced();
                wl.terminate_and_verify();
                return Err(Thawed {
                    source: last_line(&mig.stderr()),
                    dest: last_line(&recv.stderr()),
                }
                .into());
            }
            bail!("{e:#}\n{}\n{}", mig.output(), recv.output());
        }
        let stats = parse_stats(mig.stdout().as_bytes())?;
        parse_stats(recv.stdout().as_bytes()).context("receive's stats")?;

        let status = wl.reap();
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "the source must SIGKILL the original after the migration, but it {status}"
        );
        let copy = Copy::find(&wl)?;
        wl.wait_counter_advances_as(copy.copy.pid());
        copy.terminate_and_verify(&wl)?;
        let strays = vmtests::stray_children();
        ensure!(
            strays.is_empty(),
            "processes left behind by the migration: {strays:?}"
        );
        Ok(Migrated { stats })
    }
}

/// Reaps our child `pid` within [`GUARD`].
fn reap(pid: i32, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + GUARD;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        ensure!(
            rc == 0,
            "waitpid({pid}) ({what}): {}",
            std::io::Error::last_os_error()
        );
        ensure!(
            Instant::now() < deadline,
            "{what} (pid {pid}) did not exit within {GUARD:?}"
        );
        sleep(POLL);
    }
}

/// The migrated copy and its pid namespace's init, both the bench's children once `receive` has
/// exited. Dropped without [`Copy::terminate_and_verify`] (a failed sample), both are killed and
/// reaped.
struct Copy {
    copy: Restored,
    init: i32,
    done: bool,
}

impl Copy {
    fn find(wl: &Workload) -> Result<Copy> {
        let outer = find_in_new_pidns(wl.pid()).with_context(|| {
            format!(
                "no process with pid {} in a new pid namespace after the migration",
                wl.pid()
            )
        })?;
        ensure!(
            nspid(outer) == Some(vec![outer, wl.pid()]),
            "NSpid of the copy {outer}: {:?}",
            nspid(outer)
        );
        let copy = Restored::new(outer);
        let init = pidns_init_of(outer)
            .with_context(|| format!("no init (pid 1) in the namespace of the copy {outer}"))?;
        let found = Copy {
            copy,
            init,
            done: false,
        };
        let init_parent = ProcStat::read(init).map(|s| s.ppid);
        ensure!(
            init_parent == Some(me()),
            "the copy's namespace init {init} has parent {init_parent:?}, not the bench"
        );
        Ok(found)
    }

    /// SIGTERM; the copy verifies its memory and must write PASS; init then exits.
    fn terminate_and_verify(mut self, wl: &Workload) -> Result<()> {
        let outer = self.copy.pid();
        if self.copy.stat().is_some_and(|s| s.ppid == me()) {
            self.copy.signal(libc::SIGTERM);
            let status = reap(outer, "the migrated copy")?;
            ensure!(status.success(), "the migrated copy {status}");
        } else {
            self.copy.terminate();
        }
        let result = result(wl);
        ensure!(
            result == "PASS\n",
            "the migrated copy: result {:?}; log: {}",
            result.trim_end(),
            wl.log()
        );
        let status = reap(self.init, "the pid namespace's init")?;
        self.done = true;
        ensure!(status.success(), "the pid namespace's init {status}");
        Ok(())
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Still this copy (PID and start time) and our unreaped child?
        let copy_ours = || self.copy.stat().is_some_and(|s| s.ppid == me());
        if self.copy.is_alive() && copy_ours() {
            // SAFETY: our unreaped child (checked just above): the PID names the copy.
            unsafe { libc::kill(self.copy.pid(), libc::SIGKILL) };
        }
        if copy_ours() {
            let _ = reap(self.copy.pid(), "the copy");
        }
        if ProcStat::read(self.init).is_some_and(|s| s.ppid == me() && s.comm.starts_with("fastcr"))
        {
            // SAFETY: our unreaped child: killing init takes its namespace down.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
            let _ = reap(self.init, "the namespace's init");
        }
    }
}
