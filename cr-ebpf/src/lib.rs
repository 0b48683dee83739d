#![no_std]

// This file exists to enable the library target: cr-user lists this crate as a
// build-dependency so cargo reruns cr-user's build script (which compiles the BPF binary target
// with aya-build) whenever this crate changes.
