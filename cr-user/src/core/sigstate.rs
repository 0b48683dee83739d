//! Pending signals, POSIX timers, resource limits, personality, `no_new_privs`, capabilities
//! and seccomp filters of one process: both the dump half and the restore half.
//!
//! Dump reads the signal queues with `PTRACE_PEEKSIGINFO` (which dequeues nothing), the timers
//! from `/proc/PID/timers` plus an injected `timer_gettime`, the limits with an injected
//! `prlimit64` on the task itself (which needs no privilege, whoever owns the task), the
//! personality with an injected `personality(0xffffffff)`, the filters with
//! `PTRACE_SECCOMP_GET_FILTER`, the rest from `/proc/PID/status`.
//!
//! Restore puts them back by syscalls injected into the restored task itself: a task may queue
//! a signal with any `si_code` to itself (`rt_sigqueueinfo`, `rt_tgsigqueueinfo` from the very
//! thread for a per-thread one), and `PR_TIMER_CREATE_RESTORE_IDS` makes `timer_create` take
//! the id it is given. Signals are queued while the restorer still blocks everything; the
//! dumped mask is set last, with the registers, so nothing is delivered before the resume.

use super::CoreError;
use crate::image::core::Creds;
use crate::image::sigstate::{
    Caps, PendingSignal, PosixTimer, Rlimit, SIGEV_THREAD_ID, SeccompFilter, SigStateImage,
    ThreadPending, ThreadSeccomp,
};
use crate::inject::{Injector, to_bytes, words};
use crate::proc::status::Status;
use crate::sys::ptrace;

/// Dump scratch (offsets in the dump's 4 KiB scratch page, clear of what `core` uses).
const DUMP_SCRATCH_TIMESPEC: u64 = 3200;
/// Restore scratch (offsets in the trampoline's data area, clear of `core` and `threads`).
const SCRATCH_SIGINFO: u64 = 11264;
const SCRATCH_SIGEVENT: u64 = 11392;
const SCRATCH_TIMER_ID: u64 = 11456;
const SCRATCH_ITIMERSPEC: u64 = 11472;
const SCRATCH_RLIMIT: u64 = 11504;
const SCRATCH_CAPS: u64 = 11520;

const RLIM_NLIMITS: u32 = 16;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, ON/OFF)` (Linux 6.14 and later).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const LINUX_CAPABILITY_VERSION_3: u64 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SIGEV_NONE: i32 = 1;
const PR_SET_SECCOMP: u64 = 22;
const SECCOMP_MODE_STRICT: u64 = 1;

const RLIMIT_NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

fn rlimit_name(resource: u32) -> &'static str {
    RLIMIT_NAMES
        .get(resource as usize)
        .copied()
        .unwrap_or("RLIMIT_?")
}

/// Saves the state of the frozen process `pid` whose threads are `tids` (main first). `inj`
/// runs in the main thread, with the dump's scratch page; every signal is blocked. `seccomp`:
/// the threads under seccomp and their mode (see [`seccomp_threads`]).
pub fn dump(
    pid: i32,
    tids: &[i32],
    inj: &Injector,
    status: &Status,
    seccomp: &[(i32, u32)],
) -> Result<SigStateImage, CoreError> {
    let peek = |tid: i32, shared: bool| {
        ptrace::peek_siginfo(tid, shared)
            .map(|v| v.iter().map(PendingSignal::from_bytes).collect::<Vec<_>>())
            .map_err(|source| CoreError::Ptrace {
                tid,
                step: "read pending signals",
                source,
            })
    };
    let shared_pending = peek(pid, true)?;
    let mut thread_pending = Vec::new();
    for &tid in tids {
        let signals = peek(tid, false)?;
        if !signals.is_empty() {
            thread_pending.push(ThreadPending { tid, signals });
        }
    }
    let mut timers = Vec::new();
    for t in crate::proc::timers::timers(pid)? {
        let out = inj.scratch_addr(DUMP_SCRATCH_TIMESPEC);
        inj.call(
            || format!("timer_gettime({})", t.id),
            "timer_gettime",
            libc::SYS_timer_gettime,
            [t.id as u64, out, 0, 0, 0, 0],
        )?;
        let [is, ins, vs, vns] = words::<4>(&inj.get(DUMP_SCRATCH_TIMESPEC, 32)?);
        let overrun = inj.call(
            || format!("timer_getoverrun({})", t.id),
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )?;
        // A timer aimed at a thread that has exited signals nobody (the kernel drops its
        // signal); `timer_create` cannot aim at a missing thread, so it comes back as
        // SIGEV_NONE, which behaves the same.
        let per_thread = t.notify & SIGEV_THREAD_ID != 0;
        let orphan = per_thread && !tids.contains(&t.target);
        timers.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: if orphan { SIGEV_NONE } else { t.notify },
            signo: t.signo,
            value: t.value,
            thread: if per_thread && !orphan { t.target } else { 0 },
            interval: (is, ins),
            value_left: (vs, vns),
            overrun: i32::try_from(overrun).unwrap_or(i32::MAX),
            signal_pending: false,
        });
    }
    let seccomp_strict: Vec<i32> = seccomp
        .iter()
        .filter(|(_, mode)| *mode == 1)
        .map(|(tid, _)| *tid)
        .collect();
    let mut filtered = Vec::new();
    for &(tid, mode) in seccomp {
        if mode == 2 {
            let filters = ptrace::seccomp_filters(tid).map_err(|source| CoreError::Ptrace {
                tid,
                step: "read seccomp filters (needs CAP_SYS_ADMIN)",
                source,
            })?;
            if !filters.is_empty() {
                filtered.push(ThreadSeccomp {
                    tid,
                    filters: filters
                        .into_iter()
                        .map(|f| SeccompFilter {
                            flags: f.flags,
                            insns: f.insns,
                        })
                        .collect(),
                });
            }
        }
    }
    let mut img = SigStateImage {
        seccomp: filtered,
        seccomp_strict,
        shared_pending,
        thread_pending,
        timers: Vec::new(),
        rlimits: Vec::with_capacity(RLIM_NLIMITS as usize),
        personality: 0,
        no_new_privs: status.no_new_privs,
        caps: Caps {
            inheritable: status.caps[0],
            permitted: status.caps[1],
            effective: status.caps[2],
            bounding: status.caps[3],
            ambient: status.caps[4],
        },
    };
    for t in &mut timers {
        t.signal_pending = img.timer_signal_queued(t.id);
    }
    img.timers = timers;
    // Read from outside: an injected call per resource made up most of the frozen metadata.
    img.rlimits = crate::proc::limits::limits(pid)?
        .into_iter()
        .take(RLIM_NLIMITS as usize)
        .map(|l| Rlimit {
            resource: l.resource,
            cur: l.cur,
            max: l.max,
        })
        .collect();
    img.personality = crate::proc::limits::personality(pid)?;
    Ok(img)
}

/// The threads of `pid` under seccomp, with their mode (1 strict, 2 filter). Injecting into
/// any of them needs [`crate::freeze::FrozenProcess::suspend_seccomp`] first.
pub fn seccomp_threads(pid: i32) -> Result<Vec<(i32, u32)>, CoreError> {
    let mut out = Vec::new();
    for tid in crate::proc::threads(pid)? {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) {
            Ok(t) => t,
            // The thread exited meanwhile.
            Err(_) => continue,
        };
        match crate::proc::status::parse_status(&text)?.seccomp {
            0 => {}
            mode @ (1 | 2) => out.push((tid, mode)),
            mode => return Err(CoreError::Seccomp { pid, tid, mode }),
        }
    }
    Ok(out)
}

/// Puts `filters` (oldest first) on the thread `inj` runs in, then strict mode if `strict`.
/// Each program goes in a temporary mapping: it may be larger than the scratch area. The
/// restorer traces with `PTRACE_O_SUSPEND_SECCOMP`, so syscalls injected after this are not
/// filtered; the detach ends that.
pub fn restore_seccomp(
    inj: &Injector,
    filters: &[SeccompFilter],
    strict: bool,
) -> Result<(), CoreError> {
    for (i, f) in filters.iter().enumerate() {
        let len = 16 + 8 * f.insns.len() as u64;
        let size = len.div_ceil(crate::sys::PAGE_SIZE) * crate::sys::PAGE_SIZE;
        let buf = inj.call(
            || "mmap for a seccomp filter".into(),
            "mmap",
            libc::SYS_mmap,
            crate::inject::anon_mmap_args(size),
        )?;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }, then the
        // instructions.
        let mut bytes = to_bytes(&[f.insns.len() as u64, buf + 16]);
        bytes.extend(to_bytes(&f.insns));
        inj.write_at(buf, &bytes)?;
        let installed = inj.call(
            || format!("seccomp(SECCOMP_SET_MODE_FILTER) of filter {i}"),
            "seccomp",
            libc::SYS_seccomp,
            [SECCOMP_SET_MODE_FILTER, f.flags, buf, 0, 0, 0],
        );
        inj.call(
            || "munmap of a seccomp filter".into(),
            "munmap",
            libc::SYS_munmap,
            [buf, size, 0, 0, 0, 0],
        )?;
        installed?;
    }
    if strict {
        inj.call(
            || "prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)".into(),
            "prctl",
            libc::SYS_prctl,
            [PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// First step of the process-wide part, before its threads are created (they inherit it):
/// personality, `no_new_privs`, and the seccomp filters all threads of `tids` (the main one
/// first) have in common.
pub fn restore_early(inj: &Injector, tids: &[i32], s: &SigStateImage) -> Result<(), CoreError> {
    inj.call(
        || format!("personality({:#x})", s.personality),
        "personality",
        libc::SYS_personality,
        [u64::from(s.personality), 0, 0, 0, 0, 0],
    )?;
    if s.no_new_privs {
        inj.call(
            || "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            "prctl",
            libc::SYS_prctl,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )?;
    }
    let shared = s.shared_filters(tids);
    if let Some(&main) = tids.first() {
        restore_seccomp(
            inj,
            s.filters_of(main).get(..shared).unwrap_or_default(),
            false,
        )?;
    }
    Ok(())
}

/// Queues `signals` again, in order, in the restored process `tgid` (its pid as it sees
/// itself): in thread `tid`'s own queue if given (`inj` must run in that thread), else in the
/// process's. A timer's signal whose timer is restored is left out: the timer queues it again
/// itself (see [`restore_late`]).
pub fn queue(
    inj: &Injector,
    tgid: i32,
    tid: Option<i32>,
    signals: &[PendingSignal],
    s: &SigStateImage,
) -> Result<(), CoreError> {
    for sig in signals {
        if sig
            .timer_id()
            .is_some_and(|id| s.timers.iter().any(|t| t.id == id))
        {
            continue;
        }
        let addr = inj.put(SCRATCH_SIGINFO, &to_bytes(&sig.info))?;
        let signo = sig.signo() as u64;
        match tid {
            Some(tid) => inj.call(
                || format!("rt_tgsigqueueinfo of signal {signo} to thread {tid}"),
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                [tgid as u64, tid as u64, signo, addr, 0, 0],
            )?,
            None => inj.call(
                || format!("rt_sigqueueinfo of signal {signo}"),
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                [tgid as u64, signo, addr, 0, 0, 0],
            )?,
        };
    }
    Ok(())
}

/// Last steps of the process-wide part, in the main thread once every thread exists and the
/// credentials are set: POSIX timers with their ids, the process's pending signals and the main
/// thread's own, then the resource limits (last: a lowered `RLIMIT_SIGPENDING` would refuse the
/// queueing). `tgid` is the process's pid as it sees itself.
///
/// Last of all come the main thread's seccomp filters beyond the ones its threads share (those
/// were installed by [`restore_early`]), or its strict mode; the restorer traces with
/// `PTRACE_O_SUSPEND_SECCOMP`, so they apply from the detach on. `tids` are all the threads, the main one first.
pub fn restore_late(
    inj: &Injector,
    tgid: i32,
    tids: &[i32],
    s: &SigStateImage,
) -> Result<(), CoreError> {
    restore_posix_timers(inj, tgid, s)?;
    queue(inj, tgid, None, &s.shared_pending, s)?;
    queue(inj, tgid, Some(tgid), s.pending_of(tgid), s)?;
    restore_rlimits(inj, tgid, &s.rlimits)?;
    let shared = s.shared_filters(tids);
    restore_seccomp(
        inj,
        s.filters_of(tgid).get(shared..).unwrap_or_default(),
        s.seccomp_strict.contains(&tgid),
    )
}

fn restore_posix_timers(inj: &Injector, tgid: i32, s: &SigStateImage) -> Result<(), CoreError> {
    if s.timers.is_empty() {
        return Ok(());
    }
    let ret = inj.raw(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    if ret < 0 {
        return Err(CoreError::TimerIds {
            pid: tgid,
            errno: (-ret) as i32,
        });
    }
    // /proc lists the newest timer first: creating them oldest first lists them as before.
    for t in s.timers.iter().rev() {
        // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the union whose first
        // member is the thread id of SIGEV_THREAD_ID.
        let mut sev = [0u64; 8];
        sev[0] = t.value;
        sev[1] = u64::from(t.signo as u32) | (u64::from(t.notify as u32) << 32);
        sev[2] = u64::from(t.thread as u32);
        let sev_addr = inj.put(SCRATCH_SIGEVENT, &to_bytes(&sev))?;
        let id_addr = inj.put(SCRATCH_TIMER_ID, &to_bytes(&[t.id as u32 as u64]))?;
        inj.call(
            || format!("timer_create of timer {}", t.id),
            "timer_create",
            libc::SYS_timer_create,
            [t.clock as u32 as u64, sev_addr, id_addr, 0, 0, 0],
        )?;
        let [got] = words::<1>(&inj.get(SCRATCH_TIMER_ID, 8)?);
        let got = got as u32 as i32;
        if got != t.id {
            return Err(CoreError::TimerId {
                pid: tgid,
                want: t.id,
                got,
            });
        }
    }
    inj.call(
        || "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)".into(),
        "prctl",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    )?;
    for t in &s.timers {
        // A timer whose signal was queued expires at once: the kernel queues its signal again
        // as the timer's own (so later expiries count as overruns of it, as before the dump).
        let value = if t.signal_pending {
            (0, 1)
        } else {
            t.value_left
        };
        if value == (0, 0) {
            continue;
        }
        let its = [t.interval.0, t.interval.1, value.0, value.1];
        let addr = inj.put(SCRATCH_ITIMERSPEC, &to_bytes(&its))?;
        inj.call(
            || format!("timer_settime of timer {}", t.id),
            "timer_settime",
            libc::SYS_timer_settime,
            [t.id as u64, 0, addr, 0, 0, 0],
        )?;
    }
    Ok(())
}

fn restore_rlimits(inj: &Injector, pid: i32, rlimits: &[Rlimit]) -> Result<(), CoreError> {
    for r in rlimits {
        let name = rlimit_name(r.resource);
        let addr = inj.put(SCRATCH_RLIMIT, &to_bytes(&[r.cur, r.max]))?;
        let ret = inj.raw(
            &format!("prlimit64({name})"),
            libc::SYS_prlimit64,
            [0, u64::from(r.resource), addr, 0, 0, 0],
        )?;
        if ret != -i64::from(libc::EPERM) {
            if ret < 0 {
                return Err(CoreError::Rlimit {
                    pid,
                    name,
                    errno: (-ret) as i32,
                });
            }
            continue;
        }
        // Raising a hard limit needs CAP_SYS_RESOURCE: keep the restorer's hard limit and the
        // dumped soft one within it.
        let out = inj.scratch_addr(SCRATCH_RLIMIT);
        inj.call(
            || format!("prlimit64({name}) query"),
            "prlimit64",
            libc::SYS_prlimit64,
            [0, u64::from(r.resource), 0, out, 0, 0],
        )?;
        let [_, max_now] = words::<2>(&inj.get(SCRATCH_RLIMIT, 16)?);
        let cur = r.cur.min(max_now);
        let addr = inj.put(SCRATCH_RLIMIT, &to_bytes(&[cur, max_now]))?;
        inj.call(
            || format!("prlimit64({name}) within the current hard limit"),
            "prlimit64",
            libc::SYS_prlimit64,
            [0, u64::from(r.resource), addr, 0, 0, 0],
        )?;
        tracing::warn!(
            pid,
            "{name}: hard limit {} cannot be raised from {max_now} without CAP_SYS_RESOURCE; \
             restored as soft {cur}, hard {max_now}",
            fmt_limit(r.max),
        );
    }
    Ok(())
}

fn fmt_limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Capabilities of the calling thread, around the credential change of
/// [`super::restore_creds`]: the bounding set is cut and `PR_SET_KEEPCAPS` set before the uid
/// changes (which would clear the permitted set), the sets are written after it.
pub(super) fn caps_before_creds(inj: &Injector, caps: &Caps, c: &Creds) -> Result<(), CoreError> {
    let now = crate::proc::status::status(inj.pid())?;
    let drop = now.caps[3] & !caps.bounding;
    for cap in (0..64u64).filter(|b| drop & (1 << b) != 0) {
        inj.call(
            || format!("prctl(PR_CAPBSET_DROP, {cap})"),
            "prctl",
            libc::SYS_prctl,
            [PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
        )?;
    }
    if c.uid != [0; 4] && caps.permitted != 0 {
        inj.call(
            || "prctl(PR_SET_KEEPCAPS, 1)".into(),
            "prctl",
            libc::SYS_prctl,
            [PR_SET_KEEPCAPS, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// See [`caps_before_creds`].
pub(super) fn caps_after_creds(inj: &Injector, caps: &Caps, c: &Creds) -> Result<(), CoreError> {
    // struct __user_cap_header_struct { version, pid } and two __user_cap_data_struct
    // { effective, permitted, inheritable } (low then high 32 bits).
    let lo = |v: u64| v & 0xffff_ffff;
    let hi = |v: u64| v >> 32;
    let data = [
        LINUX_CAPABILITY_VERSION_3,
        lo(caps.effective) | (lo(caps.permitted) << 32),
        lo(caps.inheritable) | (hi(caps.effective) << 32),
        hi(caps.permitted) | (hi(caps.inheritable) << 32),
    ];
    let hdr = inj.put(SCRATCH_CAPS, &to_bytes(&data))?;
    inj.call(
        || "capset".into(),
        "capset",
        libc::SYS_capset,
        [hdr, hdr + 8, 0, 0, 0, 0],
    )?;
    if c.uid != [0; 4] && caps.permitted != 0 {
        inj.call(
            || "prctl(PR_SET_KEEPCAPS, 0)".into(),
            "prctl",
            libc::SYS_prctl,
            [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
        )?;
    }
    inj.call(
        || "prctl(PR_CAP_AMBIENT_CLEAR_ALL)".into(),
        "prctl",
        libc::SYS_prctl,
        [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0],
    )?;
    for cap in (0..64u64).filter(|b| caps.ambient & (1 << b) != 0) {
        inj.call(
            || format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
            "prctl",
            libc::SYS_prctl,
            [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_names() {
        assert_eq!(rlimit_name(7), "RLIMIT_NOFILE");
        assert_eq!(rlimit_name(4), "RLIMIT_CORE");
        assert_eq!(rlimit_name(99), "RLIMIT_?");
        assert_eq!(fmt_limit(u64::MAX), "unlimited");
        assert_eq!(fmt_limit(12), "12");
    }
}
