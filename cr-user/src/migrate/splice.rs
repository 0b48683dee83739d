//! Lazy migration's background stream without copying on the source: a helper thread made in
//! the frozen original `vmsplice`s the original's own pages into a pipe, and the pipe is
//! spliced into the bulk connection. The pages go from the original's memory to the socket by
//! reference; the source's two copies (`process_vm_readv`, then the socket write) are gone,
//! which leaves the CPUs to the destination's.
//!
//! Why a helper thread: `vmsplice` works on the caller's own memory, so it must run in the
//! original, and the original's main thread has the `SIGSTOP` that keeps it stopped should
//! fastcr die after `Go` queued for it alone (`tgkill`): an injection into it would deliver that
//! signal. The helper is made before `Go`, with every signal blocked, and injections into it
//! run at a `syscall` in a page of its own, followed by `exit`: were fastcr to die and the
//! helper run by itself, it ends itself at once (and the original stops on its `SIGSTOP`).

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use super::proto;
use super::{MigrateError, io_err};
use crate::freeze::Frozen;
use crate::inject::{Injector, to_bytes, words};
use crate::sys::ptrace::{self, Stop};
use crate::sys::remote::{InjectError, Remote, RemoteCallError};
use crate::sys::{fs, process};

/// `syscall; mov eax, 60 (exit); xor edi, edi; syscall; jmp .`: injections run the first
/// `syscall`; a helper left to run by itself ends with the second.
const STUB: [u8; 13] = [
    0x0f, 0x05, 0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05, 0xeb, 0xfe,
];
/// The helper's stream loop, placed after [`STUB`] in its code page and started once with
/// `r12` = a list area `{ fd, count, area_len, 0, then count × (base, len) }`: it `vmsplice`s
/// every range into the pipe `fd` in order (blocking while the pipe is full, so it follows the
/// splicer without any ptrace round trip), then closes `fd`, unmaps the list area and exits the
/// thread. A failing `vmsplice` (`EPIPE` once the splicer closed the read end, also when
/// fastcr died) ends the loop the same way: the splicer sees the pipe end early.
///
/// ```text
///     lea  r13, [r12+32]          ; the first (base, len)
/// 1:  cmp  qword [r12+8], 0       ; ranges left?
///     je   3f
/// 2:  mov  rdi, [r12]             ; vmsplice(fd, r13, 1, 0)
///     mov  rsi, r13
///     mov  edx, 1
///     xor  r10d, r10d
///     mov  eax, 278
///     syscall
///     test rax, rax
///     jle  3f                     ; error or nothing: end
///     add  [r13], rax             ; base += n
///     sub  [r13+8], rax           ; len -= n
///     jnz  2b                     ; more of this range
///     add  r13, 16
///     dec  qword [r12+8]
///     jmp  1b
/// 3:  mov  rdi, [r12]             ; close(fd)
///     mov  eax, 3
///     syscall
///     mov  rdi, r12               ; munmap(list area)
///     mov  rsi, [r12+16]
///     mov  eax, 11
///     syscall
///     mov  eax, 60                ; exit(0)
///     xor  edi, edi
///     syscall
///     jmp  .
/// ```
const LOOP: [u8; 98] = [
    0x4d, 0x8d, 0x6c, 0x24, 0x20, 0x49, 0x83, 0x7c, 0x24, 0x08, 0x00, 0x74, 0x30, 0x49, 0x8b, 0x3c,
    0x24, 0x4c, 0x89, 0xee, 0xba, 0x01, 0x00, 0x00, 0x00, 0x45, 0x31, 0xd2, 0xb8, 0x16, 0x01, 0x00,
    0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x7e, 0x15, 0x49, 0x01, 0x45, 0x00, 0x49, 0x29, 0x45, 0x08,
    0x75, 0xdb, 0x49, 0x83, 0xc5, 0x10, 0x49, 0xff, 0x4c, 0x24, 0x08, 0xeb, 0xc8, 0x49, 0x8b, 0x3c,
    0x24, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x4c, 0x89, 0xe7, 0x49, 0x8b, 0x74, 0x24, 0x10,
    0xb8, 0x0b, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05,
    0xeb, 0xfe,
];
/// Where [`LOOP`] sits in the code page.
const LOOP_AT: u64 = 16;
/// The list area's header: fd, count, area length, padding.
const LIST_HEAD: u64 = 32;
/// The helper's two pages: its code (read and execute only once written), then its data.
const SCRATCH_LEN: u64 = 8192;
const DATA: u64 = 4096;
const OFF_ARGS: u64 = DATA + 64;
const OFF_FDS: u64 = DATA + 192;
/// Pipe capacity asked for: `/proc/sys/fs/pipe-max-size` by default, the most one can set
/// without `CAP_SYS_RESOURCE`.
const PIPE_BYTES: u64 = 1 << 20;
/// `clone3` flags of the helper: a thread of the original.
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;
/// How long the splicer waits on an empty pipe before it looks at the abort flag again.
const POLL_MS: i32 = 100;

/// A helper thread in a frozen original and the write end of its pipe (in the original).
pub(super) struct Helper {
    pid: i32,
    tid: i32,
    inj: Injector,
    scratch: u64,
    write_end: i32,
    /// Started on its stream loop ([`Helper::launch`]): it cleans up and exits by itself.
    launched: std::cell::Cell<bool>,
}

fn helper_err(pid: i32, what: &str) -> impl FnOnce(String) -> MigrateError + '_ {
    move |why| MigrateError::Io {
        what: format!("page stream helper in process {pid}: {what}"),
        source: std::io::Error::other(why),
    }
}

impl Helper {
    /// Makes the helper in `main`'s process (frozen, registers put back) and its pipe; returns
    /// it with the pipe's read end, here. `main` is left as it was.
    pub(super) fn start(main: &Frozen) -> Result<(Self, OwnedFd), MigrateError> {
        let pid = main.pid();
        let err = |what| helper_err(pid, what);
        let maps = crate::proc::maps::maps(pid).map_err(|e| err("maps")(e.to_string()))?;
        let vdso_ip =
            crate::inject::vdso_syscall_ip(pid, &maps).map_err(|e| err("vdso")(e.to_string()))?;
        let mut inj = Injector::new(Remote::new(pid, *main.regs(), vdso_ip));
        let scratch = inj
            .call(
                || "mmap of the helper's page".into(),
                "mmap",
                libc::SYS_mmap,
                crate::inject::anon_mmap_args(SCRATCH_LEN),
            )
            .map_err(|e| err("mmap")(e.to_string()))?;
        inj.set_scratch(scratch, SCRATCH_LEN);
        let made = Self::clone_helper(main, &mut inj, scratch);
        // The main thread goes back to its own registers, mask and options whatever happened.
        let _ = ptrace::set_options(pid, ptrace::OPT_TRACESYSGOOD);
        let _ = main.put_back();
        let tid = match made {
            Ok(tid) => tid,
            Err(why) => {
                inj.set_syscall_ip(vdso_ip);
                let _ = inj.raw(
                    "munmap",
                    libc::SYS_munmap,
                    [scratch, SCRATCH_LEN, 0, 0, 0, 0],
                );
                let _ = main.put_back();
                return Err(err("clone")(why));
            }
        };
        let regs = ptrace::get_regs(tid).map_err(|e| err("registers")(e.to_string()))?;
        let mut hinj = Injector::new(Remote::new(tid, regs, scratch));
        hinj.set_scratch(scratch, SCRATCH_LEN);
        let mut helper = Self {
            pid,
            tid,
            inj: hinj,
            scratch,
            write_end: -1,
            launched: std::cell::Cell::new(false),
        };
        match helper.open_pipe() {
            Ok(read_end) => Ok((helper, read_end)),
            Err(e) => {
                helper.end();
                Err(e)
            }
        }
    }

    /// The `clone3`, from the stub's `syscall` with every signal blocked (the helper inherits
    /// the mask); returns the helper's tid, stopped.
    fn clone_helper(main: &Frozen, inj: &mut Injector, scratch: u64) -> Result<i32, String> {
        let pid = main.pid();
        inj.put(0, &STUB).map_err(|e| e.to_string())?;
        inj.put(LOOP_AT, &LOOP).map_err(|e| e.to_string())?;
        inj.call(
            || "mprotect of the helper's code".into(),
            "mprotect",
            libc::SYS_mprotect,
            [
                scratch,
                DATA,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                0,
                0,
                0,
            ],
        )
        .map_err(|e| e.to_string())?;
        main.block_signals().map_err(|e| e.to_string())?;
        ptrace::set_options(pid, ptrace::OPT_TRACESYSGOOD | ptrace::OPT_TRACECLONE)
            .map_err(|e| e.to_string())?;
        inj.set_syscall_ip(scratch);
        // struct clone_args: flags, then zeros (no stack: the helper never runs our way).
        let args = [THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let at = inj
            .put(OFF_ARGS, &to_bytes(&args))
            .map_err(|e| e.to_string())?;
        let tid = inj
            .clone_thread(
                || "clone3 of the page stream helper".into(),
                [at, 88, 0, 0, 0, 0],
            )
            .map_err(|e| e.to_string())?;
        match ptrace::wait_stop(tid) {
            Ok(Stop::Signal(libc::SIGSTOP) | Stop::Event { .. }) => {}
            other => return Err(format!("the new thread {tid} did not stop: {other:?}")),
        }
        ptrace::set_options(tid, ptrace::OPT_TRACESYSGOOD).map_err(|e| e.to_string())?;
        Ok(tid)
    }

    /// `pipe2` in the helper, the capacity raised, the read end taken here and closed there.
    fn open_pipe(&mut self) -> Result<OwnedFd, MigrateError> {
        let err = |what| helper_err(self.pid, what);
        let fds = self.inj.scratch_addr(OFF_FDS);
        self.inj
            .call(
                || "pipe2".into(),
                "pipe2",
                libc::SYS_pipe2,
                [fds, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
            )
            .map_err(|e| err("pipe2")(e.to_string()))?;
        let [pair] = words::<1>(
            &self
                .inj
                .get(OFF_FDS, 8)
                .map_err(|e| err("pipe2")(e.to_string()))?,
        );
        let (read_end, write_end) = ((pair & 0xffff_ffff) as i32, (pair >> 32) as i32);
        self.write_end = write_end;
        // A smaller pipe only means more vmsplice calls.
        let _ = self.inj.raw(
            "fcntl(F_SETPIPE_SZ)",
            libc::SYS_fcntl,
            [
                write_end as u64,
                libc::F_SETPIPE_SZ as u64,
                PIPE_BYTES,
                0,
                0,
                0,
            ],
        );
        let pidfd = process::pidfd_open(self.pid).map_err(|e| err("pidfd_open")(e.to_string()))?;
        let here = process::pidfd_getfd(pidfd.as_fd(), read_end)
            .map_err(|e| err("pidfd_getfd")(e.to_string()))?;
        self.inj
            .call(
                || "close of the pipe's read end".into(),
                "close",
                libc::SYS_close,
                [read_end as u64, 0, 0, 0, 0, 0],
            )
            .map_err(|e| err("close")(e.to_string()))?;
        Ok(here)
    }

    /// The process it belongs to.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// Starts the helper on its stream loop ([`LOOP`]) over `ranges` (address, length), in
    /// order: it then feeds the pipe by itself, and the splicer must read exactly these ranges
    /// from it. The helper's data page is unmapped first; the loop closes the pipe, unmaps its
    /// list and exits the thread when done ([`Helper::wait`]).
    pub(super) fn launch(&self, ranges: &[(u64, u64)]) -> Result<(), MigrateError> {
        let err = |what| helper_err(self.pid, what);
        let count = ranges.len() as u64;
        let len = (LIST_HEAD + 16 * count).next_multiple_of(4096);
        let area = self
            .inj
            .call(
                || "mmap of the stream list".into(),
                "mmap",
                libc::SYS_mmap,
                crate::inject::anon_mmap_args(len),
            )
            .map_err(|e| err("mmap")(e.to_string()))?;
        let mut list = vec![self.write_end as u64, count, len, 0];
        for &(base, n) in ranges {
            list.extend([base, n]);
        }
        self.inj
            .write_at(area, &to_bytes(&list))
            .map_err(|e| err("stream list")(e.to_string()))?;
        let _ = self.inj.raw(
            "munmap",
            libc::SYS_munmap,
            [self.scratch + DATA, SCRATCH_LEN - DATA, 0, 0, 0, 0],
        );
        self.launched.set(true);
        self.inj
            .launch(self.scratch + LOOP_AT, area)
            .map_err(|e| err("start")(e.to_string()))
    }

    /// Waits until a launched helper has fed its ranges and exited.
    pub(super) fn wait(&self) -> Result<(), MigrateError> {
        self.inj
            .wait_exit()
            .map(|_| ())
            .map_err(|e| helper_err(self.pid, "stream loop")(e.to_string()))
    }

    /// Closes the pipe in the original, unmaps the helper's data page and ends the helper. Its
    /// code page (13 bytes of stub, read and execute only) stays: the helper cannot unmap the
    /// page it runs from, and an injection into the main thread would take its `SIGSTOP`. It
    /// goes with the original, which is killed once the destination has every page (it is
    /// left only in an original thawed after a lost link, or after fastcr died).
    pub(super) fn end(self) {
        if self.launched.get() {
            // Its loop closed the pipe, unmapped its list and ended the thread.
            return;
        }
        if self.write_end >= 0 {
            let _ = self.inj.raw(
                "close",
                libc::SYS_close,
                [self.write_end as u64, 0, 0, 0, 0, 0],
            );
        }
        let _ = self.inj.raw(
            "munmap",
            libc::SYS_munmap,
            [self.scratch + DATA, SCRATCH_LEN - DATA, 0, 0, 0, 0],
        );
        // From the stub's `syscall`: should fastcr die right here, the helper exits by itself.
        match self.inj.raw("exit", libc::SYS_exit, [0; 6]) {
            Err(e)
                if matches!(
                    e.source,
                    RemoteCallError::Inject(InjectError::UnexpectedStop {
                        stop: Stop::Exited(_),
                        ..
                    })
                ) => {}
            other => tracing::debug!(
                pid = self.pid,
                tid = self.tid,
                result = ?other.map_err(|e| e.to_string()),
                "page stream helper did not exit as expected"
            ),
        }
    }
}

/// What the splicer writes on the bulk connection, in order.
pub(super) enum Cmd {
    /// An `Absent` frame.
    Absent { pid: i32, addr: u64, npages: u64 },
    /// A `Pages` frame whose data comes from process `pid`'s pipe (pushed by its helper).
    Spliced { pid: i32, addr: u64, len: u64 },
    /// A `Pages` frame read here (a process without a helper).
    Copied { pid: i32, addr: u64, len: u64 },
}

/// Writes the frames `cmds` names on `bulk`, then `BulkEnd`; returns the pages sent. On any
/// failure the pipes are closed (dropped), which fails a helper's `vmsplice` that waits for
/// room; `abort` (set by the pushing side when it fails) ends a wait for data.
pub(super) fn splicer(
    cmds: Receiver<Cmd>,
    mut bulk: TcpStream,
    pipes: HashMap<i32, OwnedFd>,
    abort: &AtomicBool,
) -> Result<u64, MigrateError> {
    let mut pages = 0;
    let mut buf = Vec::new();
    for cmd in cmds {
        match cmd {
            Cmd::Absent { pid, addr, npages } => {
                proto::write_frame(&mut bulk, &proto::Frame::Absent { pid, addr, npages })?;
            }
            Cmd::Copied { pid, addr, len } => {
                super::source::read_pages(pid, addr, len as usize, &mut buf)?;
                proto::write_pages(&mut bulk, pid, addr, &buf)?;
                pages += len / 4096;
            }
            Cmd::Spliced { pid, addr, len } => {
                let Some(pipe) = pipes.get(&pid) else {
                    return Err(helper_err(pid, "pipe")("no pipe for this process".into()));
                };
                proto::write_pages_head(&mut bulk, pid, addr, len as usize)?;
                let mut left = len as usize;
                while left > 0 {
                    match fs::splice_from_pipe(pipe, &bulk, left, true) {
                        Ok(0) => {
                            return Err(helper_err(pid, "splice")("the pipe was closed".into()));
                        }
                        Ok(n) => left -= n,
                        Err(e) if e.errno() == Some(libc::EAGAIN) => {
                            if abort.load(Ordering::Relaxed) {
                                return Err(helper_err(pid, "splice")("aborted".into()));
                            }
                            crate::sys::uffd_lazy::poll_readable(&[pipe.as_fd()], POLL_MS)
                                .map_err(|e| io_err("poll of the page pipe")(e.io_error))?;
                        }
                        Err(e) => return Err(io_err("splice to the bulk connection")(e.io_error)),
                    }
                }
                pages += len / 4096;
            }
        }
    }
    proto::write_frame(&mut bulk, &proto::Frame::BulkEnd { pages_sent: pages })?;
    Ok(pages)
}
