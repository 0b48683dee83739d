//! Builds the BPF object (`cr-ebpf`) with aya-build and leaves it at `$OUT_DIR/cr-ebpf`, where
//! `src/bpf/mod.rs` embeds it with `include_bytes_aligned!`.
//!
//! `AYA_BUILD_SKIP=1` writes an empty object instead, so `cargo check`, `clippy` and `test` work
//! on machines without the BPF toolchain; the resulting binary reports `BpfError::NotBuilt`.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "cr-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);

    if skip_requested() {
        // aya-build returns early without producing anything; the include_bytes_aligned! in the
        // crate still needs a file to exist.
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    if which_on_path("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker not found in PATH: run `cargo xtask setup` to install the BPF toolchain \
             (or set AYA_BUILD_SKIP=1 to build fastcr without BPF)"
        ));
    }

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let root_dir = manifest_dir
        .parent()
        .context("cr-user has no parent directory")?
        .join(EBPF_PACKAGE);
    let root_dir = root_dir
        .to_str()
        .with_context(|| format!("non-UTF-8 path {}", root_dir.display()))?;

    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Package::default()
        }],
        Toolchain::default(),
    )
    .context("building the BPF object (cr-ebpf); `cargo xtask setup` installs the toolchain")?;

    if !object.exists() {
        return Err(anyhow!("aya-build did not produce {}", object.display()));
    }
    Ok(())
}

/// Mirrors aya-build's own test of the variable ("1" or "true").
fn skip_requested() -> bool {
    env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn which_on_path(program: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=PATH");
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
