//! Syscalls run inside a stopped task, with a scratch area in its memory for their arguments.
//!
//! Dump maps a scratch page in the target for the duration of the freeze; restore uses the data
//! half of its trampoline. Both sides go through this one type.

use crate::proc::maps::MapEntry;
use crate::sys::SyscallError;
use crate::sys::mem;
use crate::sys::remote::{Remote, RemoteCallError, find_syscall_insn};

/// An injected call failed; `step` says what fastcr was doing.
#[derive(Debug, thiserror::Error)]
#[error("{step} in process {pid} failed")]
pub struct InjectError {
    /// The task.
    pub pid: i32,
    /// What fastcr was doing (e.g. "mmap of 0x7f00..").
    pub step: String,
    /// The cause.
    #[source]
    pub source: RemoteCallError,
}

/// A task we run syscalls in, with `scratch_len` bytes of scratch memory at `scratch`.
pub struct Injector {
    remote: Remote,
    scratch: u64,
    scratch_len: u64,
}

impl Injector {
    /// Wraps a [`Remote`]; the scratch area is set later with [`Injector::set_scratch`].
    pub fn new(remote: Remote) -> Self {
        Self {
            remote,
            scratch: 0,
            scratch_len: 0,
        }
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.remote.pid()
    }

    /// Uses `[addr, addr+len)` of the task as scratch memory.
    pub fn set_scratch(&mut self, addr: u64, len: u64) {
        self.scratch = addr;
        self.scratch_len = len;
    }

    /// Moves injection to another `syscall` instruction.
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.remote.set_syscall_ip(ip);
    }

    /// Runs a syscall that must succeed. `step` is built only on failure.
    pub fn call(
        &self,
        step: impl FnOnce() -> String,
        name: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64, InjectError> {
        self.remote
            .checked(name, nr, args)
            .map_err(|source| InjectError {
                pid: self.pid(),
                step: step(),
                source,
            })
    }

    /// The scratch area, `(addr, len)`.
    pub fn scratch_range(&self) -> (u64, u64) {
        (self.scratch, self.scratch_len)
    }

    /// Runs a `clone3` that must succeed in a task traced with `PTRACE_O_TRACECLONE`; returns
    /// the new thread's id as seen from here.
    pub fn clone_thread(
        &self,
        step: impl FnOnce() -> String,
        args: [u64; 6],
    ) -> Result<i32, InjectError> {
        let fail = |source| InjectError {
            pid: self.pid(),
            step: step(),
            source,
        };
        match self.remote.syscall_clone(libc::SYS_clone3, args) {
            Ok((ret, Some(tid))) if ret > 0 => Ok(tid),
            Ok((ret, _)) => Err(fail(RemoteCallError::Failed(SyscallError::from_errno(
                "clone3",
                if ret < 0 { (-ret) as i32 } else { libc::EPROTO },
            )))),
            Err(e) => Err(fail(RemoteCallError::Inject(e))),
        }
    }

    /// Runs a syscall and returns the raw result (negative errno on failure).
    pub fn raw(&self, step: &str, nr: i64, args: [u64; 6]) -> Result<i64, InjectError> {
        self.remote.syscall(nr, args).map_err(|e| InjectError {
            pid: self.pid(),
            step: step.to_string(),
            source: RemoteCallError::Inject(e),
        })
    }

    fn mem_error(&self, step: &str, source: SyscallError) -> InjectError {
        InjectError {
            pid: self.pid(),
            step: step.to_string(),
            source: RemoteCallError::Failed(source),
        }
    }

    /// Places `code` at `offset` in scratch (which must be executable) and runs it to its
    /// `int3` with `r12` = the scratch address of `arg_offset`.
    pub fn run_code(&self, offset: u64, code: &[u8], arg_offset: u64) -> Result<(), InjectError> {
        let entry = self.put(offset, code)?;
        self.remote
            .run_code(entry, self.scratch_addr(arg_offset))
            .map_err(|e| InjectError {
                pid: self.pid(),
                step: "run injected code".to_string(),
                source: RemoteCallError::Inject(e),
            })
    }

    /// Starts the code at `entry` (already in the task, executable) with `r12` = `arg` and lets
    /// the task run it; the code ends the task. [`Injector::wait_exit`] waits for that.
    pub fn launch(&self, entry: u64, arg: u64) -> Result<(), InjectError> {
        self.remote.launch(entry, arg).map_err(|e| InjectError {
            pid: self.pid(),
            step: "start injected code".to_string(),
            source: RemoteCallError::Inject(e),
        })
    }

    /// Waits until a task started with [`Injector::launch`] exits; returns its exit code.
    pub fn wait_exit(&self) -> Result<i32, InjectError> {
        self.remote.wait_exit().map_err(|e| InjectError {
            pid: self.pid(),
            step: "wait for injected code to end".to_string(),
            source: RemoteCallError::Inject(e),
        })
    }

    /// Writes `bytes` at `offset` in the scratch area and returns their address in the task.
    pub fn put(&self, offset: u64, bytes: &[u8]) -> Result<u64, InjectError> {
        assert!(
            offset + bytes.len() as u64 <= self.scratch_len,
            "scratch overflow: {} bytes at {offset}",
            bytes.len()
        );
        let addr = self.scratch + offset;
        let n = mem::write_remote(self.pid(), addr, bytes)
            .map_err(|e| self.mem_error("write to scratch", e))?;
        if n != bytes.len() {
            return Err(self.mem_error(
                "write to scratch",
                SyscallError::from_errno("process_vm_writev", libc::EFAULT),
            ));
        }
        Ok(addr)
    }

    /// Writes `bytes` at `addr` in the task (memory it mapped, outside the scratch area).
    pub fn write_at(&self, addr: u64, bytes: &[u8]) -> Result<(), InjectError> {
        let n = mem::write_remote(self.pid(), addr, bytes)
            .map_err(|e| self.mem_error("write to the task", e))?;
        if n != bytes.len() {
            return Err(self.mem_error(
                "write to the task",
                SyscallError::from_errno("process_vm_writev", libc::EFAULT),
            ));
        }
        Ok(())
    }

    /// Writes a NUL-terminated string at `offset` in scratch.
    pub fn put_cstr(&self, offset: u64, s: &str) -> Result<u64, InjectError> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(offset, &b)
    }

    /// Reads `len` bytes at `offset` in scratch.
    pub fn get(&self, offset: u64, len: usize) -> Result<Vec<u8>, InjectError> {
        let mut buf = vec![0u8; len];
        let n = mem::read_remote(self.pid(), &[(self.scratch + offset, len)], &mut buf)
            .map_err(|e| self.mem_error("read from scratch", e))?;
        if n != len {
            return Err(self.mem_error(
                "read from scratch",
                SyscallError::from_errno("process_vm_readv", libc::EFAULT),
            ));
        }
        Ok(buf)
    }

    /// The scratch address at `offset`.
    pub fn scratch_addr(&self, offset: u64) -> u64 {
        self.scratch + offset
    }
}

/// Address of a `syscall` instruction in the `[vdso]` of `pid` (whose maps are `entries`): where
/// injection starts before fastcr has mapped anything of its own in the task.
pub fn vdso_syscall_ip(pid: i32, entries: &[MapEntry]) -> Result<u64, InjectError> {
    let fail = |errno| InjectError {
        pid,
        step: "find a syscall instruction in [vdso]".to_string(),
        source: RemoteCallError::Failed(SyscallError::from_errno("process_vm_readv", errno)),
    };
    let vdso = entries
        .iter()
        .find(|e| e.path == "[vdso]")
        .ok_or_else(|| fail(libc::ENOENT))?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    mem::read_remote(pid, &[(vdso.start, code.len())], &mut code)
        .map_err(|e| fail(e.errno().unwrap_or(libc::EIO)))?;
    let off = find_syscall_insn(&code).ok_or_else(|| fail(libc::ENOEXEC))?;
    Ok(vdso.start + off as u64)
}

/// Reads `N` little-endian u64 words from a byte slice.
pub(crate) fn words<const N: usize>(b: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *w = u64::from_le_bytes(a);
    }
    out
}

/// Encodes u64 words little-endian.
/// The arguments of an `mmap` of `len` bytes of private anonymous read-write memory anywhere.
pub(crate) fn anon_mmap_args(len: u64) -> [u64; 6] {
    [
        0,
        len,
        (libc::PROT_READ | libc::PROT_WRITE) as u64,
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
        u64::MAX,
        0,
    ]
}

pub(crate) fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
