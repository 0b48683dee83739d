//! Types shared by the BPF programs (`cr-ebpf`) and userspace (`cr-user`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so both sides agree on
//! the byte layout; each shared struct has a compile-time size assert. Map names and sizes live
//! here too so the BPF object and the loader can't drift apart. The image format does not belong
//! here: BPF never reads images, and this crate must stay `no_std`.
#![no_std]

pub mod dirty;
pub mod mmlock;
pub mod task;
pub mod vma;
