//! Scratch directories: one fresh directory per use under [`SCRATCH_ROOT`], for images, workload
//! state and captured output.
//!
//! Must not: remove anything outside the directory it created, or remove it while the test is
//! failing (its content is what explains the failure).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Root of all the temporary directories the tests create.
pub const SCRATCH_ROOT: &str = "/tmp/fastcr-vmtests";

/// A fresh directory under [`SCRATCH_ROOT`], removed on drop unless the test is failing (so a
/// failure leaves its images and workload logs behind for inspection).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/fastcr-vmtests/<tag>-<pid>-<seq>-<nanos>`.
    pub fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            PathBuf::from(SCRATCH_ROOT).join(format!("{tag}-{}-{seq}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a `&str` (all scratch paths are ASCII).
    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("scratch paths are UTF-8")
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
