//! `sigstate-<pid>.img`: the signal and limit state of one process that `core-<pid>.img` does
//! not hold: pending signals (process-wide and per thread, with their `siginfo`), POSIX timers,
//! resource limits, personality, `no_new_privs`, capabilities and seccomp (filters, strict
//! mode).
//!
//! A file of its own rather than fields appended to [`super::CoreImage`]: payloads are bincode,
//! which is not self-describing, so a reader cannot default a field an older image lacks
//! (`#[serde(default)]` has no effect there). An image without the file (made by an older
//! fastcr) restores as before: nothing pending, no timers, the restorer's limits.

use serde::{Deserialize, Serialize};

/// One queued signal: the kernel's `siginfo_t` (128 bytes) as 16 little-endian words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    /// The raw `siginfo_t`.
    pub info: [u64; 16],
}

/// `si_code` of a POSIX timer's signal.
pub const SI_TIMER: i32 = -2;
/// `SIGEV_THREAD_ID`, or-ed into [`PosixTimer::notify`] for a timer that signals one thread.
pub const SIGEV_THREAD_ID: i32 = 4;

impl PendingSignal {
    /// Builds one from the raw bytes `PTRACE_PEEKSIGINFO` returned.
    pub fn from_bytes(b: &[u8; 128]) -> Self {
        let mut info = [0u64; 16];
        for (i, w) in info.iter_mut().enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(a);
        }
        Self { info }
    }

    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        self.info[0] as u32 as i32
    }

    /// `si_code`.
    pub fn code(&self) -> i32 {
        (self.info[1] & 0xffff_ffff) as u32 as i32
    }

    /// For a timer's signal (`si_code == SI_TIMER`): the timer id (`si_timerid`).
    pub fn timer_id(&self) -> Option<i32> {
        (self.code() == SI_TIMER).then_some(self.info[2] as u32 as i32)
    }
}

/// The signals queued for one thread only (`tgkill`, `SIGEV_THREAD_ID` timers, faults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadPending {
    /// The thread (the main thread included), as seen in the process's pid namespace.
    pub tid: i32,
    /// Its queue, oldest first.
    pub signals: Vec<PendingSignal>,
}

/// One POSIX timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// Its id: restored as the same id.
    pub id: i32,
    /// The clock (`CLOCK_*`, or a CPU-time clock id).
    pub clock: i32,
    /// `sigev_notify`.
    pub notify: i32,
    /// `sigev_signo`.
    pub signo: i32,
    /// `sigev_value`.
    pub value: u64,
    /// For `SIGEV_THREAD_ID`: the thread notified, in the process's pid namespace.
    pub thread: i32,
    /// Interval (seconds, nanoseconds); zero for a one-shot timer.
    pub interval: (u64, u64),
    /// Time left until the next expiry at dump (seconds, nanoseconds); zero when disarmed.
    pub value_left: (u64, u64),
    /// `timer_getoverrun` at dump: the overrun of the last signal delivered (not restorable).
    pub overrun: i32,
    /// Its signal was queued and not yet taken at dump: the restored timer expires at once so
    /// that the kernel queues it again as the timer's own.
    pub signal_pending: bool,
}

/// One resource limit (`RLIMIT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: u32,
    /// Soft limit (`u64::MAX`: unlimited).
    pub cur: u64,
    /// Hard limit.
    pub max: u64,
}

/// Capability sets, one bit per capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Inheritable.
    pub inheritable: u64,
    /// Permitted.
    pub permitted: u64,
    /// Effective.
    pub effective: u64,
    /// Bounding.
    pub bounding: u64,
    /// Ambient.
    pub ambient: u64,
}

/// One seccomp filter (`SECCOMP_SET_MODE_FILTER`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// `SECCOMP_FILTER_FLAG_*` (the kernel reports `SECCOMP_FILTER_FLAG_LOG` only).
    pub flags: u64,
    /// The classic BPF program, one `struct sock_filter` per word.
    pub insns: Vec<u64>,
}

/// The seccomp filters of one thread, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSeccomp {
    /// The thread (the main thread included).
    pub tid: i32,
    /// Its filters, oldest first (each applies on top of the ones before).
    pub filters: Vec<SeccompFilter>,
}

/// Largest classic BPF program (`BPF_MAXINSNS`).
pub const SECCOMP_MAX_INSNS: usize = 4096;

/// `sigstate-<pid>.img`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigStateImage {
    /// The process-wide queue, oldest first.
    pub shared_pending: Vec<PendingSignal>,
    /// Each thread's own queue (threads with an empty queue are left out).
    pub thread_pending: Vec<ThreadPending>,
    /// POSIX timers, by id.
    pub timers: Vec<PosixTimer>,
    /// Every resource limit.
    pub rlimits: Vec<Rlimit>,
    /// `personality(2)` value.
    pub personality: u32,
    /// `PR_SET_NO_NEW_PRIVS` was set.
    pub no_new_privs: bool,
    /// Capabilities (of the main thread; every thread is given them).
    pub caps: Caps,
    /// seccomp filters of the threads that have any.
    pub seccomp: Vec<ThreadSeccomp>,
    /// The threads in seccomp strict mode.
    pub seccomp_strict: Vec<i32>,
}

impl SigStateImage {
    /// The signals queued for thread `tid` alone.
    pub fn pending_of(&self, tid: i32) -> &[PendingSignal] {
        self.thread_pending
            .iter()
            .find(|t| t.tid == tid)
            .map_or(&[], |t| &t.signals)
    }

    /// True if some thread has seccomp filters or runs in strict mode.
    pub fn has_seccomp(&self) -> bool {
        !self.seccomp.is_empty() || !self.seccomp_strict.is_empty()
    }

    /// The seccomp filters of thread `tid`, oldest first.
    pub fn filters_of(&self, tid: i32) -> &[SeccompFilter] {
        self.seccomp
            .iter()
            .find(|t| t.tid == tid)
            .map_or(&[], |t| &t.filters)
    }

    /// How many of the oldest filters every thread of `tids` has in common: the restore installs
    /// them in the main thread before the other threads are created, so they share them again
    /// (as after a `SECCOMP_FILTER_FLAG_TSYNC` or a filter set before `pthread_create`).
    pub fn shared_filters(&self, tids: &[i32]) -> usize {
        let mut chains = tids.iter().map(|&t| self.filters_of(t));
        let Some(first) = chains.next() else {
            return 0;
        };
        chains.fold(first.len(), |n, c| {
            first
                .iter()
                .zip(c)
                .take(n)
                .take_while(|(a, b)| a == b)
                .count()
        })
    }

    /// True if the timer `id` had its signal queued at dump.
    pub fn timer_signal_queued(&self, id: i32) -> bool {
        self.shared_pending
            .iter()
            .chain(self.thread_pending.iter().flat_map(|t| &t.signals))
            .any(|s| s.timer_id() == Some(id))
    }

    /// Checks what restore relies on; returns what is wrong.
    pub fn validate(&self, tids: &[i32]) -> Result<(), String> {
        let all = self
            .shared_pending
            .iter()
            .chain(self.thread_pending.iter().flat_map(|t| &t.signals));
        for s in all {
            if !(1..=64).contains(&s.signo()) {
                return Err(format!("pending signal number {}", s.signo()));
            }
        }
        for t in &self.thread_pending {
            if !tids.contains(&t.tid) {
                return Err(format!("signals pending for unknown thread {}", t.tid));
            }
        }
        for (i, t) in self.timers.iter().enumerate() {
            if t.id < 0 || self.timers[..i].iter().any(|o| o.id == t.id) {
                return Err(format!("timer id {}", t.id));
            }
            if t.notify & SIGEV_THREAD_ID != 0 && !tids.contains(&t.thread) {
                return Err(format!(
                    "timer {} notifies unknown thread {}",
                    t.id, t.thread
                ));
            }
            if t.interval.1 >= 1_000_000_000 || t.value_left.1 >= 1_000_000_000 {
                return Err(format!("timer {} has a bad time", t.id));
            }
        }
        for (i, t) in self.seccomp.iter().enumerate() {
            if !tids.contains(&t.tid) || self.seccomp[..i].iter().any(|o| o.tid == t.tid) {
                return Err(format!("seccomp filters for thread {}", t.tid));
            }
            if t.filters
                .iter()
                .any(|f| f.insns.is_empty() || f.insns.len() > SECCOMP_MAX_INSNS)
            {
                return Err(format!(
                    "a seccomp filter of thread {} has a bad length",
                    t.tid
                ));
            }
        }
        for (i, &tid) in self.seccomp_strict.iter().enumerate() {
            // Strict mode excludes filters (the kernel refuses to mix the modes).
            if !tids.contains(&tid)
                || self.seccomp_strict[..i].contains(&tid)
                || !self.filters_of(tid).is_empty()
            {
                return Err(format!("seccomp strict mode for thread {tid}"));
            }
        }
        if let Some(r) = self.rlimits.iter().find(|r| r.resource >= 16) {
            return Err(format!("resource limit {}", r.resource));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(signo: i32, code: i32, w2: u64) -> PendingSignal {
        let mut info = [0u64; 16];
        info[0] = signo as u32 as u64;
        info[1] = code as u32 as u64;
        info[2] = w2;
        PendingSignal { info }
    }

    #[test]
    fn siginfo_fields() {
        let mut b = [0u8; 128];
        b[0] = 34;
        b[8..12].copy_from_slice(&(-2i32).to_le_bytes());
        b[16..20].copy_from_slice(&7i32.to_le_bytes());
        let s = PendingSignal::from_bytes(&b);
        assert_eq!((s.signo(), s.code(), s.timer_id()), (34, SI_TIMER, Some(7)));
        assert_eq!(sig(10, 0, 0).timer_id(), None);
    }

    #[test]
    fn validate_and_lookups() {
        let mut img = SigStateImage {
            shared_pending: vec![sig(10, 0, 0), sig(34, SI_TIMER, 3)],
            thread_pending: vec![ThreadPending {
                tid: 5,
                signals: vec![sig(12, -6, 0)],
            }],
            ..Default::default()
        };
        assert!(img.validate(&[4, 5]).is_ok());
        assert!(img.timer_signal_queued(3));
        assert!(!img.timer_signal_queued(4));
        assert_eq!(img.pending_of(5).len(), 1);
        assert!(img.pending_of(4).is_empty());
        assert!(img.validate(&[4]).is_err());
        img.shared_pending.push(sig(65, 0, 0));
        assert!(img.validate(&[4, 5]).is_err());
    }

    #[test]
    fn shared_filters_are_the_common_prefix() {
        let f = |w: u64| SeccompFilter {
            flags: 0,
            insns: vec![w],
        };
        let img = SigStateImage {
            seccomp: vec![
                ThreadSeccomp {
                    tid: 1,
                    filters: vec![f(1), f(2)],
                },
                ThreadSeccomp {
                    tid: 2,
                    filters: vec![f(1), f(2), f(3)],
                },
                ThreadSeccomp {
                    tid: 3,
                    filters: vec![f(1), f(9)],
                },
            ],
            ..Default::default()
        };
        assert_eq!(img.shared_filters(&[1, 2]), 2);
        assert_eq!(img.shared_filters(&[2, 1]), 2);
        assert_eq!(img.shared_filters(&[1, 2, 3]), 1);
        assert_eq!(img.shared_filters(&[1, 4]), 0);
        assert_eq!(img.shared_filters(&[2]), 3);
        assert!(img.validate(&[1, 2, 3]).is_ok());
        assert!(img.validate(&[1, 2]).is_err());
        let mut bad = img.clone();
        bad.seccomp[0].filters[0].insns.clear();
        assert!(bad.validate(&[1, 2, 3]).is_err());
        let mut strict = img.clone();
        strict.seccomp_strict = vec![4];
        assert!(strict.has_seccomp());
        assert!(strict.validate(&[1, 2, 3, 4]).is_ok());
        strict.seccomp_strict = vec![1];
        assert!(strict.validate(&[1, 2, 3, 4]).is_err());
        assert!(!SigStateImage::default().has_seccomp());
    }

    #[test]
    fn round_trip() {
        let img = SigStateImage {
            rlimits: vec![Rlimit {
                resource: 7,
                cur: 64,
                max: 128,
            }],
            personality: 0x0040000,
            no_new_privs: true,
            ..Default::default()
        };
        let bytes = crate::image::encode(crate::image::Kind::SigState, &img).unwrap();
        let back: SigStateImage = crate::image::decode(
            crate::image::Kind::SigState,
            &bytes,
            std::path::Path::new("x"),
        )
        .unwrap();
        assert_eq!(back, img);
    }
}
