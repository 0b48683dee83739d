//! The background stream on the bulk connection: the pages of the frozen processes, read
//! (copied) or spliced out of them in the order of their bulk plans. It must not answer page
//! requests: those are served on the control connection (`serve`).

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use super::plan::{BulkPlan, bulk_plan};
use crate::image::mm::MmImage;
use crate::image::pagemap::PagemapImage;
use crate::migrate::proto::{self, Frame, MAX_DATA_LEN};
use crate::migrate::splice::{self, Cmd, Helper};
use crate::migrate::{MigrateError, io_err};
use crate::sys::mem;

/// Reads `len` bytes of the frozen process at `addr` into `buf`.
pub(in crate::migrate) fn read_pages(
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

/// The background stream: the plans (which pages exist, hottest first), then the pages of each
/// process, spliced from its helper's pipe when it has one, else copied (see [`stream_bulk`]).
pub(super) fn stream(
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
