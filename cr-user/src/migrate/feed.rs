//! The destination's page feed for lazy migration: pages arrive on two connections, read by
//! one thread each into pooled buffers and handed to the fault-handler thread through
//! channels; a pipe wakes the handler's poll. Answers to demand faults (control connection)
//! are always placed before background pages (bulk connection).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::auth::{self, Role, SessionId, Token};
use super::proto::{self, DoneStats, Frame, MAX_REQUEST_PAGES, ProtoError};
use super::{LINK_TIMEOUT, MigrateError, PING_PERIOD, tune};
use crate::lazy::{Feed, LazyError, Placer};
use crate::sys::{PAGE_SIZE, process};

/// Background frames (up to 8 MiB each) placed per turn: a demand answer waits for at most
/// this many.
const BULK_PER_ROUND: usize = 1;

/// What a reader thread hands over.
enum Msg {
    /// Pages of process `pid` at `addr`: `buf[off..off+len]`.
    Pages {
        pid: i32,
        addr: u64,
        buf: Vec<u8>,
        off: usize,
        len: usize,
    },
    /// Pages a process (pid, start, length) never had.
    Absent(i32, u64, u64),
    /// The background stream is complete.
    BulkEnd,
    /// The source is done (`Bye`) or failed.
    Ended(String),
    /// The connection broke.
    Lost(String),
}

struct Reader {
    rx: Receiver<Msg>,
    handle: Option<JoinHandle<()>>,
}

fn spawn_reader(
    mut stream: TcpStream,
    tx: Sender<Msg>,
    pool: Receiver<Vec<u8>>,
    wake: OwnedFd,
    what: &'static str,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut wake = std::fs::File::from(wake);
        let mut last_heard = Instant::now();
        loop {
            let mut buf = pool.try_recv().unwrap_or_default();
            let read = match proto::read_frame(&mut stream, &mut buf) {
                // `buf` may have grown (moved) during the read: keep the data's address and
                // take its offset once the borrow has ended.
                Ok(Frame::Pages { pid, addr, data }) => {
                    Ok((pid, addr, data.as_ptr() as usize, data.len()))
                }
                Ok(other) => Err(frame_msg(other, what, &mut last_heard)),
                Err(ProtoError::TimedOut) if last_heard.elapsed() < LINK_TIMEOUT => continue,
                Err(e) => Err(Some(Msg::Lost(format!("{what} connection: {e}")))),
            };
            let msg = match read {
                Ok((pid, addr, ptr, len)) => {
                    let off = ptr - buf.as_ptr() as usize;
                    Msg::Pages {
                        pid,
                        addr,
                        buf,
                        off,
                        len,
                    }
                }
                Err(None) => continue,
                Err(Some(m)) => m,
            };
            last_heard = Instant::now();
            let last = matches!(msg, Msg::BulkEnd | Msg::Ended(_) | Msg::Lost(_));
            if tx.send(msg).is_err() {
                return;
            }
            let _ = wake.write_all(b"w");
            if last {
                return;
            }
        }
    })
}

/// What a non-page frame means to a reader; `None`: nothing to hand over (keepalive).
fn frame_msg(f: Frame<'_>, what: &str, last_heard: &mut Instant) -> Option<Msg> {
    Some(match f {
        Frame::BulkEnd { .. } => Msg::BulkEnd,
        Frame::Absent { pid, addr, npages } => {
            Msg::Absent(pid, addr, npages.saturating_mul(PAGE_SIZE))
        }
        Frame::Bye => Msg::Ended("source said Bye".into()),
        Frame::Failed { message } => Msg::Ended(format!("source failed: {message}")),
        Frame::Ping | Frame::Pong => {
            *last_heard = Instant::now();
            return None;
        }
        f => Msg::Lost(format!(
            "unexpected {} frame on the {what} connection",
            f.name()
        )),
    })
}

/// A lazy-migration feed.
pub struct NetFeed {
    ctl: TcpStream,
    demand: Reader,
    bulk: Option<Reader>,
    pool_tx: Sender<Vec<u8>>,
    pool_rx_ctl: Option<Receiver<Vec<u8>>>,
    wake_r: OwnedFd,
    wake_w: OwnedFd,
    bulk_ended: bool,
    more_bulk: bool,
    rest_requested: bool,
    last_ping: Instant,
    listener: TcpListener,
    token: Token,
    session: SessionId,
    /// Requests sent.
    pub requests: u64,
    /// Times the link was re-established.
    pub reconnects: u64,
}

impl NetFeed {
    /// A feed over the authenticated `ctl` and `bulk` connections of `session`; `listener`
    /// stays open for a reconnect after a lost link.
    pub fn new(
        ctl: TcpStream,
        bulk: TcpStream,
        listener: TcpListener,
        token: Token,
        session: SessionId,
    ) -> Result<Self, MigrateError> {
        let (wake_r, wake_w) = process::pipe().map_err(|e| MigrateError::Io {
            what: "pipe".into(),
            source: e.io_error,
        })?;
        set_nonblocking(&wake_r)?;
        set_nonblocking(&wake_w)?;
        let (pool_tx, pool_rx) = channel();
        let mut feed = Self {
            ctl,
            demand: Reader {
                rx: channel().1,
                handle: None,
            },
            bulk: None,
            pool_tx,
            pool_rx_ctl: None,
            wake_r,
            wake_w,
            bulk_ended: false,
            more_bulk: false,
            rest_requested: false,
            last_ping: Instant::now(),
            listener,
            token,
            session,
            requests: 0,
            reconnects: 0,
        };
        feed.start_readers(bulk, pool_rx)?;
        Ok(feed)
    }

    fn start_readers(
        &mut self,
        bulk: TcpStream,
        pool: Receiver<Vec<u8>>,
    ) -> Result<(), MigrateError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| MigrateError::Io {
                what: "dup of the wake pipe".into(),
                source,
            })
        };
        let ctl_read = self.ctl.try_clone().map_err(|source| MigrateError::Io {
            what: "dup of the control connection".into(),
            source,
        })?;
        ctl_read
            .set_read_timeout(Some(PING_PERIOD))
            .map_err(|source| MigrateError::Io {
                what: "setsockopt(SO_RCVTIMEO)".into(),
                source,
            })?;
        let (tx, rx) = channel();
        // Demand answers are few: their buffers are not pooled.
        let handle = spawn_reader(ctl_read, tx, channel().1, dup(&self.wake_w)?, "control");
        self.demand = Reader {
            rx,
            handle: Some(handle),
        };
        let (tx, rx) = channel();
        let handle = spawn_reader(bulk, tx, pool, dup(&self.wake_w)?, "bulk");
        self.bulk = Some(Reader {
            rx,
            handle: Some(handle),
        });
        self.pool_rx_ctl = None;
        Ok(())
    }

    fn request(&mut self, pid: i32, addr: u64, npages: u32) -> Result<(), LazyError> {
        self.requests += 1;
        proto::write_frame(&mut self.ctl, &Frame::PageRequest { pid, addr, npages })
            .map_err(|e| LazyError::Feed(format!("page request: {e}")))
    }

    /// Asks for every page still missing (after the background stream ended, or after a
    /// reconnect, when the stream is not resent).
    fn request_rest(&mut self, placer: &Placer) -> Result<(), LazyError> {
        for (pid, src, len) in placer.all_pending() {
            let mut a = src;
            while a < src + len {
                let n = ((src + len - a) / PAGE_SIZE).min(u64::from(MAX_REQUEST_PAGES));
                self.request(pid, a, n as u32)?;
                a += n * PAGE_SIZE;
            }
        }
        self.rest_requested = true;
        Ok(())
    }

    fn drain_wake(&self) {
        let mut f = match self.wake_r.try_clone() {
            Ok(fd) => std::fs::File::from(fd),
            Err(_) => return,
        };
        let mut sink = [0u8; 256];
        while matches!(std::io::Read::read(&mut f, &mut sink), Ok(n) if n > 0) {}
    }

    /// Waits up to LINK_TIMEOUT for the source to connect again (control, then bulk, same
    /// session), then asks for everything still missing.
    fn reconnect(&mut self, why: &str, placer: &Placer) -> Result<(), LazyError> {
        tracing::warn!(
            why,
            "link to the migration source lost; waiting for it to reconnect"
        );
        let deadline = Instant::now() + LINK_TIMEOUT;
        let lost = |detail: String| {
            LazyError::Feed(format!(
                "link to the source lost ({why}) and not re-established within {} s{detail}",
                LINK_TIMEOUT.as_secs()
            ))
        };
        let ctl = accept_role(
            &self.listener,
            &self.token,
            self.session,
            Role::Control,
            deadline,
        )
        .map_err(|e| lost(format!(": {e}")))?;
        let bulk = accept_role(
            &self.listener,
            &self.token,
            self.session,
            Role::Bulk,
            deadline,
        )
        .map_err(|e| lost(format!(": {e}")))?;
        self.ctl = ctl;
        let (pool_tx, pool_rx) = channel();
        self.pool_tx = pool_tx;
        self.start_readers(bulk, pool_rx)
            .map_err(|e| lost(format!(": {e}")))?;
        self.reconnects += 1;
        self.bulk_ended = false;
        self.request_rest(placer)
    }

    /// Reports every page in place (`Done`) and waits briefly for the source's `Bye`.
    pub fn finish(&mut self, done: DoneStats) {
        if proto::write_frame(&mut self.ctl, &Frame::Done(done)).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.demand.rx.recv_timeout(left) {
                Ok(Msg::Pages { .. } | Msg::BulkEnd | Msg::Absent(..)) => {}
                Ok(Msg::Ended(_) | Msg::Lost(_)) | Err(_) => return,
            }
        }
    }

    fn recycle(&self, buf: Vec<u8>) {
        let _ = self.pool_tx.send(buf);
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), MigrateError> {
    process::set_nonblocking(fd.as_fd()).map_err(|e| MigrateError::Io {
        what: "fcntl(O_NONBLOCK)".into(),
        source: e.io_error,
    })
}

/// Accepts connections on `listener` until one authenticates as `role` of `session`, or
/// `deadline` passes. Others are rejected and logged.
pub fn accept_role(
    listener: &TcpListener,
    token: &Token,
    session: SessionId,
    role: Role,
    deadline: Instant,
) -> Result<TcpStream, MigrateError> {
    listener
        .set_nonblocking(true)
        .map_err(|source| MigrateError::Io {
            what: "set the listener non-blocking".into(),
            source,
        })?;
    loop {
        if Instant::now() >= deadline {
            return Err(MigrateError::Peer(format!(
                "no {role:?} connection of this migration arrived in time"
            )));
        }
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false)
                    .map_err(|source| MigrateError::Io {
                        what: "set a connection blocking".into(),
                        source,
                    })?;
                tune(&s)?;
                match auth::server_handshake(&mut s, token) {
                    Ok((r, id)) if r == role && id == session => return Ok(s),
                    Ok((r, _)) => {
                        tracing::warn!(%peer, ?r, "connection of another migration or role refused");
                    }
                    Err(e) => eprintln!("fastcr: rejected connection from {peer}: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(MigrateError::Io {
                    what: "accept".into(),
                    source,
                });
            }
        }
    }
}

impl Feed for NetFeed {
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.wake_r.as_fd())
    }

    fn demand(&mut self, pid: i32, src: u64, _placer: &mut Placer) -> Result<(), LazyError> {
        self.request(pid, src, 1)
    }

    fn arrivals(&mut self, placer: &mut Placer) -> Result<(), LazyError> {
        self.drain_wake();
        loop {
            match self.demand.rx.try_recv() {
                Ok(Msg::Pages {
                    pid,
                    addr,
                    buf,
                    off,
                    len,
                }) => placer.place(pid, addr, &buf[off..off + len])?,
                Ok(Msg::Lost(why)) => return self.reconnect(&why, placer),
                Ok(Msg::Ended(why)) => {
                    if placer.is_done() {
                        return Ok(());
                    }
                    return Err(LazyError::Feed(why));
                }
                Ok(Msg::BulkEnd | Msg::Absent(..)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return self.reconnect("control reader ended", placer);
                }
            }
        }
        self.more_bulk = false;
        for _ in 0..BULK_PER_ROUND {
            let Some(bulk) = &self.bulk else {
                return Ok(());
            };
            let msg = bulk.rx.try_recv();
            match msg {
                Ok(Msg::Pages {
                    pid,
                    addr,
                    buf,
                    off,
                    len,
                }) => {
                    placer.place(pid, addr, &buf[off..off + len])?;
                    self.recycle(buf);
                    self.more_bulk = true;
                }
                Ok(Msg::Absent(pid, addr, len)) => {
                    placer.absent(pid, addr, len)?;
                    self.more_bulk = true;
                }
                Ok(Msg::BulkEnd) => {
                    self.bulk_ended = true;
                    self.more_bulk = false;
                    break;
                }
                Ok(Msg::Lost(why)) => return self.reconnect(&why, placer),
                Ok(Msg::Ended(why)) => return Err(LazyError::Feed(why)),
                Err(TryRecvError::Empty) => {
                    self.more_bulk = false;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    self.more_bulk = false;
                    if !self.bulk_ended {
                        return self.reconnect("bulk reader ended", placer);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn background(&mut self, placer: &mut Placer) -> Result<bool, LazyError> {
        if self.last_ping.elapsed() >= PING_PERIOD {
            self.last_ping = Instant::now();
            proto::write_frame(&mut self.ctl, &Frame::Ping)
                .map_err(|e| LazyError::Feed(format!("ping: {e}")))?;
        }
        if self.bulk_ended && !self.rest_requested && !placer.is_done() {
            self.request_rest(placer)?;
        }
        // More queued background pages may wait: keep going without sleeping in poll.
        Ok(self.more_bulk)
    }
}

impl Drop for NetFeed {
    fn drop(&mut self) {
        // Ends the control reader's blocking read; the bulk reader ends with its stream.
        let _ = self.ctl.shutdown(std::net::Shutdown::Both);
        for r in [Some(&mut self.demand), self.bulk.as_mut()]
            .into_iter()
            .flatten()
        {
            drop(r.handle.take());
        }
    }
}
