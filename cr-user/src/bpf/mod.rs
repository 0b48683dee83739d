//! BPF task tracking: which processes belong to the tree being checkpointed, kept current by the
//! kernel as the tree forks, spawns threads, execs and exits.
//!
//! The programs live in `cr-ebpf` (module `task`); this module loads the object embedded at
//! build time, attaches it, and exposes [`TaskTracker`]. A process forked by a tracked process is
//! inserted into the tracked set *inside BPF*, before the child first runs, so nothing the tree
//! does between two [`TaskTracker::drain`] calls escapes it. What BPF cannot know is the state
//! before [`TaskTracker::attach`]: the caller seeds the set with the processes that already exist
//! (a `/proc` walk) through [`TaskTracker::track`].
//!
//! The same loaded object also carries the memory hooks of pre-copy (DESIGN §5): write-fault
//! hints ([`TaskTracker::drain_dirty`], module `dirty`) and VMA-change events
//! ([`TaskTracker::drain_vma_events`], module `vma`). They are methods of [`TaskTracker`] rather
//! than a sibling type because they share its `TRACKED` map (only tracked processes are
//! watched) and one object must stay loaded (DESIGN §4); they are attached on demand by
//! [`TaskTracker::watch_memory`], so a plain `dump`, which needs only the task hooks, does not
//! put a program on every page fault of the machine. VMA events have their own ring buffer and
//! their own drain, so a burst of `mmap` calls cannot crowd out a fork event and callers that
//! only follow tasks are unaffected.
//!
//! No `unsafe` here: aya's loader, maps and `include_bytes_aligned!` are safe, and mounting
//! tracefs goes through `sys::probe`.

mod dirty;
mod logging;
mod mmlock;
mod vma;

use std::{collections::BTreeSet, io, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
};
use aya_log::EbpfLogger;
use cr_common::{
    dirty::{DIRTY_EVENTS_MAP, DIRTY_STATS_MAP, STAT_DIRTY_DROPS},
    mmlock::FASTCR_TGID_GLOBAL,
    task::{STAT_EVENTS_LOST, STAT_TRACKED_FULL, TASK_EVENTS_MAP, TASK_STATS_MAP, TRACKED_MAP, tp},
    vma::{STAT_VMA_EVENTS_LOST, STAT_VMA_PENDING_FULL, VMA_EVENTS_MAP, VMA_STATS_MAP},
};
pub use cr_common::{
    task::{TaskEvent, TaskEventKind},
    vma::{VmaChange, VmaEvent, VmaEventKind},
};
pub use dirty::DirtyHint;
pub use mmlock::MmActivity;

use crate::sys::{SyscallError, probe};

/// The object built from `cr-ebpf` by build.rs; empty when built with `AYA_BUILD_SKIP=1`.
static BPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cr-ebpf"));

/// Name of aya-log-ebpf's global log-level symbol in the object.
const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// One tracepoint program: the function name in `cr-ebpf` and where it attaches.
struct Hook {
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    /// Fields the program reads at fixed offsets: (field name, offset in cr-common).
    fields: &'static [(&'static str, usize)],
}

const HOOKS: [Hook; 3] = [
    Hook {
        program: "task_newtask",
        category: "task",
        tracepoint: "task_newtask",
        fields: &[
            ("pid", tp::NEWTASK_PID),
            ("clone_flags", tp::NEWTASK_CLONE_FLAGS),
        ],
    },
    Hook {
        program: "sched_process_exit",
        category: "sched",
        tracepoint: "sched_process_exit",
        fields: &[("pid", tp::EXIT_PID), ("group_dead", tp::EXIT_GROUP_DEAD)],
    },
    Hook {
        program: "sched_process_exec",
        category: "sched",
        tracepoint: "sched_process_exec",
        fields: &[("pid", tp::EXEC_PID), ("old_pid", tp::EXEC_OLD_PID)],
    },
];

/// Errors of BPF task tracking.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The binary carries no BPF object.
    #[error("fastcr was built without BPF (AYA_BUILD_SKIP)")]
    NotBuilt,
    /// tracefs is not mounted and mounting it failed; tracepoints cannot be attached without it.
    #[error("cannot mount tracefs at {path}")]
    Tracefs {
        /// Where the mount was attempted.
        path: PathBuf,
        /// The failed mount.
        #[source]
        source: SyscallError,
    },
    /// A tracepoint's format file could not be read.
    #[error("cannot read the format of tracepoint {category}:{tracepoint} at {path}")]
    TracepointFormatRead {
        /// Tracepoint category, e.g. `sched`.
        category: &'static str,
        /// Tracepoint name.
        tracepoint: &'static str,
        /// The format file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The running kernel lays out a tracepoint differently from what the BPF programs read.
    #[error(
        "tracepoint {category}:{tracepoint} field {field} is at offset {found:?}, the BPF program reads offset {expected}"
    )]
    TracepointLayout {
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        tracepoint: &'static str,
        /// Field name.
        field: &'static str,
        /// Offset compiled into the program.
        expected: usize,
        /// Offset in the kernel's format file, `None` if the field is absent.
        found: Option<usize>,
    },
    /// The object could not be parsed or its maps could not be created.
    #[error("cannot load the BPF object")]
    Load {
        /// aya's error (boxed: it is several hundred bytes).
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a program this module expects (object and loader out of step).
    #[error("BPF program {program} missing from the object")]
    MissingProgram {
        /// Program name.
        program: &'static str,
    },
    /// The object lacks a map this module expects.
    #[error("BPF map {map} missing from the object")]
    MissingMap {
        /// Map name.
        map: &'static str,
    },
    /// The kernel refused a program (verifier) or the attach failed.
    #[error("cannot load or attach BPF program {program} to {category}:{tracepoint}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        tracepoint: &'static str,
        /// aya's error (boxed: it is large).
        #[source]
        source: Box<ProgramError>,
    },
    /// A map has an unexpected type or could not be read or written.
    #[error("BPF map {map} operation failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// Adding a process to the tracked set failed.
    #[error("cannot track tgid {tgid}")]
    Track {
        /// The process.
        tgid: u32,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// A process's `mm_struct` pointer could not be learned.
    #[error("cannot learn the memory descriptor of process {pid}")]
    LearnMm {
        /// The process.
        pid: i32,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The aya-log reader could not be set up.
    #[error("cannot set up the BPF log reader")]
    Logger {
        /// aya-log's error.
        #[source]
        source: aya_log::Error,
    },
}

/// Follows a process tree: loaded and attached BPF programs plus the maps they share with
/// userspace. Dropping it detaches the programs and frees the maps.
pub struct TaskTracker {
    tracked: HashMap<MapData, u32, u32>,
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
    dirty: RingBuf<MapData>,
    dirty_stats: PerCpuArray<MapData, u64>,
    vma_events: RingBuf<MapData>,
    vma_stats: PerCpuArray<MapData, u64>,
    /// Who locks the tracked processes' memory (hooks attached by [`Self::watch_memory`]).
    mm: mmlock::MmWatch,
    /// Why the mmap-lock hooks could not be attached, if they could not.
    mm_hooks: Option<String>,
    /// Whether [`Self::watch_memory`] has attached the fault and VMA hooks.
    watching_memory: bool,
    /// Kept for the tracker's whole life: dropping it closes the log ring buffer, after which
    /// loading another object fails (DESIGN §4).
    logger: EbpfLogger<logging::TracingLog>,
    /// Owns the programs and their links; declared last so it is dropped after the maps.
    ebpf: Ebpf,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTracker").finish_non_exhaustive()
    }
}

impl TaskTracker {
    /// Loads the BPF object, attaches the three task tracepoints and starts tracking
    /// `root_tgid`. Mounts tracefs at `/sys/kernel/tracing` if nothing is mounted there.
    ///
    /// Only processes created *after* this call are added automatically; existing descendants
    /// of `root_tgid` must be added with [`Self::track`].
    ///
    /// # Errors
    /// [`BpfError::NotBuilt`] for a binary built with `AYA_BUILD_SKIP=1`; otherwise whichever step
    /// of mounting, checking, loading or attaching failed.
    pub fn attach(root_tgid: u32) -> Result<Self, BpfError> {
        if BPF_OBJECT.is_empty() {
            return Err(BpfError::NotBuilt);
        }
        let tracefs = probe::ensure_tracefs().map_err(|source| BpfError::Tracefs {
            path: PathBuf::from(probe::TRACEFS),
            source,
        })?;
        for hook in &HOOKS {
            check_layout(&tracefs, hook)?;
        }

        let level = logging::bpf_log_level();
        let mut ebpf = EbpfLoader::new()
            .override_global(AYA_LOG_LEVEL, &level, false)
            .override_global(FASTCR_TGID_GLOBAL, &std::process::id(), true)
            .load(BPF_OBJECT)
            .map_err(|source| BpfError::Load {
                source: Box::new(source),
            })?;
        // Set up the log reader before attaching so records from the first events are kept.
        let logger = EbpfLogger::init_with_logger(&mut ebpf, logging::TracingLog)
            .map_err(|source| BpfError::Logger { source })?;

        let mut tracked: HashMap<MapData, u32, u32> = take_map(&mut ebpf, TRACKED_MAP)?;
        // Insert the root before attaching: a fork racing with the attach is then either seen
        // by the program or already in the caller's /proc walk.
        tracked
            .insert(root_tgid, 0, 0)
            .map_err(|source| BpfError::Track {
                tgid: root_tgid,
                source,
            })?;
        let events: RingBuf<MapData> = take_map(&mut ebpf, TASK_EVENTS_MAP)?;
        let stats: PerCpuArray<MapData, u64> = take_map(&mut ebpf, TASK_STATS_MAP)?;
        let dirty: RingBuf<MapData> = take_map(&mut ebpf, DIRTY_EVENTS_MAP)?;
        let dirty_stats = take_map(&mut ebpf, DIRTY_STATS_MAP)?;
        let vma_events = take_map(&mut ebpf, VMA_EVENTS_MAP)?;
        let vma_stats = take_map(&mut ebpf, VMA_STATS_MAP)?;
        let mm = mmlock::MmWatch::new(&mut ebpf)?;

        for hook in &HOOKS {
            attach_hook(&mut ebpf, hook)?;
        }
        tracing::debug!(root_tgid, "BPF task tracking attached");
        Ok(Self {
            tracked,
            events,
            stats,
            dirty,
            dirty_stats,
            vma_events,
            vma_stats,
            mm,
            mm_hooks: None,
            watching_memory: false,
            logger,
            ebpf,
        })
    }

    /// Adds `tgid` to the tracked set (a process that existed before [`Self::attach`]). From now
    /// on its forks are tracked too. Tracking an already tracked process is a no-op.
    ///
    /// # Errors
    /// [`BpfError::Track`] if the map is full or the update fails.
    pub fn track(&mut self, tgid: u32) -> Result<(), BpfError> {
        match self.tracked.get(&tgid, 0) {
            Ok(_) => return Ok(()),
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(BpfError::Track { tgid, source }),
        }
        self.tracked
            .insert(tgid, 0, 0)
            .map_err(|source| BpfError::Track { tgid, source })
    }

    /// Stops tracking `tgid` (its future forks are no longer followed). Unknown tgids are
    /// ignored.
    ///
    /// # Errors
    /// [`BpfError::Map`] if the map update fails for another reason than a missing key.
    pub fn untrack(&mut self, tgid: u32) -> Result<(), BpfError> {
        match self.tracked.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(BpfError::Map {
                map: TRACKED_MAP,
                source,
            }),
        }
    }

    /// Returns every event queued since the last call, oldest first, without blocking; also
    /// forwards the BPF programs' log records to `tracing`.
    ///
    /// Events are lost only if the ring buffer (16384 events) fills up between two calls; see
    /// [`Self::lost_events`].
    ///
    /// # Errors
    /// None today; the `Result` leaves room for readers that can fail (e.g. an epoll wait).
    pub fn drain(&mut self) -> Result<Vec<TaskEvent>, BpfError> {
        self.logger.flush();
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            match TaskEvent::from_bytes(&item) {
                Some(event) => out.push(event),
                // Only a mismatched object/loader pair can produce this; keep draining so the
                // ring buffer does not stall.
                None => tracing::warn!(len = item.len(), "short task event record ignored"),
            }
        }
        Ok(out)
    }

    /// The tgids currently in the tracked set, as BPF sees them.
    ///
    /// # Errors
    /// [`BpfError::Map`] if iterating the map fails.
    pub fn tracked_tgids(&self) -> Result<BTreeSet<u32>, BpfError> {
        self.tracked
            .keys()
            .collect::<Result<BTreeSet<u32>, MapError>>()
            .map_err(|source| BpfError::Map {
                map: TRACKED_MAP,
                source,
            })
    }

    /// Events dropped because userspace did not drain the ring buffer in time, plus new
    /// processes that could not be tracked because the tracked set was full, summed over CPUs.
    /// A non-zero value means the BPF view is incomplete and a `/proc` walk is needed.
    ///
    /// # Errors
    /// [`BpfError::Map`] if reading the counters fails.
    pub fn lost_events(&self) -> Result<u64, BpfError> {
        let mut total = 0u64;
        for index in [STAT_EVENTS_LOST, STAT_TRACKED_FULL] {
            let per_cpu = self.stats.get(&index, 0).map_err(|source| BpfError::Map {
                map: TASK_STATS_MAP,
                source,
            })?;
            total = per_cpu.iter().fold(total, |acc, v| acc.saturating_add(*v));
        }
        Ok(total)
    }
}

impl TaskTracker {
    /// Attaches the memory hooks of the loaded object: write-fault hints
    /// (`exceptions:page_fault_user`/`page_fault_kernel`) and VMA-change events
    /// (`syscalls:sys_{enter,exit}_{mmap,munmap,mremap,brk,madvise,mprotect}`), for every tracked
    /// process, current and future. Calling it again is a no-op.
    ///
    /// Until this is called [`Self::drain_dirty`] and [`Self::drain_vma_events`] return nothing.
    /// Writes made before it are not hinted: seed the first round from a full copy or from
    /// PAGEMAP_SCAN, as always.
    ///
    /// # Errors
    /// The tracefs, layout-check or attach failures of [`Self::attach`]. Hooks attached before
    /// a failure stay attached until the tracker is dropped; calling again retries them all.
    pub fn watch_memory(&mut self) -> Result<(), BpfError> {
        if self.watching_memory {
            return Ok(());
        }
        let tracefs = probe::ensure_tracefs().map_err(|source| BpfError::Tracefs {
            path: PathBuf::from(probe::TRACEFS),
            source,
        })?;
        let hooks: Vec<&Hook> = dirty::HOOKS
            .iter()
            .chain(vma::HOOKS.iter().flat_map(|pair| pair.iter()))
            .collect();
        for hook in &hooks {
            check_layout(&tracefs, hook)?;
        }
        for hook in hooks {
            attach_hook(&mut self.ebpf, hook)?;
        }
        // Optional: without them the final scan of a pre-copy walks all memory.
        let mm_hooks = mmlock::HOOKS.iter().try_for_each(|hook| {
            check_layout(&tracefs, hook)?;
            attach_hook(&mut self.ebpf, hook)
        });
        if let Err(e) = mm_hooks {
            tracing::debug!(error = %e, "no mmap-lock events: final scans walk all memory");
            self.mm_hooks = Some(crate::error_chain(&e));
        }
        self.watching_memory = true;
        tracing::debug!("BPF write-fault hints and VMA events attached");
        Ok(())
    }

    /// Returns the pages the tracked processes wrote (as write faults) since the previous call,
    /// sorted by (tgid, page), and takes their records off the BPF ring buffer, so the next call
    /// starts a new round. A subset of what PAGEMAP_SCAN reports for the same interval; see the
    /// `dirty` module for what it cannot see.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for readers that can fail.
    pub fn drain_dirty(&mut self) -> Result<Vec<DirtyHint>, BpfError> {
        self.logger.flush();
        Ok(dirty::drain(&mut self.dirty))
    }

    /// Returns every VMA-change event queued since the last call, oldest first, without
    /// blocking. Task events are drained separately by [`Self::drain`].
    ///
    /// # Errors
    /// None today; the `Result` leaves room for readers that can fail (e.g. an epoll wait).
    pub fn drain_vma_events(&mut self) -> Result<Vec<VmaEvent>, BpfError> {
        self.logger.flush();
        Ok(vma::drain(&mut self.vma_events))
    }

    /// Write faults that could not be recorded because the hint ring buffer was full (16 MiB,
    /// about 700 000 faults per round), summed over CPUs since attach. Non-zero means some round's hints were incomplete
    /// (the PAGEMAP_SCAN set, which is what counts, is not affected).
    ///
    /// # Errors
    /// [`BpfError::Map`] if reading the counters fails.
    pub fn dirty_drops(&self) -> Result<u64, BpfError> {
        sum_stats(&self.dirty_stats, DIRTY_STATS_MAP, &[STAT_DIRTY_DROPS])
    }

    /// Starts counting who locks `pid`'s memory (see [`Self::mm_activity`]); needs
    /// [`Self::watch_memory`]. Call it before the process is registered for write-protect:
    /// that registration takes the lock for writing, so no hold that began before this call
    /// outlasts it. Watching a process twice is a no-op.
    ///
    /// # Errors
    /// [`BpfError::LearnMm`] if its mm pointer cannot be learned; a map failure.
    pub fn watch_mm(&mut self, pid: i32) -> Result<(), BpfError> {
        if !self.watching_memory {
            return Err(BpfError::LearnMm {
                pid,
                source: io::Error::other("the memory hooks are not attached"),
            });
        }
        if let Some(why) = &self.mm_hooks {
            return Err(BpfError::LearnMm {
                pid,
                source: io::Error::other(format!("no mmap-lock events: {why}")),
            });
        }
        self.mm.watch(pid)
    }

    /// Lock activity on `pid`'s memory by anybody but fastcr: two readings with the same
    /// `events` and nobody holding the lock at the second mean nothing wrote its memory in
    /// between except through faults of its own tasks, which the hints see. `None` if `pid` is
    /// not watched.
    ///
    /// # Errors
    /// [`BpfError::Map`] if reading the maps fails.
    pub fn mm_activity(&self, pid: i32) -> Result<Option<MmActivity>, BpfError> {
        self.mm.activity(pid)
    }

    /// VMA-change events lost (ring buffer full, or too many threads inside a memory-map
    /// syscall at once), summed over CPUs since attach. Non-zero means the layout must be
    /// re-read from `/proc/PID/maps`.
    ///
    /// # Errors
    /// [`BpfError::Map`] if reading the counters fails.
    pub fn lost_vma_events(&self) -> Result<u64, BpfError> {
        sum_stats(
            &self.vma_stats,
            VMA_STATS_MAP,
            &[STAT_VMA_EVENTS_LOST, STAT_VMA_PENDING_FULL],
        )
    }
}

/// Sums the given per-CPU counters over all CPUs.
fn sum_stats(
    stats: &PerCpuArray<MapData, u64>,
    map: &'static str,
    indices: &[u32],
) -> Result<u64, BpfError> {
    let mut total = 0u64;
    for index in indices {
        let per_cpu = stats
            .get(index, 0)
            .map_err(|source| BpfError::Map { map, source })?;
        total = per_cpu.iter().fold(total, |acc, v| acc.saturating_add(*v));
    }
    Ok(total)
}

/// Takes ownership of a map from the loaded object, typed.
fn take_map<M>(ebpf: &mut Ebpf, map: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let raw = ebpf.take_map(map).ok_or(BpfError::MissingMap { map })?;
    M::try_from(raw).map_err(|source| BpfError::Map { map, source })
}

fn attach_hook(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), BpfError> {
    let attach_err = |source| BpfError::Attach {
        program: hook.program,
        category: hook.category,
        tracepoint: hook.tracepoint,
        source: Box::new(source),
    };
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .ok_or(BpfError::MissingProgram {
            program: hook.program,
        })?
        .try_into()
        .map_err(attach_err)?;
    program.load().map_err(attach_err)?;
    // The link is owned by the program inside `Ebpf` and detached when it drops.
    program
        .attach(hook.category, hook.tracepoint)
        .map_err(attach_err)?;
    Ok(())
}

/// Checks that the kernel's tracepoint record puts each field the program reads where the
/// program expects it.
fn check_layout(tracefs: &std::path::Path, hook: &Hook) -> Result<(), BpfError> {
    let path = tracefs
        .join("events")
        .join(hook.category)
        .join(hook.tracepoint)
        .join("format");
    let format =
        std::fs::read_to_string(&path).map_err(|source| BpfError::TracepointFormatRead {
            category: hook.category,
            tracepoint: hook.tracepoint,
            path: path.clone(),
            source,
        })?;
    for &(field, expected) in hook.fields {
        let found = field_offset(&format, field);
        if found != Some(expected) {
            return Err(BpfError::TracepointLayout {
                category: hook.category,
                tracepoint: hook.tracepoint,
                field,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// Finds `offset:N;` of `field` in a tracefs format file, whose lines look like
/// `\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;`.
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        // The name is the last word of the declaration, minus any array suffix.
        let name = decl.rsplit(' ').next()?.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_FORMAT: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    #[test]
    fn field_offset_parses_tracefs_format() {
        assert_eq!(field_offset(EXIT_FORMAT, "pid"), Some(24));
        assert_eq!(field_offset(EXIT_FORMAT, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT_FORMAT, "comm"), Some(8));
        assert_eq!(field_offset(EXIT_FORMAT, "common_pid"), Some(4));
        assert_eq!(field_offset(EXIT_FORMAT, "old_pid"), None);
    }

    #[test]
    fn exit_hook_matches_the_sample_format() {
        let hook = &HOOKS[1];
        for &(field, expected) in hook.fields {
            assert_eq!(field_offset(EXIT_FORMAT, field), Some(expected), "{field}");
        }
    }
}
