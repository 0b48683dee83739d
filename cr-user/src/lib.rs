//! fastcr: checkpoint/restore of Linux processes.
//!
//! Layout: `sys/` is the only module with `unsafe` and raw syscalls; `proc/` parses `/proc`
//! text; `image/` is the pure on-disk format; `mm/`, `core/` and `files/` each hold both the dump
//! and the restore half of one resource; `dump.rs` and `restore.rs` only sequence them.
#![deny(unsafe_code)]

pub mod bpf;
pub mod core;
pub mod dump;
pub mod files;
pub mod freeze;
pub mod image;
pub mod inject;
pub mod kerndat;
pub mod lazy;
pub mod migrate;
pub mod mm;
pub mod pidns;
pub mod predump;
pub mod proc;
pub mod restore;
pub mod show;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
pub mod track;
pub mod tree;

/// An error and its causes on one line, `: `-separated (for messages passed on as text).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
