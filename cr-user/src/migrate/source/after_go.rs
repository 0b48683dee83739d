//! What the source does once the destination runs the process: wait for `Resumed`, then serve
//! page requests and stream the remaining pages side by side until `Done`. It must not thaw
//! or kill the original: `migrate` decides that from the outcome.

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::thread;
use std::time::Instant;

use super::MigrateStats;
use super::bulk::stream;
use super::handover::expect;
use super::serve::serve_requests;
use crate::image::mm::MmImage;
use crate::image::pagemap::PagemapImage;
use crate::migrate::MigrateError;
use crate::migrate::proto::Frame;
use crate::migrate::splice::Helper;
use crate::stats::micros;

/// The page stream helpers of a lazy migration and their pipes' read ends, by pid.
pub(super) struct Streams {
    pub(super) helpers: Vec<Helper>,
    pub(super) pipes: HashMap<i32, OwnedFd>,
}

pub(super) fn after_go(
    ctl: &mut TcpStream,
    bulk: Option<TcpStream>,
    procs: Vec<(i32, PagemapImage, MmImage)>,
    hot: Vec<(u64, u64)>,
    streams: Streams,
    stats: &mut MigrateStats,
    t_frozen: Instant,
) -> Result<(), MigrateError> {
    let pids: Vec<i32> = procs.iter().map(|p| p.0).collect();
    let mut buf = Vec::new();
    match expect(ctl, &mut buf, "Resumed")? {
        Frame::Resumed { restore_us, .. } => {
            stats.restore_us = restore_us;
            stats.downtime_us = micros(t_frozen.elapsed()).saturating_sub(stats.rtt_us / 2);
        }
        _ => unreachable_frame()?,
    }
    let Streams { helpers, pipes } = streams;
    // Demand requests are answered on a thread of their own from the start; this thread
    // (the original's tracer, so the one that can drive the helpers) streams.
    let mut served = MigrateStats::default();
    let (done, streamed) = thread::scope(|scope| {
        let server = scope.spawn(|| serve_requests(ctl, &pids, &mut served));
        let streamed = bulk.map(|b| {
            let t = Instant::now();
            let sent = stream(b, &procs, &hot, &helpers, pipes);
            helpers.into_iter().for_each(Helper::end);
            sent.map(|pages| (pages, t.elapsed()))
        });
        let done = server
            .join()
            .unwrap_or_else(|_| Err(MigrateError::Peer("page server panicked".into())));
        (done, streamed)
    });
    stats.requests_served += served.requests_served;
    stats.bytes_sent += served.bytes_sent;
    let done = done?;
    stats.dest = done;
    stats.time_to_all_pages_us = if stats.lazy {
        done.time_to_all_pages_us
    } else {
        0
    };
    if let Some(streamed) = streamed {
        let (pages, took) = streamed?;
        stats.bulk_pages = pages;
        stats.bytes_sent += pages * 4096;
        let secs = took.as_secs_f64();
        if secs > 0.0 {
            stats.background_mib_s = pages as f64 * 4096.0 / (1 << 20) as f64 / secs;
        }
    }
    Ok(())
}

fn unreachable_frame() -> Result<(), MigrateError> {
    Err(MigrateError::Unexpected {
        got: "another frame",
        expected: "Resumed",
    })
}
