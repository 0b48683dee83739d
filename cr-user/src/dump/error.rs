//! Why a dump failed.

use std::path::PathBuf;

use crate::bpf::BpfError;
use crate::core::CoreError;
use crate::files::FilesError;
use crate::freeze::FreezeError;
use crate::image::ImageError;
use crate::inject::InjectError;
use crate::mm::MmError;
use crate::proc::ProcError;
use crate::track::TrackError;

/// Why a dump failed. The workload is left running as it was in every case.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// No such process.
    #[error("no such process {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: i32,
    },
    /// Kernel threads have no user state to checkpoint.
    #[error("process {pid} is a kernel thread")]
    KernelThread {
        /// The pid.
        pid: i32,
    },
    /// The pid is a thread, not a process.
    #[error("{pid} is a thread of process {tgid}; dump the process")]
    NotAProcess {
        /// The pid given.
        pid: i32,
        /// Its process.
        tgid: i32,
    },
    /// Something about the tree that this version cannot checkpoint.
    #[error("process {pid}: {what}")]
    Unsupported {
        /// The task.
        pid: i32,
        /// What.
        what: String,
    },
    /// The process forked, made a thread or called exec while it was being frozen (the dump is
    /// retried a few times before this is reported).
    #[error("process {pid}: {what}")]
    Raced {
        /// The process.
        pid: i32,
        /// What happened.
        what: String,
    },
    /// Freezing or releasing failed.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// `/proc` could not be read.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Memory could not be saved.
    #[error(transparent)]
    Mm(#[from] MmError),
    /// Files could not be saved.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// CPU or signal state could not be saved.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// The image could not be written.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The parent image left no write tracking to continue from.
    #[error(
        "parent image {dir} has no write tracking to continue from (make it with `fastcr pre-dump`)"
    )]
    NoTracking {
        /// The parent dir.
        dir: PathBuf,
    },
    /// Write tracking for pre-copy failed.
    #[error(transparent)]
    Track(#[from] TrackError),
    /// BPF tracking reported a change the dump cannot follow.
    #[error(transparent)]
    Bpf(#[from] BpfError),
}
