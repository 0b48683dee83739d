//! The probes behind `fastcr check`: each uses its feature once, for real, and cleans up what
//! it created.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Feature, Kerndat, Need, Status};
use crate::error_chain;
use crate::{
    bpf::{TaskEventKind, TaskTracker, VmaEventKind},
    sys::{
        SyscallError,
        probe::{self, PausedChild, UffdSource},
    },
};

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
    let mut features = vec![
        probe_bpf(),
        probe_bpf_dirty_hints(),
        probe_mmap_lock_guard(),
    ];
    features.extend(probe_uffd());
    features.push(probe_pagemap_scan());
    features.push(probe_pidfd());
    features.push(probe_clone3_set_tid());
    features.push(probe_ptrace());
    features.push(probe_cgroup_freeze());
    features.push(probe_mm_map());
    features.push(probe_timer_restore_ids());
    features.push(probe_soft_dirty());
    features.push(probe_kcmp());
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

/// The guard of the hinted final scan: watches the mmap lock of a short-lived child (`sleep`)
/// and requires its lock activity to be counted (its exit takes the lock). Without it a
/// pre-copy's final scan walks all memory.
fn probe_mmap_lock_guard() -> Feature {
    const NAME: &str = "bpf-mmap-lock-guard";
    let result = (|| -> Result<u64, String> {
        let mut tracker = TaskTracker::attach(std::process::id()).map_err(|e| error_chain(&e))?;
        tracker.watch_memory().map_err(|e| error_chain(&e))?;
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .map_err(|e| format!("cannot start sleep: {e}"))?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        let watched = tracker.watch_mm(pid).map_err(|e| error_chain(&e));
        let waited = child.wait().map_err(|e| format!("wait for sleep: {e}"));
        watched?;
        waited?;
        let activity = tracker.mm_activity(pid).map_err(|e| error_chain(&e))?;
        Ok(activity.map_or(0, |a| a.events))
    })();
    match result {
        Ok(events) if events > 0 => Feature::new(
            NAME,
            &[],
            Status::Ok,
            Some(format!(
                "tracepoints mmap_lock:mmap_lock_acquire_returned/released; {events} lock \
                 events of a child seen: pre-copy's final scan can be limited to hinted pages"
            )),
        ),
        Ok(_) => Feature::new(
            NAME,
            &[],
            Status::Error(
                "attached, but a child's mmap lock was not seen: final scans walk all memory"
                    .to_owned(),
            ),
            None,
        ),
        Err(e) => Feature::new(
            NAME,
            &[],
            Status::Missing(format!("{e}: final scans walk all memory")),
            None,
        ),
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
pub(super) fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
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

/// `PR_TIMER_CREATE_RESTORE_IDS`: POSIX timers are restored with their ids (a process with
/// POSIX timers cannot be restored without it; others can, hence informational).
fn probe_timer_restore_ids() -> Feature {
    const NAME: &str = "timer-restore-ids";
    match probe::timer_restore_ids() {
        Ok(_) => Feature::new(
            NAME,
            &[],
            Status::Ok,
            Some("POSIX timers keep their ids".into()),
        ),
        Err(e) => {
            let status = if e.errno() == Some(libc::EINVAL) {
                Status::Missing(format!("{}: {} (Linux 6.14 or later)", e.call, e.io_error))
            } else {
                Status::from_syscall(&e)
            };
            Feature::new(NAME, &[], status, None)
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

/// `kcmp(KCMP_FILE)`, with which a dump finds fds sharing an open file description: a dup of a
/// descriptor must compare equal, another open of the same file not. Optional: without it a
/// dump saves every fd as a description of its own.
fn probe_kcmp() -> Feature {
    const NAME: &str = "kcmp";
    let me = std::process::id() as i32;
    let result = (|| -> Result<(bool, bool), String> {
        let open = || fs::File::open("/dev/null").map_err(|e| format!("open(/dev/null): {e}"));
        let (a, other) = (open()?, open()?);
        let dup = a.try_clone().map_err(|e| format!("dup: {e}"))?;
        let fd = |f: &fs::File| std::os::fd::AsRawFd::as_raw_fd(f);
        let cmp = |x: &fs::File, y: &fs::File| {
            crate::sys::fs::same_file_description((me, fd(x)), (me, fd(y)))
                .map_err(|e| format!("{}: {}", e.call, e.io_error))
        };
        Ok((cmp(&a, &dup)?, cmp(&a, &other)?))
    })();
    match result {
        Ok((true, false)) => Feature::new(
            NAME,
            &[],
            Status::Ok,
            Some("KCMP_FILE: shared open file descriptions are kept".to_owned()),
        ),
        Ok(got) => Feature::new(
            NAME,
            &[],
            Status::Error(format!(
                "KCMP_FILE gave (dup same, other open same) = {got:?}, want (true, false)"
            )),
            None,
        ),
        Err(e) => Feature::new(NAME, &[], Status::Missing(e), None),
    }
}
