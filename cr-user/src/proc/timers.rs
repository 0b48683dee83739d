//! `/proc/PID/timers`: the POSIX timers (`timer_create`) of a process, without their times
//! (those come from an injected `timer_gettime`).

use std::path::PathBuf;

use super::{ProcError, parse_err, read};

/// `SIGEV_SIGNAL`.
pub const SIGEV_SIGNAL: i32 = 0;
/// `SIGEV_NONE`.
pub const SIGEV_NONE: i32 = 1;
/// `SIGEV_THREAD` (kernel level; glibc implements its own with `SIGEV_THREAD_ID`).
pub const SIGEV_THREAD: i32 = 2;
/// `SIGEV_THREAD_ID`: or-ed into the notification, the signal goes to one thread.
pub const SIGEV_THREAD_ID: i32 = 4;

/// One timer as `/proc/PID/timers` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerEntry {
    /// Timer id (what `timer_create` returned).
    pub id: i32,
    /// Signal sent on expiry.
    pub signo: i32,
    /// `sigev_value` (as a pointer-sized integer).
    pub value: u64,
    /// `sigev_notify` (`SIGEV_*`, with `SIGEV_THREAD_ID` or-ed in for a per-thread timer).
    pub notify: i32,
    /// The pid (or, with `SIGEV_THREAD_ID`, the tid) notified, in the reader's pid namespace.
    pub target: i32,
    /// The clock.
    pub clock: i32,
}

/// Parses the text of `/proc/PID/timers`:
///
/// ```text
/// ID: 0
/// signal: 14/00000000deadbeef
/// notify: signal/pid.1234
/// ClockID: 1
/// ```
pub fn parse_timers(text: &str) -> Result<Vec<TimerEntry>, ProcError> {
    let bad = |detail: String| parse_err("timers", detail);
    let mut out = Vec::new();
    let mut cur: Option<TimerEntry> = None;
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        if key == "ID" {
            if let Some(t) = cur.take() {
                out.push(t);
            }
            cur = Some(TimerEntry {
                id: val.parse().map_err(|_| bad(format!("ID: {val}")))?,
                signo: 0,
                value: 0,
                notify: 0,
                target: 0,
                clock: 0,
            });
            continue;
        }
        let t = cur
            .as_mut()
            .ok_or_else(|| bad(format!("{key} before any ID")))?;
        match key {
            "signal" => {
                let (sig, value) = val
                    .split_once('/')
                    .ok_or_else(|| bad(format!("signal: {val}")))?;
                t.signo = sig.parse().map_err(|_| bad(format!("signal: {val}")))?;
                t.value = u64::from_str_radix(value.trim_start_matches("0x"), 16)
                    .map_err(|_| bad(format!("signal: {val}")))?;
            }
            "notify" => {
                let (how, who) = val
                    .split_once('/')
                    .ok_or_else(|| bad(format!("notify: {val}")))?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad(format!("notify: {val}"))),
                };
                let (kind, id) = who
                    .split_once('.')
                    .ok_or_else(|| bad(format!("notify: {val}")))?;
                t.notify = match kind {
                    "pid" => base,
                    "tid" => base | SIGEV_THREAD_ID,
                    _ => return Err(bad(format!("notify: {val}"))),
                };
                t.target = id.parse().map_err(|_| bad(format!("notify: {val}")))?;
            }
            "ClockID" => t.clock = val.parse().map_err(|_| bad(format!("ClockID: {val}")))?,
            _ => {}
        }
    }
    if let Some(t) = cur {
        out.push(t);
    }
    Ok(out)
}

/// Reads `/proc/PID/timers`.
pub fn timers(pid: i32) -> Result<Vec<TimerEntry>, ProcError> {
    parse_timers(&read(PathBuf::from(format!("/proc/{pid}/timers")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timers() {
        let t = "ID: 0\nsignal: 14/00000000deadbeef\nnotify: signal/pid.1234\nClockID: 1\n\
                 ID: 7\nsignal: 34/0000000000000000\nnotify: signal/tid.1240\nClockID: 0\n\
                 ID: 9\nsignal: 0/0000000000000000\nnotify: none/pid.1234\nClockID: 7\n";
        let v = parse_timers(t).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            TimerEntry {
                id: 0,
                signo: 14,
                value: 0xdead_beef,
                notify: SIGEV_SIGNAL,
                target: 1234,
                clock: 1
            }
        );
        assert_eq!(
            (v[1].notify, v[1].target),
            (SIGEV_SIGNAL | SIGEV_THREAD_ID, 1240)
        );
        assert_eq!((v[2].notify, v[2].clock), (SIGEV_NONE, 7));
        assert!(parse_timers("").unwrap().is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_timers("signal: 1/0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
        assert!(parse_timers("ID: 1\nnotify: bogus/pid.1\n").is_err());
        assert!(parse_timers("ID: 1\nsignal: 1/zz\n").is_err());
    }
}
