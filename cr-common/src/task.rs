//! Task (process and thread) lifecycle events: what `cr-ebpf`'s `task` module reports and what
//! `cr-user::bpf::TaskTracker` consumes.

use core::mem::size_of;

/// Hash map of tracked thread-group ids: key = tgid (`u32`), value = the tgid that forked it, or
/// 0 for a root inserted by userspace.
pub const TRACKED_MAP: &str = "TRACKED";
/// Capacity of [`TRACKED_MAP`]. Linux's default `pid_max` is 32768 (4M at most); a checkpointed
/// tree with more live processes than this is out of scope.
pub const TRACKED_MAX_ENTRIES: u32 = 65_536;

/// Ring buffer carrying [`TaskEvent`]s to userspace.
pub const TASK_EVENTS_MAP: &str = "TASK_EVENTS";
/// Size in bytes of [`TASK_EVENTS_MAP`] (a power of two, a multiple of the page size). One event
/// takes 64 bytes with the ring buffer's 8-byte header, so this holds 16384 undrained events.
pub const TASK_EVENTS_BYTES: u32 = 1 << 20;

/// Per-CPU array of `u64` counters, indexed by the `STAT_*` constants.
pub const TASK_STATS_MAP: &str = "TASK_STATS";
/// Events dropped because [`TASK_EVENTS_MAP`] was full.
pub const STAT_EVENTS_LOST: u32 = 0;
/// New processes that could not be inserted into [`TRACKED_MAP`] (map full).
pub const STAT_TRACKED_FULL: u32 = 1;
/// Number of entries of [`TASK_STATS_MAP`].
pub const TASK_STATS_MAX_ENTRIES: u32 = 2;

/// `CLONE_THREAD` from `<linux/sched.h>`: the new task joins the caller's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// Byte offsets of the tracepoint fields the BPF programs read, as laid out by Linux 6.18
/// (`/sys/kernel/tracing/events/<category>/<name>/format`). Userspace checks them against the
/// running kernel's format files before attaching, so a layout change is a clear error instead of
/// garbage events.
pub mod tp {
    /// `task:task_newtask` `pid_t pid` (the new task's tid).
    pub const NEWTASK_PID: usize = 8;
    /// `task:task_newtask` `u64 clone_flags`.
    pub const NEWTASK_CLONE_FLAGS: usize = 32;
    /// `sched:sched_process_exit` `pid_t pid` (the exiting task's tid).
    pub const EXIT_PID: usize = 24;
    /// `sched:sched_process_exit` `bool group_dead` (set when the last thread of the group exits).
    pub const EXIT_GROUP_DEAD: usize = 32;
    /// `sched:sched_process_exec` `pid_t pid` (tid after exec; the group leader's).
    pub const EXEC_PID: usize = 12;
    /// `sched:sched_process_exec` `pid_t old_pid` (tid of the thread that called execve).
    pub const EXEC_OLD_PID: usize = 16;
}

/// What a [`TaskEvent`] reports. Stored as `u32` in [`TaskEvent::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEventKind {
    /// A tracked process created a new process (`fork`, `vfork`, `clone` without
    /// `CLONE_THREAD`). The child is already in [`TRACKED_MAP`] when this is emitted.
    Fork = 1,
    /// A tracked process created a new thread (`clone` with `CLONE_THREAD`).
    Thread = 2,
    /// A thread of a tracked process called `execve` successfully.
    Exec = 3,
    /// A thread of a tracked process exited while other threads of its group live on.
    ThreadExit = 4,
    /// The last thread of a tracked process exited; it was removed from [`TRACKED_MAP`].
    Exit = 5,
}

impl TaskEventKind {
    /// Decodes [`TaskEvent::kind`]; `None` for a value this build does not know.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Fork),
            2 => Some(Self::Thread),
            3 => Some(Self::Exec),
            4 => Some(Self::ThreadExit),
            5 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One task lifecycle event, written by BPF into [`TASK_EVENTS_MAP`].
///
/// ```text
///  0  kind          u32   TaskEventKind
///  4  pid           u32   tid of the subject task (new child / new thread / exiting / exec'ing)
///  8  tgid          u32   thread group of the subject task
/// 12  parent_tgid   u32   Fork/Thread: tgid that called clone; otherwise 0
/// 16  ts_ns         u64   bpf_ktime_get_ns (CLOCK_MONOTONIC)
/// 24  clone_flags   u64   Fork/Thread: the clone flags; otherwise 0
/// 32  old_pid       u32   Exec: tid that called execve; otherwise 0
/// 36  _pad          u32
/// 40  comm          [u8; 16]  comm of the task that triggered the event (NUL-padded)
/// 56
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// A [`TaskEventKind`] as `u32`.
    pub kind: u32,
    /// Tid of the subject task.
    pub pid: u32,
    /// Thread group id of the subject task.
    pub tgid: u32,
    /// For `Fork` and `Thread`: the tgid that called clone; 0 otherwise.
    pub parent_tgid: u32,
    /// Kernel monotonic time of the event, in nanoseconds.
    pub ts_ns: u64,
    /// For `Fork` and `Thread`: the clone flags; 0 otherwise.
    pub clone_flags: u64,
    /// For `Exec`: the tid that called execve (differs from `pid` when a non-leader thread
    /// execs and takes over the leader's tid); 0 otherwise.
    pub old_pid: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// `comm` of the task that triggered the event, NUL-padded.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<TaskEvent>() == 56);

impl TaskEvent {
    /// Size of the record on the wire.
    pub const SIZE: usize = size_of::<Self>();

    /// The decoded kind, `None` for an unknown value.
    #[must_use]
    pub const fn kind(&self) -> Option<TaskEventKind> {
        TaskEventKind::from_u32(self.kind)
    }

    /// Decodes a record from the bytes of a ring-buffer entry (native endian, as BPF wrote it),
    /// without `unsafe`. Returns `None` if `bytes` is shorter than [`Self::SIZE`].
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..Self::SIZE)?;
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_ne_bytes(a)
        };
        let mut comm = [0u8; 16];
        comm.copy_from_slice(&b[40..56]);
        Some(Self {
            kind: u32_at(0),
            pid: u32_at(4),
            tgid: u32_at(8),
            parent_tgid: u32_at(12),
            ts_ns: u64_at(16),
            clone_flags: u64_at(24),
            old_pid: u32_at(32),
            _pad: u32_at(36),
            comm,
        })
    }
}

// SAFETY: TaskEvent is #[repr(C)], Copy, has no padding bytes (the size assert above equals the
// sum of its fields, `_pad` makes the alignment hole explicit) and every bit pattern is valid for
// its integer and byte-array fields.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TaskEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_round_trips_every_field() {
        let ev = TaskEvent {
            kind: TaskEventKind::Fork as u32,
            pid: 11,
            tgid: 12,
            parent_tgid: 13,
            ts_ns: 0x0102_0304_0506_0708,
            clone_flags: CLONE_THREAD,
            old_pid: 14,
            _pad: 0,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let mut bytes = [0u8; TaskEvent::SIZE];
        bytes[0..4].copy_from_slice(&ev.kind.to_ne_bytes());
        bytes[4..8].copy_from_slice(&ev.pid.to_ne_bytes());
        bytes[8..12].copy_from_slice(&ev.tgid.to_ne_bytes());
        bytes[12..16].copy_from_slice(&ev.parent_tgid.to_ne_bytes());
        bytes[16..24].copy_from_slice(&ev.ts_ns.to_ne_bytes());
        bytes[24..32].copy_from_slice(&ev.clone_flags.to_ne_bytes());
        bytes[32..36].copy_from_slice(&ev.old_pid.to_ne_bytes());
        bytes[40..56].copy_from_slice(&ev.comm);
        assert_eq!(TaskEvent::from_bytes(&bytes), Some(ev));
        assert_eq!(TaskEvent::from_bytes(&bytes[..55]), None);
        assert_eq!(ev.kind(), Some(TaskEventKind::Fork));
    }

    #[test]
    fn unknown_kind_is_none() {
        assert_eq!(TaskEventKind::from_u32(0), None);
        assert_eq!(TaskEventKind::from_u32(6), None);
    }
}
