//! Anonymous-inode kernel objects behind an fd: eventfd (its counter and mode), timerfd (clock,
//! time left, interval, unread expirations), signalfd (its mask) and epoll (the fds it watches,
//! with their events and data), read from `/proc/PID/fdinfo` at dump and
//! recreated by injected syscalls at restore.

use super::{FilesError, place_fd};
use crate::image::files::{EpollWatch, Fd, FdKind};
use crate::inject::{Injector, to_bytes};
use crate::proc;

const SCRATCH_EPOLL_EVENT: u64 = 640;
/// `_IOW('T', 0, u64)`: sets a timerfd's unread expirations.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// An eventfd's counter and mode, from its fdinfo text.
fn parse_eventfd(text: &str) -> Option<FdKind> {
    let count = field(text, "eventfd-count:")?.parse().ok()?;
    let semaphore = field(text, "eventfd-semaphore:") == Some("1");
    Some(FdKind::EventFd { count, semaphore })
}

/// `(a, b)` as fdinfo prints a timespec.
fn pair(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// A timerfd's clock, time left, interval and unread expirations, from its fdinfo text.
fn parse_timerfd(text: &str) -> Option<FdKind> {
    Some(FdKind::TimerFd {
        clockid: field(text, "clockid:")?.parse().ok()?,
        ticks: field(text, "ticks:")?.parse().ok()?,
        value: pair(field(text, "it_value:")?)?,
        interval: pair(field(text, "it_interval:")?)?,
    })
}

/// A signalfd's mask, from its fdinfo text.
fn parse_signalfd(text: &str) -> Option<FdKind> {
    Some(FdKind::SignalFd {
        mask: u64::from_str_radix(field(text, "sigmask:")?, 16).ok()?,
    })
}

/// An epoll instance's watches, from its fdinfo text (`tfd: N events: HEX data: HEX ...`).
fn parse_epoll(text: &str) -> Option<FdKind> {
    let mut watches = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        watches.push(EpollWatch {
            fd: at("tfd:")?.parse().ok()?,
            events: u32::from_str_radix(at("events:")?, 16).ok()?,
            data: u64::from_str_radix(at("data:")?, 16).ok()?,
        });
    }
    Some(FdKind::Epoll { watches })
}

/// What fd `fd` of `pid` is, if it is an eventfd, timerfd, signalfd or epoll instance;
/// `Ok(None)` otherwise.
pub(super) fn dump(pid: i32, fd: i32, target: &str) -> Result<Option<FdKind>, FilesError> {
    let parse: fn(&str) -> Option<FdKind> = match target {
        "anon_inode:[eventfd]" => parse_eventfd,
        "anon_inode:[eventpoll]" => parse_epoll,
        "anon_inode:[timerfd]" => parse_timerfd,
        "anon_inode:[signalfd]" => parse_signalfd,
        _ => return Ok(None),
    };
    let text = proc::read(std::path::PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}")))?;
    parse(&text)
        .map(Some)
        .ok_or_else(|| FilesError::Unsupported {
            pid,
            fd,
            target: target.to_string(),
            why: "its fdinfo could not be read",
        })
}

/// Checks that every fd an epoll instance watches is one the image restores (a watched file
/// whose fd was closed since cannot be found again).
pub(super) fn check_watches(pid: i32, fds: &[Fd]) -> Result<(), FilesError> {
    for f in fds {
        if let FdKind::Epoll { watches } = &f.kind
            && let Some(w) = watches.iter().find(|w| !fds.iter().any(|g| g.fd == w.fd))
        {
            return Err(FilesError::Unsupported {
                pid,
                fd: f.fd,
                target: "anon_inode:[eventpoll]".into(),
                why: if w.fd >= 0 {
                    "it watches a file whose fd was closed since"
                } else {
                    "unreadable epoll watch list"
                },
            });
        }
    }
    Ok(())
}

/// Recreates an eventfd or epoll fd at its number. Epoll fds must come after the fds they
/// watch.
pub(super) fn restore(inj: &Injector, f: &Fd) -> Result<(), FilesError> {
    let nonblock = u64::from(f.flags & libc::O_NONBLOCK as u32);
    let got = match &f.kind {
        FdKind::EventFd { count, semaphore } => {
            let mut flags = nonblock;
            if *semaphore {
                flags |= libc::EFD_SEMAPHORE as u64;
            }
            inj.call(
                || format!("eventfd2 for fd {}", f.fd),
                "eventfd2",
                libc::SYS_eventfd2,
                [*count, flags, 0, 0, 0, 0],
            )?
        }
        FdKind::TimerFd {
            clockid,
            value,
            interval,
            ticks,
        } => {
            let t = inj.call(
                || format!("timerfd_create for fd {}", f.fd),
                "timerfd_create",
                libc::SYS_timerfd_create,
                [*clockid as u64, nonblock, 0, 0, 0, 0],
            )?;
            if *value != (0, 0) {
                // struct itimerspec: interval then value; relative (flags 0), as it was left.
                let spec = to_bytes(&[interval.0, interval.1, value.0, value.1]);
                let addr = inj.put(SCRATCH_EPOLL_EVENT, &spec)?;
                inj.call(
                    || format!("timerfd_settime for fd {}", f.fd),
                    "timerfd_settime",
                    libc::SYS_timerfd_settime,
                    [t, 0, addr, 0, 0, 0],
                )?;
            }
            if *ticks != 0 {
                let addr = inj.put(SCRATCH_EPOLL_EVENT, &to_bytes(&[*ticks]))?;
                inj.call(
                    || format!("ioctl(TFD_IOC_SET_TICKS) for fd {}", f.fd),
                    "ioctl",
                    libc::SYS_ioctl,
                    [t, TFD_IOC_SET_TICKS, addr, 0, 0, 0],
                )?;
            }
            t
        }
        FdKind::SignalFd { mask } => {
            let addr = inj.put(SCRATCH_EPOLL_EVENT, &to_bytes(&[*mask]))?;
            inj.call(
                || format!("signalfd4 for fd {}", f.fd),
                "signalfd4",
                libc::SYS_signalfd4,
                [u64::MAX, addr, 8, nonblock, 0, 0],
            )?
        }
        FdKind::Epoll { watches } => {
            let ep = inj.call(
                || format!("epoll_create1 for fd {}", f.fd),
                "epoll_create1",
                libc::SYS_epoll_create1,
                [0; 6],
            )?;
            for w in watches {
                // struct epoll_event is packed on x86_64: u32 events, u64 data.
                let mut ev = w.events.to_le_bytes().to_vec();
                ev.extend_from_slice(&to_bytes(&[w.data]));
                let addr = inj.put(SCRATCH_EPOLL_EVENT, &ev)?;
                inj.call(
                    || format!("epoll_ctl(ADD, {}) for fd {}", w.fd, f.fd),
                    "epoll_ctl",
                    libc::SYS_epoll_ctl,
                    [ep, libc::EPOLL_CTL_ADD as u64, w.fd as u64, addr, 0, 0],
                )?;
            }
            if nonblock != 0 {
                inj.call(
                    || format!("fcntl(F_SETFL) of fd {}", f.fd),
                    "fcntl",
                    libc::SYS_fcntl,
                    [ep, libc::F_SETFL as u64, nonblock, 0, 0, 0],
                )?;
            }
            ep
        }
        _ => return Ok(()),
    };
    if got != f.fd as u64 {
        place_fd(inj, got, f)?;
        super::close(inj, got)?;
    } else if f.flags & libc::O_CLOEXEC as u32 != 0 {
        inj.call(
            || format!("fcntl(F_SETFD) of fd {}", f.fd),
            "fcntl",
            libc::SYS_fcntl,
            [got, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_eventfd_and_epoll_fdinfo() {
        let ev = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:                5\neventfd-id: 1\neventfd-semaphore: 1\n";
        assert_eq!(
            parse_eventfd(ev),
            Some(FdKind::EventFd {
                count: 5,
                semaphore: true
            })
        );
        let ep = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
            tfd:        4 events:       19 data:               4d  pos:0 ino:40e sdev:10\n\
            tfd:        3 events: 80000019 data:             1234  pos:0 ino:40e sdev:10\n";
        assert_eq!(
            parse_epoll(ep),
            Some(FdKind::Epoll {
                watches: vec![
                    EpollWatch {
                        fd: 4,
                        events: 0x19,
                        data: 0x4d
                    },
                    EpollWatch {
                        fd: 3,
                        events: 0x8000_0019,
                        data: 0x1234
                    },
                ]
            })
        );
        let tf = "pos:\t0\nflags:\t02000002\nclockid: 1\nticks: 0\nsettime flags: 00\n\
            it_value: (99, 994903612)\nit_interval: (1, 500)\n";
        assert_eq!(
            parse_timerfd(tf),
            Some(FdKind::TimerFd {
                clockid: 1,
                value: (99, 994_903_612),
                interval: (1, 500),
                ticks: 0
            })
        );
        assert_eq!(
            parse_signalfd("pos:\t0\nflags:\t02\nsigmask:\t0000000200000200\n"),
            Some(FdKind::SignalFd {
                mask: 0x2_0000_0200
            })
        );
        assert_eq!(parse_eventfd("pos: 0\n"), None);
        assert_eq!(parse_epoll("tfd: x events: 1 data: 2\n"), None);
    }
}
