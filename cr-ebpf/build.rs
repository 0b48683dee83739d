//! Makes cargo rebuild the BPF object when bpf-linker changes (a new LLVM changes codegen).
//!
//! A missing bpf-linker is not an error here: this crate is also compiled for the host as a
//! build-dependency of cr-user (library target only), and cr-user's build script is the one that
//! reports a missing toolchain with the fix (`cargo xtask setup`).

fn main() {
    match which::which("bpf-linker") {
        Ok(bpf_linker) => println!("cargo:rerun-if-changed={}", bpf_linker.display()),
        Err(_) => println!("cargo:rerun-if-env-changed=PATH"),
    }
}
