//! `fastcr receive`: the destination side. Accept an authenticated source, take the image,
//! restore it held stopped, resume it on `Go`, then (lazy) serve its faults from the source
//! until every page is in place.

use std::io::{Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::{self, Role, SessionId, Token};
use super::feed::{NetFeed, accept_role};
use super::proto::{self, DoneStats, Frame};
use super::stream;
use super::{IMAGE_WAIT, LINK_TIMEOUT, MigrateError, TempImages, io_err, tune};
use crate::restore::{self, RestoreOptions};
use crate::stats::{LazyStats, RestoreStats};

/// Where to listen and how to restore.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// The shared token.
    pub token_file: PathBuf,
    /// Restore into a new pid namespace.
    pub pidns_new: bool,
}

/// What the destination measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReceiveStats {
    /// The restore.
    pub restore: RestoreStats,
    /// The lazy phase, if any.
    pub lazy: Option<LazyStats>,
    /// The restored root's pid here.
    pub pid_here: i32,
    /// Bytes of image received.
    pub image_bytes: u64,
    /// Page requests sent.
    pub requests: u64,
    /// Times the link was re-established.
    pub reconnects: u64,
}

impl ReceiveStats {
    /// A human table.
    pub fn table(&self) -> String {
        let mut out = self.restore.table();
        if let Some(l) = &self.lazy {
            out.push_str(&l.table());
        }
        out
    }
}

/// Accepts the first connection that authenticates as a control connection.
fn accept_control(
    listener: &TcpListener,
    token: &Token,
) -> Result<(TcpStream, SessionId), MigrateError> {
    loop {
        let (mut s, peer) = listener.accept().map_err(io_err("accept"))?;
        tune(&s)?;
        match auth::server_handshake(&mut s, token) {
            Ok((Role::Control, session)) => return Ok((s, session)),
            Ok((Role::Bulk, _)) => {
                eprintln!("fastcr: refused a bulk connection from {peer} without a migration")
            }
            // A wrong token or a stranger: say so, and wait for the real source.
            Err(e) => eprintln!("fastcr: rejected connection from {peer}: {e}"),
        }
    }
}

/// Receives the image files into `dir`; returns (lazy, bytes).
fn receive_images(ctl: &mut TcpStream, dir: &std::path::Path) -> Result<(bool, u64), MigrateError> {
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    loop {
        match proto::read_frame(ctl, &mut buf)? {
            Frame::ImageFile { name, data } => {
                let path = dir.join(name);
                std::fs::write(&path, data)
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
                bytes += data.len() as u64;
            }
            Frame::FileChunk { name, offset, data } => {
                let path = dir.join(name);
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(io_err(format!("cannot open {}", path.display())))?;
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.write_all(data))
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
                bytes += data.len() as u64;
            }
            Frame::ImagesEnd { lazy } => return Ok((lazy, bytes)),
            Frame::Failed { message } => return Err(MigrateError::Peer(message.to_string())),
            f => {
                return Err(MigrateError::Unexpected {
                    got: f.name(),
                    expected: "an image file or ImagesEnd",
                });
            }
        }
    }
}

/// Waits for the source's `Go` while the restored tree is held stopped.
fn wait_go(ctl: &mut TcpStream) -> Result<(), String> {
    proto::write_frame(ctl, &Frame::Ready).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match proto::read_frame(ctl, &mut buf) {
        Ok(Frame::Go) => Ok(()),
        Ok(Frame::Failed { message }) => Err(format!("source gave up: {message}")),
        Ok(f) => Err(format!("source sent {} instead of Go", f.name())),
        Err(e) => Err(format!("no Go from the source: {e}")),
    }
}

/// Tells the source why this side gives up (best effort) and passes the error on.
fn tell_failed(ctl: &mut TcpStream, e: MigrateError) -> MigrateError {
    let _ = proto::write_frame(
        ctl,
        &Frame::Failed {
            message: &crate::error_chain(&e),
        },
    );
    e
}

/// Receives one migration on `opts.listen`. `on_listen` is called once the socket listens.
pub fn receive(
    opts: &ReceiveOptions,
    on_listen: &mut dyn FnMut(&str),
) -> Result<ReceiveStats, MigrateError> {
    let token = auth::load_token(&opts.token_file)?;
    let listener = TcpListener::bind(&opts.listen).map_err(|source| MigrateError::Listen {
        addr: opts.listen.clone(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| opts.listen.clone(), |a| a.to_string());
    on_listen(&local);
    let (mut ctl, session) = accept_control(&listener, &token)?;
    let bulk = accept_role(
        &listener,
        &token,
        session,
        Role::Bulk,
        Instant::now() + LINK_TIMEOUT,
    );
    let bulk = bulk.map_err(|e| tell_failed(&mut ctl, e))?;
    let images = TempImages::new("receive")?;
    // The pre-copy stream comes on the bulk connection while the source still runs the
    // process, and ends before the image is sent.
    let precopy = std::thread::Builder::new()
        .name("pre-copy stream".into())
        .spawn(move || stream::receive(bulk))
        .map_err(io_err("spawn of the pre-copy reader"))?;
    // The source dumps (a stop-and-copy of a big process writes its whole memory first) before
    // the first image frame: wait longer than the link timeout for it.
    ctl.set_read_timeout(Some(IMAGE_WAIT))
        .map_err(io_err("setsockopt(SO_RCVTIMEO)"))?;
    let received = receive_images(&mut ctl, images.path());
    let (lazy, image_bytes) = received.map_err(|e| tell_failed(&mut ctl, e))?;
    let streamed = precopy
        .join()
        .map_err(|_| MigrateError::Peer("the pre-copy reader panicked".into()))
        .and_then(|r| r);
    let (mirror, bulk) = streamed.map_err(|e| tell_failed(&mut ctl, e))?;
    let parent = TempImages::new("receive-parent")?;
    stream::attach_parent(images.path(), parent.path(), mirror)
        .map_err(|e| tell_failed(&mut ctl, e))?;
    let bulk = lazy.then_some(bulk);
    let t0 = Instant::now();
    let ropts = RestoreOptions {
        dir: images.path().to_path_buf(),
        shell_job: false,
        lazy,
        pidns_new: opts.pidns_new,
    };
    let restored = restore::load(images.path()).and_then(|img| {
        let mut gate = || wait_go(&mut ctl);
        restore::restore_loaded(&img, &ropts, t0, &mut gate)
    });
    let mut r = match restored {
        Ok(r) => r,
        Err(e) => {
            let _ = proto::write_frame(
                &mut ctl,
                &Frame::Failed {
                    message: &crate::error_chain(&e),
                },
            );
            return Err(e.into());
        }
    };
    drop(images);
    drop(parent);
    let mut stats = ReceiveStats {
        restore: r.stats.clone(),
        pid_here: r.pid_here,
        image_bytes,
        ..ReceiveStats::default()
    };
    let resumed = proto::write_frame(
        &mut ctl,
        &Frame::Resumed {
            pid: r.stats.pid,
            restore_us: r.stats.restore_time_us,
        },
    );
    match (resumed, bulk) {
        (Ok(()), Some(bulk)) => {
            let ctl_w = ctl
                .try_clone()
                .map_err(io_err("dup of the control connection"))?;
            let mut feed = match NetFeed::new(ctl_w, bulk, listener, token, session) {
                Ok(f) => f,
                Err(e) => {
                    restore::abort(&mut r);
                    return Err(e);
                }
            };
            let lazy_stats = restore::finish_lazy(&mut r, &mut feed)?;
            stats.requests = feed.requests;
            stats.reconnects = feed.reconnects;
            let l = lazy_stats.clone().unwrap_or_default();
            stats.lazy = lazy_stats;
            // Every page is here: the process no longer needs the source.
            feed.finish(DoneStats {
                pages_placed: l.pages_placed,
                demand_faults: l.demand_faults,
                fault_p50_us: l.fault_p50_us,
                fault_p99_us: l.fault_p99_us,
                time_to_all_pages_us: l.time_to_all_pages_us,
            });
        }
        (Ok(()), None) => {
            if proto::write_frame(&mut ctl, &Frame::Done(DoneStats::default())).is_ok() {
                let _ = ctl.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let _ = proto::read_frame(&mut ctl, &mut buf);
            }
        }
        (Err(e), _) => {
            if lazy {
                restore::abort(&mut r);
            }
            return Err(e.into());
        }
    }
    Ok(stats)
}
