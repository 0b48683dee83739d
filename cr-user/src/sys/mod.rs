//! The one place for `unsafe` and raw syscalls. Everything here is a safe function over owned
//! file descriptors and pids; callers never see a raw pointer.

pub mod probe;
