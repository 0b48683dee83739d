//! `restore --pidns new`: the tree is restored into a fresh pid namespace, with its own pids,
//! so it can be restored while the original still runs (same-host migration).
//!
//! The namespace's init (pid 1) is a small fork of fastcr ([`process::spawn_pidns_init`]). It
//! holds the namespace open until fastcr says the restore is complete; if fastcr dies or fails
//! before that, init exits and the kernel kills everything in the namespace, so nothing
//! half-restored survives. Once released, init reaps orphans and exits when the namespace is
//! empty. What the restored root sees as its parent: pid 0, always. Its parent is fastcr, outside
//! the namespace; when fastcr exits the kernel reparents it in fastcr's namespace (to the nearest
//! child subreaper, else the host's init), not to the namespace's init.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys::{SyscallError, process};

/// A pid namespace made for one restore.
pub struct PidNs {
    init: i32,
    release: Option<OwnedFd>,
}

impl PidNs {
    /// Creates the namespace and its init. The calling thread's *new children* start in it
    /// until [`PidNs::leave`] is called; this thread itself stays where it is.
    pub fn create() -> Result<Self, SyscallError> {
        let (read, write) = process::pipe()?;
        let init = process::spawn_pidns_init(read.as_fd())?;
        drop(read);
        let ns = Self {
            init,
            release: Some(write),
        };
        let pidfd = process::pidfd_open(init)?;
        process::enter_pidns_for_children(pidfd.as_fd())?;
        Ok(ns)
    }

    /// Makes this thread's new children start in its own pid namespace again.
    pub fn leave(&self) -> Result<(), SyscallError> {
        let own = File::open("/proc/thread-self/ns/pid").map_err(|e| SyscallError {
            call: "open(/proc/thread-self/ns/pid)",
            io_error: e,
        })?;
        process::enter_pidns_for_children(own.as_fd())
    }

    /// Init's pid, as seen from here.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// The restore is complete: the namespace lives on without fastcr.
    pub fn release(&mut self) {
        if let Some(w) = self.release.take() {
            let mut f = File::from(w);
            let _ = f.write_all(b"r");
        }
    }
}

impl Drop for PidNs {
    fn drop(&mut self) {
        if self.release.take().is_some() {
            // Not released: take the namespace down with everything in it.
            let _ = process::kill(self.init, libc::SIGKILL);
            let _ = process::wait_exit(self.init);
        }
    }
}
