//! File descriptors and filesystem context: both the dump half and the restore half.
//!
//! Supported now: regular files and directories (reopened by path at the same offset and flags),
//! harmless character devices (`/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random`,
//! `/dev/urandom`), named pipes (FIFOs, reopened by path, with their data in flight), and with
//! `--shell-job` standard streams that are terminals or pipes, which are handed the restorer's
//! own; pipes, anonymous-inode objects (`anon`) and sockets (`socket`). Fds that share one open
//! file description (`dup`, or a file opened before a fork) share one again after a restore.
//! Anything else is refused at dump time, naming the fd.

mod anon;
pub mod locks;
pub mod objects;
mod socket;
mod tcp;

pub use socket::{Parked, TreeSockets, addr_string, park};
pub use tcp::{begin as tcp_repair_begin, end as tcp_repair_end};

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use crate::image::files::{Fd, FdKind, FilesImage, Pipe};
use crate::inject::{InjectError, Injector};
use crate::proc::{self, ProcError};

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

const SAFE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
const SCRATCH_PATH: u64 = 1024;

/// One fd as `/proc` shows it.
struct RawFd {
    fd: i32,
    target: String,
    pos: u64,
    flags: u32,
    meta: Option<std::fs::Metadata>,
}

fn is_reader(flags: u32) -> bool {
    flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32
}

/// What the processes of a dumped tree share: where the ends of its pipes are, the open file
/// descriptions held by several of its processes, and which process saves each FIFO's data.
/// Empty for one process.
#[derive(Debug, Default)]
pub struct TreePipes {
    /// Pipe inode → (a reader, a writer, the first process holding either end), each end as
    /// (pid, fd).
    pipes: BTreeMap<u64, TreePipe>,
    /// (pid, fd) → id of the open file description, for the fds (of files reopened by path)
    /// whose description is held by more than one process.
    shared: BTreeMap<(i32, i32), u64>,
    /// FIFO (dev, ino) → the first process (in tree order) holding it: it saves the data.
    fifo_owner: BTreeMap<(u64, u64), i32>,
}

impl TreePipes {
    /// Nothing shared (a dump of one process).
    pub fn new() -> Self {
        Self::default()
    }
}

/// The ends of one pipe across a tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreePipe {
    /// A read end.
    pub reader: Option<(i32, i32)>,
    /// A write end.
    pub writer: Option<(i32, i32)>,
    /// The first process (in tree order) that holds an end: it carries the pipe's data.
    pub owner: i32,
    /// A socket, not a pipe: only its inode matters (a unix peer inside the tree).
    pub socket: bool,
}

/// Finds the pipe ends, the shared open file descriptions and the FIFOs of every process in
/// `pids` (tree order).
pub fn tree_pipes(pids: &[i32]) -> Result<TreePipes, FilesError> {
    let mut out = TreePipes::new();
    // Fds on files reopened by path, by (dev, ino), in tree order.
    let mut by_file: BTreeMap<(u64, u64), Vec<(i32, i32)>> = BTreeMap::new();
    for &pid in pids {
        for fd in proc::fds(pid)? {
            let target = proc::read_link(pid, &format!("fd/{fd}"))?
                .to_string_lossy()
                .into_owned();
            let is_socket = target.starts_with("socket:");
            if target.starts_with('/') {
                if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) {
                    let key = (meta.dev(), meta.ino());
                    by_file.entry(key).or_default().push((pid, fd));
                    if meta.file_type().is_fifo() {
                        out.fifo_owner.entry(key).or_insert(pid);
                    }
                }
                continue;
            }
            if !target.starts_with("pipe:") && !is_socket {
                continue;
            }
            let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            if is_socket {
                out.pipes.entry(meta.ino()).or_insert(TreePipe {
                    owner: pid,
                    socket: true,
                    ..TreePipe::default()
                });
                continue;
            }
            let (_, flags) = proc::fdinfo(pid, fd)?;
            let e = out.pipes.entry(meta.ino()).or_insert(TreePipe {
                owner: pid,
                ..TreePipe::default()
            });
            if is_reader(flags) {
                e.reader.get_or_insert((pid, fd));
            } else {
                e.writer.get_or_insert((pid, fd));
            }
        }
    }
    // Which of the fds on one file share a description: each is compared with the first fd of
    // every description found so far (kcmp), so a file opened once and inherited costs one
    // call per holder.
    let mut next_id = 1u64;
    for holders in by_file.into_values().filter(|h| h.len() > 1) {
        let mut descs: Vec<Vec<(i32, i32)>> = Vec::new();
        for h in holders {
            let mut found = None;
            for (i, d) in descs.iter().enumerate() {
                if same_description(d[0], h)? {
                    found = Some(i);
                    break;
                }
            }
            match found {
                Some(i) => descs[i].push(h),
                None => descs.push(vec![h]),
            }
        }
        for d in descs {
            if d.iter().any(|&(p, _)| p != d[0].0) {
                for &h in &d {
                    out.shared.insert(h, next_id);
                }
                next_id += 1;
            }
        }
    }
    Ok(out)
}

/// Whether the fds `a` and `b`, each (pid, fd), are one open file description. On a kernel
/// without `kcmp` (`CONFIG_KCMP` off) every fd is taken as a description of its own, as before
/// fastcr knew about sharing, with one warning.
fn same_description(a: (i32, i32), b: (i32, i32)) -> Result<bool, FilesError> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match crate::sys::fs::same_file_description(a, b) {
        Ok(same) => Ok(same),
        Err(e) if e.errno() == Some(libc::ENOSYS) => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "kcmp is not available: fds sharing an open file description are restored \
                     as separate descriptions"
                );
            }
            Ok(false)
        }
        Err(source) => Err(FilesError::Kcmp {
            pid: b.0,
            fd: b.1,
            source,
        }),
    }
}

/// Saves cwd, umask and the fd table of `pid`. Must run while the process is frozen: the data in
/// flight in its pipes is read out and written straight back.
/// `skip` is an fd that is fastcr's own (the write tracking a pre-dump left), not the program's.
/// `tree` locates pipe ends held by other processes of the dumped tree (empty for one process).
pub fn dump(
    pid: i32,
    umask: u32,
    shell_job: bool,
    skip: Option<i32>,
    tree: &TreePipes,
) -> Result<FilesImage, FilesError> {
    let cwd = proc::read_link(pid, "cwd")?.to_string_lossy().into_owned();
    let mut raw = Vec::new();
    for fd in proc::fds(pid)?.into_iter().filter(|fd| Some(*fd) != skip) {
        let target = proc::read_link(pid, &format!("fd/{fd}"))?
            .to_string_lossy()
            .into_owned();
        let (pos, flags) = proc::fdinfo(pid, fd)?;
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
        raw.push(RawFd {
            fd,
            target,
            pos,
            flags,
            meta,
        });
    }
    // Which ends of each pipe this process holds: a pipe with both ends inside is saved whole.
    let mut ends: BTreeMap<u64, (Option<i32>, Option<i32>)> = BTreeMap::new();
    for r in &raw {
        if let Some(m) = r
            .meta
            .as_ref()
            .filter(|m| m.file_type().is_fifo() && r.target.starts_with("pipe:"))
        {
            let e = ends.entry(m.ino()).or_default();
            if is_reader(r.flags) {
                e.0.get_or_insert(r.fd);
            } else {
                e.1.get_or_insert(r.fd);
            }
        }
    }
    // The sockets the dump holds: this process's, and the tree's.
    let inside: std::collections::BTreeSet<u64> = raw
        .iter()
        .filter(|r| r.target.starts_with("socket:"))
        .filter_map(|r| r.meta.as_ref().map(MetadataExt::ino))
        .chain(tree.pipes.iter().filter(|(_, t)| t.socket).map(|(i, _)| *i))
        .collect();
    let mut ctx = socket::DumpCtx {
        pid,
        pidfd: None,
        unix: None,
        inside: &inside,
    };
    let mut fds = Vec::new();
    let mut pipes = Vec::new();
    for r in &raw {
        let kind = classify(&mut ctx, r, &ends, tree, shell_job)?;
        if let FdKind::Pipe { inode } = kind
            && !pipes.iter().any(|p: &Pipe| p.inode == inode)
            && let Some(&(Some(rd), Some(wr))) = ends.get(&inode)
        {
            pipes.push(save_pipe(inode, (pid, rd), (pid, wr))?);
        }
        if let FdKind::SharedPipe { inode } = kind
            && !pipes.iter().any(|p: &Pipe| p.inode == inode)
            && let Some(TreePipe {
                reader: Some(rd),
                writer: Some(wr),
                owner,
                ..
            }) = tree.pipes.get(&inode).copied()
            && owner == pid
        {
            pipes.push(save_pipe(inode, rd, wr)?);
        }
        fds.push(Fd {
            fd: r.fd,
            flags: r.flags,
            pos: r.pos,
            kind,
        });
    }
    share_descriptions(pid, &raw, &mut fds, tree)?;
    anon::check_watches(pid, &fds)?;
    Ok(FilesImage {
        cwd,
        umask,
        fds,
        pipes,
    })
}

fn classify(
    ctx: &mut socket::DumpCtx<'_>,
    r: &RawFd,
    ends: &BTreeMap<u64, (Option<i32>, Option<i32>)>,
    tree: &TreePipes,
    shell_job: bool,
) -> Result<FdKind, FilesError> {
    let pid = ctx.pid;
    let unsupported = |why| FilesError::Unsupported {
        pid,
        fd: r.fd,
        target: r.target.clone(),
        why,
    };
    let meta = r
        .meta
        .as_ref()
        .ok_or_else(|| unsupported("cannot stat it"))?;
    let ft = meta.file_type();
    let target = r.target.as_str();
    let is_stream = target.starts_with("pipe:")
        || target.starts_with("/dev/pts/")
        || target.starts_with("/dev/tty");
    if ft.is_file() && objects::is_object_fd(target) {
        return Ok(FdKind::Object {
            dev: meta.dev(),
            ino: meta.ino(),
        });
    }
    if ft.is_file() || ft.is_dir() {
        if target.ends_with(" (deleted)") {
            return Err(unsupported("the file was deleted (not supported yet)"));
        }
        // The path must still name the same file, or restore would open another one.
        let same =
            std::fs::metadata(target).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if !same {
            return Err(unsupported("the path no longer names the open file"));
        }
        return Ok(FdKind::Path {
            path: target.to_string(),
            size: ft.is_file().then_some(meta.len()),
        });
    }
    if ft.is_char_device() && SAFE_DEVICES.contains(&target) {
        return Ok(FdKind::Path {
            path: target.to_string(),
            size: None,
        });
    }
    if ft.is_fifo() && target.starts_with('/') {
        if target.ends_with(" (deleted)") {
            return Err(unsupported("a FIFO whose path was removed"));
        }
        let same =
            std::fs::metadata(target).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if !same {
            return Err(unsupported("the path no longer names the open FIFO"));
        }
        return Ok(FdKind::Fifo {
            path: target.to_string(),
            dev: meta.dev(),
            ino: meta.ino(),
            contents: None,
        });
    }
    if ft.is_fifo()
        && target.starts_with("pipe:")
        && matches!(ends.get(&meta.ino()), Some((Some(_), Some(_))))
    {
        return Ok(FdKind::Pipe { inode: meta.ino() });
    }
    if ft.is_fifo()
        && target.starts_with("pipe:")
        && tree
            .pipes
            .get(&meta.ino())
            .is_some_and(|t| t.reader.is_some() && t.writer.is_some())
    {
        return Ok(FdKind::SharedPipe { inode: meta.ino() });
    }
    if is_stream && r.fd <= 2 {
        if shell_job {
            return Ok(FdKind::Inherited {
                was: target.to_string(),
            });
        }
        return Err(unsupported(
            "a terminal or pipe leading outside the dump; use --shell-job to hand it to the restorer",
        ));
    }
    if ft.is_socket() && target.starts_with("socket:") {
        return socket::dump(ctx, r.fd, meta.ino(), target);
    }
    if let Some(kind) = anon::dump(pid, r.fd, target)? {
        return Ok(kind);
    }
    Err(unsupported(if ft.is_fifo() {
        "a pipe or FIFO leading outside the dump (to a process not in the dumped tree)"
    } else if target == "anon_inode:[userfaultfd]" {
        "a userfaultfd (if `fastcr pre-dump` left it, dump with --prev-images-dir)"
    } else if target.starts_with("anon_inode:") {
        "this kernel object is not supported yet"
    } else {
        "device or special file"
    }))
}

/// Reads the unread bytes out of a pipe through `/proc/PID/fd` of a read end, and writes them
/// straight back through a write end, so the (frozen) processes find the pipe as they left it.
fn save_pipe(
    inode: u64,
    (pid, rd): (i32, i32),
    (wpid, wr): (i32, i32),
) -> Result<Pipe, FilesError> {
    let io = |fd: i32| move |source: std::io::Error| FilesError::PipeIo { pid, fd, source };
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{rd}"))
        .map_err(io(rd))?;
    let size = crate::sys::fs::pipe_size(&reader).map_err(|e| io(rd)(e.io_error))?;
    let data = drain(&reader).map_err(io(rd))?;
    if !data.is_empty() {
        let mut writer = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/{wpid}/fd/{wr}"))
            .map_err(io(wr))?;
        writer.write_all(&data).map_err(io(wr))?;
    }
    Ok(Pipe { inode, size, data })
}

/// Reads a non-blocking pipe or FIFO until it is empty.
fn drain(reader: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match (&*reader).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(data)
}

/// Reads the unread bytes out of the FIFO at `fd` of `pid` and writes them straight back, as
/// [`save_pipe`] does: through one `O_RDWR | O_NONBLOCK` open of `/proc/PID/fd/N`, which on a
/// FIFO never blocks (it is both a reader and a writer).
fn save_fifo(pid: i32, fd: i32, ino: u64, path: &str) -> Result<Pipe, FilesError> {
    let io = |source| FilesError::FifoIo {
        pid,
        fd,
        path: path.to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(io)?;
    let size = crate::sys::fs::pipe_size(&f).map_err(|e| io(e.io_error))?;
    let data = drain(&f).map_err(io)?;
    f.write_all(&data).map_err(io)?;
    Ok(Pipe {
        inode: ino,
        size,
        data,
    })
}

/// Whether an fd is the first of its process on a description shared across the tree.
fn is_shared_file(kind: &FdKind) -> bool {
    matches!(kind, FdKind::SharedFile { file, .. } if reopened(file))
}

/// Whether an fd of this kind is reopened by path (so it may share its description).
fn reopened(kind: &FdKind) -> bool {
    matches!(
        kind,
        FdKind::Path { .. } | FdKind::Object { .. } | FdKind::Fifo { .. }
    )
}

/// Saves each FIFO's data once (on the first fd of its owner), and records which fds share an
/// open file description: an fd sharing it with a lower fd of the process becomes
/// [`FdKind::Dup`] of it (kcmp, only between fds on the same file); the first fd of a
/// description held by several processes of the tree becomes [`FdKind::SharedFile`].
fn share_descriptions(
    pid: i32,
    raw: &[RawFd],
    fds: &mut [Fd],
    tree: &TreePipes,
) -> Result<(), FilesError> {
    let mut firsts: Vec<((u64, u64), i32)> = Vec::new();
    let mut fifos_seen: Vec<(u64, u64)> = Vec::new();
    for (r, f) in raw.iter().zip(fds.iter_mut()) {
        if !reopened(&f.kind) {
            continue;
        }
        let Some(meta) = r.meta.as_ref() else {
            continue;
        };
        let key = (meta.dev(), meta.ino());
        if let FdKind::Fifo {
            path,
            dev,
            ino,
            contents,
        } = &mut f.kind
            && !fifos_seen.contains(&(*dev, *ino))
        {
            fifos_seen.push((*dev, *ino));
            if tree
                .fifo_owner
                .get(&(*dev, *ino))
                .is_none_or(|&owner| owner == pid)
            {
                *contents = Some(save_fifo(pid, f.fd, *ino, path)?);
            }
        }
        let mut of = None;
        for &(k, first) in &firsts {
            if k == key && same_description((pid, first), (pid, f.fd))? {
                of = Some(first);
                break;
            }
        }
        match of {
            Some(of) => f.kind = FdKind::Dup { of },
            None => {
                firsts.push((key, f.fd));
                if let Some(&id) = tree.shared.get(&(pid, f.fd)) {
                    let file = Box::new(std::mem::replace(&mut f.kind, FdKind::Dup { of: -1 }));
                    f.kind = FdKind::SharedFile { id, file };
                }
            }
        }
    }
    Ok(())
}

/// Checks before forking that every file the image reopens is still there and the same size.
pub fn validate(files: &FilesImage, shell_job: bool) -> Result<(), FilesError> {
    for f in &files.fds {
        match f.kind.base() {
            FdKind::Path { path, size } => {
                let ok = std::fs::metadata(path).is_ok_and(|m| size.is_none_or(|s| m.len() == s));
                if !ok {
                    return Err(FilesError::FileChanged {
                        fd: f.fd,
                        path: path.clone(),
                    });
                }
            }
            FdKind::Inherited { was } if !shell_job => {
                return Err(FilesError::NeedShellJob {
                    fd: f.fd,
                    was: was.clone(),
                });
            }
            FdKind::Pipe { inode } => {
                if !files.pipes.iter().any(|p| p.inode == *inode) {
                    return Err(FilesError::MissingPipe {
                        fd: f.fd,
                        inode: *inode,
                    });
                }
            }
            FdKind::Fifo { path, .. } => {
                if !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
                    return Err(FilesError::FileChanged {
                        fd: f.fd,
                        path: path.clone(),
                    });
                }
            }
            FdKind::Dup { of } => {
                let ok = *of < f.fd
                    && files
                        .fds
                        .iter()
                        .any(|o| o.fd == *of && (reopened(&o.kind) || is_shared_file(&o.kind)));
                if !ok {
                    return Err(FilesError::BadDup { fd: f.fd, of: *of });
                }
            }
            FdKind::SharedFile { .. } => {
                return Err(FilesError::BadShared { fd: f.fd });
            }
            FdKind::Inherited { .. }
            | FdKind::SharedPipe { .. }
            | FdKind::EventFd { .. }
            | FdKind::TimerFd { .. }
            | FdKind::SignalFd { .. }
            | FdKind::Epoll { .. }
            | FdKind::Object { .. }
            | FdKind::Socket(_) => {}
        }
    }
    Ok(())
}

/// Closes everything the child inherited from fastcr, except the standard streams the image
/// hands over (`--shell-job`), the ends of the tree's shared pipes (inherited from fastcr,
/// placed by [`restore`]) and the range `keep` (the process's parked sockets, see [`park`]).
pub fn close_inherited(
    inj: &Injector,
    files: &FilesImage,
    shared: &SharedPipes,
    keep: Option<(u64, u64)>,
) -> Result<(), FilesError> {
    let mut kept: Vec<u64> = shared.raw_fds();
    if let Some((lo, hi)) = keep {
        kept.extend(lo..=hi);
    }
    kept.sort_unstable();
    kept.dedup();
    let mut from = 3u64;
    for keep in kept.into_iter().chain([u64::from(u32::MAX) + 1]) {
        if keep > from {
            inj.call(
                || "close_range".into(),
                "close_range",
                libc::SYS_close_range,
                [from, keep - 1, 0, 0, 0, 0],
            )?;
        }
        from = keep + 1;
    }
    for fd in 0..=2 {
        let keep = files
            .fds
            .iter()
            .any(|f| f.fd == fd && matches!(f.kind, FdKind::Inherited { .. }));
        if !keep {
            // EBADF is fine: fastcr itself may have run without that stream.
            inj.raw("close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// Pipes whose ends are held by several processes of a restored tree, and open file
/// descriptions of files held by several: fastcr makes each one (a pipe with its size and data
/// in flight, a file opened with its flags at its offset) before it forks the tree's root, so
/// every process inherits them (the same open file descriptions, as after the forks that shared
/// them originally) and keeps those it had at their numbers.
///
/// Also a holder for every FIFO of the images: opened `O_RDWR | O_NONBLOCK` (which on a FIFO
/// never blocks), sized and refilled with the FIFO's data in flight, and kept until the tree
/// runs, so the processes reopen their FIFO ends with their own flags without ever blocking
/// (a reader and a writer always exist) and the data stays in the pipe buffer meanwhile.
/// The processes close their inherited copies of the holders.
#[derive(Default)]
pub struct SharedPipes {
    ends: BTreeMap<u64, (std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    files: BTreeMap<u64, std::os::fd::OwnedFd>,
    fifos: BTreeMap<(u64, u64), std::os::fd::OwnedFd>,
}

/// The `open(2)` flags that reopen an fd with `flags` (its fdinfo flags): creation flags off.
fn reopen_flags(flags: u32) -> u32 {
    flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32)
}

impl SharedPipes {
    /// Makes every pipe and file description the images refer to as shared, and a holder
    /// for every FIFO (see above). `objects` are the recreated memfds and deleted files.
    pub fn create(images: &[&FilesImage], objects: &objects::Objects) -> Result<Self, FilesError> {
        let mut out = Self::default();
        out.hold_fifos(images)?;
        out.open_shared_files(images, objects)?;
        let refill = |fd: i32| {
            move |source: std::io::Error| FilesError::PipeRefill {
                pid: std::process::id() as i32,
                fd,
                source,
            }
        };
        for f in images.iter().flat_map(|i| i.fds.iter()) {
            let FdKind::SharedPipe { inode } = f.kind else {
                continue;
            };
            if out.ends.contains_key(&inode) {
                continue;
            }
            let pipe = images
                .iter()
                .flat_map(|i| i.pipes.iter())
                .find(|p| p.inode == inode)
                .ok_or(FilesError::MissingPipe { fd: f.fd, inode })?;
            let (r, w) = crate::sys::process::pipe().map_err(|e| refill(f.fd)(e.io_error))?;
            if pipe.size != DEFAULT_PIPE_SIZE {
                crate::sys::fs::set_pipe_size(&w, pipe.size)
                    .map_err(|e| refill(f.fd)(e.io_error))?;
            }
            let mut writer = std::fs::File::from(w);
            writer.write_all(&pipe.data).map_err(refill(f.fd))?;
            out.ends.insert(inode, (r, writer.into()));
        }
        Ok(out)
    }

    /// Opens a holder for each FIFO and refills it (see [`SharedPipes`]).
    fn hold_fifos(&mut self, images: &[&FilesImage]) -> Result<(), FilesError> {
        for f in images.iter().flat_map(|i| i.fds.iter()) {
            let FdKind::Fifo {
                path,
                dev,
                ino,
                contents,
            } = f.kind.base()
            else {
                continue;
            };
            let err = |source| FilesError::Reopen {
                fd: f.fd,
                path: path.clone(),
                source,
            };
            let holder = match self.fifos.entry((*dev, *ino)) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let holder = crate::sys::fs::open_with_flags(
                        std::path::Path::new(path),
                        libc::O_RDWR | libc::O_NONBLOCK,
                    )
                    .map_err(|e| err(e.io_error))?;
                    // validate() checked the path, but it may have changed since.
                    let is_fifo = std::fs::File::from(holder.try_clone().map_err(err)?)
                        .metadata()
                        .is_ok_and(|m| m.file_type().is_fifo());
                    if !is_fifo {
                        return Err(FilesError::FileChanged {
                            fd: f.fd,
                            path: path.clone(),
                        });
                    }
                    e.insert(holder)
                }
            };
            let Some(pipe) = contents else {
                continue;
            };
            let current = crate::sys::fs::pipe_size(&*holder).map_err(|e| err(e.io_error))?;
            if pipe.size != current {
                crate::sys::fs::set_pipe_size(&*holder, pipe.size).map_err(|e| err(e.io_error))?;
            }
            let mut writer = std::fs::File::from(holder.try_clone().map_err(err)?);
            writer.write_all(&pipe.data).map_err(err)?;
        }
        Ok(())
    }

    /// Opens each description shared across the tree, with its flags, at its offset.
    fn open_shared_files(
        &mut self,
        images: &[&FilesImage],
        objects: &objects::Objects,
    ) -> Result<(), FilesError> {
        use std::io::{Seek, SeekFrom};
        for f in images.iter().flat_map(|i| i.fds.iter()) {
            let FdKind::SharedFile { id, file } = &f.kind else {
                continue;
            };
            if self.files.contains_key(id) {
                continue;
            }
            let path = match file.as_ref() {
                FdKind::Path { path, .. } | FdKind::Fifo { path, .. } => path.clone(),
                FdKind::Object { dev, ino } => {
                    objects
                        .path(*dev, *ino)
                        .ok_or_else(|| objects::ObjectError::Missing {
                            what: format!("fd {}", f.fd),
                            dev: *dev,
                            ino: *ino,
                        })?
                }
                _ => return Err(FilesError::BadShared { fd: f.fd }),
            };
            let err = |source| FilesError::Reopen {
                fd: f.fd,
                path: path.clone(),
                source,
            };
            let fd = crate::sys::fs::open_with_flags(
                std::path::Path::new(&path),
                reopen_flags(f.flags) as i32,
            )
            .map_err(|e| err(e.io_error))?;
            if f.pos != 0 && !matches!(file.as_ref(), FdKind::Fifo { .. }) {
                let mut file = std::fs::File::from(fd);
                file.seek(SeekFrom::Start(f.pos)).map_err(err)?;
                self.files.insert(*id, file.into());
            } else {
                self.files.insert(*id, fd);
            }
        }
        Ok(())
    }

    /// The fd number (in fastcr, and so in every restored process until it is rebuilt) of the
    /// description `id` shared across the tree.
    fn raw_file(&self, id: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        self.files.get(&id).map(|f| f.as_raw_fd() as u64)
    }

    /// The fd number (in fastcr, and so in every restored process until it is rebuilt) of the
    /// `reader` or writer end of pipe `inode`.
    fn raw(&self, inode: u64, reader: bool) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let (r, w) = self.ends.get(&inode)?;
        let fd = if reader { r.as_raw_fd() } else { w.as_raw_fd() };
        Some(fd as u64)
    }

    /// Every end's and shared description's fd number, ascending (not the FIFO holders: the
    /// processes close theirs).
    pub fn raw_fds(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .ends
            .keys()
            .flat_map(|&i| [self.raw(i, true), self.raw(i, false)])
            .flatten()
            .chain(self.files.keys().filter_map(|&id| self.raw_file(id)))
            .collect();
        out.sort_unstable();
        out
    }
}

/// Reopens every fd at its number, offset and flags; sets cwd and umask. `parked` are the
/// process's sockets (see [`park`]).
pub fn restore(
    inj: &Injector,
    files: &FilesImage,
    shared: &SharedPipes,
    objects: &objects::Objects,
    sockets: &Parked,
) -> Result<(), FilesError> {
    let cwd = inj.put_cstr(SCRATCH_PATH, &files.cwd)?;
    inj.call(
        || format!("chdir({})", files.cwd),
        "chdir",
        libc::SYS_chdir,
        [cwd, 0, 0, 0, 0, 0],
    )?;
    inj.call(
        || "umask".into(),
        "umask",
        libc::SYS_umask,
        [u64::from(files.umask), 0, 0, 0, 0, 0],
    )?;
    let top = files.fds.iter().map(|f| f.fd).max().unwrap_or(0);
    // The inherited ends of shared pipes, moved above every fd number of the image first, so
    // placing one never closes another.
    let mut parked: BTreeMap<(u64, bool), u64> = BTreeMap::new();
    for f in &files.fds {
        if let FdKind::SharedPipe { inode } = f.kind {
            let key = (inode, is_reader(f.flags));
            if parked.contains_key(&key) {
                continue;
            }
            let src = shared
                .raw(key.0, key.1)
                .ok_or(FilesError::MissingPipe { fd: f.fd, inode })?;
            let hi = inj.call(
                || "fcntl(F_DUPFD) of an inherited pipe end".into(),
                "fcntl",
                libc::SYS_fcntl,
                [src, libc::F_DUPFD as u64, (top + 1) as u64, 0, 0, 0],
            )?;
            parked.insert(key, hi);
        }
    }
    // The same for the descriptions of files shared across the tree.
    let mut parked_files: BTreeMap<u64, u64> = BTreeMap::new();
    for f in &files.fds {
        if let FdKind::SharedFile { id, .. } = f.kind {
            if parked_files.contains_key(&id) {
                continue;
            }
            let src = shared
                .raw_file(id)
                .ok_or(FilesError::BadShared { fd: f.fd })?;
            let hi = inj.call(
                || "fcntl(F_DUPFD) of an inherited file description".into(),
                "fcntl",
                libc::SYS_fcntl,
                [src, libc::F_DUPFD as u64, (top + 1) as u64, 0, 0, 0],
            )?;
            parked_files.insert(id, hi);
        }
    }
    for fd in shared.raw_fds() {
        if !parked
            .values()
            .chain(parked_files.values())
            .any(|&p| p == fd)
        {
            // EBADF is fine: a number the image's own fds took since.
            inj.raw("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
    }
    let mut pipes_done = Vec::new();
    for f in &files.fds {
        if let FdKind::Pipe { inode } = f.kind {
            if !pipes_done.contains(&inode) {
                restore_pipe(inj, files, inode, top)?;
                pipes_done.push(inode);
            }
            continue;
        }
        if let FdKind::SharedPipe { inode } = f.kind {
            let src = parked
                .get(&(inode, is_reader(f.flags)))
                .copied()
                .ok_or(FilesError::MissingPipe { fd: f.fd, inode })?;
            place_fd(inj, src, f)?;
            // O_NONBLOCK belongs to the open file description, which the holders share.
            let status = u64::from(f.flags & libc::O_NONBLOCK as u32);
            if status != 0 {
                inj.call(
                    || format!("fcntl(F_SETFL) of fd {}", f.fd),
                    "fcntl",
                    libc::SYS_fcntl,
                    [f.fd as u64, libc::F_SETFL as u64, status, 0, 0, 0],
                )?;
            }
            continue;
        }
        if let FdKind::SharedFile { id, .. } = f.kind {
            let src = parked_files
                .get(&id)
                .copied()
                .ok_or(FilesError::BadShared { fd: f.fd })?;
            place_fd(inj, src, f)?;
            continue;
        }
        let path = match &f.kind {
            FdKind::Path { path, .. } | FdKind::Fifo { path, .. } => path.clone(),
            FdKind::Object { dev, ino } => {
                objects
                    .path(*dev, *ino)
                    .ok_or_else(|| objects::ObjectError::Missing {
                        what: format!("fd {}", f.fd),
                        dev: *dev,
                        ino: *ino,
                    })?
            }
            _ => continue,
        };
        let path = &path;
        // A FIFO never blocks here: fastcr holds it open for reading and writing meanwhile
        // (see SharedPipes).
        let oflags = reopen_flags(f.flags);
        let addr = inj.put_cstr(SCRATCH_PATH, path)?;
        let got = inj.call(
            || format!("open of {path} for fd {}", f.fd),
            "openat",
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, addr, u64::from(oflags), 0, 0, 0],
        )?;
        let fd = f.fd as u64;
        if got != fd {
            place_fd(inj, got, f)?;
            close(inj, got)?;
        }
        if f.pos != 0 && !matches!(f.kind, FdKind::Fifo { .. }) {
            inj.call(
                || format!("lseek of fd {fd} to {}", f.pos),
                "lseek",
                libc::SYS_lseek,
                [fd, f.pos, libc::SEEK_SET as u64, 0, 0, 0],
            )?;
        }
    }
    for fd in parked.into_values().chain(parked_files.into_values()) {
        close(inj, fd)?;
    }
    socket::place(inj, files, sockets)?;
    // Duplicates of the fds just reopened (before epoll, which may watch them).
    for f in &files.fds {
        if let FdKind::Dup { of } = f.kind {
            place_fd(inj, of as u64, f)?;
        }
    }
    // Kernel objects last, epoll after every fd it may watch.
    for f in files.fds.iter().filter(|f| {
        matches!(
            f.kind,
            FdKind::EventFd { .. } | FdKind::TimerFd { .. } | FdKind::SignalFd { .. }
        )
    }) {
        anon::restore(inj, f)?;
    }
    for f in files
        .fds
        .iter()
        .filter(|f| matches!(f.kind, FdKind::Epoll { .. }))
    {
        anon::restore(inj, f)?;
    }
    Ok(())
}

const DEFAULT_PIPE_SIZE: u32 = 65536;
const SCRATCH_PIPEFDS: u64 = 512;

/// Creates one pipe, puts its ends at every fd number the image has for it, sets its size and
/// flags, and refills the data that was in flight.
fn restore_pipe(
    inj: &Injector,
    files: &FilesImage,
    inode: u64,
    top: i32,
) -> Result<(), FilesError> {
    let pipe = files.pipes.iter().find(|p| p.inode == inode);
    let users: Vec<&Fd> = files
        .fds
        .iter()
        .filter(|f| f.kind == FdKind::Pipe { inode })
        .collect();
    let Some(pipe) = pipe else {
        return Err(FilesError::MissingPipe {
            fd: users.first().map_or(-1, |f| f.fd),
            inode,
        });
    };
    let out = inj.scratch_addr(SCRATCH_PIPEFDS);
    inj.call(
        || "pipe2".into(),
        "pipe2",
        libc::SYS_pipe2,
        [out, 0, 0, 0, 0, 0],
    )?;
    let raw = inj.get(SCRATCH_PIPEFDS, 8)?;
    let first = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (r0, w0) = (first(&raw[0..4]), first(&raw[4..8]));
    // Park both ends above every fd number of the image, so placing one end can never
    // overwrite the other.
    let park = |fd: u64| -> Result<u64, FilesError> {
        let hi = inj.call(
            || "fcntl(F_DUPFD)".into(),
            "fcntl",
            libc::SYS_fcntl,
            [fd, libc::F_DUPFD as u64, (top + 1) as u64, 0, 0, 0],
        )?;
        close(inj, fd)?;
        Ok(hi)
    };
    let (r, w) = (park(r0)?, park(w0)?);
    if pipe.size != DEFAULT_PIPE_SIZE {
        inj.call(
            || format!("fcntl(F_SETPIPE_SZ, {})", pipe.size),
            "fcntl",
            libc::SYS_fcntl,
            [w, libc::F_SETPIPE_SZ as u64, u64::from(pipe.size), 0, 0, 0],
        )?;
    }
    if !pipe.data.is_empty() {
        let pid = inj.pid();
        let refill = |source| FilesError::PipeRefill {
            pid,
            fd: w as i32,
            source,
        };
        let mut writer = OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/fd/{w}"))
            .map_err(refill)?;
        writer.write_all(&pipe.data).map_err(refill)?;
    }
    for f in users {
        let src = if is_reader(f.flags) { r } else { w };
        let fd = f.fd as u64;
        place_fd(inj, src, f)?;
        let status = u64::from(f.flags & libc::O_NONBLOCK as u32);
        if status != 0 {
            inj.call(
                || format!("fcntl(F_SETFL) of fd {fd}"),
                "fcntl",
                libc::SYS_fcntl,
                [fd, libc::F_SETFL as u64, status, 0, 0, 0],
            )?;
        }
    }
    for fd in [r, w] {
        close(inj, fd)?;
    }
    Ok(())
}

/// Puts descriptor `src` of the task at `f`'s number, with `f`'s close-on-exec flag.
fn place_fd(inj: &Injector, src: u64, f: &Fd) -> Result<(), FilesError> {
    let fd = f.fd as u64;
    let cloexec = u64::from(f.flags & libc::O_CLOEXEC as u32);
    inj.call(
        || format!("dup3 to fd {fd}"),
        "dup3",
        libc::SYS_dup3,
        [src, fd, cloexec, 0, 0, 0],
    )?;
    Ok(())
}

/// Closes descriptor `fd` of the task.
fn close(inj: &Injector, fd: u64) -> Result<(), FilesError> {
    inj.call(
        || format!("close of fd {fd}"),
        "close",
        libc::SYS_close,
        [fd, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}
