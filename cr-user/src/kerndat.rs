//! `fastcr check`: which kernel features fastcr needs are really there.
//!
//! Every entry is probed by using the feature once (CRIU's kerndat does the same), never read
//! from `/boot/config-*` or `/proc/config.gz`: a config file says what was compiled, not what
//! this process is allowed to use (fentry is compiled in on the project's kernels, and refused).
//! The raw calls live in `sys::probe`; this module interprets them, and renders the report as a
//! table or JSON. Probes clean up every child, descriptor and cgroup they create.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    bpf::{TaskEventKind, TaskTracker, VmaEventKind},
    sys::{
        SyscallError,
        probe::{self, PausedChild, UffdSource},
    },
};

/// What a feature is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// `fastcr dump`.
    Dump,
    /// `fastcr restore`.
    Restore,
    /// `restore --lazy` and post-copy migration.
    Lazy,
    /// `pre-dump` and pre-copy migration (dirty tracking).
    PreCopy,
}

impl Need {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dump => "dump",
            Self::Restore => "restore",
            Self::Lazy => "lazy",
            Self::PreCopy => "pre-copy",
        }
    }
}

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
pub enum Status {
    /// The feature works.
    Ok,
    /// The kernel does not have it (unknown syscall/ioctl, feature bit absent).
    Missing(String),
    /// The probe failed for another reason (permission, resource); the feature may exist.
    Error(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing(_) => "missing",
            Self::Error(_) => "error",
        }
    }

    /// Classifies a failed call: "not there" errnos are `Missing`, everything else `Error`.
    fn from_syscall(err: &SyscallError) -> Self {
        let text = format!("{}: {}", err.call, err.io_error);
        match err.errno() {
            Some(libc::ENOSYS | libc::ENOTTY | libc::EOPNOTSUPP | libc::ENOENT) => {
                Self::Missing(text)
            }
            _ => Self::Error(text),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `uffd-wp-async`.
    pub name: &'static str,
    /// What the probe found.
    #[serde(flatten)]
    pub status: Status,
    /// What was measured when it works (sizes, timings), for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Commands that cannot work without it; empty for informational rows.
    pub required_for: Vec<Need>,
}

impl Feature {
    fn new(
        name: &'static str,
        required_for: &[Need],
        status: Status,
        detail: Option<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail,
            required_for: required_for.to_vec(),
        }
    }

    /// Does the feature work?
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Kerndat {
    /// `uname -r`.
    pub kernel: String,
    /// One entry per probed feature, in a stable order.
    pub features: Vec<Feature>,
}

impl Kerndat {
    /// Features that are not ok and are required for `dump` or `restore` (the ones that make
    /// `fastcr check` fail).
    #[must_use]
    pub fn missing_required(&self) -> Vec<&Feature> {
        self.missing_for(&[Need::Dump, Need::Restore])
    }

    /// Features that are not ok and are required for any of `needs`.
    #[must_use]
    pub fn missing_for(&self, needs: &[Need]) -> Vec<&Feature> {
        self.features
            .iter()
            .filter(|f| !f.is_ok() && f.required_for.iter().any(|n| needs.contains(n)))
            .collect()
    }

    /// The entry called `name`, if probed.
    #[must_use]
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Human-readable table, one line per feature, then a verdict line per command.
    #[must_use]
    pub fn render_table(&self) -> String {
        let name_w = self
            .features
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let need_cells: Vec<String> = self
            .features
            .iter()
            .map(|f| {
                if f.required_for.is_empty() {
                    "-".to_owned()
                } else {
                    f.required_for
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect();
        let need_w = need_cells
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(12);

        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "kernel {}", self.kernel);
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<7}  {:<need_w$}  detail",
            "feature", "status", "required-for"
        );
        for (f, needs) in self.features.iter().zip(&need_cells) {
            let detail = match (&f.status, &f.detail) {
                (Status::Missing(r) | Status::Error(r), _) => r.as_str(),
                (Status::Ok, Some(d)) => d.as_str(),
                (Status::Ok, None) => "",
            };
            let line = format!(
                "{:<name_w$}  {:<7}  {:<need_w$}  {detail}",
                f.name,
                f.status.label(),
                needs
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for need in [Need::Dump, Need::Restore, Need::Lazy, Need::PreCopy] {
            let missing: Vec<&str> = self.missing_for(&[need]).iter().map(|f| f.name).collect();
            let verdict = if missing.is_empty() {
                "supported".to_owned()
            } else {
                format!("NOT supported (needs {})", missing.join(", "))
            };
            let _ = writeln!(out, "{:<9} {verdict}", format!("{}:", need.as_str()));
        }
        out
    }

    /// The report as JSON: `{kernel, features: [{name, status, reason?, detail?,
    /// required_for}], all_required_ok}`.
    ///
    /// # Errors
    /// Serialization errors (none expected for this data).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            kerndat: &'a Kerndat,
            all_required_ok: bool,
        }
        serde_json::to_string_pretty(&Report {
            kerndat: self,
            all_required_ok: self.missing_required().is_empty(),
        })
    }
}

/// Errors of [`run_check`].
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Writing the report failed.
    #[error("cannot write the check report")]
    Write {
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// Encoding the report as JSON failed.
    #[error("cannot encode the check report as JSON")]
    Json {
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Probes the kernel, writes the report (table, or JSON if `json`) to `out`, and returns whether
/// everything required for dump and restore works (the CLI exits 1 when it does not).
///
/// # Errors
/// Only failures to encode or write the report; failed probes are part of the report.
pub fn run_check(json: bool, out: &mut dyn io::Write) -> Result<bool, CheckError> {
    let kerndat = probe();
    let text = if json {
        let mut s = kerndat
            .to_json()
            .map_err(|source| CheckError::Json { source })?;
        s.push('\n');
        s
    } else {
        kerndat.render_table()
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| CheckError::Write { source })?;
    Ok(kerndat.missing_required().is_empty())
}

// UFFD_FEATURE_* bits (include/uapi/linux/userfaultfd.h).
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFD_FEATURE_MOVE: u64 = 1 << 16;
// `_UFFDIO_*` ioctl numbers, as bits of `uffdio_api.ioctls`.
const UFFDIO_REGISTER_BIT: u64 = 1 << 0x00;

/// Runs every probe. Never fails: a failed probe is a row with status `error`.
#[must_use]
pub fn probe() -> Kerndat {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_owned());
    let mut features = vec![probe_bpf(), probe_bpf_dirty_hints()];
    features.extend(probe_uffd());
    features.push(probe_pagemap_scan());
    features.push(probe_pidfd());
    features.push(probe_clone3_set_tid());
    features.push(probe_ptrace());
    features.push(probe_cgroup_freeze());
    features.push(probe_mm_map());
    features.push(probe_soft_dirty());
    Kerndat { kernel, features }
}

/// Loads and attaches the task tracker on ourselves, forks a child and checks BPF saw it: the
/// whole tracking path, not just a program load.
fn probe_bpf() -> Feature {
    const NAME: &str = "bpf-task-tracking";
    const NEEDS: &[Need] = &[Need::Dump, Need::PreCopy];
    let me = std::process::id();
    let mut tracker = match TaskTracker::attach(me) {
        Ok(t) => t,
        Err(e) => {
            return Feature::new(NAME, NEEDS, Status::Error(error_chain(&e)), None);
        }
    };
    let child = match PausedChild::spawn() {
        Ok(c) => c,
        Err(e) => return Feature::new(NAME, NEEDS, Status::from_syscall(&e), None),
    };
    let child_pid = child.pid().cast_unsigned();
    let seen = tracker.drain().map(|events| {
        events
            .iter()
            .any(|ev| ev.kind() == Some(TaskEventKind::Fork) && ev.tgid == child_pid)
    });
    drop(child);
    match seen {
        Ok(true) => Feature::new(
            NAME,
            NEEDS,
            Status::Ok,
            Some("tracepoints task_newtask, sched_process_exit/exec; fork seen".to_owned()),
        ),
        Ok(false) => Feature::new(
            NAME,
            NEEDS,
            Status::Error("attached, but a test fork was not reported".to_owned()),
            None,
        ),
        Err(e) => Feature::new(NAME, NEEDS, Status::Error(error_chain(&e)), None),
    }
}

/// Attaches the memory hooks on ourselves, maps a fresh region (a large zeroed allocation is an
/// `mmap` of untouched pages), writes one of its pages and frees it: BPF must report the write
/// as a hint and the `mmap`/`munmap` as VMA events.
fn probe_bpf_dirty_hints() -> Feature {
    const NAME: &str = "bpf-dirty-hints";
    const NEEDS: &[Need] = &[Need::PreCopy];
    // Far above glibc's largest dynamic mmap threshold (32 MiB), so this is always its own
    // mapping; only the one written page is ever populated.
    const REGION: usize = 64 << 20;
    let me = std::process::id();
    let result = (|| {
        let mut tracker = TaskTracker::attach(me)?;
        tracker.watch_memory()?;
        let mut region = vec![0u8; REGION];
        let target = REGION / 2;
        region[target] = 1;
        let written = std::hint::black_box(&region[target]) as *const u8 as u64;
        drop(region);
        let hints = tracker.drain_dirty()?;
        let events = tracker.drain_vma_events()?;
        let hinted = hints
            .iter()
            .any(|h| h.tgid == me && h.page == written & !0xfff);
        let mapped = events.iter().any(|e| {
            let start = e.ret.cast_unsigned();
            e.kind() == Some(VmaEventKind::Mmap)
                && e.tgid == me
                && !e.failed()
                && (start..start.saturating_add(e.args[1])).contains(&written)
        });
        let unmapped = events
            .iter()
            .any(|e| e.kind() == Some(VmaEventKind::Munmap) && e.tgid == me);
        Ok::<_, crate::bpf::BpfError>((hinted, mapped, unmapped))
    })();
    match result {
        Ok((true, true, true)) => Feature::new(
            NAME,
            NEEDS,
            Status::Ok,
            Some(
                "tracepoints exceptions:page_fault_user/kernel, syscalls:sys_enter/exit_mmap, \
                 munmap, mremap, brk, madvise, mprotect; write and mmap/munmap seen"
                    .to_owned(),
            ),
        ),
        Ok((hinted, mapped, unmapped)) => Feature::new(
            NAME,
            NEEDS,
            Status::Error(format!(
                "attached, but a test write/mmap/munmap was not reported \
                 (write seen: {hinted}, mmap seen: {mapped}, munmap seen: {unmapped})"
            )),
            None,
        ),
        Err(e) => Feature::new(NAME, NEEDS, Status::Error(error_chain(&e)), None),
    }
}

/// One `UFFDIO_API` call, split into the rows fastcr's modes care about.
fn probe_uffd() -> Vec<Feature> {
    let api = match probe::uffd_api() {
        Ok(api) => api,
        Err(e) => {
            let status = Status::from_syscall(&e);
            return [
                ("userfaultfd", &[Need::Lazy][..]),
                ("uffd-wp", &[Need::PreCopy][..]),
                ("uffd-wp-async", &[Need::PreCopy][..]),
                ("uffd-move", &[][..]),
                ("uffd-events", &[Need::Lazy][..]),
            ]
            .into_iter()
            .map(|(name, needs)| Feature::new(name, needs, status.clone(), None))
            .collect();
        }
    };
    let has = |bits: u64| api.features & bits == bits;
    let row = |name, needs: &[Need], bits: u64, what: &str| {
        if has(bits) {
            Feature::new(name, needs, Status::Ok, None)
        } else {
            Feature::new(
                name,
                needs,
                Status::Missing(format!("UFFDIO_API lacks {what}")),
                None,
            )
        }
    };
    let source = match api.source {
        UffdSource::DevNode => "/dev/userfaultfd",
        UffdSource::Syscall => "userfaultfd(2)",
    };
    let base = if api.ioctls & UFFDIO_REGISTER_BIT == 0 {
        Feature::new(
            "userfaultfd",
            &[Need::Lazy],
            Status::Missing("UFFDIO_REGISTER not offered".to_owned()),
            None,
        )
    } else {
        let mut extra = Vec::new();
        if has(UFFD_FEATURE_MISSING_SHMEM) {
            extra.push("shmem");
        }
        if has(UFFD_FEATURE_MISSING_HUGETLBFS) {
            extra.push("hugetlbfs");
        }
        Feature::new(
            "userfaultfd",
            &[Need::Lazy],
            Status::Ok,
            Some(format!(
                "via {source}, features {:#x}{}{}",
                api.features,
                if extra.is_empty() {
                    ""
                } else {
                    ", MISSING mode also on "
                },
                extra.join(", ")
            )),
        )
    };
    let mut wp = row(
        "uffd-wp",
        &[Need::PreCopy],
        UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        "PAGEFAULT_FLAG_WP",
    );
    if wp.is_ok() {
        let mut parts = Vec::new();
        if has(UFFD_FEATURE_WP_UNPOPULATED) {
            parts.push("unpopulated");
        }
        if has(UFFD_FEATURE_WP_HUGETLBFS_SHMEM) {
            parts.push("shmem/hugetlbfs");
        }
        if !parts.is_empty() {
            wp.detail = Some(format!("also {}", parts.join(", ")));
        }
    }
    vec![
        base,
        wp,
        row(
            "uffd-wp-async",
            &[Need::PreCopy],
            UFFD_FEATURE_WP_ASYNC,
            "WP_ASYNC",
        ),
        // MOVE only speeds up filling memory; UFFDIO_COPY is the fallback.
        row("uffd-move", &[], UFFD_FEATURE_MOVE, "MOVE"),
        row(
            "uffd-events",
            &[Need::Lazy],
            UFFD_FEATURE_EVENT_FORK
                | UFFD_FEATURE_EVENT_REMAP
                | UFFD_FEATURE_EVENT_REMOVE
                | UFFD_FEATURE_EVENT_UNMAP,
            "one of EVENT_FORK/REMAP/REMOVE/UNMAP",
        ),
    ]
}

fn probe_pagemap_scan() -> Feature {
    const NEEDS: &[Need] = &[Need::PreCopy];
    match probe::pagemap_scan() {
        Ok(n) => Feature::new(
            "pagemap-scan",
            NEEDS,
            Status::Ok,
            Some(format!("{n} region(s) on a test page")),
        ),
        Err(e) => Feature::new("pagemap-scan", NEEDS, Status::from_syscall(&e), None),
    }
}

fn probe_pidfd() -> Feature {
    // Taking a userfaultfd out of the target, and its other descriptors.
    const NEEDS: &[Need] = &[Need::Dump, Need::Lazy, Need::PreCopy];
    match probe::pidfd_getfd_self() {
        Ok(()) => Feature::new(
            "pidfd-getfd",
            NEEDS,
            Status::Ok,
            Some("pidfd_open + pidfd_getfd".to_owned()),
        ),
        Err(e) => Feature::new("pidfd-getfd", NEEDS, Status::from_syscall(&e), None),
    }
}

/// Creates a child with a chosen free pid. Candidates start above 10000 and skip pids present
/// in /proc; a pid taken between the check and the call (`EEXIST`) moves on to the next one.
fn probe_clone3_set_tid() -> Feature {
    const NAME: &str = "clone3-set-tid";
    const NEEDS: &[Need] = &[Need::Restore];
    let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32_768);
    let taken: BTreeSet<i32> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut last_err = None;
    let candidates = (10_001..pid_max)
        .filter(|p| !taken.contains(p))
        .step_by(97)
        .take(8);
    for pid in candidates {
        match probe::clone3_set_tid(pid) {
            Ok(()) => {
                return Feature::new(NAME, NEEDS, Status::Ok, Some(format!("created pid {pid}")));
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => last_err = Some(e),
            Err(e) => return Feature::new(NAME, NEEDS, Status::from_syscall(&e), None),
        }
    }
    let reason = last_err.map_or_else(
        || format!("no free pid candidate between 10001 and {pid_max}"),
        |e| format!("{}: {} (every candidate pid was taken)", e.call, e.io_error),
    );
    Feature::new(NAME, NEEDS, Status::Error(reason), None)
}

fn probe_ptrace() -> Feature {
    const NAME: &str = "ptrace";
    const NEEDS: &[Need] = &[Need::Dump, Need::Restore];
    let result = PausedChild::spawn().and_then(|child| probe::ptrace_probe(&child));
    match result {
        Ok(p) => Feature::new(
            NAME,
            NEEDS,
            Status::Ok,
            Some(format!(
                "SEIZE, INTERRUPT, GETREGSET xstate {} B, GET_RSEQ_CONFIGURATION (rseq size {})",
                p.xstate_len, p.rseq_size
            )),
        ),
        Err(e) => Feature::new(NAME, NEEDS, Status::from_syscall(&e), None),
    }
}

/// The cgroup v2 mount point, from `/proc/self/mounts`.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    find_cgroup2_mount(&mounts)
}

/// Parses `/proc/self/mounts` text for the first `cgroup2` filesystem.
fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // Mount points escape spaces as \040; cgroup mounts never contain them in practice, but
        // decode the common case rather than probing a wrong path.
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

/// A probe cgroup removed on drop (after its members are gone).
struct ProbeCgroup(PathBuf);

impl Drop for ProbeCgroup {
    fn drop(&mut self) {
        // rmdir fails while the killed child is still a member; it is reaped before this runs
        // (see probe_cgroup_freeze), but the kernel may take a moment to notice.
        for _ in 0..100 {
            match fs::remove_dir(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        tracing::warn!(path = %self.0.display(), "cannot remove probe cgroup");
    }
}

fn probe_cgroup_freeze() -> Feature {
    const NAME: &str = "cgroup2-freeze";
    // ptrace freezes the tree when this is missing, so nothing requires it.
    const NEEDS: &[Need] = &[];
    let Some(root) = cgroup2_mount() else {
        return Feature::new(
            NAME,
            NEEDS,
            Status::Missing("no cgroup2 mount in /proc/self/mounts".to_owned()),
            None,
        );
    };
    match freeze_roundtrip(&root) {
        Ok(took) => Feature::new(
            NAME,
            NEEDS,
            Status::Ok,
            Some(format!(
                "{} froze a task in {} µs",
                root.display(),
                took.as_micros()
            )),
        ),
        Err(FreezeProbeError::Io(what, e)) => {
            let text = format!("{what}: {e}");
            let status = if e.kind() == io::ErrorKind::NotFound {
                Status::Missing(text)
            } else {
                Status::Error(text)
            };
            Feature::new(NAME, NEEDS, status, None)
        }
        Err(FreezeProbeError::Sys(e)) => Feature::new(NAME, NEEDS, Status::from_syscall(&e), None),
        Err(FreezeProbeError::Timeout) => Feature::new(
            NAME,
            NEEDS,
            Status::Error("cgroup.events did not report `frozen 1` within 1 s".to_owned()),
            None,
        ),
    }
}

enum FreezeProbeError {
    Io(String, io::Error),
    Sys(SyscallError),
    Timeout,
}

/// Creates a child cgroup, moves a paused child in, freezes it, waits for `frozen 1` by polling
/// `cgroup.events` (its notification arrives ~10 ms late on these kernels, DESIGN §3), thaws,
/// and tears everything down. Returns the time from writing `cgroup.freeze` to `frozen 1`.
fn freeze_roundtrip(root: &Path) -> Result<Duration, FreezeProbeError> {
    let io_err = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |e| FreezeProbeError::Io(what, e)
    };
    let dir = root.join(format!("fastcr-check-{}", std::process::id()));
    fs::create_dir(&dir).map_err(io_err("mkdir", &dir))?;
    // Declared before the child so it is dropped after it: the child must be dead and reaped
    // before rmdir can succeed.
    let cgroup = ProbeCgroup(dir);
    let child = PausedChild::spawn().map_err(FreezeProbeError::Sys)?;

    let procs = cgroup.0.join("cgroup.procs");
    fs::write(&procs, child.pid().to_string()).map_err(io_err("write", &procs))?;
    let freeze = cgroup.0.join("cgroup.freeze");
    let events = cgroup.0.join("cgroup.events");

    let start = Instant::now();
    fs::write(&freeze, "1").map_err(io_err("write", &freeze))?;
    let deadline = start + Duration::from_secs(1);
    let took = loop {
        let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
        if text.lines().any(|l| l.trim() == "frozen 1") {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            // Thaw before reporting so the child can be killed and the cgroup removed.
            let _ = fs::write(&freeze, "0");
            return Err(FreezeProbeError::Timeout);
        }
        std::thread::sleep(Duration::from_micros(50));
    };
    fs::write(&freeze, "0").map_err(io_err("write", &freeze))?;
    drop(child);
    drop(cgroup);
    Ok(took)
}

fn probe_mm_map() -> Feature {
    const NEEDS: &[Need] = &[Need::Restore];
    match probe::prctl_mm_map_size() {
        Ok(size) => Feature::new(
            "prctl-mm-map",
            NEEDS,
            Status::Ok,
            Some(format!("PR_SET_MM_MAP_SIZE = {size}")),
        ),
        Err(e) => {
            // EINVAL from PR_SET_MM means the kernel lacks CONFIG_CHECKPOINT_RESTORE.
            let status = if e.errno() == Some(libc::EINVAL) {
                Status::Missing(format!("{}: {}", e.call, e.io_error))
            } else {
                Status::from_syscall(&e)
            };
            Feature::new("prctl-mm-map", NEEDS, status, None)
        }
    }
}

/// Soft-dirty bit (CRIU's pre-dump mechanism; fastcr uses uffd-wp + PAGEMAP_SCAN instead):
/// clear the bits, write a page, and look for bit 55 of its pagemap entry.
fn probe_soft_dirty() -> Feature {
    const NAME: &str = "soft-dirty";
    let result = (|| -> io::Result<bool> {
        let mut page = vec![0u8; 2 * 4096];
        fs::write("/proc/self/clear_refs", "4")?;
        let addr = (page.as_ptr() as u64).next_multiple_of(4096);
        let index = usize::try_from(addr - page.as_ptr() as u64).unwrap_or(0);
        page[index] = 1;
        std::hint::black_box(&mut page);
        let mut pagemap = fs::File::open("/proc/self/pagemap")?;
        pagemap.seek(SeekFrom::Start(addr / 4096 * 8))?;
        let mut entry = [0u8; 8];
        pagemap.read_exact(&mut entry)?;
        Ok(u64::from_ne_bytes(entry) & (1 << 55) != 0)
    })();
    match result {
        Ok(true) => Feature::new(
            NAME,
            &[],
            Status::Ok,
            Some("informational: not used by fastcr".to_owned()),
        ),
        Ok(false) => Feature::new(
            NAME,
            &[],
            Status::Missing(
                "written page not marked soft-dirty (CONFIG_MEM_SOFT_DIRTY off); informational"
                    .to_owned(),
            ),
            None,
        ),
        Err(e) => Feature::new(
            NAME,
            &[],
            Status::Error(format!("clear_refs/pagemap: {e}")),
            None,
        ),
    }
}

/// `err` and its sources joined with ": ", for a report cell (the report is where this chain is
/// shown; the error itself is not propagated).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Kerndat {
        Kerndat {
            kernel: "6.18.0-test".to_owned(),
            features: vec![
                Feature::new(
                    "ptrace",
                    &[Need::Dump, Need::Restore],
                    Status::Ok,
                    Some("xstate 2432 B".to_owned()),
                ),
                Feature::new(
                    "uffd-wp-async",
                    &[Need::PreCopy],
                    Status::Missing("UFFDIO_API lacks WP_ASYNC".to_owned()),
                    None,
                ),
                Feature::new(
                    "soft-dirty",
                    &[],
                    Status::Missing("absent".to_owned()),
                    None,
                ),
            ],
        }
    }

    #[test]
    fn missing_required_ignores_optional_and_other_modes() {
        let k = sample();
        assert!(k.missing_required().is_empty());
        let pre: Vec<_> = k
            .missing_for(&[Need::PreCopy])
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(pre, ["uffd-wp-async"]);

        let mut broken = sample();
        broken.features[0].status = Status::Error("ptrace(PTRACE_SEIZE): EPERM".to_owned());
        let names: Vec<_> = broken.missing_required().iter().map(|f| f.name).collect();
        assert_eq!(names, ["ptrace"]);
    }

    #[test]
    fn table_has_a_row_per_feature_and_verdicts() {
        let table = sample().render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "kernel 6.18.0-test");
        assert!(lines[1].starts_with("feature "));
        assert!(
            lines[2].starts_with("ptrace ")
                && lines[2].contains(" ok ")
                && lines[2].contains("dump,restore")
        );
        assert!(lines[3].contains("missing") && lines[3].ends_with("UFFDIO_API lacks WP_ASYNC"));
        assert!(lines[4].starts_with("soft-dirty") && lines[4].contains(" - "));
        assert!(table.contains("dump:     supported"));
        assert!(table.contains("pre-copy: NOT supported (needs uffd-wp-async)"));
        // Columns line up: every status starts at the same offset.
        let col = lines[1].find("status").expect("header");
        for l in &lines[2..5] {
            assert!(matches!(&l[col..col + 2], "ok" | "mi" | "er"), "{l}");
        }
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&sample().to_json().expect("json")).expect("parse");
        assert_eq!(v["kernel"], "6.18.0-test");
        assert_eq!(v["all_required_ok"], true);
        let f = &v["features"];
        assert_eq!(f[0]["name"], "ptrace");
        assert_eq!(f[0]["status"], "ok");
        assert_eq!(f[0]["detail"], "xstate 2432 B");
        assert_eq!(f[0]["required_for"], serde_json::json!(["dump", "restore"]));
        assert!(f[0].get("reason").is_none());
        assert_eq!(f[1]["status"], "missing");
        assert_eq!(f[1]["reason"], "UFFDIO_API lacks WP_ASYNC");
        assert_eq!(f[1]["required_for"], serde_json::json!(["pre-copy"]));
        assert!(f[1].get("detail").is_none());
    }

    #[test]
    fn finds_cgroup2_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            find_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn errno_classification() {
        let e = SyscallError::from_errno("ioctl(PAGEMAP_SCAN)", libc::ENOTTY);
        assert!(
            matches!(Status::from_syscall(&e), Status::Missing(t) if t.starts_with("ioctl(PAGEMAP_SCAN): "))
        );
        let e = SyscallError::from_errno("ptrace(PTRACE_SEIZE)", libc::EPERM);
        assert!(matches!(Status::from_syscall(&e), Status::Error(_)));
    }
}
