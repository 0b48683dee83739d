//! The page-request server: answers the destination's demand faults on the control connection
//! and keeps the link alive with pings. Only the migrated processes' memory is read.

use std::net::TcpStream;
use std::time::Instant;

use super::MigrateStats;
use super::bulk::read_pages;
use crate::migrate::proto::{self, DoneStats, Frame, MAX_DATA_LEN, ProtoError};
use crate::migrate::{LINK_TIMEOUT, MigrateError, PING_PERIOD, io_err};

/// Answers page requests on `ctl` until the destination says `Done`.
pub(super) fn serve_requests(
    ctl: &mut TcpStream,
    pids: &[i32],
    stats: &mut MigrateStats,
) -> Result<DoneStats, MigrateError> {
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(MAX_DATA_LEN);
    ctl.set_read_timeout(Some(PING_PERIOD))
        .map_err(io_err("setsockopt(SO_RCVTIMEO)"))?;
    let mut last_heard = Instant::now();
    loop {
        match proto::read_frame(ctl, &mut buf) {
            Ok(Frame::PageRequest { pid, addr, npages }) => {
                // Only the migrated processes' memory is ever read for the peer.
                if !pids.contains(&pid) {
                    return Err(MigrateError::Peer(format!(
                        "destination asked for pages of process {pid}, which is not migrated"
                    )));
                }
                read_pages(pid, addr, npages as usize * 4096, &mut out)?;
                proto::write_pages(ctl, pid, addr, &out)?;
                stats.requests_served += 1;
                stats.bytes_sent += out.len() as u64;
            }
            Ok(Frame::Done(d)) => return Ok(d),
            Ok(Frame::Ping) => proto::write_frame(ctl, &Frame::Pong)?,
            Ok(Frame::Pong) => {}
            Ok(Frame::Failed { message }) => return Err(MigrateError::Peer(message.to_string())),
            Ok(f) => {
                return Err(MigrateError::Unexpected {
                    got: f.name(),
                    expected: "PageRequest or Done",
                });
            }
            Err(ProtoError::TimedOut) => {
                // Quiet for a ping period: say we are alive; the peer's pings keep us sure
                // of it (a silence of LINK_TIMEOUT is a lost link).
                if last_heard.elapsed() >= LINK_TIMEOUT {
                    return Err(ProtoError::Io {
                        op: "waiting for the destination",
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    }
                    .into());
                }
                proto::write_frame(ctl, &Frame::Ping)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        last_heard = Instant::now();
    }
}
