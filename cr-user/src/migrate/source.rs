//! `fastcr migrate`: the source side. Dump with the process held frozen, send the image, let
//! the destination resume (`Go`), then (lazy) serve page requests on the control connection
//! and stream every remaining page on the bulk connection, hottest first.

use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::{self, Role, SessionId, Token};
use super::proto::{self, DoneStats, Frame, MAX_DATA_LEN, ProtoError};
use super::splice::{self, Cmd, Helper};
use super::stream::BulkSink;
use super::{LINK_TIMEOUT, MigrateError, PING_PERIOD, TempImages, io_err, tune};
use crate::dump::{DumpOptions, dump_held_streaming};
use crate::image::mm::MmImage;
use crate::image::pagemap::{PE_LAZY, PagemapImage};
use crate::image::{ImageDir, Kind};
use crate::stats::{DumpStats, micros};
use crate::sys::mem;
use crate::track::precopy::Rounds;

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

/// What the migration measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateStats {
    /// Lazy or not.
    pub lazy: bool,
    /// The dump on the source (frozen_time runs until the image was complete).
    pub dump: DumpStats,
    /// Source freeze to the first instruction on the destination (estimated as the arrival of
    /// `Resumed` minus half the round-trip time).
    pub downtime_us: u64,
    /// Destination restore time, as it reported.
    pub restore_us: u64,
    /// Resume to every page in place on the destination (0 if not lazy).
    pub time_to_all_pages_us: u64,
    /// Bytes sent: image files plus pages.
    pub bytes_sent: u64,
    /// Pages sent while the process still ran (a stop-and-copy with pre-copy rounds).
    pub precopy_pages_streamed: u64,
    /// Pages sent in the background stream.
    pub bulk_pages: u64,
    /// Pages the process wrote in the window watched before a lazy migration's freeze: they
    /// are streamed right after the stack.
    pub hot_pages: u64,
    /// Page requests answered (demand faults on the destination).
    pub requests_served: u64,
    /// The destination's figures.
    pub dest: DoneStats,
    /// Background throughput, MiB/s.
    pub background_mib_s: f64,
    /// Processes whose background pages were spliced out of the original by a helper thread
    /// (the others', if any, were copied).
    pub spliced_processes: u32,
    /// Measured round-trip time of the control connection.
    pub rtt_us: u64,
}

impl MigrateStats {
    /// A human table.
    pub fn table(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let rows = [
            (
                "mode",
                if self.lazy { "lazy" } else { "stop-and-copy" }.to_string(),
            ),
            ("downtime", ms(self.downtime_us)),
            ("  frozen_dump", ms(self.dump.frozen_time_us)),
            ("  dest_restore", ms(self.restore_us)),
            ("time_to_all_pages", ms(self.time_to_all_pages_us)),
            ("bytes_sent", self.bytes_sent.to_string()),
            ("bulk_pages", self.bulk_pages.to_string()),
            ("  hot_pages (first)", self.hot_pages.to_string()),
            ("demand_faults", self.dest.demand_faults.to_string()),
            ("fault_p50", format!("{} us", self.dest.fault_p50_us)),
            ("fault_p99", format!("{} us", self.dest.fault_p99_us)),
            ("background", format!("{:.0} MiB/s", self.background_mib_s)),
            ("  spliced (processes)", self.spliced_processes.to_string()),
            ("rtt", format!("{} us", self.rtt_us)),
        ];
        let mut out = String::from("migration stats\n");
        for (k, v) in rows {
            out.push_str(&format!("  {k:<18} {v:>16}\n"));
        }
        out
    }
}

fn connect(
    to: &str,
    token: &Token,
    role: Role,
    session: SessionId,
) -> Result<TcpStream, MigrateError> {
    let cerr = |source| MigrateError::Connect {
        addr: to.to_string(),
        source,
    };
    let addr = to
        .to_socket_addrs()
        .map_err(cerr)?
        .next()
        .ok_or_else(|| cerr(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(cerr)?;
    tune(&s)?;
    auth::client_handshake(&mut s, token, role, session)?;
    Ok(s)
}

/// How long the pages the process writes are watched before a lazy migration freezes it: what
/// it wrote in that window is its hot set, streamed first.
const HOT_WINDOW: Duration = Duration::from_millis(100);

/// The pages `pid` writes during [`HOT_WINDOW`], found with the pre-copy write tracking
/// (userfaultfd write-protect, then `PAGEMAP_SCAN`) while it runs; none if tracking is not
/// possible (the stream is then ordered without them).
fn hot_pages(pid: i32) -> Vec<(u64, u64)> {
    let watch = || -> Result<Vec<(u64, u64)>, crate::track::TrackError> {
        let mut tracker = crate::track::WriteTracker::start(pid)?;
        // The first harvest reports every populated page and protects them all.
        tracker.harvest()?;
        thread::sleep(HOT_WINDOW);
        Ok(crate::track::ranges::normalize(tracker.scan()?))
    };
    watch()
        .inspect_err(|e| tracing::info!(pid, error = %e, "no hot set; streaming without one"))
        .unwrap_or_default()
}

/// What the background stream sends: the lazy VMAs' pages that exist, hottest first (the
/// stack, then what the process wrote during [`HOT_WINDOW`] before the freeze, then the rest
/// ascending), and the ranges that hold nothing.
struct BulkPlan {
    present: Vec<(u64, u64)>,
    absent: Vec<(u64, u64)>,
}

/// Finds, in the frozen process, which pages of the lazy ranges exist (a `PAGEMAP_SCAN` done
/// after the hand-over, outside the frozen window).
fn bulk_plan(
    pid: i32,
    pagemap: &PagemapImage,
    mm: &MmImage,
    hot: &[(u64, u64)],
) -> Result<BulkPlan, MigrateError> {
    let lazy: Vec<(u64, u64)> = pagemap
        .entries
        .iter()
        .filter(|e| e.flags == PE_LAZY)
        .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * 4096))
        .collect();
    let vmas: Vec<_> = mm
        .vmas
        .iter()
        .filter(|v| lazy.iter().any(|&(s, e)| s < v.end && e > v.start))
        .cloned()
        .collect();
    let sel = crate::mm::dump::select_pages(pid, &vmas)
        .map_err(|e| MigrateError::Peer(format!("page scan of process {pid}: {e}")))?;
    // A present run may cross a page the dump kept (rseq): only its lazy part counts.
    let runs: Vec<(u64, u64)> = sel
        .pagemap
        .entries
        .iter()
        .map(|e| (e.vaddr, e.vaddr + u64::from(e.nr_pages) * 4096))
        .collect();
    let present = crate::track::ranges::intersect(&crate::track::ranges::normalize(runs), &lazy);
    let absent = crate::track::ranges::subtract(&lazy, &present);
    let stack = mm
        .vmas
        .iter()
        .find(|v| v.name == "[stack]")
        .map(|v| (v.start, v.end));
    let stack: Vec<(u64, u64)> = stack.into_iter().collect();
    let first = crate::track::ranges::intersect(&present, &stack);
    let rest = crate::track::ranges::subtract(&present, &stack);
    let written = crate::track::ranges::intersect(&rest, hot);
    let mut order = first;
    order.extend_from_slice(&written);
    order.extend(crate::track::ranges::subtract(&rest, hot));
    Ok(BulkPlan {
        present: order,
        absent,
    })
}

/// Reads `len` bytes of the frozen process at `addr` into `buf`.
pub(super) fn read_pages(
    pid: i32,
    addr: u64,
    len: usize,
    buf: &mut Vec<u8>,
) -> Result<(), MigrateError> {
    buf.resize(len, 0);
    let n = mem::read_remote(pid, &[(addr, len)], buf).map_err(|e| {
        io_err(format!("read of {len} bytes at {addr:#x} in process {pid}"))(e.io_error)
    })?;
    if n != len {
        return Err(io_err(format!("short read at {addr:#x} in process {pid}"))(
            std::io::Error::from_raw_os_error(libc::EFAULT),
        ));
    }
    Ok(())
}

/// Buffers of [`MAX_DATA_LEN`] between the bulk stream's reader and sender.
const BULK_BUFFERS: usize = 3;

/// Streams the bulk plans of every process: `Absent` ranges first (they free the destination
/// from waiting on memory that never existed), then the pages, then `BulkEnd`. Returns pages
/// sent.
fn stream_bulk(plans: Vec<(i32, BulkPlan)>, mut bulk: TcpStream) -> Result<u64, MigrateError> {
    for (pid, plan) in &plans {
        for &(s, e) in &plan.absent {
            proto::write_frame(
                &mut bulk,
                &Frame::Absent {
                    pid: *pid,
                    addr: s,
                    npages: (e - s) / 4096,
                },
            )?;
        }
    }
    // Reading and sending overlap: one thread reads the frozen process into a few pooled
    // buffers, this one sends them (each is a full memory copy, and the two take turns on
    // one CPU otherwise).
    let (full_tx, full_rx) = mpsc::sync_channel::<(i32, u64, Vec<u8>)>(BULK_BUFFERS - 1);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BULK_BUFFERS {
        let _ = free_tx.send(Vec::with_capacity(MAX_DATA_LEN));
    }
    let chunk = MAX_DATA_LEN as u64;
    let reader = thread::spawn(move || -> Result<(), MigrateError> {
        for (pid, plan) in plans {
            for (start, end) in plan.present {
                let mut a = start;
                while a < end {
                    let len = (end - a).min(chunk);
                    // The sender stopped (its error is the one reported).
                    let Ok(mut buf) = free_rx.recv() else {
                        return Ok(());
                    };
                    read_pages(pid, a, len as usize, &mut buf)?;
                    if full_tx.send((pid, a, buf)).is_err() {
                        return Ok(());
                    }
                    a += len;
                }
            }
        }
        Ok(())
    });
    let mut pages = 0u64;
    let sent = (|| -> Result<(), MigrateError> {
        for (pid, addr, buf) in &full_rx {
            proto::write_pages(&mut bulk, pid, addr, &buf)?;
            pages += buf.len() as u64 / 4096;
            let _ = free_tx.send(buf);
        }
        Ok(())
    })();
    drop(full_rx);
    drop(free_tx);
    let read = reader
        .join()
        .map_err(|_| MigrateError::Peer("bulk reader panicked".into()))?;
    sent?;
    read?;
    proto::write_frame(&mut bulk, &Frame::BulkEnd { pages_sent: pages })?;
    Ok(pages)
}

/// Sends every file of the image dir, the inventory last, then `ImagesEnd`. Returns bytes.
fn send_images(
    ctl: &mut TcpStream,
    dir: &std::path::Path,
    lazy: bool,
) -> Result<u64, MigrateError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| (n == "inventory.img", n.clone()));
    let mut bytes = 0;
    let mut buf = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let mut f = std::fs::File::open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let len = f
            .metadata()
            .map_err(io_err(format!("cannot stat {}", path.display())))?
            .len();
        if len as usize <= MAX_DATA_LEN {
            buf.clear();
            f.read_to_end(&mut buf)
                .map_err(io_err(format!("cannot read {}", path.display())))?;
            proto::write_frame(
                ctl,
                &Frame::ImageFile {
                    name: &name,
                    data: &buf,
                },
            )?;
            bytes += len;
        } else {
            bytes += proto::write_file_chunks(ctl, &name, &mut f, &mut buf)?;
        }
    }
    proto::write_frame(ctl, &Frame::ImagesEnd { lazy })?;
    Ok(bytes)
}

/// Reads the next control frame, answering nothing; for the steps before `Go`.
fn expect<'b>(
    ctl: &mut TcpStream,
    buf: &'b mut Vec<u8>,
    expected: &'static str,
) -> Result<Frame<'b>, MigrateError> {
    match proto::read_frame(ctl, buf)? {
        Frame::Failed { message } => Err(MigrateError::Peer(message.to_string())),
        f if f.name() == expected => Ok(f),
        f => Err(MigrateError::Unexpected {
            got: f.name(),
            expected,
        }),
    }
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

/// The page stream helpers of a lazy migration and their pipes' read ends, by pid.
struct Streams {
    helpers: Vec<Helper>,
    pipes: HashMap<i32, OwnedFd>,
}

fn after_go(
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

/// The background stream: the plans (which pages exist, hottest first), then the pages of each
/// process, spliced from its helper's pipe when it has one, else copied (see [`stream_bulk`]).
fn stream(
    bulk: TcpStream,
    procs: &[(i32, PagemapImage, MmImage)],
    hot: &[(u64, u64)],
    helpers: &[Helper],
    pipes: HashMap<i32, OwnedFd>,
) -> Result<u64, MigrateError> {
    let mut plans = Vec::with_capacity(procs.len());
    for (i, (pid, pagemap, mm)) in procs.iter().enumerate() {
        // The hot set is the root's (the first process).
        let hot = if i == 0 { hot } else { &[] };
        plans.push((*pid, bulk_plan(*pid, pagemap, mm, hot)?));
    }
    if helpers.is_empty() {
        return stream_bulk(plans, bulk);
    }
    let abort = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    thread::scope(|scope| {
        let splicer = scope.spawn(|| splice::splicer(rx, bulk, pipes, &abort));
        let pushed = (|| {
            for (pid, plan) in &plans {
                for &(s, e) in &plan.absent {
                    let npages = (e - s) / 4096;
                    let _ = tx.send(Cmd::Absent {
                        pid: *pid,
                        addr: s,
                        npages,
                    });
                }
            }
            let mut launched = Vec::new();
            'plans: for (pid, plan) in &plans {
                let helper = helpers.iter().find(|h| h.pid() == *pid);
                let mut pieces = Vec::new();
                for &(start, end) in &plan.present {
                    let mut a = start;
                    while a < end {
                        let len = (end - a).min(MAX_DATA_LEN as u64);
                        pieces.push((a, len));
                        a += len;
                    }
                }
                // A helper feeds its pipe by itself, in this order; the splicer frames it.
                if let Some(h) = helper {
                    h.launch(&pieces)?;
                    launched.push(h);
                }
                for (addr, len) in pieces {
                    let pid = *pid;
                    let cmd = match helper {
                        Some(_) => Cmd::Spliced { pid, addr, len },
                        None => Cmd::Copied { pid, addr, len },
                    };
                    if tx.send(cmd).is_err() {
                        // The splicer ended (its error is the one reported).
                        break 'plans;
                    }
                }
            }
            // The splicer drains each pipe in turn; a helper ends when its ranges are in (or
            // its pipe was closed by a failing splicer).
            launched.into_iter().try_for_each(Helper::wait)?;
            Ok::<(), MigrateError>(())
        })();
        if pushed.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(tx);
        let spliced = splicer
            .join()
            .unwrap_or_else(|_| Err(MigrateError::Peer("bulk splicer panicked".into())));
        pushed?;
        spliced
    })
}

/// Answers page requests on `ctl` until the destination says `Done`.
fn serve_requests(
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

/// Thaws an original that also has a SIGSTOP queued: detach, then continue it. A process that
/// was already stopped by job control before the migration is left stopped, as it was.
fn thaw_stopped(frozen: crate::freeze::FrozenTree, _pid: i32) -> Result<(), MigrateError> {
    let pids: Vec<i32> = frozen
        .procs()
        .iter()
        .filter(|p| p.main().group_stop().is_none())
        .map(|p| p.main().pid())
        .collect();
    frozen.thaw()?;
    for pid in pids {
        crate::sys::process::kill(pid, libc::SIGCONT)
            .map_err(|e| io_err(format!("SIGCONT of process {pid}"))(e.io_error))?;
    }
    Ok(())
}

fn unreachable_frame() -> Result<(), MigrateError> {
    Err(MigrateError::Unexpected {
        got: "another frame",
        expected: "Resumed",
    })
}
