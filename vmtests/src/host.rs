//! The host the tests run on: where the workspace is, and whether the tests run as root.
//!
//! Must not: skip silently: [`require_root`] panics.

use std::path::{Path, PathBuf};

/// The cargo workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmtests lives inside the workspace")
        .to_path_buf()
}

/// Panics unless running as root: vmtests are never skipped silently.
pub fn require_root() {
    assert!(
        euid() == 0,
        "vmtests need root: run cargo xtask test as root"
    );
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    cr_user::sys::process::geteuid()
}
