//! VMA-change events: the userspace half of `cr-ebpf`'s `vma` module.
//!
//! One [`VmaEvent`](cr_common::vma::VmaEvent) per `mmap`/`munmap`/`mremap`/`brk`/`madvise`/
//! `mprotect` call of a tracked process, with its arguments and result, on a ring buffer of its
//! own (`VMA_EVENTS`). Each syscall has a `sys_enter_*` program (stashes the arguments) and a
//! `sys_exit_*` program (emits the record); the tables below say which record fields they read,
//! and [`super::check_layout`] verifies them against the running kernel, by name, before attach.

use aya::maps::{MapData, RingBuf};
use cr_common::vma::{VmaEvent, tp};

use super::Hook;

/// Offset of argument `i` in a `sys_enter_*` record.
const fn arg(i: usize) -> usize {
    tp::ENTER_ARG0 + i * tp::ENTER_ARG_SIZE
}

const EXIT_FIELDS: &[(&str, usize)] = &[("ret", tp::EXIT_RET)];

/// Builds the enter/exit pair of one syscall; the enter hook's field names are
/// `VmaEventKind::arg_names` (a unit test keeps the two in step).
macro_rules! pair {
    ($name:literal, [$($arg:literal),*]) => {
        [
            Hook {
                program: concat!("sys_enter_", $name),
                category: "syscalls",
                tracepoint: concat!("sys_enter_", $name),
                fields: &pair!(@args 0usize; []; $($arg),*),
            },
            Hook {
                program: concat!("sys_exit_", $name),
                category: "syscalls",
                tracepoint: concat!("sys_exit_", $name),
                fields: EXIT_FIELDS,
            },
        ]
    };
    (@args $i:expr; [$($done:expr),*]; ) => { [$($done),*] };
    (@args $i:expr; [$($done:expr),*]; $head:literal $(, $rest:literal)*) => {
        pair!(@args $i + 1; [$($done,)* ($head, arg($i))]; $($rest),*)
    };
}

const MMAP: [Hook; 2] = pair!("mmap", ["addr", "len", "prot", "flags", "fd", "off"]);
const MUNMAP: [Hook; 2] = pair!("munmap", ["addr", "len"]);
const MREMAP: [Hook; 2] = pair!(
    "mremap",
    ["addr", "old_len", "new_len", "flags", "new_addr"]
);
const BRK: [Hook; 2] = pair!("brk", ["brk"]);
const MADVISE: [Hook; 2] = pair!("madvise", ["start", "len_in", "behavior"]);
const MPROTECT: [Hook; 2] = pair!("mprotect", ["start", "len", "prot"]);

/// Every VMA hook, enter before exit for each syscall (attach order matters little: an exit
/// without a stashed enter is ignored by the program).
pub(super) const HOOKS: [&[Hook; 2]; 6] = [&MMAP, &MUNMAP, &MREMAP, &BRK, &MADVISE, &MPROTECT];

/// Pops every queued event, oldest first, without blocking.
pub(super) fn drain(ring: &mut RingBuf<MapData>) -> Vec<VmaEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match VmaEvent::from_bytes(&item) {
            Some(event) => out.push(event),
            // Only a mismatched object/loader pair can produce this; keep draining so the ring
            // buffer does not stall.
            None => tracing::warn!(len = item.len(), "short VMA event record ignored"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use cr_common::vma::VmaEventKind;

    use super::*;

    #[test]
    fn hooks_follow_the_shared_argument_names() {
        for (pair, kind) in HOOKS.iter().zip(VmaEventKind::ALL) {
            let [enter, exit] = pair;
            assert_eq!(enter.tracepoint, format!("sys_enter_{}", kind.syscall()));
            assert_eq!(exit.tracepoint, format!("sys_exit_{}", kind.syscall()));
            let names: Vec<&str> = enter.fields.iter().map(|f| f.0).collect();
            assert_eq!(names, kind.arg_names());
            for (i, f) in enter.fields.iter().enumerate() {
                assert_eq!(f.1, 16 + 8 * i, "{} {}", kind.syscall(), f.0);
            }
            assert_eq!(exit.fields, &[("ret", 16)]);
        }
    }

    const MREMAP_ENTER_FORMAT: &str = "name: sys_enter_mremap
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long old_len;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long new_len;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long flags;\toffset:40;\tsize:8;\tsigned:0;
\tfield:unsigned long new_addr;\toffset:48;\tsize:8;\tsigned:0;
";

    #[test]
    fn mremap_hook_matches_the_sample_format() {
        for &(field, expected) in MREMAP[0].fields {
            assert_eq!(
                super::super::field_offset(MREMAP_ENTER_FORMAT, field),
                Some(expected),
                "{field}"
            );
        }
    }
}
