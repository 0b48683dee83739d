//! Established TCP connections with `TCP_REPAIR` (`dump --tcp-established`).
//!
//! Dump: the socket is put in repair mode (it stays so in the frozen process), and read: the
//! sequence numbers of both queues (`TCP_QUEUE_SEQ`), their bytes (`MSG_PEEK` with
//! `TCP_REPAIR_QUEUE` selecting the queue), the MSS, window scales, SACK and timestamps
//! (`TCP_INFO`, `TCP_MAXSEG`, `TCP_TIMESTAMP`) and the windows (`TCP_REPAIR_WINDOW`). fastcr keeps
//! a copy of each such socket until the dump ends: when the dump kills the tree, that copy is
//! the last, and closing it in repair mode ends the connection silently (no FIN, no RST), so
//! the peer keeps it; when the tree goes on running (`--leave-running`, or a failed dump),
//! repair mode is switched off again first.
//!
//! Restore: a socket in repair mode is bound to the dumped address, its queue sequence numbers
//! set, connected (no handshake in repair mode), its options, timestamp clock, queues and
//! windows restored, then repair mode is switched off, which sends a window probe.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::image::files::{Socket, TcpConn};
use crate::sys::SyscallError;
use crate::sys::socket as so;

const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// `struct tcp_repair_window`: five u32.
const REPAIR_WINDOW_LEN: usize = 20;
/// Largest queue read (well above the largest socket buffer fastcr can meet).
const QUEUE_BUF: usize = 64 << 20;

/// Whether this dump saves established connections (`--tcp-established`).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// fastcr's copies of the sockets it put in repair mode during this dump.
static REPAIRED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Starts a dump: whether established connections are saved.
pub fn begin(enabled: bool) {
    ENABLED.store(enabled, Ordering::SeqCst);
}

/// Whether established connections are saved by the dump under way.
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Ends a dump: when the processes were killed, closes fastcr's copies (silently, in repair
/// mode); otherwise switches repair mode off first so the connections go on.
pub fn end(killed: bool) {
    let fds = match REPAIRED.lock() {
        Ok(mut g) => std::mem::take(&mut *g),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for fd in fds {
        if !killed
            && let Err(e) = so::set_int(
                fd.as_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                TCP_REPAIR_OFF,
            )
        {
            tracing::warn!(error = %e, "cannot switch TCP repair mode off again");
        }
    }
    ENABLED.store(false, Ordering::SeqCst);
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// Puts the socket in repair mode and reads what restore needs.
pub(super) fn dump(s: BorrowedFd<'_>) -> Result<TcpConn, SyscallError> {
    let info = so::get_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, 104)?;
    so::set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON)?;
    let kept = s.try_clone_to_owned().map_err(|io_error| SyscallError {
        call: "dup",
        io_error,
    })?;
    match REPAIRED.lock() {
        Ok(mut g) => g.push(kept),
        Err(p) => p.into_inner().push(kept),
    }
    let mut buf = vec![0u8; QUEUE_BUF];
    let mut queue = |q: i32| -> Result<(u32, Vec<u8>), SyscallError> {
        so::set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, q)?;
        let seq = so::get_int(s, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)? as u32;
        let n = so::peek_stream(s, &mut buf)?;
        Ok((seq, buf[..n].to_vec()))
    };
    let (snd_seq, sndq) = queue(TCP_SEND_QUEUE)?;
    let (rcv_seq, rcvq) = queue(TCP_RECV_QUEUE)?;
    let options = byte(&info, 5);
    let wscale = byte(&info, 6);
    Ok(TcpConn {
        peer: so::peername(s)?,
        snd_seq,
        rcv_seq,
        sndq,
        rcvq,
        mss: so::get_int(s, libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32,
        options,
        snd_wscale: wscale & 0xf,
        rcv_wscale: wscale >> 4,
        timestamp: so::get_int(s, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP)? as u32,
        window: so::get_bytes(
            s,
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_WINDOW,
            REPAIR_WINDOW_LEN,
        )?,
    })
}

fn write_queue(fd: BorrowedFd<'_>, q: i32, data: &[u8]) -> Result<(), SyscallError> {
    so::set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, q)?;
    let mut at = 0;
    while at < data.len() {
        let n = so::send(fd, &data[at..])?;
        if n == 0 {
            return Err(SyscallError::from_errno("send", libc::EIO));
        }
        at += n;
    }
    Ok(())
}

/// Makes the connection again (see the module doc). `bind` binds the socket to its address.
pub(super) fn restore(
    s: &Socket,
    c: &TcpConn,
    bind: impl FnOnce(BorrowedFd<'_>) -> Result<(), super::FilesError>,
    set_options: impl FnOnce(BorrowedFd<'_>) -> Result<(), SyscallError>,
) -> Result<OwnedFd, super::FilesError> {
    let fail = |source| super::FilesError::SocketRestore {
        inode: s.inode,
        source,
    };
    let fd = so::socket(s.family, libc::SOCK_STREAM, 0).map_err(fail)?;
    let f = fd.as_fd();
    let tcp = |opt, v| so::set_int(f, libc::IPPROTO_TCP, opt, v).map_err(fail);
    // The socket options first: setting SO_REUSEADDR (even to 0) would undo the forced reuse
    // repair mode gives, and the address is usually taken by the listener it came from.
    set_options(f).map_err(fail)?;
    tcp(libc::TCP_REPAIR, TCP_REPAIR_ON)?;
    bind(f)?;
    let len = |q: &[u8]| u32::try_from(q.len()).unwrap_or(u32::MAX);
    tcp(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    tcp(
        libc::TCP_QUEUE_SEQ,
        c.snd_seq.wrapping_sub(len(&c.sndq)) as i32,
    )?;
    tcp(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    tcp(
        libc::TCP_QUEUE_SEQ,
        c.rcv_seq.wrapping_sub(len(&c.rcvq)) as i32,
    )?;
    so::connect(f, &c.peer).map_err(fail)?;
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MSS, c.mss)];
    if c.options & TCPI_OPT_WSCALE != 0 {
        opts.push((
            TCPOPT_WINDOW,
            u32::from(c.snd_wscale) | (u32::from(c.rcv_wscale) << 16),
        ));
    }
    if c.options & TCPI_OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let raw: Vec<u8> = opts
        .iter()
        .flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    so::set_bytes(f, libc::IPPROTO_TCP, libc::TCP_REPAIR_OPTIONS, &raw).map_err(fail)?;
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        tcp(libc::TCP_TIMESTAMP, c.timestamp as i32)?;
    }
    write_queue(f, TCP_RECV_QUEUE, &c.rcvq).map_err(fail)?;
    write_queue(f, TCP_SEND_QUEUE, &c.sndq).map_err(fail)?;
    if c.window.len() == REPAIR_WINDOW_LEN {
        so::set_bytes(f, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &c.window).map_err(fail)?;
    }
    tcp(libc::TCP_REPAIR, TCP_REPAIR_OFF)?;
    Ok(fd)
}
