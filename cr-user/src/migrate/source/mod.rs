//! `fastcr migrate`: the source side. Dump with the process held frozen, send the image, let
//! the destination resume (`Go`), then (lazy) serve page requests on the control connection
//! and stream every remaining page on the bulk connection, hottest first.

mod after_go;
mod bulk;
mod handover;
mod plan;
mod serve;
mod stats;
mod thaw;

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::auth::{self, Role};
use super::proto::{self, Frame};
use super::splice::Helper;
use super::stream::BulkSink;
use super::{LINK_TIMEOUT, MigrateError, TempImages, io_err};
use crate::dump::{DumpOptions, dump_held_streaming};
use crate::image::mm::MmImage;
use crate::image::pagemap::PagemapImage;
use crate::image::{ImageDir, Kind};
use crate::stats::micros;
use crate::track::precopy::Rounds;
use after_go::{Streams, after_go};
pub(super) use bulk::read_pages;
use handover::{connect, expect, send_images};
use plan::hot_pages;
use serve::serve_requests;
pub use stats::MigrateStats;
use thaw::thaw_stopped;

/// What to migrate, where, how.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The process.
    pub pid: i32,
    /// Destination `HOST:PORT`.
    pub to: String,
    /// Resume on the destination before the memory is there.
    pub lazy: bool,
    /// Pre-copy rounds before the freeze (non-lazy).
    pub pre_copy: Option<Rounds>,
    /// The shared token.
    pub token_file: PathBuf,
    /// Do not use BPF.
    pub no_bpf: bool,
    /// Splice the lazy background stream out of the original through a helper thread instead
    /// of copying it (`process_vm_readv`, then a socket write).
    pub splice: bool,
}

/// Migrates `opts.pid` to `opts.to`.
pub fn migrate(opts: &MigrateOptions) -> Result<MigrateStats, MigrateError> {
    let pid = opts.pid;
    let token = auth::load_token(&opts.token_file)?;
    let session = auth::new_session_id()?;
    let t = Instant::now();
    let mut ctl = connect(&opts.to, &token, Role::Control, session)?;
    // The handshake is two round trips.
    let rtt_us = micros(t.elapsed()) / 2;
    // Always made (the destination pairs it before it knows the mode). It carries the
    // pre-copy stream first (empty unless a stop-and-copy pre-copies), then, if lazy, the pages
    // after the resume.
    let bulk = connect(&opts.to, &token, Role::Bulk, session)?;
    let mut sink = BulkSink { bulk, pages: 0 };
    let images = TempImages::new("migrate")?;
    let dopts = DumpOptions {
        pid,
        dir: images.path().to_path_buf(),
        leave_running: false,
        shell_job: false,
        pre_copy: if opts.lazy { None } else { opts.pre_copy },
        no_bpf: opts.no_bpf,
        no_wp_async: false,
        full_final_scan: false,
        verify_final_scan: false,
        prev_images_dir: None,
        track_mem: false,
        lazy_pages: opts.lazy,
        tcp_established: false,
    };
    if opts.lazy && opts.pre_copy.is_some() {
        return Err(MigrateError::Dump(crate::dump::DumpError::Unsupported {
            pid,
            what: "--lazy with --pre-copy is not supported yet: lazy migration sends the memory after the resume".into(),
        }));
    }
    let hot = if opts.lazy {
        hot_pages(pid)
    } else {
        Vec::new()
    };
    let stats_hot_pages = crate::track::pages_in(&hot);
    let streaming = dopts.pre_copy.is_some();
    let (dump_stats, frozen) = dump_held_streaming(&dopts, streaming.then_some(&mut sink))?;
    let t_frozen = Instant::now() - Duration::from_micros(dump_stats.frozen_time_us);
    let mut stats = MigrateStats {
        lazy: opts.lazy,
        dump: dump_stats,
        hot_pages: stats_hot_pages,
        rtt_us,
        ..MigrateStats::default()
    };
    let mut bulk = None;
    let mut helpers: Vec<Helper> = Vec::new();
    let mut pipes = HashMap::new();
    // Until `Go` is sent, any failure thaws the original.
    let handover = (|| -> Result<(), MigrateError> {
        let (b, streamed) = sink.end()?;
        bulk = opts.lazy.then_some(b);
        stats.precopy_pages_streamed = streamed;
        stats.bytes_sent = streamed * proto::PAGE_SIZE as u64;
        stats.bytes_sent += send_images(&mut ctl, images.path(), opts.lazy)?;
        // While the destination restores: the helpers that stream the pages without copies.
        if opts.lazy && opts.splice {
            for p in frozen.procs() {
                match Helper::start(p.main()) {
                    Ok((h, pipe)) => {
                        pipes.insert(p.main().pid(), pipe);
                        helpers.push(h);
                    }
                    Err(e) => tracing::info!(
                        error = %crate::error_chain(&e),
                        "pages are copied, not spliced"
                    ),
                }
            }
        }
        // The destination restores (a stop-and-copy image holds all the memory) before Ready.
        ctl.set_read_timeout(Some(super::IMAGE_WAIT))
            .map_err(io_err("setsockopt(SO_RCVTIMEO)"))?;
        let mut buf = Vec::new();
        expect(&mut ctl, &mut buf, "Ready")?;
        Ok(())
    })();
    if let Err(e) = handover {
        helpers.into_iter().for_each(Helper::end);
        frozen.thaw()?;
        return Err(MigrateError::Thawed {
            pid,
            why: crate::error_chain(&e),
        });
    }
    let dir = ImageDir::open(images.path()).map_err(|e| MigrateError::Peer(e.to_string()))?;
    let mut procs = Vec::new();
    for p in frozen.pids() {
        let pagemap: PagemapImage = dir
            .read(Kind::Pagemap, p)
            .map_err(|e| MigrateError::Peer(e.to_string()))?;
        let mm: MmImage = dir
            .read(Kind::Mm, p)
            .map_err(|e| MigrateError::Peer(e.to_string()))?;
        procs.push((p, pagemap, mm));
    }
    let pids = frozen.pids();
    drop(images);
    // Should this fastcr die from here on, the original must not run on beside the copy: a
    // queued SIGSTOP keeps it stopped once ptrace lets go of it. Each of its threads gets one
    // of its own, so that injections into a page stream helper never take it.
    for p in frozen.procs() {
        let pid = p.main().pid();
        for tid in p.tids() {
            crate::sys::process::tgkill(pid, tid, libc::SIGSTOP).map_err(|e| {
                io_err(format!("SIGSTOP of thread {tid} of process {pid}"))(e.io_error)
            })?;
        }
    }
    if let Err(e) = proto::write_frame(&mut ctl, &Frame::Go) {
        helpers.into_iter().for_each(Helper::end);
        thaw_stopped(frozen, pid)?;
        return Err(MigrateError::Thawed {
            pid,
            why: crate::error_chain(&e),
        });
    }
    // Committed: the destination runs the process from here on.
    stats.spliced_processes = helpers.len() as u32;
    let streams = Streams { helpers, pipes };
    let mut outcome = after_go(&mut ctl, bulk, procs, hot, streams, &mut stats, t_frozen);
    let mut lost_at = Instant::now();
    // A lost link may come back: reconnect (same session) while the destination still waits
    // for us, and answer its requests for whatever it still misses.
    while let Err(MigrateError::Proto(_) | MigrateError::Io { .. }) = &outcome {
        if lost_at.elapsed() + Duration::from_secs(1) >= LINK_TIMEOUT {
            break;
        }
        thread::sleep(Duration::from_millis(200));
        let again = connect(&opts.to, &token, Role::Control, session).and_then(|c| {
            let mut b = connect(&opts.to, &token, Role::Bulk, session)?;
            proto::write_frame(&mut b, &Frame::BulkEnd { pages_sent: 0 })?;
            Ok((c, b))
        });
        if let Ok((c, b)) = again {
            tracing::warn!(pid, "reconnected to the destination");
            ctl = c;
            outcome = serve_requests(&mut ctl, &pids, &mut stats).map(|done| {
                stats.dest = done;
                stats.time_to_all_pages_us = done.time_to_all_pages_us;
            });
            drop(b);
            lost_at = Instant::now();
        }
    }
    match outcome {
        Ok(()) => {
            frozen.kill()?;
            let _ = proto::write_frame(&mut ctl, &Frame::Bye);
            Ok(stats)
        }
        Err(e) => {
            // The destination kills its copy after LINK_TIMEOUT without us; wait longer than
            // that before the original runs again, so two copies never run.
            let wait = (LINK_TIMEOUT + Duration::from_secs(2)).saturating_sub(lost_at.elapsed());
            thread::sleep(wait);
            thaw_stopped(frozen, pid)?;
            Err(MigrateError::LostAfterResume {
                pid,
                why: crate::error_chain(&e),
                timeout_s: LINK_TIMEOUT.as_secs(),
            })
        }
    }
}
