//! Types shared by the BPF programs (`cr-ebpf`) and userspace (`cr-user`).
#![no_std]
