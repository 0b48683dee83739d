//! Lazy restore: the restored process runs before its memory is in place. Its private
//! anonymous VMAs are registered MISSING on a userfaultfd created inside it (see
//! [`register`]); a single handler thread owns every userfaultfd (one per address space: the
//! restored process and any child it forks meanwhile), serves demand faults first and fills
//! the rest in the background from a [`Feed`] (the image, or a migration source).
//!
//! One thread reads the events and places the pages, so an event (munmap, mremap,
//! MADV_DONTNEED, fork) is always applied to the pending set before the next placement: a
//! placement racing an event gets `EAGAIN` from the kernel, the events are read, and the
//! placement is retried against the updated set. Nothing stale is ever copied into a range the
//! process dropped.

pub mod local;
pub mod pageset;
pub mod register;
pub mod stragglers;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::mm::MmError;
use crate::stats::{LazyStats, micros};
use crate::sys::uffd;
use crate::sys::uffd_lazy::{self, Event, PAGEFAULT_FLAG_WRITE, Placed};
use crate::sys::{PAGE_SIZE, SyscallError};
use crate::track::ranges;
pub use pageset::PageSet;
pub use stragglers::Stragglers;

/// Why lazy restore failed. The restored tree is killed by the caller.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// A userfaultfd call failed.
    #[error("{step} failed during lazy restore of process {pid}")]
    Uffd {
        /// The restored process.
        pid: i32,
        /// What was done.
        step: &'static str,
        /// The call.
        #[source]
        source: SyscallError,
    },
    /// The image could not give a page.
    #[error(transparent)]
    Mm(#[from] MmError),
    /// The page source (a migration peer) failed.
    #[error("page source failed: {0}")]
    Feed(String),
    /// The source has nothing for a page the process still needs.
    #[error("no page at {addr:#x} in the image, but the restored process needs it")]
    Missing {
        /// The source address.
        addr: u64,
    },
}

/// One restored address space.
pub struct Space {
    /// The process (pid in the image) whose pages it holds; a child forked during the lazy
    /// phase holds its parent's.
    pid: i32,
    uffd: OwnedFd,
    pending: PageSet,
    /// The ranges registered on `uffd`, kept up to date with mremap and munmap.
    registered: Vec<(u64, u64)>,
    /// Still in use: false once its process is gone.
    live: bool,
}

impl Space {
    /// A space of process `pid` whose `registered` ranges are registered MISSING on `uffd`, with
    /// `pending` pages still missing.
    pub fn new(pid: i32, uffd: OwnedFd, pending: PageSet, registered: Vec<(u64, u64)>) -> Self {
        Self {
            pid,
            uffd,
            pending,
            registered,
            live: true,
        }
    }
}

struct Fault {
    space: usize,
    addr: u64,
    flags: u64,
    at: Instant,
}

/// The pending pages of every restored address space, and the placing of pages into them.
pub struct Placer {
    pid: i32,
    spaces: Vec<Space>,
    faults: VecDeque<Fault>,
    /// Source pages fetched for a fault and not yet placed, with when the first fault came.
    waiting: HashMap<(i32, u64), Instant>,
    latencies_us: Vec<u64>,
    stats: LazyStats,
    zero: Vec<u8>,
}

impl Placer {
    /// A placer for the spaces of the restored processes, the root's first (its pid names the
    /// restore in error messages).
    pub fn new(spaces: Vec<Space>) -> Self {
        let lazy_pages = spaces.iter().map(|s| s.pending.bytes()).sum::<u64>() / PAGE_SIZE;
        Self {
            pid: spaces.first().map_or(0, |s| s.pid),
            spaces,
            faults: VecDeque::new(),
            waiting: HashMap::new(),
            latencies_us: Vec::new(),
            stats: LazyStats {
                lazy_pages,
                ..LazyStats::default()
            },
            zero: vec![0; PAGE_SIZE as usize],
        }
    }

    fn err(&self, step: &'static str) -> impl FnOnce(SyscallError) -> LazyError {
        let pid = self.pid;
        move |source| LazyError::Uffd { pid, step, source }
    }

    /// Whether every space has all its pages.
    pub fn is_done(&self) -> bool {
        self.spaces.iter().all(|s| !s.live || s.pending.is_empty())
    }

    /// Bytes still missing, over all spaces.
    pub fn pending_bytes(&self) -> u64 {
        self.spaces
            .iter()
            .filter(|s| s.live)
            .map(|s| s.pending.bytes())
            .sum()
    }

    /// The next pending source range at or after `from` in the first space that has one, as
    /// (pid, source start, length); wraps around to the lowest.
    pub fn next_pending(&self, from: u64) -> Option<(i32, u64, u64)> {
        let s = self
            .spaces
            .iter()
            .find(|s| s.live && !s.pending.is_empty())?;
        let (start, end, src) = s
            .pending
            .next_from(from)
            .or_else(|| s.pending.next_from(0))?;
        Some((s.pid, src, end - start))
    }

    /// Every pending range of every space, as (pid, source start, length).
    pub fn all_pending(&self) -> Vec<(i32, u64, u64)> {
        self.spaces
            .iter()
            .filter(|s| s.live)
            .flat_map(|s| {
                s.pending
                    .iter_sources()
                    .map(move |(src, len)| (s.pid, src, len))
            })
            .collect()
    }

    /// Places `data` (whole pages whose content is at source address `src` of process `pid`)
    /// wherever a space still misses them. Pages already there or dropped are skipped.
    pub fn place(&mut self, pid: i32, src: u64, data: &[u8]) -> Result<(), LazyError> {
        let len = data.len() as u64;
        for i in 0..self.spaces.len() {
            if !self.spaces[i].live || self.spaces[i].pid != pid {
                continue;
            }
            loop {
                let pieces = self.spaces[i].pending.by_source(src, len);
                let Some(&(start, end, from)) = pieces.first() else {
                    break;
                };
                let off = (from - src) as usize;
                let bytes = &data[off..off + (end - start) as usize];
                let res = uffd_lazy::copy(self.spaces[i].uffd.as_fd(), start, bytes)
                    .map_err(self.err("UFFDIO_COPY"))?;
                let done = match res {
                    Placed::All => end - start,
                    Placed::Exists(n) => n + PAGE_SIZE,
                    Placed::Again(n) => n,
                    Placed::Gone => end - start,
                };
                let done = done.min(end - start);
                self.spaces[i].pending.remove(start, start + done);
                if matches!(res, Placed::All | Placed::Exists(_)) {
                    self.stats.pages_placed += done / PAGE_SIZE;
                }
                self.note_placed(pid, from, done);
                if matches!(res, Placed::Again(_)) {
                    self.read_events(i)?;
                }
            }
        }
        Ok(())
    }

    /// The source says the pages from `src` for `len` bytes never existed: wherever they are
    /// still pending they are dropped (a later fault there gets zeros), and any thread waiting
    /// on one of them retries its fault.
    pub fn absent(&mut self, pid: i32, src: u64, len: u64) -> Result<(), LazyError> {
        for i in 0..self.spaces.len() {
            if !self.spaces[i].live || self.spaces[i].pid != pid {
                continue;
            }
            for (start, end, _) in self.spaces[i].pending.by_source(src, len) {
                self.spaces[i].pending.remove(start, end);
                self.wake(i, start, end - start)?;
            }
        }
        let mut a = src;
        while a < src + len && !self.waiting.is_empty() {
            self.waiting.remove(&(pid, a));
            a += PAGE_SIZE;
        }
        Ok(())
    }

    fn note_placed(&mut self, pid: i32, src: u64, len: u64) {
        if self.waiting.is_empty() {
            return;
        }
        let mut a = src;
        while a < src + len {
            if let Some(t) = self.waiting.remove(&(pid, a)) {
                self.latencies_us.push(micros(t.elapsed()));
            }
            a += PAGE_SIZE;
        }
    }

    /// Reads every queued event of space `i`: layout changes are applied at once, faults are
    /// queued for the main loop.
    fn read_events(&mut self, i: usize) -> Result<(), LazyError> {
        loop {
            let ev = match uffd_lazy::read_event(self.spaces[i].uffd.as_fd()) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) if e.errno() == Some(libc::ESRCH) => {
                    self.spaces[i].live = false;
                    return Ok(());
                }
                Err(e) => return Err(self.err("read of a userfaultfd event")(e)),
            };
            match ev {
                Event::PageFault { addr, flags } => self.faults.push_back(Fault {
                    space: i,
                    addr: addr & !(PAGE_SIZE - 1),
                    flags,
                    at: Instant::now(),
                }),
                Event::Fork { uffd } => {
                    // The child's memory is the parent's at this instant: what the parent
                    // still misses, the child misses too.
                    let pending = self.spaces[i].pending.clone();
                    let pid = self.spaces[i].pid;
                    let registered = self.spaces[i].registered.clone();
                    self.spaces.push(Space::new(pid, uffd, pending, registered));
                    self.stats.forks += 1;
                }
                Event::Remap { from, to, len } => {
                    self.spaces[i].pending.relocate(from, to, len);
                    let r = &mut self.spaces[i].registered;
                    let moved = ranges::intersect(r, &[(from, from + len)]);
                    *r = ranges::subtract(r, &[(from, from + len)]);
                    r.extend(moved.iter().map(|&(s, e)| (s - from + to, e - from + to)));
                    *r = ranges::normalize(std::mem::take(r));
                    self.wake(i, from, len)?;
                    self.stats.layout_events += 1;
                }
                Event::Unmap { start, end } => {
                    self.spaces[i].pending.remove(start, end);
                    let r = &mut self.spaces[i].registered;
                    *r = ranges::subtract(r, &[(start, end)]);
                    self.wake(i, start, end - start)?;
                    self.stats.layout_events += 1;
                }
                Event::Remove { start, end } => {
                    self.spaces[i].pending.remove(start, end);
                    // A thread waiting on a page here retries its fault: it now gets zeros
                    // (or SIGSEGV), never the old content.
                    self.wake(i, start, end - start)?;
                    self.stats.layout_events += 1;
                }
            }
        }
    }

    /// Once every page is in: unregisters every range of every space, so the processes never
    /// wait on this userfaultfd again (their kept copy included), then reads what was already
    /// queued (a fork or munmap caught just before, whose caller waits for it to be read).
    fn unregister_all(&mut self) -> Result<(), LazyError> {
        let mut done = 0;
        // A fork read below adds a space; it is unregistered in the next pass.
        while done < self.spaces.len() {
            let upto = self.spaces.len();
            for s in &self.spaces[done..upto] {
                if !s.live {
                    continue;
                }
                for &(start, end) in &s.registered {
                    // A range the process has changed in ways not reported (nothing is left to
                    // unregister there) is no error.
                    if let Err(e) = uffd::unregister(s.uffd.as_fd(), start, end - start) {
                        tracing::debug!(start, end, error = %e, "unregister");
                    }
                }
            }
            done = upto;
            self.read_all_events()?;
        }
        self.faults.clear();
        Ok(())
    }

    fn wake(&self, i: usize, start: u64, len: u64) -> Result<(), LazyError> {
        uffd_lazy::wake(self.spaces[i].uffd.as_fd(), start, len).map_err(self.err("UFFDIO_WAKE"))
    }

    /// Reads the events of every space.
    fn read_all_events(&mut self) -> Result<(), LazyError> {
        for i in 0..self.spaces.len() {
            if self.spaces[i].live {
                self.read_events(i)?;
            }
        }
        Ok(())
    }

    /// Answers a fault on a page that is not pending (never in the image, or dropped since)
    /// with zeros, as the kernel would without userfaultfd.
    fn zero_fill(&mut self, f: &Fault) -> Result<(), LazyError> {
        let fd = self.spaces[f.space].uffd.as_fd();
        let res = if f.flags & PAGEFAULT_FLAG_WRITE != 0 {
            uffd_lazy::copy(fd, f.addr, &self.zero)
        } else {
            uffd_lazy::zeropage(fd, f.addr, PAGE_SIZE)
        }
        .map_err(self.err("zero fill"))?;
        self.stats.zero_faults += 1;
        match res {
            // Already there or racing a layout change: wake the thread so it retries.
            Placed::Exists(_) | Placed::Again(_) => self.wake(f.space, f.addr, PAGE_SIZE),
            Placed::All | Placed::Gone => Ok(()),
        }
    }

    /// The figures, and the userfaultfds of the spaces still live (for [`Stragglers`]).
    fn finish(mut self, t0: Instant) -> (LazyStats, Vec<OwnedFd>) {
        self.latencies_us.sort_unstable();
        let pct = |p: usize| {
            self.latencies_us
                .get((self.latencies_us.len().saturating_sub(1)) * p / 100)
                .copied()
                .unwrap_or(0)
        };
        self.stats.fault_p50_us = pct(50);
        self.stats.fault_p99_us = pct(99);
        self.stats.time_to_all_pages_us = micros(t0.elapsed());
        let live = self
            .spaces
            .into_iter()
            .filter(|s| s.live)
            .map(|s| s.uffd)
            .collect();
        (self.stats, live)
    }
}

/// Where the pages come from.
pub trait Feed {
    /// A descriptor that becomes readable when [`Feed::arrivals`] has work (remote feeds).
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// A fault needs source page `src`: place it now (local) or ask for it (remote).
    fn demand(&mut self, pid: i32, src: u64, placer: &mut Placer) -> Result<(), LazyError>;

    /// Places what has arrived, answers to demands first.
    fn arrivals(&mut self, _placer: &mut Placer) -> Result<(), LazyError> {
        Ok(())
    }

    /// One step of background filling; false when there is nothing to do until something
    /// arrives.
    fn background(&mut self, placer: &mut Placer) -> Result<bool, LazyError>;
}

/// Serves faults and fills pages until every space has all its pages (or its process is
/// gone), then unregisters every range. The returned [`Stragglers`] reads late events until
/// it is dropped, which the caller does once the processes are released.
pub fn serve(
    mut placer: Placer,
    feed: &mut dyn Feed,
) -> Result<(LazyStats, Stragglers), LazyError> {
    let t0 = Instant::now();
    loop {
        placer.read_all_events()?;
        while let Some(f) = placer.faults.pop_front() {
            if !placer.spaces[f.space].live {
                continue;
            }
            match placer.spaces[f.space].pending.source_of(f.addr) {
                Some(src) => {
                    placer.stats.demand_faults += 1;
                    let pid = placer.spaces[f.space].pid;
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        placer.waiting.entry((pid, src))
                    {
                        e.insert(f.at);
                        feed.demand(pid, src, &mut placer)?;
                    }
                }
                None => placer.zero_fill(&f)?,
            }
        }
        feed.arrivals(&mut placer)?;
        if placer.is_done() {
            break;
        }
        let worked = feed.background(&mut placer)?;
        if placer.is_done() {
            break;
        }
        if !worked || !placer.faults.is_empty() {
            let fds: Vec<BorrowedFd<'_>> = placer
                .spaces
                .iter()
                .filter(|s| s.live)
                .map(|s| s.uffd.as_fd())
                .chain(feed.wake_fd())
                .collect();
            let timeout = if worked { 0 } else { 100 };
            uffd_lazy::poll_readable(&fds, timeout).map_err(placer.err("poll"))?;
        }
    }
    placer.unregister_all()?;
    let (stats, live) = placer.finish(t0);
    Ok((stats, Stragglers::start(live)))
}
