//! fastcr's BPF programs: one object, one module per concern.
//!
//! - `task`: process/thread lifecycle of the tracked trees (fork, thread creation, exec, exit).
//! - `dirty`: write-fault hints (which pages the tracked processes wrote, with write counts).
//! - `mmlock`: mmap-lock activity on the tracked processes' memory by anybody but fastcr.
//! - `vma`: VMA-change events (`mmap`, `munmap`, `mremap`, `brk`, `madvise`, `mprotect`).
//!
//! Shared record layouts, map names and sizes come from `cr-common`, so this object and the
//! loader in `cr-user::bpf` cannot disagree.
#![no_std]
#![no_main]

mod dirty;
mod mmlock;
mod task;
mod vma;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF programs cannot unwind or abort; the verifier rejects any path that reaches here, so
    // this body is never executed.
    loop {}
}

// The kernel only allows GPL-only helpers (bpf_probe_read_*, ringbuf output from tracepoints on
// some configs) to programs with a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
