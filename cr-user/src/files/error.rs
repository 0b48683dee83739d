//! Why files could not be saved or restored: the one error type of `files` and its submodules.
//! It only names what failed; it must not decide anything.

use super::{locks, objects};
use crate::inject::InjectError;
use crate::proc::ProcError;

/// Why files could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// An fd fastcr cannot save.
    #[error("process {pid}: cannot dump fd {fd} ({target}): {why}")]
    Unsupported {
        /// Process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// What it points to.
        target: String,
        /// Why.
        why: &'static str,
    },
    /// A file the image refers to is missing or changed.
    #[error("file {path} (fd {fd}) is missing or changed since the dump")]
    FileChanged {
        /// The fd.
        fd: i32,
        /// The path.
        path: String,
    },
    /// The image has standard streams to hand over but `--shell-job` was not given.
    #[error(
        "the image was dumped with --shell-job (fd {fd} was {was}); restore it with --shell-job"
    )]
    NeedShellJob {
        /// The fd.
        fd: i32,
        /// What it was.
        was: String,
    },
    /// Reading or refilling a pipe's data failed.
    #[error("cannot save the data in flight in the pipe at fd {fd} of process {pid}")]
    PipeIo {
        /// Process.
        pid: i32,
        /// The fd whose end was used.
        fd: i32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Refilling a restored pipe failed.
    #[error("cannot refill pipe (fd {fd}) of restored process {pid}")]
    PipeRefill {
        /// Process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The image lists a pipe end without its pipe.
    #[error("fd {fd} refers to pipe {inode}, which the image does not hold")]
    MissingPipe {
        /// The fd.
        fd: i32,
        /// The pipe's inode.
        inode: u64,
    },
    /// Reading a socket's state failed.
    #[error("cannot read the socket at fd {fd} of process {pid}")]
    SocketIo {
        /// Process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The failed call.
        #[source]
        source: crate::sys::SyscallError,
    },
    /// Making a socket again failed.
    #[error("cannot make socket {inode} again")]
    SocketRestore {
        /// Its inode at dump time.
        inode: u64,
        /// The failed call.
        #[source]
        source: crate::sys::SyscallError,
    },
    /// A socket's address is taken (or cannot be bound).
    #[error("cannot bind a socket to {addr}")]
    SocketBind {
        /// The address.
        addr: String,
        /// The failed call (EADDRINUSE when taken).
        #[source]
        source: crate::sys::SyscallError,
    },
    /// The image refers to a socket it does not hold.
    #[error("the image refers to socket {inode}, which it does not hold")]
    MissingSocket {
        /// Its inode at dump time.
        inode: u64,
    },
    /// Comparing two fds' open file descriptions (`kcmp`) failed.
    #[error("cannot compare fd {fd} of process {pid} with the fds open on the same file")]
    Kcmp {
        /// Process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The failed call.
        #[source]
        source: crate::sys::SyscallError,
    },
    /// Reading a FIFO's data in flight (or putting it back) failed.
    #[error("cannot save the data in flight in the fifo {path} at fd {fd} of process {pid}")]
    FifoIo {
        /// Process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// The FIFO's path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Opening a file or FIFO in fastcr (a shared description, a FIFO's holder) or refilling a
    /// FIFO failed.
    #[error("cannot reopen {path} (fd {fd}) for the restore")]
    Reopen {
        /// The fd of the image.
        fd: i32,
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An fd of the image duplicates an fd the image does not reopen.
    #[error("fd {fd} duplicates fd {of}, which the image does not reopen before it")]
    BadDup {
        /// The fd.
        fd: i32,
        /// The fd it duplicates.
        of: i32,
    },
    /// A shared description in the image that is not a file reopened by path.
    #[error("fd {fd} is a shared file description of a kind that is not reopened by path")]
    BadShared {
        /// The fd.
        fd: i32,
    },
    /// Reading `/proc` failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// A memfd or deleted file could not be saved or recreated.
    #[error(transparent)]
    Object(#[from] objects::ObjectError),
    /// A file lock could not be saved or taken back.
    #[error(transparent)]
    Lock(#[from] locks::LockError),
}
