//! VMA-change events: the memory-map syscalls of the tracked processes, with their arguments and
//! result. What `cr-ebpf`'s `vma` module reports and `cr-user::bpf::TaskTracker::drain_vma_events`
//! returns.
//!
//! The `syscalls:sys_exit_*` tracepoints carry only the return value, so the BPF side stashes the
//! arguments per thread at `sys_enter_*` (in [`VMA_PENDING_MAP`]) and emits one [`VmaEvent`] at
//! exit with both. Failed calls are reported too (`ret` is `-errno`), so userspace sees every
//! attempt; [`VmaEvent::failed`] tells them apart.

use core::mem::size_of;

/// Ring buffer carrying [`VmaEvent`]s to userspace (separate from the task events, so a burst of
/// `mmap` calls cannot crowd out a fork).
pub const VMA_EVENTS_MAP: &str = "VMA_EVENTS";
/// Size in bytes of [`VMA_EVENTS_MAP`] (a power of two, a multiple of the page size). One event
/// takes 88 bytes with the ring buffer's 8-byte header: about 23800 undrained events.
pub const VMA_EVENTS_BYTES: u32 = 1 << 21;

/// Hash map of syscalls in flight: key = tid (`u32`), value = the [`VmaEvent`] built at
/// `sys_enter_*`, completed and removed at `sys_exit_*`.
pub const VMA_PENDING_MAP: &str = "VMA_PENDING";
/// Capacity of [`VMA_PENDING_MAP`]: a thread has at most one syscall in flight, so this bounds
/// the tracked threads that can be inside a memory-map syscall at the same instant.
pub const VMA_PENDING_MAX_ENTRIES: u32 = 16_384;

/// Per-CPU array of `u64` counters, indexed by the `STAT_*` constants of this module.
pub const VMA_STATS_MAP: &str = "VMA_STATS";
/// Events dropped because [`VMA_EVENTS_MAP`] was full.
pub const STAT_VMA_EVENTS_LOST: u32 = 0;
/// Syscalls not reported because [`VMA_PENDING_MAP`] was full at `sys_enter_*`.
pub const STAT_VMA_PENDING_FULL: u32 = 1;
/// Number of entries of [`VMA_STATS_MAP`].
pub const VMA_STATS_MAX_ENTRIES: u32 = 2;

/// Most arguments a reported syscall takes (`mmap`).
pub const MAX_ARGS: usize = 6;

/// Byte offsets in the `syscalls:sys_{enter,exit}_*` records (Linux 6.18,
/// `/sys/kernel/tracing/events/syscalls/*/format`): after `int __syscall_nr` at 8, every argument
/// is widened to 8 bytes, in declaration order. Userspace checks each argument's name and offset
/// before attaching.
pub mod tp {
    /// First argument of a `sys_enter_*` record.
    pub const ENTER_ARG0: usize = 16;
    /// Stride between arguments of a `sys_enter_*` record.
    pub const ENTER_ARG_SIZE: usize = 8;
    /// `long ret` of a `sys_exit_*` record.
    pub const EXIT_RET: usize = 16;
}

/// Which syscall a [`VmaEvent`] reports. Stored as `u32` in [`VmaEvent::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaEventKind {
    /// `mmap(addr, len, prot, flags, fd, off)`; `ret` is the mapped address.
    Mmap = 1,
    /// `munmap(addr, len)`.
    Munmap = 2,
    /// `mremap(addr, old_len, new_len, flags, new_addr)`; `ret` is the new address.
    Mremap = 3,
    /// `brk(brk)`; `ret` is the program break after the call (the old one if it failed).
    Brk = 4,
    /// `madvise(start, len_in, behavior)`.
    Madvise = 5,
    /// `mprotect(start, len, prot)`.
    Mprotect = 6,
}

impl VmaEventKind {
    /// Every kind, in `kind` order.
    pub const ALL: [Self; 6] = [
        Self::Mmap,
        Self::Munmap,
        Self::Mremap,
        Self::Brk,
        Self::Madvise,
        Self::Mprotect,
    ];

    /// Decodes [`VmaEvent::kind`]; `None` for a value this build does not know.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Mmap),
            2 => Some(Self::Munmap),
            3 => Some(Self::Mremap),
            4 => Some(Self::Brk),
            5 => Some(Self::Madvise),
            6 => Some(Self::Mprotect),
            _ => None,
        }
    }

    /// The syscall's name, as in its tracepoints `sys_enter_<name>` / `sys_exit_<name>`.
    #[must_use]
    pub const fn syscall(self) -> &'static str {
        match self {
            Self::Mmap => "mmap",
            Self::Munmap => "munmap",
            Self::Mremap => "mremap",
            Self::Brk => "brk",
            Self::Madvise => "madvise",
            Self::Mprotect => "mprotect",
        }
    }

    /// How many arguments the syscall takes (the length of [`Self::arg_names`]).
    #[must_use]
    pub const fn nargs(self) -> usize {
        match self {
            Self::Mmap => 6,
            Self::Munmap => 2,
            Self::Mremap => 5,
            Self::Brk => 1,
            Self::Madvise | Self::Mprotect => 3,
        }
    }

    /// The argument names in the `sys_enter_<name>` record, in order; argument `i` is at
    /// `tp::ENTER_ARG0 + i * tp::ENTER_ARG_SIZE` and lands in `VmaEvent::args[i]`.
    #[must_use]
    pub const fn arg_names(self) -> &'static [&'static str] {
        match self {
            Self::Mmap => &["addr", "len", "prot", "flags", "fd", "off"],
            Self::Munmap => &["addr", "len"],
            Self::Mremap => &["addr", "old_len", "new_len", "flags", "new_addr"],
            Self::Brk => &["brk"],
            Self::Madvise => &["start", "len_in", "behavior"],
            Self::Mprotect => &["start", "len", "prot"],
        }
    }
}

/// One memory-map syscall of a tracked process, written by BPF into [`VMA_EVENTS_MAP`].
///
/// ```text
///  0  kind    u32       VmaEventKind
///  4  tgid    u32       process that made the call
///  8  tid     u32       thread that made the call
/// 12  _pad    u32
/// 16  ts_ns   u64       bpf_ktime_get_ns at syscall exit (CLOCK_MONOTONIC)
/// 24  ret     i64       the syscall's return value (-errno on failure)
/// 32  args    [u64; 6]  the raw arguments (see VmaEventKind::arg_names); unused ones are 0
/// 80
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaEvent {
    /// A [`VmaEventKind`] as `u32`.
    pub kind: u32,
    /// Thread group id of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
    /// Kernel monotonic time of the syscall's exit, in nanoseconds.
    pub ts_ns: u64,
    /// Return value: an address for `mmap`/`mremap`/`brk`, 0 or `-errno` for the others.
    pub ret: i64,
    /// The syscall's arguments as the kernel received them, widened to `u64`.
    pub args: [u64; MAX_ARGS],
}

const _: () = assert!(size_of::<VmaEvent>() == 80);

/// A [`VmaEvent`]'s arguments, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaChange {
    /// `mmap`: the request (`addr` is a hint unless `MAP_FIXED*`); the result is in `ret`.
    Mmap {
        /// Requested address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `PROT_*`.
        prot: u32,
        /// `MAP_*`.
        flags: u32,
        /// File descriptor, -1 for anonymous mappings.
        fd: i32,
        /// File offset in bytes.
        offset: u64,
    },
    /// `munmap`.
    Munmap {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `mremap`: the result (new address) is in `ret`.
    Mremap {
        /// Old start address.
        old_addr: u64,
        /// Old length in bytes.
        old_len: u64,
        /// New length in bytes.
        new_len: u64,
        /// `MREMAP_*`.
        flags: u32,
        /// Requested new address (meaningful with `MREMAP_FIXED`).
        new_addr: u64,
    },
    /// `brk`: the resulting break is in `ret`.
    Brk {
        /// Requested break (0 queries the current one).
        requested: u64,
    },
    /// `madvise`.
    Madvise {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `MADV_*`.
        advice: i32,
    },
    /// `mprotect`.
    Mprotect {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// `PROT_*`.
        prot: u32,
    },
}

/// Low 32 bits of a widened `int`/`unsigned int` argument (the kernel stores them sign- or
/// zero-extended to 8 bytes; the upper half carries nothing).
const fn low32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

impl VmaEvent {
    /// Size of the record on the wire.
    pub const SIZE: usize = size_of::<Self>();

    /// The decoded kind, `None` for an unknown value.
    #[must_use]
    pub const fn kind(&self) -> Option<VmaEventKind> {
        VmaEventKind::from_u32(self.kind)
    }

    /// Did the syscall fail? (`brk` never returns an error; it keeps the old break.)
    #[must_use]
    pub const fn failed(&self) -> bool {
        // Every errno is in -4095..=-1; addresses returned by mmap/mremap are never in that
        // range (it is the top page of the kernel half).
        self.ret < 0 && self.ret >= -4095
    }

    /// The arguments with their names, `None` for an unknown kind.
    #[must_use]
    pub const fn change(&self) -> Option<VmaChange> {
        let a = &self.args;
        let change = match self.kind() {
            Some(VmaEventKind::Mmap) => VmaChange::Mmap {
                addr: a[0],
                len: a[1],
                prot: low32(a[2]),
                flags: low32(a[3]),
                fd: low32(a[4]).cast_signed(),
                offset: a[5],
            },
            Some(VmaEventKind::Munmap) => VmaChange::Munmap {
                addr: a[0],
                len: a[1],
            },
            Some(VmaEventKind::Mremap) => VmaChange::Mremap {
                old_addr: a[0],
                old_len: a[1],
                new_len: a[2],
                flags: low32(a[3]),
                new_addr: a[4],
            },
            Some(VmaEventKind::Brk) => VmaChange::Brk { requested: a[0] },
            Some(VmaEventKind::Madvise) => VmaChange::Madvise {
                addr: a[0],
                len: a[1],
                advice: low32(a[2]).cast_signed(),
            },
            Some(VmaEventKind::Mprotect) => VmaChange::Mprotect {
                addr: a[0],
                len: a[1],
                prot: low32(a[2]),
            },
            None => return None,
        };
        Some(change)
    }

    /// Decodes a record from the bytes of a ring-buffer entry (native endian, as BPF wrote it),
    /// without `unsafe`. Returns `None` if `bytes` is shorter than [`Self::SIZE`].
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..Self::SIZE)?;
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_ne_bytes(a)
        };
        let mut args = [0u64; MAX_ARGS];
        for (i, arg) in args.iter_mut().enumerate() {
            *arg = u64_at(32 + 8 * i);
        }
        Some(Self {
            kind: u32_at(0),
            tgid: u32_at(4),
            tid: u32_at(8),
            _pad: u32_at(12),
            ts_ns: u64_at(16),
            ret: u64_at(24).cast_signed(),
            args,
        })
    }
}

// SAFETY: VmaEvent is #[repr(C)], Copy, has no implicit padding (the size assert equals the sum
// of its fields; `_pad` makes the alignment hole explicit) and every bit pattern is valid for its
// integer fields.
#[cfg(feature = "user")]
unsafe impl aya::Pod for VmaEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmaEvent {
        VmaEvent {
            kind: VmaEventKind::Mmap as u32,
            tgid: 10,
            tid: 11,
            _pad: 0,
            ts_ns: 0x0102_0304_0506_0708,
            ret: 0x7f00_0000_0000,
            args: [0, 4096, 3, 0x22, u64::MAX, 0],
        }
    }

    #[test]
    fn from_bytes_round_trips_every_field() {
        let ev = sample();
        let mut bytes = [0u8; VmaEvent::SIZE];
        bytes[0..4].copy_from_slice(&ev.kind.to_ne_bytes());
        bytes[4..8].copy_from_slice(&ev.tgid.to_ne_bytes());
        bytes[8..12].copy_from_slice(&ev.tid.to_ne_bytes());
        bytes[16..24].copy_from_slice(&ev.ts_ns.to_ne_bytes());
        bytes[24..32].copy_from_slice(&ev.ret.to_ne_bytes());
        for (i, a) in ev.args.iter().enumerate() {
            bytes[32 + 8 * i..40 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        assert_eq!(VmaEvent::from_bytes(&bytes), Some(ev));
        assert_eq!(VmaEvent::from_bytes(&bytes[..79]), None);
    }

    #[test]
    fn change_names_the_arguments() {
        let ev = sample();
        assert_eq!(
            ev.change(),
            Some(VmaChange::Mmap {
                addr: 0,
                len: 4096,
                prot: 3,
                flags: 0x22,
                fd: -1,
                offset: 0
            })
        );
        assert!(!ev.failed());
        let madv = VmaEvent {
            kind: VmaEventKind::Madvise as u32,
            ret: -22,
            args: [0x1000, 0x2000, 4, 0, 0, 0],
            ..ev
        };
        assert!(madv.failed());
        assert_eq!(
            madv.change(),
            Some(VmaChange::Madvise {
                addr: 0x1000,
                len: 0x2000,
                advice: 4
            })
        );
        assert_eq!(VmaEvent { kind: 0, ..ev }.change(), None);
    }

    #[test]
    fn kinds_round_trip_and_fit_the_argument_array() {
        for kind in VmaEventKind::ALL {
            assert_eq!(VmaEventKind::from_u32(kind as u32), Some(kind));
            assert!(kind.arg_names().len() <= MAX_ARGS, "{}", kind.syscall());
            assert_eq!(kind.arg_names().len(), kind.nargs(), "{}", kind.syscall());
        }
        assert_eq!(VmaEventKind::from_u32(7), None);
    }
}
