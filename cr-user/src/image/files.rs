//! `files-<pid>.img`: file descriptors and filesystem context of one process.

use serde::{Deserialize, Serialize};

/// What an fd refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file or a character device reopened by path (`/dev/null`).
    Path {
        /// Path at dump time.
        path: String,
        /// File size at dump time (regular files), for a sanity check at restore.
        size: Option<u64>,
    },
    /// One end of a pipe whose both ends belong to the dump (see [`FilesImage::pipes`]).
    Pipe {
        /// The pipe's inode number at dump time (identifies the pipe within the image).
        inode: u64,
    },
    /// A standard stream (tty or pipe) that `--shell-job` hands to the restorer's own.
    Inherited {
        /// What it was at dump time (for `show`).
        was: String,
    },
    /// One end of a pipe whose ends are held by different processes of the tree; the pipe and
    /// its data are in the [`FilesImage::pipes`] of the first process (in tree order) holding it.
    SharedPipe {
        /// The pipe's inode number at dump time.
        inode: u64,
    },
    /// An eventfd.
    EventFd {
        /// Its counter.
        count: u64,
        /// `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// A timerfd: its clock, the time left and the interval (relative), and expirations not yet
    /// read.
    TimerFd {
        /// `CLOCK_*` id.
        clockid: i32,
        /// Time left until the next expiration, (s, ns); (0, 0) when disarmed.
        value: (u64, u64),
        /// Interval, (s, ns).
        interval: (u64, u64),
        /// Expirations not yet read.
        ticks: u64,
    },
    /// A signalfd.
    SignalFd {
        /// The signals it reads (bit n-1 for signal n).
        mask: u64,
    },
    /// An epoll instance and what it watches (by fd number in the same process).
    Epoll {
        /// The watched fds.
        watches: Vec<EpollWatch>,
    },
    /// A memfd or a deleted regular file, saved once in `objects.img` (see
    /// [`crate::image::objects`]).
    Object {
        /// `st_dev` at dump time.
        dev: u64,
        /// `st_ino` at dump time.
        ino: u64,
    },
    /// A socket (unix, or an inet listener / UDP socket), see [`Socket`].
    Socket(Box<Socket>),
    /// A named pipe (FIFO made with `mkfifo`) reopened by path.
    Fifo {
        /// Path at dump time.
        path: String,
        /// `st_dev` at dump time (with `ino`, identifies the FIFO in the whole dump).
        dev: u64,
        /// `st_ino` at dump time.
        ino: u64,
        /// Its capacity and the data in flight (`inode` is `ino`): on one fd of the whole dump,
        /// the first (in tree order) that refers to this FIFO; `None` on the others.
        contents: Option<Pipe>,
    },
    /// An fd that shares its open file description (offset, status flags) with the lower fd
    /// `of` of the same process (`dup`, or inherited twice); only its close-on-exec flag is its
    /// own. `of` is a [`FdKind::Path`], [`FdKind::Object`], [`FdKind::Fifo`] or
    /// [`FdKind::SharedFile`].
    Dup {
        /// The fd it duplicates.
        of: i32,
    },
    /// A file ([`FdKind::Path`], [`FdKind::Object`] or [`FdKind::Fifo`]) whose open file
    /// description is shared by several processes of the tree (opened before a fork): each
    /// holder's first fd on it carries this record with the same `id`.
    SharedFile {
        /// Identifies the description in the dump.
        id: u64,
        /// What it is.
        file: Box<FdKind>,
    },
}

impl FdKind {
    /// What the fd refers to: the file of a [`FdKind::SharedFile`], else the kind itself.
    pub fn base(&self) -> &FdKind {
        match self {
            FdKind::SharedFile { file, .. } => file,
            k => k,
        }
    }
}

/// The state of a socket that restore rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketState {
    /// Not connected (maybe bound): made and bound to [`Socket::name`] if it has one.
    Unconnected,
    /// Listening (no connection waiting to be accepted), with its backlog.
    Listening {
        /// The `listen` backlog.
        backlog: u32,
    },
    /// A unix socket connected to the socket of inode `peer`, which the dump holds too.
    Connected {
        /// The peer's inode at dump time.
        peer: u64,
    },
    /// A UDP socket connected to an address (raw `sockaddr` bytes).
    ConnectedTo {
        /// The peer address.
        peer: Vec<u8>,
    },
    /// An established TCP connection saved with `TCP_REPAIR` (`dump --tcp-established`).
    Established(Box<TcpConn>),
}

/// What `TCP_REPAIR` needs to rebuild an established connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConn {
    /// The peer's address (raw `sockaddr` bytes).
    pub peer: Vec<u8>,
    /// Sequence number after the last byte written (`TCP_QUEUE_SEQ` of the send queue).
    pub snd_seq: u32,
    /// Sequence number after the last byte received (`TCP_QUEUE_SEQ` of the receive queue).
    pub rcv_seq: u32,
    /// Bytes written but not yet acknowledged by the peer (the send queue).
    pub sndq: Vec<u8>,
    /// Bytes received but not yet read (the receive queue).
    pub rcvq: Vec<u8>,
    /// Maximum segment size (`TCP_MAXSEG`).
    pub mss: u32,
    /// `tcpi_options`: 1 timestamps, 2 SACK, 4 window scaling.
    pub options: u8,
    /// Send window scale.
    pub snd_wscale: u8,
    /// Receive window scale.
    pub rcv_wscale: u8,
    /// `TCP_TIMESTAMP` (the connection's timestamp clock).
    pub timestamp: u32,
    /// `struct tcp_repair_window` as the kernel gave it (`TCP_REPAIR_WINDOW`).
    pub window: Vec<u8>,
}

/// One socket. Every fd referring to it carries the same record (the socket is identified by
/// its inode, unique in the dump).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// Inode number at dump time.
    pub inode: u64,
    /// `AF_UNIX`, `AF_INET` or `AF_INET6`.
    pub family: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sotype: i32,
    /// Its own address (`getsockname`, raw `sockaddr` bytes); empty or family-only if unbound.
    pub name: Vec<u8>,
    /// Connection state.
    pub state: SocketState,
    /// `sk_shutdown` bits: 1 = no more receiving, 2 = no more sending.
    pub shutdown: u8,
    /// Its receive queue (unix sockets): one entry per message, or stream bytes in chunks.
    pub queue: Vec<Vec<u8>>,
    /// `SO_SNDBUF` as `getsockopt` reports it.
    pub sndbuf: u32,
    /// `SO_RCVBUF` as `getsockopt` reports it.
    pub rcvbuf: u32,
    /// `SO_PASSCRED`.
    pub passcred: bool,
    /// `SO_REUSEADDR`.
    pub reuseaddr: bool,
    /// `SO_REUSEPORT`.
    pub reuseport: bool,
    /// `IPV6_V6ONLY` (AF_INET6 only).
    pub v6only: bool,
}

/// One fd an epoll instance watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollWatch {
    /// The watched fd.
    pub fd: i32,
    /// `EPOLL*` event bits (incl. EPOLLET, EPOLLONESHOT).
    pub events: u32,
    /// The user data returned with its events.
    pub data: u64,
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    /// Its number.
    pub fd: i32,
    /// O_* open flags as fdinfo shows them (incl. O_CLOEXEC).
    pub flags: u32,
    /// File offset.
    pub pos: u64,
    /// What it refers to.
    pub kind: FdKind,
}

/// Files and fs context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesImage {
    /// Working directory.
    pub cwd: String,
    /// File mode creation mask.
    pub umask: u32,
    /// Open fds, ascending.
    pub fds: Vec<Fd>,
    /// Pipes referred to by [`FdKind::Pipe`] fds, with the data that was in flight.
    pub pipes: Vec<Pipe>,
}

/// A pipe and its unread contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipe {
    /// Inode number at dump time.
    pub inode: u64,
    /// Capacity (`F_GETPIPE_SZ`).
    pub size: u32,
    /// Bytes written but not yet read.
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(inode: u64, state: SocketState) -> Fd {
        Fd {
            fd: 3,
            flags: 2,
            pos: 0,
            kind: FdKind::Socket(Box::new(Socket {
                inode,
                family: 1,
                sotype: 5,
                name: vec![1, 0, 0, b'x'],
                state,
                shutdown: 2,
                queue: vec![b"ab".to_vec(), Vec::new(), b"c".to_vec()],
                sndbuf: 4608,
                rcvbuf: 212_992,
                passcred: true,
                reuseaddr: false,
                reuseport: true,
                v6only: false,
            })),
        }
    }

    #[test]
    fn fifo_dup_shared_round_trip_and_old_variants_keep_their_tags() {
        let fifo = FdKind::Fifo {
            path: "/tmp/f".into(),
            dev: 65024,
            ino: 77,
            contents: Some(Pipe {
                inode: 77,
                size: 131_072,
                data: b"in flight".to_vec(),
            }),
        };
        let img = FilesImage {
            cwd: "/".into(),
            umask: 0o22,
            fds: vec![
                Fd {
                    fd: 3,
                    flags: 0o4000,
                    pos: 0,
                    kind: fifo.clone(),
                },
                Fd {
                    fd: 4,
                    flags: 0o2004000,
                    pos: 0,
                    kind: FdKind::Dup { of: 3 },
                },
                Fd {
                    fd: 5,
                    flags: 2,
                    pos: 10,
                    kind: FdKind::SharedFile {
                        id: 1,
                        file: Box::new(FdKind::Path {
                            path: "/tmp/s".into(),
                            size: Some(100),
                        }),
                    },
                },
            ],
            pipes: Vec::new(),
        };
        let kind = crate::image::Kind::Files;
        let bytes = crate::image::encode(kind, &img).unwrap();
        let back: FilesImage =
            crate::image::decode(kind, &bytes, std::path::Path::new("x")).unwrap();
        assert_eq!(back, img);
        assert_eq!(
            back.fds[2].kind.base(),
            &FdKind::Path {
                path: "/tmp/s".into(),
                size: Some(100)
            }
        );
        assert_eq!(fifo.base(), &fifo);
        // bincode numbers variants in order: the new ones come after every older one, so an
        // older image (which never uses them) decodes as before.
        use bincode::Options;
        let tag = |k: &FdKind| bincode::DefaultOptions::new().serialize(k).unwrap()[0];
        assert_eq!(tag(&FdKind::Pipe { inode: 1 }), 1);
        assert_eq!(tag(&FdKind::Object { dev: 1, ino: 2 }), 8);
        assert_eq!(tag(&fifo), 10);
        assert_eq!(tag(&FdKind::Dup { of: 3 }), 11);
        assert_eq!(tag(&img.fds[2].kind), 12);
    }

    #[test]
    fn sockets_round_trip_and_truncation_is_an_error() {
        let img = FilesImage {
            cwd: "/".into(),
            umask: 0o22,
            fds: vec![
                sock(7, SocketState::Connected { peer: 8 }),
                sock(9, SocketState::Listening { backlog: 7 }),
                sock(10, SocketState::ConnectedTo { peer: vec![2, 0] }),
                sock(
                    11,
                    SocketState::Established(Box::new(TcpConn {
                        peer: vec![2, 0, 1, 2, 127, 0, 0, 1],
                        snd_seq: u32::MAX,
                        rcv_seq: 5,
                        sndq: b"out".to_vec(),
                        rcvq: b"in".to_vec(),
                        mss: 65483,
                        options: 7,
                        snd_wscale: 7,
                        rcv_wscale: 7,
                        timestamp: 123,
                        window: vec![0; 20],
                    })),
                ),
            ],
            pipes: Vec::new(),
        };
        let kind = crate::image::Kind::Files;
        let bytes = crate::image::encode(kind, &img).unwrap();
        let back: FilesImage =
            crate::image::decode(kind, &bytes, std::path::Path::new("x")).unwrap();
        assert_eq!(back, img);
        // A payload cut short (sealed again with a valid CRC) is an error, not a panic.
        let payload = &bytes[..bytes.len() / 2];
        let resealed = crate::image::header::seal(kind.magic(), payload);
        let r: Result<FilesImage, _> =
            crate::image::decode(kind, &resealed, std::path::Path::new("x"));
        assert!(r.is_err());
    }
}
