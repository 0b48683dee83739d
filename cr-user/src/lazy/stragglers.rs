//! The end of the lazy phase, while the processes are being released.
//!
//! Every range is unregistered once all pages are in, and the events already queued are read.
//! A munmap, mremap or `MADV_DONTNEED` that took its decision before the unregistration can
//! still queue its event afterwards, and its caller then sleeps (killable only) until someone
//! reads it or the userfaultfd is gone. The process's own copy of the userfaultfd keeps it
//! alive until the release closes that copy, and the release needs the process to stop, which
//! it cannot while it sleeps there. So these late events are read here, on a thread of their
//! own, until the release is over. A late fork event brings the child's userfaultfd: it is
//! closed at once, which unregisters the child's ranges (its pages were all in its parent).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::sys::uffd_lazy::{self, Event};

/// Poll period of the reader (also how long stopping it may take).
const POLL_MS: i32 = 20;

/// Reads the late events of the userfaultfds it holds until dropped.
pub struct Stragglers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Stragglers {
    /// Starts reading the events of `uffds` (the spaces still live at the end).
    pub fn start(uffds: Vec<OwnedFd>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("uffd-stragglers".into())
            .spawn(move || read_until(&uffds, &flag))
            .inspect_err(|e| tracing::warn!(error = %e, "no reader for late userfaultfd events"))
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Stragglers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "late userfaultfd events read"),
                Err(_) => tracing::warn!("the late-event reader panicked"),
            }
        }
    }
}

/// The reader's loop; returns the events it read.
fn read_until(uffds: &[OwnedFd], stop: &AtomicBool) -> u64 {
    let fds: Vec<BorrowedFd<'_>> = uffds.iter().map(AsFd::as_fd).collect();
    let mut read = 0;
    while !stop.load(Ordering::Relaxed) {
        let ready = match uffd_lazy::poll_readable(&fds, POLL_MS) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "poll of late userfaultfd events");
                return read;
            }
        };
        for (fd, _) in fds.iter().zip(ready).filter(|(_, r)| *r) {
            // Reading the message is what lets its sender go on; a fork's new userfaultfd is
            // dropped (closed) at once.
            while let Ok(Some(ev)) = uffd_lazy::read_event(*fd) {
                read += 1;
                if let Event::Fork { uffd } = ev {
                    drop(uffd);
                }
            }
        }
    }
    read
}
