//! Anonymous-inode kernel objects behind an fd: eventfd (its counter and mode) and epoll (the
//! fds it watches, with their events and data), read from `/proc/PID/fdinfo` at dump and
//! recreated by injected syscalls at restore.

use super::{FilesError, place_fd};
use crate::image::files::{EpollWatch, Fd, FdKind};
use crate::inject::{Injector, to_bytes};
use crate::proc;

const SCRATCH_EPOLL_EVENT: u64 = 640;

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

/// What fd `fd` of `pid` is, if it is an eventfd or an epoll instance; `Ok(None)` otherwise.
pub(super) fn dump(pid: i32, fd: i32, target: &str) -> Result<Option<FdKind>, FilesError> {
    let parse: fn(&str) -> Option<FdKind> = match target {
        "anon_inode:[eventfd]" => parse_eventfd,
        "anon_inode:[eventpoll]" => parse_epoll,
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
        assert_eq!(parse_eventfd("pos: 0\n"), None);
        assert_eq!(parse_epoll("tfd: x events: 1 data: 2\n"), None);
    }
}
