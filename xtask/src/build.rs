//! `cargo xtask build`: installs what is missing, then builds the release `fastcr` binary
//! (cr-user's build script compiles the BPF object on the way).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::setup;
use crate::util::{cargo, run, step, target_dir};

/// Builds `fastcr` in release mode and returns the path of the binary.
pub(crate) fn fastcr() -> Result<PathBuf> {
    step("build: cargo build --release -p cr-user");
    run(cargo().args(["build", "--release", "-p", "cr-user"]))?;
    let bin = target_dir().join("release").join("fastcr");
    if !bin.is_file() {
        bail!(
            "build: cargo succeeded but {} does not exist",
            bin.display()
        );
    }
    Ok(bin)
}

/// `cargo xtask build`.
pub(crate) fn cmd() -> Result<()> {
    step("setup");
    setup::ensure()?;
    let bin = fastcr()?;
    println!("fastcr: {}", bin.display());
    Ok(())
}
