//! The one place for `unsafe` and raw syscalls. Everything here is a safe function over pids,
//! owned file descriptors and plain data; callers never see a raw pointer.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment. Errors are one [`SyscallError`] naming the
//! call, which the domain modules wrap in their own variants with context (pid, address, path).

pub mod fs;
pub mod mem;
pub mod memfd;
pub mod probe;
pub mod process;
pub mod ptrace;
pub mod remote;
pub mod socket;
pub mod uffd;
pub mod uffd_lazy;

use std::io;

/// A failed system call: which one, and what the kernel said.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed")]
pub struct SyscallError {
    /// The call that failed, e.g. `"ptrace(PTRACE_SEIZE)"`.
    pub call: &'static str,
    /// The kernel's answer.
    #[source]
    pub io_error: io::Error,
}

impl SyscallError {
    /// Builds the error from `errno` right after a failed call.
    pub(crate) fn last(call: &'static str) -> Self {
        Self {
            call,
            io_error: io::Error::last_os_error(),
        }
    }

    /// Builds the error from an explicit errno value.
    pub fn from_errno(call: &'static str, errno: i32) -> Self {
        Self {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        }
    }

    /// The errno value, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.io_error.raw_os_error()
    }
}

/// Result of a raw call: `-1` means look at errno.
fn check(ret: libc::c_long, call: &'static str) -> Result<libc::c_long, SyscallError> {
    if ret == -1 {
        Err(SyscallError::last(call))
    } else {
        Ok(ret)
    }
}

/// The machine's page size (4 KiB on x86_64).
pub const PAGE_SIZE: u64 = 4096;
