//! ptrace: seize, interrupt, wait for stops, registers, xstate, sigmask, rseq configuration.

use super::{SyscallError, check};

/// General-purpose registers as the kernel's `user_regs_struct` lays them out.
pub type UserRegs = libc::user_regs_struct;

/// How a traced task stopped or ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A syscall-enter or syscall-exit stop (`SIGTRAP | 0x80` with TRACESYSGOOD).
    Syscall,
    /// A `PTRACE_EVENT_*` stop (e.g. `PTRACE_EVENT_STOP` after `PTRACE_INTERRUPT`).
    Event { event: i32, sig: i32 },
    /// A signal-delivery stop: the task is about to take `sig`.
    Signal(i32),
    /// The task exited with this code.
    Exited(i32),
    /// The task was killed by this signal.
    Killed(i32),
}

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
pub const OPT_TRACESYSGOOD: u64 = libc::PTRACE_O_TRACESYSGOOD as u64;
/// `PTRACE_O_EXITKILL`: the tracee is killed if the tracer dies (used while building a restore).
pub const OPT_EXITKILL: u64 = libc::PTRACE_O_EXITKILL as u64;
/// `PTRACE_O_TRACECLONE`: threads the tracee creates are traced from their first instruction.
pub const OPT_TRACECLONE: u64 = libc::PTRACE_O_TRACECLONE as u64;
/// `PTRACE_EVENT_CLONE`: the tracee created a thread (its tid: [`get_event_msg`]).
pub const EVENT_CLONE: i32 = libc::PTRACE_EVENT_CLONE;
/// `PTRACE_O_TRACEFORK`: processes the tracee forks are traced from their first instruction.
pub const OPT_TRACEFORK: u64 = libc::PTRACE_O_TRACEFORK as u64;
/// `PTRACE_EVENT_FORK`: the tracee forked (the child's pid: [`get_event_msg`]).
pub const EVENT_FORK: i32 = libc::PTRACE_EVENT_FORK;
/// `PTRACE_EVENT_STOP`: the stop `PTRACE_INTERRUPT` produces.
pub const EVENT_STOP: i32 = libc::PTRACE_EVENT_STOP;

const NT_PRSTATUS: u64 = 1;
const NT_X86_XSTATE: u64 = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Large enough for every xstate layout on current x86 (AMX needs ~11 KiB).
const XSTATE_MAX: usize = 16 * 1024;

fn ptrace_raw(
    req: libc::c_uint,
    pid: i32,
    addr: u64,
    data: u64,
    call: &'static str,
) -> Result<libc::c_long, SyscallError> {
    // SAFETY: every caller passes either plain integers or a pointer to a live buffer of the
    // size the request expects; the kernel validates the rest.
    let ret = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(ret, call)
}

/// `PTRACE_GETEVENTMSG`: e.g. the new thread's id at a `PTRACE_EVENT_CLONE` stop.
pub fn get_event_msg(pid: i32) -> Result<u64, SyscallError> {
    let mut msg: libc::c_ulong = 0;
    ptrace_raw(
        libc::PTRACE_GETEVENTMSG,
        pid,
        0,
        (&raw mut msg) as u64,
        "ptrace(PTRACE_GETEVENTMSG)",
    )?;
    Ok(msg)
}

/// `PTRACE_SEIZE`: attach without stopping the task.
pub fn seize(pid: i32, options: u64) -> Result<(), SyscallError> {
    ptrace_raw(libc::PTRACE_SEIZE, pid, 0, options, "ptrace(PTRACE_SEIZE)").map(drop)
}

/// `PTRACE_INTERRUPT`: stop a seized task (it reports `PTRACE_EVENT_STOP`).
pub fn interrupt(pid: i32) -> Result<(), SyscallError> {
    ptrace_raw(
        libc::PTRACE_INTERRUPT,
        pid,
        0,
        0,
        "ptrace(PTRACE_INTERRUPT)",
    )
    .map(drop)
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(pid: i32, options: u64) -> Result<(), SyscallError> {
    ptrace_raw(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        options,
        "ptrace(PTRACE_SETOPTIONS)",
    )
    .map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn detach(pid: i32, sig: i32) -> Result<(), SyscallError> {
    ptrace_raw(
        libc::PTRACE_DETACH,
        pid,
        0,
        sig as u64,
        "ptrace(PTRACE_DETACH)",
    )
    .map(drop)
}

/// `PTRACE_SYSCALL`: resume until the next syscall enter/exit stop.
pub fn resume_to_syscall(pid: i32, sig: i32) -> Result<(), SyscallError> {
    ptrace_raw(
        libc::PTRACE_SYSCALL,
        pid,
        0,
        sig as u64,
        "ptrace(PTRACE_SYSCALL)",
    )
    .map(drop)
}

/// `PTRACE_CONT`.
pub fn cont(pid: i32, sig: i32) -> Result<(), SyscallError> {
    ptrace_raw(libc::PTRACE_CONT, pid, 0, sig as u64, "ptrace(PTRACE_CONT)").map(drop)
}

/// `PTRACE_TRACEME`, called by a child that wants its parent to trace it.
pub fn trace_me() -> Result<(), SyscallError> {
    ptrace_raw(libc::PTRACE_TRACEME, 0, 0, 0, "ptrace(PTRACE_TRACEME)").map(drop)
}

/// Waits for the next stop or the end of `pid` (`__WALL`).
pub fn wait_stop(pid: i32) -> Result<Stop, SyscallError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a live c_int the kernel writes the wait status into.
        let ret = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
        if ret == -1 {
            let err = SyscallError::last("waitpid");
            if err.errno() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        break;
    }
    Ok(decode_status(status))
}

fn decode_status(status: libc::c_int) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if sig == (libc::SIGTRAP | 0x80) {
        Stop::Syscall
    } else if event != 0 {
        Stop::Event { event, sig }
    } else {
        Stop::Signal(sig)
    }
}

/// Reads the general-purpose registers (incl. fs_base and gs_base).
pub fn get_regs(pid: i32) -> Result<UserRegs, SyscallError> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: UserRegs = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: (&raw mut regs).cast(),
        iov_len: size_of::<UserRegs>(),
    };
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        pid,
        NT_PRSTATUS,
        (&raw mut iov) as u64,
        "ptrace(PTRACE_GETREGSET, NT_PRSTATUS)",
    )?;
    Ok(regs)
}

/// Writes the general-purpose registers.
pub fn set_regs(pid: i32, regs: &UserRegs) -> Result<(), SyscallError> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: (&raw mut copy).cast(),
        iov_len: size_of::<UserRegs>(),
    };
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        pid,
        NT_PRSTATUS,
        (&raw mut iov) as u64,
        "ptrace(PTRACE_SETREGSET, NT_PRSTATUS)",
    )
    .map(drop)
}

/// Reads the whole XSAVE area (x87, SSE, AVX, ... as the CPU lays it out).
pub fn get_xstate(pid: i32) -> Result<Vec<u8>, SyscallError> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE,
        (&raw mut iov) as u64,
        "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)",
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes an XSAVE area previously read with [`get_xstate`].
pub fn set_xstate(pid: i32, xstate: &[u8]) -> Result<(), SyscallError> {
    let mut buf = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE,
        (&raw mut iov) as u64,
        "ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)",
    )
    .map(drop)
}

/// Reads the blocked-signal mask.
pub fn get_sigmask(pid: i32) -> Result<u64, SyscallError> {
    let mut mask: u64 = 0;
    ptrace_raw(
        libc::PTRACE_GETSIGMASK,
        pid,
        8,
        (&raw mut mask) as u64,
        "ptrace(PTRACE_GETSIGMASK)",
    )?;
    Ok(mask)
}

/// Writes the blocked-signal mask.
pub fn set_sigmask(pid: i32, mask: u64) -> Result<(), SyscallError> {
    let mut copy = mask;
    ptrace_raw(
        libc::PTRACE_SETSIGMASK,
        pid,
        8,
        (&raw mut copy) as u64,
        "ptrace(PTRACE_SETSIGMASK)",
    )
    .map(drop)
}

/// The task's rseq registration, as `PTRACE_GET_RSEQ_CONFIGURATION` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    /// User address of `struct rseq` (0: none registered).
    pub addr: u64,
    /// Registered length.
    pub len: u32,
    /// Registration flags.
    pub flags: u32,
    /// Abort signature.
    pub sig: u32,
}

/// Reads the rseq registration.
pub fn get_rseq(pid: i32) -> Result<RseqConfig, SyscallError> {
    #[repr(C)]
    struct Raw {
        addr: u64,
        len: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut raw = Raw {
        addr: 0,
        len: 0,
        sig: 0,
        flags: 0,
        pad: 0,
    };
    ptrace_raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        size_of::<Raw>() as u64,
        (&raw mut raw) as u64,
        "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)",
    )?;
    Ok(RseqConfig {
        addr: raw.addr,
        len: raw.len,
        flags: raw.flags,
        sig: raw.sig,
    })
}

const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Size of the kernel's `siginfo_t`.
pub const SIGINFO_LEN: usize = 128;

/// The queued (pending) signals of a stopped tracee, oldest first, as raw `siginfo_t`: its own
/// queue, or with `shared` its process's. Reading does not dequeue anything.
pub fn peek_siginfo(pid: i32, shared: bool) -> Result<Vec<[u8; SIGINFO_LEN]>, SyscallError> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; SIGINFO_LEN]; BATCH];
        let mut args = Args {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let n = ptrace_raw(
            PTRACE_PEEKSIGINFO,
            pid,
            (&raw mut args) as u64,
            buf.as_mut_ptr() as u64,
            "ptrace(PTRACE_PEEKSIGINFO)",
        )?;
        let n = usize::try_from(n).unwrap_or(0).min(BATCH);
        out.extend_from_slice(&buf[..n]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters do not apply while it is traced
/// (needs `CAP_SYS_ADMIN`), so syscalls injected into a filtered task are not filtered.
pub const OPT_SUSPEND_SECCOMP: u64 = 1 << 21;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// Longest classic BPF program the kernel accepts (`BPF_MAXINSNS`).
pub const SECCOMP_MAX_INSNS: usize = 4096;

/// One seccomp filter of a stopped tracee: its flags (`SECCOMP_FILTER_FLAG_LOG` is the only
/// one the kernel reports) and its classic BPF program, one `struct sock_filter` (8 bytes) per
/// word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u64,
    /// The instructions.
    pub insns: Vec<u64>,
}

/// The seccomp filters of the stopped tracee `pid`, oldest first (needs `CAP_SYS_ADMIN`).
pub fn seccomp_filters(pid: i32) -> Result<Vec<SeccompFilter>, SyscallError> {
    let mut out = Vec::new();
    for index in 0u64.. {
        let count = match ptrace_raw(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            index,
            0,
            "ptrace(PTRACE_SECCOMP_GET_FILTER)",
        ) {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            // Past the oldest filter.
            Err(e) if e.errno() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        };
        if count == 0 || count > SECCOMP_MAX_INSNS {
            return Err(SyscallError::from_errno(
                "ptrace(PTRACE_SECCOMP_GET_FILTER)",
                libc::E2BIG,
            ));
        }
        let mut insns = vec![0u64; count];
        let got = ptrace_raw(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            index,
            insns.as_mut_ptr() as u64,
            "ptrace(PTRACE_SECCOMP_GET_FILTER)",
        )?;
        if usize::try_from(got).ok() != Some(count) {
            // Filters are never changed, only added on top: a different length is impossible.
            return Err(SyscallError::from_errno(
                "ptrace(PTRACE_SECCOMP_GET_FILTER)",
                libc::EPROTO,
            ));
        }
        #[repr(C)]
        struct Metadata {
            filter_off: u64,
            flags: u64,
        }
        let mut md = Metadata {
            filter_off: index,
            flags: 0,
        };
        ptrace_raw(
            PTRACE_SECCOMP_GET_METADATA,
            pid,
            size_of::<Metadata>() as u64,
            (&raw mut md) as u64,
            "ptrace(PTRACE_SECCOMP_GET_METADATA)",
        )?;
        out.push(SeccompFilter {
            flags: md.flags,
            insns,
        });
    }
    out.reverse();
    Ok(out)
}
