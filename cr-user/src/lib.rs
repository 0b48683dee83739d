//! fastcr: checkpoint/restore of Linux processes.
//!
//! Layout: `sys/` is the only module with `unsafe` and raw syscalls; `proc/` parses `/proc`
//! text; `image/` is the pure on-disk format; `mm/`, `core/` and `files/` each hold both the dump
//! and the restore half of one resource; `dump.rs` and `restore.rs` only sequence them.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod sys;
pub mod bpf;
pub mod kerndat;
