//! BPF write-fault hints against PAGEMAP_SCAN, channel by channel (DESIGN §5).
//!
//! `wl_writer` writes into an untouched 64 MiB region only when told to, through one channel at a
//! time. The region is tracked twice: by [`WriteTracker`] (uffd async write-protect + PAGEMAP_SCAN,
//! the authority) and by [`TaskTracker`]'s fault hints. After each command the test drains the
//! hints, then harvests the scan (in that order, so a write racing with the two reads can only
//! make the scan larger, never the hints), and checks, within the region:
//! - (a) every hinted page is in the scanned set (hints ⊆ scan);
//! - (b) every page the command wrote is in the scanned set (the scan misses nothing);
//! - (c) for the channels that trap in the writer's context (user stores, stores from two
//!   threads, `read()` into the pages = `copy_to_user`), the hints are exactly those pages;
//! - (d) a written page the hints missed is seen by a guard of the hinted final scan: someone
//!   other than fastcr took the workload's mmap lock, or a VMA event came.
//!
//! The channels BPF is not expected to see (`process_vm_writev` and `/proc/PID/mem` done by a
//! child of this test, O_DIRECT reads, `FUTEX_WAKE_OP`, `MADV_DONTNEED`) are checked with (a) and (b) only; the
//! test prints, per channel, whether BPF saw it or only the scan did. The `madvise` calls must
//! also come through as VMA events. At the end the workload verifies every page's content (the
//! external writes included) and the hint map must not have dropped anything.
//!
//! Measured on 6.18: `FUTEX_WAKE_OP` on a write-protected page *is* hinted (the kernel's atomic op
//! faults with the write bit before falling back to GUP fault-in, and `page_fault_kernel` fires
//! for that first attempt); the GUP writers, O_DIRECT and `MADV_DONTNEED` are seen by the scan
//! only. A THP populated before tracking is split by the first write-protect fault, after which
//! every 4 KiB store is hinted.
//!
//! A second test checks the VMA events of each syscall (arguments, result, a failed call).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::FileExt as _,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use cr_user::{
    bpf::{MmActivity, TaskTracker, VmaChange, VmaEvent},
    track::WriteTracker,
};
use vmtests::{ProcStat, Workload, require_root};

const PAGE: u64 = 4096;
/// Pages of the 2 MiB part `thp-store` writes.
const THP_PAGES: u64 = 512;
/// Hang guard for one command, not a timing assertion.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// `MADV_DONTNEED` and `MADV_HUGEPAGE` from `<sys/mman.h>`.
const MADV_DONTNEED: i32 = 4;
const MADV_HUGEPAGE: i32 = 14;

/// What `wl_writer` publishes in STATEDIR/region.
struct Region {
    start: u64,
    pages: u64,
    thp_first: u64,
}

impl Region {
    fn read(statedir: &Path) -> Self {
        let text = fs::read_to_string(statedir.join("region")).expect("read region");
        let mut it = text.split_whitespace();
        let start = u64::from_str_radix(it.next().expect("start"), 16).expect("start hex");
        let pages = it.next().expect("pages").parse().expect("pages");
        let thp_first = it.next().expect("thp_first").parse().expect("thp_first");
        Self {
            start,
            pages,
            thp_first,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.pages * PAGE
    }

    fn addr(&self, page: u64) -> u64 {
        assert!(page < self.pages);
        self.start + page * PAGE
    }

    /// Region page indexes covered by `[start, end)` ranges.
    fn pages_in(&self, ranges: &[(u64, u64)]) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for &(s, e) in ranges {
            let s = s.max(self.start);
            let e = e.min(self.end());
            let mut a = s & !(PAGE - 1);
            while a < e {
                out.insert((a - self.start) / PAGE);
                a += PAGE;
            }
        }
        out
    }
}

/// What one command produced.
struct Round {
    /// `done` line after the sequence number ("ok", "ok thp_kb=N", "skipped: ...").
    reply: String,
    /// Region pages the scan reported.
    scanned: BTreeSet<u64>,
    /// Region pages BPF hinted.
    hinted: BTreeSet<u64>,
    /// Hints outside the region (the workload's own loop: stack, libc buffers).
    hinted_elsewhere: usize,
    /// VMA events of the workload.
    vma: Vec<VmaEvent>,
    /// Someone other than this test's fastcr library took or held the workload's mmap lock
    /// during the command (the guard of a hinted final scan).
    locked: bool,
}

struct Harness {
    wl: Workload,
    region: Region,
    scan: WriteTracker,
    bpf: TaskTracker,
    seq: u64,
    /// The lock activity read before an external write that the next round checks.
    mark: Option<MmActivity>,
}

impl Harness {
    fn pid(&self) -> i32 {
        self.wl.pid()
    }

    /// Reads the lock activity now: the next round's guard covers what happens from here.
    fn mark(&mut self) {
        self.mark = self.bpf.mm_activity(self.wl.pid()).expect("mm_activity");
    }

    fn tgid(&self) -> u32 {
        self.wl.pid().cast_unsigned()
    }

    /// Sends one command, waits for its `done`, then drains the hints and harvests the scan.
    fn round(&mut self, verb: &str, pages: &[u64]) -> Round {
        self.seq += 1;
        let activity = || {
            self.bpf
                .mm_activity(self.wl.pid())
                .expect("mm_activity")
                .expect("the workload's mm is watched")
        };
        let before = self.mark.take().unwrap_or_else(activity);
        let reply = command(&self.wl, self.seq, verb, pages);
        let after = activity();
        let locked = after.events != before.events || after.held;

        // Hints first, scan second: see the module doc.
        let hints = self.bpf.drain_dirty().expect("drain_dirty");
        let ranges = self.scan.harvest().expect("harvest");
        let vma = self
            .bpf
            .drain_vma_events()
            .expect("drain_vma_events")
            .into_iter()
            .filter(|e| e.tgid == self.tgid())
            .collect();
        let mut hinted = BTreeSet::new();
        let mut hinted_elsewhere = 0;
        for h in hints.iter().filter(|h| h.tgid == self.tgid()) {
            assert!(h.writes >= 1, "{h:?}");
            if (self.region.start..self.region.end()).contains(&h.page) {
                hinted.insert((h.page - self.region.start) / PAGE);
            } else {
                hinted_elsewhere += 1;
            }
        }
        Round {
            reply,
            scanned: self.region.pages_in(&ranges),
            hinted,
            hinted_elsewhere,
            vma,
            locked,
        }
    }
}

/// Sends command `seq` to `wl_writer` and waits for its reply (the `done` line after the
/// sequence number); panics on an error reply.
fn command(wl: &Workload, seq: u64, verb: &str, pages: &[u64]) -> String {
    let dir = wl.statedir().to_path_buf();
    let list: Vec<String> = pages.iter().map(u64::to_string).collect();
    let line = format!("{seq} {verb} {}\n", list.join(" "));
    let _ = fs::remove_file(dir.join("done"));
    fs::write(dir.join("cmd.tmp"), &line).expect("write cmd");
    fs::rename(dir.join("cmd.tmp"), dir.join("cmd")).expect("rename cmd");
    let stat = ProcStat::read(wl.pid()).expect("wl_writer is gone");
    assert_eq!(stat.ppid, i32::try_from(std::process::id()).expect("pid"));
    // SAFETY: plain integers; the pid is our unreaped child (checked just above).
    let rc = unsafe { libc::kill(wl.pid(), libc::SIGUSR1) };
    assert_eq!(rc, 0, "kill SIGUSR1: {}", std::io::Error::last_os_error());

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let reply = loop {
        if let Ok(text) = fs::read_to_string(dir.join("done"))
            && let Some(rest) = text.trim_end().strip_prefix(&format!("{seq} "))
        {
            break rest.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{verb}: no reply within {COMMAND_TIMEOUT:?}; log: {}",
            wl.log()
        );
        sleep(Duration::from_millis(5));
    };
    assert!(
        reply.starts_with("ok") || reply.starts_with("skipped:"),
        "{verb}: {reply}"
    );

    reply
}

/// One line of the summary.
struct Seen {
    channel: &'static str,
    written: usize,
    scanned: usize,
    hinted: usize,
    note: String,
}

/// Checks (a) and (b); returns the summary line.
fn check(channel: &'static str, r: &Round, written: &BTreeSet<u64>) -> Seen {
    let not_scanned: Vec<_> = r.hinted.difference(&r.scanned).collect();
    assert!(
        not_scanned.is_empty(),
        "{channel}: hinted pages missing from the scan (hints must be a subset): {}",
        show(not_scanned)
    );
    let missed: Vec<_> = written.difference(&r.scanned).collect();
    assert!(
        missed.is_empty(),
        "{channel}: written pages missing from the scan: {} (scanned {})",
        show(missed),
        show(&r.scanned)
    );
    let stray: Vec<_> = r.scanned.difference(written).collect();
    assert!(
        stray.is_empty(),
        "{channel}: the scan reports region pages nobody wrote: {}",
        show(stray)
    );
    // (d) A write the hints missed must trip a guard of the hinted final scan: the mmap lock
    // taken by someone else, or a VMA event.
    let unhinted: Vec<_> = written.difference(&r.hinted).collect();
    assert!(
        unhinted.is_empty() || r.locked || !r.vma.is_empty(),
        "{channel}: {} written without a hint, and neither the mmap-lock guard nor a VMA event \
         saw it",
        show(unhinted)
    );
    Seen {
        channel,
        written: written.len(),
        scanned: r.scanned.intersection(written).count(),
        hinted: r.hinted.intersection(written).count(),
        note: format!(
            "{}(+{} hints outside the region)",
            if r.locked { "mmap lock taken; " } else { "" },
            r.hinted_elsewhere
        ),
    }
}

/// Checks (c): BPF saw exactly the written pages.
fn check_exact(channel: &'static str, r: &Round, written: &BTreeSet<u64>) -> Seen {
    let seen = check(channel, r, written);
    assert!(
        &r.hinted == written,
        "{channel}: hints {} differ from the pages written {}",
        show(&r.hinted),
        show(written)
    );
    seen
}

fn madvise_events(r: &Round, advice: i32) -> Vec<(u64, u64)> {
    r.vma
        .iter()
        .filter(|e| !e.failed())
        .filter_map(|e| match e.change() {
            Some(VmaChange::Madvise {
                addr,
                len,
                advice: a,
            }) if a == advice => Some((addr, len)),
            _ => None,
        })
        .collect()
}

/// A page set for a failure message: its size and its first pages.
fn show<'a>(pages: impl IntoIterator<Item = &'a u64>) -> String {
    let all: Vec<u64> = pages.into_iter().copied().collect();
    let head: Vec<String> = all.iter().take(16).map(u64::to_string).collect();
    let more = if all.len() > 16 { ", ..." } else { "" };
    format!("{} page(s) [{}{more}]", all.len(), head.join(", "))
}

/// Runs `write` in a forked child of this test and requires it to return true. The child only
/// makes the one write (a syscall) and exits.
fn in_child(what: &str, write: impl FnOnce() -> bool) {
    // SAFETY: the child runs `write` (a single syscall on memory that is already mapped, no
    // allocation or lock) and leaves with _exit, so the state of the test's other threads does
    // not matter to it.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        let ok = write();
        // SAFETY: ends the child at once, without running the parent's destructors.
        unsafe { libc::_exit(i32::from(!ok)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(child, &raw mut status, 0) };
    assert_eq!(
        waited,
        child,
        "waitpid: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} from a child failed (status {status:#x})"
    );
}

fn set(pages: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    pages.into_iter().collect()
}

#[test]
fn bpf_hints_are_a_subset_of_pagemap_scan_which_catches_every_channel() {
    require_root();
    let wl = Workload::spawn("wl_writer", &[]);
    let region = Region::read(wl.statedir());
    // Before tracking: populate the 2 MiB part with a transparent huge page, so the THP rounds
    // below write into a PMD-mapped THP that the scan has write-protected (a part left
    // unpopulated gets 4 KiB uffd-wp markers from the first scan and never becomes a THP).
    let prelude = command(&wl, 1, "thp-store", &[]);
    println!("THP part before tracking: {prelude}");
    let mut scan = WriteTracker::start(wl.pid()).expect("WriteTracker::start");
    // The region may be several VMAs (the prelude's madvise split it): together they must cover
    // it.
    let covered = region.pages_in(scan.tracked()).len();
    assert!(
        covered as u64 == region.pages,
        "only {covered} of the region's {} pages are tracked: {:x?}",
        region.pages,
        scan.tracked()
    );
    let mut bpf = TaskTracker::attach(wl.pid().cast_unsigned()).expect("TaskTracker::attach");
    bpf.watch_memory().expect("watch_memory");
    bpf.watch_mm(wl.pid()).expect("watch_mm");
    // Baseline. With WP_UNPOPULATED the first scan reports every page not yet write-protected,
    // populated or not (the whole untouched region included), and protects them all.
    scan.harvest().expect("baseline harvest");
    bpf.drain_dirty().expect("baseline drain");
    bpf.drain_vma_events().expect("baseline vma drain");
    let mut h = Harness {
        wl,
        region,
        scan,
        bpf,
        seq: 1,
        mark: None,
    };
    let mut summary = Vec::new();

    // User stores: scattered single pages and a run.
    let stores = set([0, 1, 2, 3, 100, 101, 777, 4000, 9999]);
    let r = h.round("store", &stores.iter().copied().collect::<Vec<_>>());
    summary.push(check_exact("store", &r, &stores));

    // The same pages again: they were re-protected by the harvest, so they fault again.
    let r = h.round("store", &stores.iter().copied().collect::<Vec<_>>());
    summary.push(check_exact("store (again)", &r, &stores));

    // Stores from two new threads.
    let threads = set([200, 201, 202, 203, 204, 205, 206, 5000]);
    let r = h.round("thread-store", &threads.iter().copied().collect::<Vec<_>>());
    summary.push(check_exact("thread-store", &r, &threads));

    // read() into the pages: the kernel writes them with copy_to_user.
    let reads = set([300, 301, 302, 6000]);
    let r = h.round("read-into", &reads.iter().copied().collect::<Vec<_>>());
    summary.push(check_exact("read-into", &r, &reads));

    // process_vm_writev by a child of this test (not by this process, which loaded the BPF
    // programs and so counts as fastcr): GUP in its context, no fault in the workload.
    let page = 400;
    let value: u64 = 0x1111_2222_3333_4444;
    let addr = h.region.addr(page);
    let pid = h.pid();
    h.mark();
    in_child("process_vm_writev", || {
        let local = libc::iovec {
            iov_base: std::ptr::from_ref(&value).cast_mut().cast(),
            iov_len: 8,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 8,
        };
        // SAFETY: both iovecs describe 8 valid bytes (ours: `value`, read only; theirs: the
        // start of a mapped page of the workload's region); the pid is the test's child.
        unsafe { libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0) == 8 }
    });
    // The write happened after the previous harvest: this round's scan must show it.
    let r = h.round(&format!("note {value:x}"), &[page]);
    summary.push(check("process_vm_writev", &r, &set([page])));

    // /proc/PID/mem, by a child too.
    let page = 401;
    let value: u64 = 0x9999_aaaa_bbbb_cccc;
    let mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", h.pid()))
        .expect("open /proc/PID/mem");
    let addr = h.region.addr(page);
    h.mark();
    in_child("/proc/PID/mem", || {
        mem.write_all_at(&value.to_ne_bytes(), addr).is_ok()
    });
    drop(mem);
    let r = h.round(&format!("note {value:x}"), &[page]);
    summary.push(check("/proc/PID/mem", &r, &set([page])));

    // O_DIRECT read into a page: the block layer writes it through a GUP pin.
    let page = 500;
    let r = h.round("odirect-read", &[page]);
    if let Some(reason) = r.reply.strip_prefix("skipped: ") {
        println!("skipping: O_DIRECT channel: {reason}");
        assert!(r.scanned.is_empty() && r.hinted.is_empty());
    } else {
        summary.push(check("O_DIRECT read", &r, &set([page])));
    }

    // FUTEX_WAKE_OP: the kernel's atomic op on the word (fault-in through GUP on failure).
    let page = 600;
    let r = h.round("futex-wake-op", &[page]);
    summary.push(check("FUTEX_WAKE_OP", &r, &set([page])));

    // MADV_DONTNEED on pages written earlier: their content changes to zero without a write.
    let zapped = set([0, 1, 777]);
    let r = h.round("dontneed", &zapped.iter().copied().collect::<Vec<_>>());
    let mut seen = check("MADV_DONTNEED", &r, &zapped);
    let advised = madvise_events(&r, MADV_DONTNEED);
    for &p in &zapped {
        let a = h.region.addr(p);
        assert!(
            advised.iter().any(|&(s, l)| s <= a && a < s + l),
            "no madvise(MADV_DONTNEED) VMA event covers page {p}: {:?}",
            r.vma
        );
    }
    seen.note = format!(
        "{} madvise(DONTNEED) VMA events {}",
        advised.len(),
        seen.note
    );
    summary.push(seen);

    // THP: MADV_HUGEPAGE on the 2 MiB part (a THP since the prelude), then a store to each of
    // its pages; twice (the first write-protect fault splits the PMD).
    let thp = set(h.region.thp_first..h.region.thp_first + THP_PAGES);
    for channel in ["thp-store (THP)", "thp-store (again)"] {
        let r = h.round("thp-store", &[]);
        let mut seen = check(channel, &r, &thp);
        let advised = madvise_events(&r, MADV_HUGEPAGE);
        let start = h.region.addr(h.region.thp_first);
        assert!(
            advised
                .iter()
                .any(|&(s, l)| s == start && l == THP_PAGES * PAGE),
            "no madvise(MADV_HUGEPAGE) VMA event for the THP part: {:?}",
            r.vma
        );
        seen.note = format!("{} {}", r.reply.trim_start_matches("ok").trim(), seen.note);
        summary.push(seen);
    }

    println!(
        "{:<20} {:>7} {:>8} {:>8}  seen by",
        "channel", "written", "scanned", "hinted"
    );
    for s in &summary {
        let by = match s.hinted {
            0 => "scan only",
            n if n == s.written => "BPF and scan",
            _ => "scan; BPF partly",
        };
        println!(
            "{:<20} {:>7} {:>8} {:>8}  {by} {}",
            s.channel, s.written, s.scanned, s.hinted, s.note
        );
    }

    assert_eq!(h.bpf.dirty_drops().expect("dirty_drops"), 0);
    assert_eq!(h.bpf.lost_vma_events().expect("lost_vma_events"), 0);
    drop(h.bpf);
    drop(h.scan);
    h.wl.terminate_and_verify();
}

#[test]
fn vma_events_report_each_syscall_with_its_arguments_and_result() {
    require_root();
    // Track this test process and make each call from this thread: the events are filtered by
    // our tid, so other threads of the test binary do not matter.
    let me = std::process::id();
    let mut bpf = TaskTracker::attach(me).expect("TaskTracker::attach");
    bpf.watch_memory().expect("watch_memory");
    bpf.drain_vma_events().expect("drain");
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() }.cast_unsigned();
    let len = 4 * PAGE as usize;

    // SAFETY: a fresh anonymous mapping the kernel places; every later call names only it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    // SAFETY: `addr..addr+len` is the mapping made above.
    let rc = unsafe { libc::mprotect(addr, PAGE as usize, libc::PROT_READ) };
    assert_eq!(rc, 0);
    // SAFETY: as above.
    let rc = unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    // Back to one VMA (mremap moves a single VMA only).
    // SAFETY: as above.
    let rc = unsafe { libc::mprotect(addr, PAGE as usize, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(rc, 0);
    // SAFETY: as above; MREMAP_MAYMOVE lets the kernel move it, the old range is then gone.
    let moved = unsafe { libc::mremap(addr, len, 2 * len, libc::MREMAP_MAYMOVE) };
    assert_ne!(moved, libc::MAP_FAILED);
    // SAFETY: the mapping as it is after mremap.
    let rc = unsafe { libc::munmap(moved, 2 * len) };
    assert_eq!(rc, 0);
    // SAFETY: brk(0) only queries the break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) };
    // A failing call is reported too, with -errno.
    // SAFETY: munmap of an unaligned address fails with EINVAL and touches nothing.
    let rc = unsafe { libc::munmap(std::ptr::without_provenance_mut(0x1001), 1) };
    assert_eq!(rc, -1);

    let events: Vec<VmaEvent> = bpf
        .drain_vma_events()
        .expect("drain")
        .into_iter()
        .filter(|e| e.tid == tid)
        .collect();
    let changes: Vec<(VmaChange, i64)> = events
        .iter()
        .map(|e| {
            assert_eq!(e.tgid, me);
            (e.change().expect("known kind"), e.ret)
        })
        .collect();
    let a = addr as u64;
    let len = len as u64;
    let expected = [
        (
            VmaChange::Mmap {
                addr: 0,
                len,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
                fd: -1,
                offset: 0,
            },
            a as i64,
        ),
        (
            VmaChange::Mprotect {
                addr: a,
                len: PAGE,
                prot: libc::PROT_READ as u32,
            },
            0,
        ),
        (
            VmaChange::Madvise {
                addr: a,
                len,
                advice: libc::MADV_DONTNEED,
            },
            0,
        ),
        (
            VmaChange::Mprotect {
                addr: a,
                len: PAGE,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            },
            0,
        ),
        (
            VmaChange::Mremap {
                old_addr: a,
                old_len: len,
                new_len: 2 * len,
                flags: libc::MREMAP_MAYMOVE as u32,
                new_addr: 0,
            },
            moved as i64,
        ),
        (
            VmaChange::Munmap {
                addr: moved as u64,
                len: 2 * len,
            },
            0,
        ),
        (VmaChange::Brk { requested: 0 }, brk),
        (
            VmaChange::Munmap {
                addr: 0x1001,
                len: 1,
            },
            -i64::from(libc::EINVAL),
        ),
    ];
    assert_eq!(changes, expected, "events: {events:#?}");
    assert!(events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    assert!(events.last().is_some_and(VmaEvent::failed));
    assert_eq!(bpf.lost_vma_events().expect("stats"), 0);
}
