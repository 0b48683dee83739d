//! BPF programs.
#![no_std]
