//! Sockets, both halves.
//!
//! Dump: the socket is taken into fastcr with `pidfd_getfd` (same open file, so nothing of the
//! frozen process changes) and read with `getsockopt`/`getsockname`; unix sockets also through
//! `sock_diag` (peer inode, shutdown state, queue length, backlog), and their receive queue is
//! read without consuming it (`MSG_PEEK` from an offset set with `SO_PEEK_OFF`, put back to its
//! old value afterwards). Refused: unix sockets connected to a socket outside the dump, data in
//! flight carrying fds (`SCM_RIGHTS`), listeners with connections not yet accepted, TCP
//! connections, other families.
//!
//! Restore: fastcr makes every socket of the tree itself before it forks the tree (a connected
//! pair with `socketpair`, listeners bound and listening), refills the queues, sets shutdown
//! state, options and `O_NONBLOCK`. Every forked process inherits fastcr's descriptors; before
//! the inherited ones are closed, each process parks its sockets above its image's fd numbers
//! ([`park`]), and [`super::restore`] moves them to their numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use super::FilesError;
use crate::image::files::{FdKind, FilesImage, Socket, SocketState};
use crate::inject::Injector;
use crate::sys::SyscallError;
use crate::sys::socket as so;

/// Largest message read from a queue in one peek (above any `SO_SNDBUF` fastcr can set).
const PEEK_BUF: usize = 8 << 20;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;
const TCP_ESTABLISHED: u8 = 1;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 16;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// What `sock_diag` says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct UnixInfo {
    state: u8,
    peer: u64,
    /// Connections waiting to be accepted (listeners).
    pending: usize,
    /// Bytes queued (stream, seqpacket) or the first datagram's size; a listener's backlog.
    rqueue: u32,
    wqueue: u32,
    shutdown: u8,
}

/// Every unix socket of the host's network namespace, by inode.
pub(super) type UnixTable = BTreeMap<u64, UnixInfo>;

/// Parses the answers of a unix `sock_diag` dump (`unix_diag_msg` + attributes each).
fn parse_unix_diag(msgs: &[Vec<u8>]) -> UnixTable {
    let mut out = UnixTable::new();
    for m in msgs {
        if m.len() < 16 {
            continue;
        }
        let u32_at = |b: &[u8], o: usize| {
            b.get(o..o + 4)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        };
        let ino = u64::from(u32_at(m, 4));
        let mut info = UnixInfo {
            state: m[2],
            ..UnixInfo::default()
        };
        let mut at = 16;
        while at + 4 <= m.len() {
            let len = usize::from(u16::from_ne_bytes([m[at], m[at + 1]]));
            let ty = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
            if len < 4 || at + len > m.len() {
                break;
            }
            let data = &m[at + 4..at + len];
            match ty {
                UNIX_DIAG_PEER => info.peer = u64::from(u32_at(data, 0)),
                UNIX_DIAG_ICONS => info.pending = data.len() / 4,
                UNIX_DIAG_RQLEN => {
                    info.rqueue = u32_at(data, 0);
                    info.wqueue = u32_at(data, 4);
                }
                UNIX_DIAG_SHUTDOWN => info.shutdown = data.first().copied().unwrap_or(0),
                _ => {}
            }
            at += (len + 3) & !3;
        }
        out.insert(ino, info);
    }
    out
}

/// Asks the kernel for every unix socket.
pub(super) fn unix_table() -> Result<UnixTable, SyscallError> {
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.extend_from_slice(&[0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    Ok(parse_unix_diag(&so::sock_diag_dump(&req)?))
}

/// A readable form of a raw `sockaddr`: `127.0.0.1:80`, `[::1]:80`, `/path`, `@abstract`.
pub fn addr_string(name: &[u8]) -> String {
    let family = name
        .get(0..2)
        .map_or(0, |b| i32::from(u16::from_ne_bytes([b[0], b[1]])));
    let port = name
        .get(2..4)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    match family {
        libc::AF_INET if name.len() >= 8 => {
            let ip = std::net::Ipv4Addr::new(name[4], name[5], name[6], name[7]);
            format!("{ip}:{port}")
        }
        libc::AF_INET6 if name.len() >= 24 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&name[8..24]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        }
        libc::AF_UNIX => {
            let path = name.get(2..).unwrap_or(&[]);
            match path.split_first() {
                None => "(unnamed unix socket)".into(),
                Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                Some(_) => {
                    let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                    String::from_utf8_lossy(&path[..end]).into_owned()
                }
            }
        }
        _ => format!("(address of family {family})"),
    }
}

/// The port of an inet `sockaddr` (0 when unbound).
fn port(name: &[u8]) -> u16 {
    name.get(2..4)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// Context of one process's dump: the unix sockets of the host, and the socket inodes the dump
/// holds (so a peer outside it is seen).
pub(super) struct DumpCtx<'a> {
    pub(super) pid: i32,
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) unix: Option<UnixTable>,
    pub(super) inside: &'a BTreeSet<u64>,
}

/// Saves the socket behind fd `fd` (inode `inode`) of the frozen process.
pub(super) fn dump(
    ctx: &mut DumpCtx<'_>,
    fd: i32,
    inode: u64,
    target: &str,
) -> Result<FdKind, FilesError> {
    let pid = ctx.pid;
    let refuse = |why| FilesError::Unsupported {
        pid,
        fd,
        target: target.to_string(),
        why,
    };
    let sys = |source| FilesError::SocketIo { pid, fd, source };
    if ctx.pidfd.is_none() {
        ctx.pidfd = Some(crate::sys::process::pidfd_open(pid).map_err(sys)?);
    }
    let pidfd = ctx
        .pidfd
        .as_ref()
        .map(AsFd::as_fd)
        .ok_or(FilesError::SocketIo {
            pid,
            fd,
            source: SyscallError::from_errno("pidfd_open", libc::ESRCH),
        })?;
    let sock = crate::sys::process::pidfd_getfd(pidfd, fd).map_err(sys)?;
    let s = sock.as_fd();
    let family = so::get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys)?;
    let sotype = so::get_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys)?;
    let flag = |level, opt| so::get_int(s, level, opt).map(|v| v != 0).map_err(sys);
    let mut rec = Socket {
        inode,
        family,
        sotype,
        name: so::sockname(s).map_err(sys)?,
        state: SocketState::Unconnected,
        shutdown: 0,
        queue: Vec::new(),
        sndbuf: so::get_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(sys)? as u32,
        rcvbuf: so::get_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF).map_err(sys)? as u32,
        passcred: family == libc::AF_UNIX && flag(libc::SOL_SOCKET, libc::SO_PASSCRED)?,
        reuseaddr: flag(libc::SOL_SOCKET, libc::SO_REUSEADDR)?,
        reuseport: flag(libc::SOL_SOCKET, libc::SO_REUSEPORT)?,
        v6only: family == libc::AF_INET6 && flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?,
    };
    match family {
        libc::AF_UNIX => {
            if !matches!(
                sotype,
                libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
            ) {
                return Err(refuse("unix socket of an unknown type"));
            }
            if ctx.unix.is_none() {
                ctx.unix = Some(unix_table().map_err(sys)?);
            }
            let info = ctx
                .unix
                .as_ref()
                .and_then(|t| t.get(&inode))
                .cloned()
                .ok_or_else(|| refuse("sock_diag does not know this unix socket"))?;
            rec.shutdown = info.shutdown;
            if info.state == TCP_LISTEN {
                if info.pending > 0 || info.rqueue > 0 {
                    return Err(refuse("unix listener with connections not yet accepted"));
                }
                rec.state = SocketState::Listening {
                    backlog: info.wqueue,
                };
                return Ok(FdKind::Socket(Box::new(rec)));
            }
            if info.peer != 0 {
                if !ctx.inside.contains(&info.peer) {
                    return Err(refuse("unix socket connected outside the dump"));
                }
                let mutual = ctx
                    .unix
                    .as_ref()
                    .and_then(|t| t.get(&info.peer))
                    .is_some_and(|p| p.peer == inode);
                rec.state = if mutual {
                    SocketState::Connected { peer: info.peer }
                } else if sotype == libc::SOCK_DGRAM {
                    // A datagram socket connected to a bound one (which is not connected back):
                    // connected again to its name at restore.
                    SocketState::ConnectedTo {
                        peer: so::peername(s).map_err(sys)?,
                    }
                } else {
                    return Err(refuse("unix socket connected outside the dump"));
                };
            } else if sotype != libc::SOCK_DGRAM && info.state != TCP_CLOSE {
                return Err(refuse("unix socket connected outside the dump"));
            }
            rec.queue = read_queue(s, sotype).map_err(|e| match e {
                QueueError::Sys(source) => FilesError::SocketIo { pid, fd, source },
                QueueError::Refuse(why) => refuse(why),
            })?;
            let total: usize = rec.queue.iter().map(Vec::len).sum();
            if sotype != libc::SOCK_DGRAM && total != info.rqueue as usize {
                return Err(refuse("the socket's queue changed while it was read"));
            }
            if !rec.queue.is_empty() && !matches!(rec.state, SocketState::Connected { .. }) {
                return Err(refuse(
                    "data queued on a unix socket that is not one of a connected pair",
                ));
            }
        }
        libc::AF_INET | libc::AF_INET6 => {
            let proto = so::get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys)?;
            match (sotype, proto) {
                (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                    let (state, pending, backlog) = so::tcp_state(s).map_err(sys)?;
                    if state == TCP_LISTEN {
                        if pending > 0 {
                            return Err(refuse(
                                "TCP listener with connections not yet accepted \
                                 (established TCP connections are not supported)",
                            ));
                        }
                        rec.state = SocketState::Listening { backlog };
                    } else if state == TCP_ESTABLISHED && super::tcp::enabled() {
                        rec.state =
                            SocketState::Established(Box::new(super::tcp::dump(s).map_err(sys)?));
                    } else if state == TCP_ESTABLISHED {
                        return Err(refuse("established TCP connection (use --tcp-established)"));
                    } else if state != TCP_CLOSE {
                        return Err(refuse(
                            "TCP connection being opened or closed (not supported)",
                        ));
                    }
                }
                (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {
                    if let Ok(peer) = so::peername(s) {
                        rec.state = SocketState::ConnectedTo { peer };
                    }
                }
                _ => return Err(refuse("inet socket other than TCP or UDP")),
            }
        }
        _ => return Err(refuse("socket family not supported")),
    }
    Ok(FdKind::Socket(Box::new(rec)))
}

enum QueueError {
    Sys(SyscallError),
    Refuse(&'static str),
}

/// Reads a unix socket's receive queue without consuming it, message by message.
fn read_queue(s: BorrowedFd<'_>, sotype: i32) -> Result<Vec<Vec<u8>>, QueueError> {
    let old = so::get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(QueueError::Sys)?;
    so::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(QueueError::Sys)?;
    let got = peek_all(s, sotype);
    // Put the offset back whatever happened: the process owns it.
    let reset = so::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).map_err(QueueError::Sys);
    let got = got?;
    reset?;
    Ok(got)
}

fn peek_all(s: BorrowedFd<'_>, sotype: i32) -> Result<Vec<Vec<u8>>, QueueError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; PEEK_BUF];
    loop {
        let p = so::peek(s, &mut buf).map_err(QueueError::Sys)?;
        if p.rights {
            return Err(QueueError::Refuse(
                "file descriptors in flight (SCM_RIGHTS) in its queue",
            ));
        }
        if p.empty {
            break;
        }
        if p.len == 0 {
            if sotype == libc::SOCK_STREAM {
                // End of stream after the peer's shutdown: nothing more is queued.
                break;
            }
            return Err(QueueError::Refuse("a zero-length message in its queue"));
        }
        if p.full > p.len {
            return Err(QueueError::Refuse("a message larger than fastcr reads"));
        }
        out.push(buf[..p.len].to_vec());
    }
    Ok(out)
}

/// The sockets of a restored tree, made by fastcr, by inode.
#[derive(Default)]
pub struct TreeSockets {
    fds: BTreeMap<u64, OwnedFd>,
}

fn sock_records<'a>(images: &[&'a FilesImage]) -> BTreeMap<u64, (&'a Socket, u32)> {
    let mut out = BTreeMap::new();
    for f in images.iter().flat_map(|i| i.fds.iter()) {
        if let FdKind::Socket(s) = &f.kind {
            out.entry(s.inode).or_insert((&**s, f.flags));
        }
    }
    out
}

impl TreeSockets {
    /// Makes every socket the images refer to (see the module doc). Fails with
    /// [`FilesError::SocketBind`] naming the address when it is taken.
    pub fn create(images: &[&FilesImage]) -> Result<Self, FilesError> {
        let recs = sock_records(images);
        let mut out = Self::default();
        let fail = |s: &Socket| {
            let inode = s.inode;
            move |source| FilesError::SocketRestore { inode, source }
        };
        // Unconnected and listening sockets first: a connected UDP or unix datagram socket may
        // name one of them.
        for (s, _) in recs.values() {
            if matches!(
                s.state,
                SocketState::Unconnected | SocketState::Listening { .. }
            ) {
                let fd = so::socket(s.family, s.sotype, 0).map_err(fail(s))?;
                set_options(fd.as_fd(), s).map_err(fail(s))?;
                bind_named(fd.as_fd(), s)?;
                if let SocketState::Listening { backlog } = s.state {
                    so::listen(fd.as_fd(), backlog.min(i32::MAX as u32) as i32).map_err(fail(s))?;
                }
                out.fds.insert(s.inode, fd);
            }
        }
        for (s, _) in recs.values() {
            match &s.state {
                SocketState::ConnectedTo { peer } => {
                    let fd = so::socket(s.family, s.sotype, 0).map_err(fail(s))?;
                    set_options(fd.as_fd(), s).map_err(fail(s))?;
                    bind_named(fd.as_fd(), s)?;
                    so::connect(fd.as_fd(), peer).map_err(fail(s))?;
                    out.fds.insert(s.inode, fd);
                }
                SocketState::Established(c) => {
                    let fd =
                        super::tcp::restore(s, c, |f| bind_named(f, s), |f| set_options(f, s))?;
                    out.fds.insert(s.inode, fd);
                }
                SocketState::Connected { peer } if !out.fds.contains_key(&s.inode) => {
                    let Some((p, _)) = recs.get(peer) else {
                        return Err(FilesError::MissingSocket { inode: *peer });
                    };
                    if p.state != (SocketState::Connected { peer: s.inode }) {
                        return Err(FilesError::SocketRestore {
                            inode: s.inode,
                            source: SyscallError::from_errno("socketpair", libc::EINVAL),
                        });
                    }
                    let (a, b) = so::socketpair(s.sotype).map_err(fail(s))?;
                    set_options(a.as_fd(), s).map_err(fail(s))?;
                    set_options(b.as_fd(), p).map_err(fail(p))?;
                    // Each end's queue is sent by the other end, then the shutdown state.
                    for m in &s.queue {
                        send_all(b.as_fd(), m, s.sotype).map_err(fail(s))?;
                    }
                    for m in &p.queue {
                        send_all(a.as_fd(), m, s.sotype).map_err(fail(p))?;
                    }
                    for (fd, r) in [(&a, s), (&b, p)] {
                        if let Some(how) = shut_how(r.shutdown) {
                            so::shutdown(fd.as_fd(), how).map_err(fail(r))?;
                        }
                    }
                    out.fds.insert(s.inode, a);
                    out.fds.insert(p.inode, b);
                }
                _ => {}
            }
        }
        for (s, flags) in recs.values() {
            if let Some(fd) = out.fds.get(&s.inode) {
                so::set_status_flags(fd, flags & libc::O_NONBLOCK as u32 != 0).map_err(fail(s))?;
            }
        }
        Ok(out)
    }

    /// fastcr's own descriptor of socket `inode`.
    fn raw(&self, inode: u64) -> Option<i32> {
        self.fds.get(&inode).map(AsRawFd::as_raw_fd)
    }

    fn max_raw(&self) -> i32 {
        self.fds.values().map(AsRawFd::as_raw_fd).max().unwrap_or(2)
    }
}

fn shut_how(mask: u8) -> Option<i32> {
    match mask & 3 {
        1 => Some(libc::SHUT_RD),
        2 => Some(libc::SHUT_WR),
        3 => Some(libc::SHUT_RDWR),
        _ => None,
    }
}

fn send_all(fd: BorrowedFd<'_>, m: &[u8], sotype: i32) -> Result<(), SyscallError> {
    let mut at = 0;
    while at < m.len() {
        let n = so::send(fd, &m[at..])?;
        if n == 0 || (sotype != libc::SOCK_STREAM && n != m.len()) {
            return Err(SyscallError::from_errno("send", libc::EMSGSIZE));
        }
        at += n;
    }
    Ok(())
}

/// Options that must be set before bind or data: buffer sizes (only where they differ from a
/// fresh socket's, so auto-tuning stays on otherwise), credentials passing, address reuse.
fn set_options(fd: BorrowedFd<'_>, s: &Socket) -> Result<(), SyscallError> {
    for (opt, want) in [(libc::SO_SNDBUF, s.sndbuf), (libc::SO_RCVBUF, s.rcvbuf)] {
        let now = so::get_int(fd, libc::SOL_SOCKET, opt)? as u32;
        if now != want {
            // The kernel doubles what it is given, and getsockopt reports the doubled value.
            let force = if opt == libc::SO_SNDBUF {
                libc::SO_SNDBUFFORCE
            } else {
                libc::SO_RCVBUFFORCE
            };
            so::set_int(fd, libc::SOL_SOCKET, force, (want / 2) as i32)?;
        }
    }
    if s.passcred {
        so::set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    }
    if s.family != libc::AF_UNIX {
        so::set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            i32::from(s.reuseaddr),
        )?;
        so::set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            i32::from(s.reuseport),
        )?;
    }
    if s.family == libc::AF_INET6 {
        so::set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            i32::from(s.v6only),
        )?;
    }
    Ok(())
}

/// Binds `fd` to the socket's dumped name, if it had one. A unix path left behind by a socket
/// nobody listens on any more is removed first; one still in use is an error, as is a taken
/// inet address.
fn bind_named(fd: BorrowedFd<'_>, s: &Socket) -> Result<(), FilesError> {
    let bound = match s.family {
        libc::AF_UNIX => s.name.len() > 2,
        _ => port(&s.name) != 0,
    };
    if !bound {
        return Ok(());
    }
    let bind_err = |source| FilesError::SocketBind {
        addr: addr_string(&s.name),
        source,
    };
    if s.family == libc::AF_UNIX && s.name.get(2).is_some_and(|&c| c != 0) {
        let path = addr_string(&s.name);
        let is_socket = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            let probe = so::socket(libc::AF_UNIX, s.sotype, 0).map_err(bind_err)?;
            match so::connect(probe.as_fd(), &s.name) {
                Err(e) if e.errno() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(&path).map_err(|io_error| {
                        bind_err(SyscallError {
                            call: "unlink",
                            io_error,
                        })
                    })?;
                }
                _ => {
                    return Err(bind_err(SyscallError::from_errno("bind", libc::EADDRINUSE)));
                }
            }
        }
    }
    so::bind(fd, &s.name).map_err(bind_err)
}

/// Sockets of one process parked at high fd numbers: (fd number in the image, parked number).
pub type Parked = Vec<(i32, u64)>;

/// Copies, inside the (still fd-inheriting) process, each socket it needs from fastcr's
/// descriptor it inherited to a number above every fd of its image, every one of fastcr's
/// sockets and `above` (the inherited ends of shared pipes, kept open too). Returns them and the parked range to keep open.
pub fn park(
    inj: &Injector,
    files: &FilesImage,
    sockets: &TreeSockets,
    above: u64,
) -> Result<(Parked, Option<(u64, u64)>), FilesError> {
    let wanted: Vec<(i32, u64)> = files
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Socket(s) => Some((f.fd, s.inode)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok((Vec::new(), None));
    }
    let top = files.fds.iter().map(|f| f.fd).max().unwrap_or(0);
    let base = u64::try_from(top.max(sockets.max_raw()).saturating_add(1))
        .unwrap_or(3)
        .max(3)
        .max(above + 1);
    let mut parked = Vec::with_capacity(wanted.len());
    for (i, (fd, inode)) in wanted.iter().enumerate() {
        let src = sockets
            .raw(*inode)
            .ok_or(FilesError::MissingSocket { inode: *inode })?;
        let to = base + i as u64;
        inj.call(
            || format!("dup3 of socket {inode} for fd {fd}"),
            "dup3",
            libc::SYS_dup3,
            [src as u64, to, 0, 0, 0, 0],
        )?;
        parked.push((*fd, to));
    }
    Ok((parked, Some((base, base + wanted.len() as u64 - 1))))
}

/// Moves the parked sockets to their fd numbers (with close-on-exec as dumped) and closes the
/// parked copies.
pub(super) fn place(inj: &Injector, files: &FilesImage, parked: &Parked) -> Result<(), FilesError> {
    for f in &files.fds {
        if let FdKind::Socket(s) = &f.kind {
            let src = parked
                .iter()
                .find(|(fd, _)| *fd == f.fd)
                .map(|(_, p)| *p)
                .ok_or(FilesError::MissingSocket { inode: s.inode })?;
            super::place_fd(inj, src, f)?;
        }
    }
    for (_, p) in parked {
        super::close(inj, *p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_readably() {
        let mut v4 = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1];
        v4.extend_from_slice(&[0; 8]);
        assert_eq!(addr_string(&v4), "127.0.0.1:8080");
        let mut v6 = vec![10, 0, 0, 80, 0, 0, 0, 0];
        v6.extend_from_slice(&[0; 15]);
        v6.push(1);
        assert_eq!(addr_string(&v6), "[::1]:80");
        assert_eq!(addr_string(&[1, 0, 0, b'a', b'b']), "@ab");
        assert_eq!(addr_string(&[1, 0, b'/', b't', 0]), "/t");
        assert_eq!(addr_string(&[1, 0]), "(unnamed unix socket)");
        assert_eq!(addr_string(&[]), "(address of family 0)");
    }

    #[test]
    fn unix_diag_answers_parse_and_bad_ones_do_not_panic() {
        let mut m = vec![1, 1, 1, 0];
        m.extend_from_slice(&77u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        // UNIX_DIAG_PEER = 99
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        m.extend_from_slice(&99u32.to_ne_bytes());
        // UNIX_DIAG_SHUTDOWN = 2 (padded)
        m.extend_from_slice(&5u16.to_ne_bytes());
        m.extend_from_slice(&UNIX_DIAG_SHUTDOWN.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0]);
        // Short and truncated answers are skipped or read as far as they go, never a panic.
        let t = parse_unix_diag(&[vec![1, 2, 3], m[..18].to_vec()]);
        assert_eq!(t[&77].peer, 0);
        let t = parse_unix_diag(&[m.clone()]);
        let i = &t[&77];
        assert_eq!((i.peer, i.shutdown, i.state), (99, 2, 1));
        let mut bad = m;
        bad[16] = 200;
        let t = parse_unix_diag(&[bad]);
        assert_eq!(t[&77].peer, 0);
    }

    #[test]
    fn shutdown_masks_map_to_how() {
        assert_eq!(shut_how(0), None);
        assert_eq!(shut_how(1), Some(libc::SHUT_RD));
        assert_eq!(shut_how(2), Some(libc::SHUT_WR));
        assert_eq!(shut_how(3), Some(libc::SHUT_RDWR));
    }
}
