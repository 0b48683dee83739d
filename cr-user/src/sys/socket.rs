//! Sockets: options, names, non-consuming reads of a receive queue, and the `sock_diag` netlink
//! query. Addresses travel as raw `sockaddr` bytes so the callers stay free of C layouts.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{SyscallError, check};

/// `linux/sock_diag.h`: the netlink message type of a query by address family.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `getsockopt` of an `int` option.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> Result<i32, SyscallError> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are locals that outlive the call; the kernel writes at most `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    check(ret.into(), "getsockopt")?;
    Ok(v)
}

/// `setsockopt` of an `int` option.
pub fn set_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> Result<(), SyscallError> {
    // SAFETY: `v` is a local that outlives the call, its size is passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret.into(), "setsockopt").map(drop)
}

/// The TCP state (`tcpi_state` of `TCP_INFO`) and, for a listener, the connections waiting to
/// be accepted and the backlog (`tcpi_unacked` and `tcpi_sacked` hold them in `LISTEN`).
pub fn tcp_state(fd: BorrowedFd<'_>) -> Result<(u8, u32, u32), SyscallError> {
    // SAFETY: tcp_info is plain integers; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are locals that outlive the call; the kernel writes at most `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    check(ret.into(), "getsockopt(TCP_INFO)")?;
    Ok((info.tcpi_state, info.tcpi_unacked, info.tcpi_sacked))
}

fn name_of(
    fd: BorrowedFd<'_>,
    call: &'static str,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Result<Vec<u8>, SyscallError> {
    // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` and `len` outlive the call; the kernel writes at most `len` bytes.
    let ret = unsafe { f(fd.as_raw_fd(), (&raw mut ss).cast(), &raw mut len) };
    check(ret.into(), call)?;
    let len = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `ss` is `len` initialised bytes long (len capped to its size).
    let bytes = unsafe { std::slice::from_raw_parts((&raw const ss).cast::<u8>(), len) };
    Ok(bytes.to_vec())
}

/// `getsockname` as raw sockaddr bytes.
pub fn sockname(fd: BorrowedFd<'_>) -> Result<Vec<u8>, SyscallError> {
    name_of(fd, "getsockname", libc::getsockname)
}

/// `getpeername` as raw sockaddr bytes.
pub fn peername(fd: BorrowedFd<'_>) -> Result<Vec<u8>, SyscallError> {
    name_of(fd, "getpeername", libc::getpeername)
}

/// A new socket, close-on-exec.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Result<OwnedFd, SyscallError> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    owned(ret, "socket")
}

/// A connected pair of unix sockets of type `ty`, close-on-exec.
pub fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd), SyscallError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a local array of two ints, as socketpair requires.
    let ret =
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    check(ret.into(), "socketpair")?;
    // SAFETY: the kernel just returned both descriptors and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn owned(ret: libc::c_int, call: &'static str) -> Result<OwnedFd, SyscallError> {
    let fd = check(ret.into(), call)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn addr_call(
    fd: BorrowedFd<'_>,
    addr: &[u8],
    call: &'static str,
    f: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> Result<(), SyscallError> {
    if addr.len() > size_of::<libc::sockaddr_storage>() || addr.len() < 2 {
        return Err(SyscallError::from_errno(call, libc::EINVAL));
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` fits in `ss` (checked above); the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(addr.as_ptr(), (&raw mut ss).cast::<u8>(), addr.len());
    }
    // SAFETY: `ss` holds `addr.len()` meaningful bytes and outlives the call.
    let ret = unsafe {
        f(
            fd.as_raw_fd(),
            (&raw const ss).cast(),
            addr.len() as libc::socklen_t,
        )
    };
    check(ret.into(), call).map(drop)
}

/// `bind` to raw sockaddr bytes.
pub fn bind(fd: BorrowedFd<'_>, addr: &[u8]) -> Result<(), SyscallError> {
    addr_call(fd, addr, "bind", libc::bind)
}

/// `connect` to raw sockaddr bytes.
pub fn connect(fd: BorrowedFd<'_>, addr: &[u8]) -> Result<(), SyscallError> {
    addr_call(fd, addr, "connect", libc::connect)
}

/// `listen`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<(), SyscallError> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    check(ret.into(), "listen").map(drop)
}

/// `shutdown` with `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<(), SyscallError> {
    // SAFETY: integer arguments only.
    let ret = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    check(ret.into(), "shutdown").map(drop)
}

/// Sends `data` as one message (one datagram, or bytes of a stream), never blocking.
pub fn send(fd: BorrowedFd<'_>, data: &[u8]) -> Result<usize, SyscallError> {
    // SAFETY: `data` is a valid slice for the length passed.
    let ret = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    check(ret as libc::c_long, "send").map(|n| n as usize)
}

/// What one peek at a receive queue found.
#[derive(Debug, Clone, Copy)]
pub struct Peeked {
    /// Bytes copied into the buffer (0 with an empty queue).
    pub len: usize,
    /// The whole message's length (datagram sockets with `MSG_TRUNC`; `len` for streams).
    pub full: usize,
    /// The message carried file descriptors (`SCM_RIGHTS`); the copies received are closed.
    pub rights: bool,
    /// Nothing was queued (`EAGAIN`).
    pub empty: bool,
}

/// Reads from the receive queue without consuming it (`MSG_PEEK`, never blocking): with
/// `SO_PEEK_OFF` set, each call returns the next bytes or the next message. An empty queue
/// gives `len == 0`.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Peeked, SyscallError> {
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all alive for the call.
    let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, flags) };
    if ret == -1 {
        let e = SyscallError::last("recvmsg(MSG_PEEK)");
        if e.errno() == Some(libc::EAGAIN) {
            return Ok(Peeked {
                len: 0,
                full: 0,
                rights: false,
                empty: true,
            });
        }
        return Err(e);
    }
    let full = ret as usize;
    let mut rights = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: the CMSG_* helpers walk `control` within `msg_controllen`, as the kernel set it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                rights = true;
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / size_of::<libc::c_int>();
                for i in 0..n {
                    // A peek installs copies of the fds in flight in fastcr: close them.
                    libc::close(data.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Peeked {
        len: full.min(buf.len()),
        full,
        rights,
        empty: false,
    })
}

/// Sets or clears `O_NONBLOCK` on the open file behind `fd`.
pub fn set_status_flags(fd: impl AsFd, nonblock: bool) -> Result<(), SyscallError> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl on a borrowed descriptor with integer arguments.
    let cur = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    let cur = check(cur.into(), "fcntl(F_GETFL)")? as libc::c_int;
    let new = if nonblock {
        cur | libc::O_NONBLOCK
    } else {
        cur & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(raw, libc::F_SETFL, new) };
    check(ret.into(), "fcntl(F_SETFL)").map(drop)
}

/// Asks `NETLINK_SOCK_DIAG` to dump every socket matching `request` (a `*_diag_req` struct
/// as bytes, without the netlink header) and returns the payload of each answer message.
pub fn sock_diag_dump(request: &[u8]) -> Result<Vec<Vec<u8>>, SyscallError> {
    // SAFETY: integer arguments only.
    let ret = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    let nl = owned(ret, "socket(NETLINK_SOCK_DIAG)")?;
    let len = 16 + request.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(request);
    // SAFETY: `msg` is a valid buffer of its length; the kernel is the default destination.
    let ret = unsafe { libc::send(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    check(ret as libc::c_long, "send(sock_diag request)")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = check(n as libc::c_long, "recv(sock_diag answer)")? as usize;
        let mut at = 0;
        while at + 16 <= n {
            let word = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let mlen = word(at) as usize;
            let mtype = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if mlen < 16 || at + mlen > n {
                return Err(SyscallError::from_errno(
                    "recv(sock_diag answer)",
                    libc::EPROTO,
                ));
            }
            if i32::from(mtype) == libc::NLMSG_DONE {
                return Ok(out);
            }
            if i32::from(mtype) == libc::NLMSG_ERROR && mlen >= 20 {
                let errno =
                    i32::from_ne_bytes([buf[at + 16], buf[at + 17], buf[at + 18], buf[at + 19]]);
                return Err(SyscallError::from_errno("sock_diag", -errno));
            }
            out.push(buf[at + 16..at + mlen].to_vec());
            at += (mlen + 3) & !3;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// `getsockopt` of an option given as `len` raw bytes (a struct such as `tcp_info`).
pub fn get_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    len: usize,
) -> Result<Vec<u8>, SyscallError> {
    let mut buf = vec![0u8; len];
    let mut l = libc::socklen_t::try_from(len)
        .map_err(|_| SyscallError::from_errno("getsockopt", libc::EINVAL))?;
    // SAFETY: `buf` is `len` writable bytes and `l` says so; both outlive the call.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &raw mut l,
        )
    };
    check(ret.into(), "getsockopt")?;
    buf.truncate(l as usize);
    Ok(buf)
}

/// `setsockopt` of an option given as raw bytes.
pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, opt: i32, v: &[u8]) -> Result<(), SyscallError> {
    let l = libc::socklen_t::try_from(v.len())
        .map_err(|_| SyscallError::from_errno("setsockopt", libc::EINVAL))?;
    // SAFETY: `v` is a valid slice of the length passed.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, v.as_ptr().cast(), l) };
    check(ret.into(), "setsockopt").map(drop)
}

/// Copies queued stream bytes without consuming them (`MSG_PEEK`, never blocking); with a TCP
/// socket in repair mode, from the queue `TCP_REPAIR_QUEUE` selects. 0 when nothing is queued.
pub fn peek_stream(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, SyscallError> {
    // SAFETY: `buf` is a valid writable slice of the length passed.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if ret == -1 {
        let e = SyscallError::last("recv(MSG_PEEK)");
        if e.errno() == Some(libc::EAGAIN) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(ret as usize)
}
