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

    /// Runs `calls` one after the other in a single resume of the task, through a loop placed at
    /// `offset` in scratch (which must be executable; the loop and its table take
    /// [`batch_len`]`(calls.len())` bytes). Returns each call's raw result (negative errno on
    /// failure), in order. One resume instead of one per call: a ptrace round trip costs some
    /// 50–100 µs here, and the dump's register step is inside the frozen window.
    pub fn batch(&self, offset: u64, calls: &[(i64, [u64; 6])]) -> Result<Vec<i64>, InjectError> {
        let mut bytes = Vec::with_capacity(batch_len(calls.len()) as usize);
        bytes.extend_from_slice(&BATCH_LOOP);
        bytes.resize(BATCH_TABLE as usize, 0xcc);
        bytes.extend_from_slice(&(calls.len() as u64).to_le_bytes());
        for (nr, args) in calls {
            bytes.extend_from_slice(&nr.to_le_bytes());
            for a in args {
                bytes.extend_from_slice(&a.to_le_bytes());
            }
            bytes.extend_from_slice(&0u64.to_le_bytes());
        }
        let entry = self.put(offset, &bytes)?;
        self.remote
            .run_code(entry, entry + BATCH_TABLE)
            .map_err(|e| InjectError {
                pid: self.pid(),
                step: format!("run a batch of {} syscalls", calls.len()),
                source: RemoteCallError::Inject(e),
            })?;
        let table = self.get(offset + BATCH_TABLE + 8, calls.len() * BATCH_ENTRY as usize)?;
        Ok(table
            .chunks_exact(BATCH_ENTRY as usize)
            .map(|e| words::<8>(e)[7] as i64)
            .collect())
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

/// Bytes of scratch [`Injector::batch`] takes for `calls` syscalls.
pub const fn batch_len(calls: usize) -> u64 {
    BATCH_TABLE + 8 + calls as u64 * BATCH_ENTRY
}

/// Where a batch's table starts, after its code.
const BATCH_TABLE: u64 = 64;
/// One table entry: the syscall number, six arguments, and the result the loop stores.
const BATCH_ENTRY: u64 = 64;

/// x86-64 machine code: `r12` points to `[count][entries]`, an entry being `nr, a0..a5, ret`
/// (eight u64). Runs each syscall, stores its result in `ret`, then `int3`.
///
/// ```text
///  0: 4d 8b 2c 24        mov  r13, [r12]
///  4: 4d 8d 74 24 08     lea  r14, [r12+8]
///  9: 4d 85 ed           test r13, r13        ; loop
///  c: 74 2a              je   38
///  e: 49 8b 06           mov  rax, [r14]
/// 11: 49 8b 7e 08        mov  rdi, [r14+8]
/// 15: 49 8b 76 10        mov  rsi, [r14+16]
/// 19: 49 8b 56 18        mov  rdx, [r14+24]
/// 1d: 4d 8b 56 20        mov  r10, [r14+32]
/// 21: 4d 8b 46 28        mov  r8,  [r14+40]
/// 25: 4d 8b 4e 30        mov  r9,  [r14+48]
/// 29: 0f 05              syscall
/// 2b: 49 89 46 38        mov  [r14+56], rax
/// 2f: 49 83 c6 40        add  r14, 64
/// 33: 49 ff cd           dec  r13
/// 36: eb d1              jmp  9
/// 38: cc                 int3
/// ```
const BATCH_LOOP: [u8; 57] = [
    0x4d, 0x8b, 0x2c, 0x24, 0x4d, 0x8d, 0x74, 0x24, 0x08, 0x4d, 0x85, 0xed, 0x74, 0x2a, 0x49, 0x8b,
    0x06, 0x49, 0x8b, 0x7e, 0x08, 0x49, 0x8b, 0x76, 0x10, 0x49, 0x8b, 0x56, 0x18, 0x4d, 0x8b, 0x56,
    0x20, 0x4d, 0x8b, 0x46, 0x28, 0x4d, 0x8b, 0x4e, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x46, 0x38, 0x49,
    0x83, 0xc6, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xd1, 0xcc,
];

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

/// The arguments of an `mmap` of `len` bytes of private anonymous read-write memory anywhere.
pub(crate) fn anon_mmap_args(len: u64) -> [u64; 6] {
    anon_mmap_args_prot(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// The arguments of an `mmap` of `len` bytes of private anonymous memory with protection `prot`
/// anywhere.
pub(crate) fn anon_mmap_args_prot(len: u64, prot: i32) -> [u64; 6] {
    [
        0,
        len,
        prot as u64,
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
        u64::MAX,
        0,
    ]
}

/// Encodes u64 words little-endian.
pub(crate) fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
