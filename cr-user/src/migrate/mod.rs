//! Live migration: `fastcr migrate` (source) and `fastcr receive` (destination), over a
//! versioned, framed, authenticated protocol (docs/protocol.md).
//!
//! Ownership of the process is decided by one message, `Go`: until the source sends it, the
//! destination holds its restored copy stopped and kills it if anything goes wrong, and the
//! source thaws its frozen original on any failure. After `Go` the destination runs the copy;
//! in lazy mode the source keeps its frozen original (the only holder of the pages not yet
//! sent) until the destination reports every page in place (`Done`), then kills it. If the
//! link dies after `Go`, the destination waits at most the link timeout for the source to
//! come back and then kills its copy; the source, having waited longer than that, thaws the
//! original: at no point do two copies run, and at no point is the process lost.

pub mod auth;
pub mod dest;
pub mod feed;
pub mod proto;
pub mod source;
mod splice;
pub mod stream;

use std::net::TcpStream;
use std::time::Duration;

use proto::ProtoError;

/// How long a side waits for a silent peer before it counts the link as lost.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a side waits for the steps that grow with memory size before the resume: the
/// source's stop-and-copy dump before the first image frame, the destination's restore before
/// `Ready`. The process is frozen meanwhile; a dead peer is still noticed at once (reset).
pub const IMAGE_WAIT: Duration = Duration::from_secs(300);
/// How often a side that has sent nothing else says it is alive (`Ping`) after the resume.
pub const PING_PERIOD: Duration = Duration::from_secs(1);

/// Why a migration failed. Each variant says what became of the process.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The protocol or the connection failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// Connecting failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The dump failed; the process runs on untouched.
    #[error(transparent)]
    Dump(#[from] crate::dump::DumpError),
    /// The restore failed; nothing restored is left.
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    /// The peer broke the protocol.
    #[error("peer sent {got} while {expected} was expected")]
    Unexpected {
        /// What came.
        got: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// The migration failed before the destination resumed; the original was thawed.
    #[error(
        "migration of process {pid} failed before the destination resumed it ({why}); the original was thawed and runs on"
    )]
    Thawed {
        /// The process.
        pid: i32,
        /// What happened.
        why: String,
    },
    /// The link died after the destination resumed, and did not come back.
    #[error(
        "link to the destination lost after it resumed process {pid} ({why}); the destination kills its copy after {timeout_s} s without the source, so the original was thawed after waiting longer than that"
    )]
    LostAfterResume {
        /// The process.
        pid: i32,
        /// What happened.
        why: String,
        /// The link timeout.
        timeout_s: u64,
    },
    /// The original could not be thawed or killed.
    #[error(transparent)]
    Freeze(#[from] crate::freeze::FreezeError),
    /// A local file operation failed.
    #[error("{what}")]
    Io {
        /// What was done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer reported a failure.
    #[error("peer failed: {0}")]
    Peer(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Io { what, source }
}

/// Sets the options every migration connection uses: no Nagle delay, and a read timeout so a
/// silent peer cannot hang a side forever.
fn tune(s: &TcpStream) -> Result<(), MigrateError> {
    s.set_nodelay(true)
        .map_err(io_err("setsockopt(TCP_NODELAY)"))?;
    s.set_read_timeout(Some(LINK_TIMEOUT))
        .map_err(io_err("setsockopt(SO_RCVTIMEO)"))
}

/// A scratch directory for the image in flight, removed on drop.
pub struct TempImages {
    path: std::path::PathBuf,
}

impl TempImages {
    /// Creates `fastcr-<tag>-<pid>-<nanos>` under /dev/shm (memory) or the temp dir.
    pub fn new(tag: &str) -> Result<Self, MigrateError> {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("fastcr-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempImages {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
