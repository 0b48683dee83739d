//! File descriptors and filesystem context: both the dump half and the restore half.
//!
//! Supported now: regular files and directories (reopened by path at the same offset and flags),
//! harmless character devices (`/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random`,
//! `/dev/urandom`), named pipes (FIFOs, reopened by path, with their data in flight), and with
//! `--shell-job` standard streams that are terminals or pipes, which are handed the restorer's
//! own; pipes, anonymous-inode objects (`anon`) and sockets (`socket`). Fds that share one open
//! file description (`dup`, or a file opened before a fork) share one again after a restore.
//! Anything else is refused at dump time, naming the fd.
//!
//! This module holds only `classify` and the top-level [`dump`], [`validate`] and [`restore`]
//! that sequence the kinds, with the fd helpers they share. Each kind's dump and restore halves
//! live in its submodule: `path` (reopened by path), `fifo`, `pipe`, `description` (open file
//! descriptions shared by several fds), `tree` (what a tree's processes share), `anon`,
//! `socket`, `objects`, `locks`; the errors in `error`.

mod anon;
mod description;
mod error;
mod fifo;
pub mod locks;
pub mod objects;
mod path;
mod pipe;
mod socket;
mod tcp;
mod tree;

pub use error::FilesError;
pub use socket::{Parked, TreeSockets, addr_string, park};
pub use tcp::{begin as tcp_repair_begin, end as tcp_repair_end};
pub use tree::{SharedPipes, TreePipe, TreePipes, close_inherited, tree_pipes};

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::image::files::{Fd, FdKind, FilesImage};
use crate::inject::Injector;
use crate::proc;
use description::{is_shared_file, reopened};

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
    let ends = pipe::ends(&raw);
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
        pipe::dump(pid, &kind, &ends, tree, &mut pipes)?;
        fds.push(Fd {
            fd: r.fd,
            flags: r.flags,
            pos: r.pos,
            kind,
        });
    }
    description::dump(pid, &raw, &mut fds, tree)?;
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
        return path::dump_file(target, meta).map_err(unsupported);
    }
    if ft.is_char_device()
        && let Some(kind) = path::dump_device(target)
    {
        return Ok(kind);
    }
    if ft.is_fifo() && target.starts_with('/') {
        return fifo::dump(target, meta).map_err(unsupported);
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
    // The inherited ends of shared pipes and descriptions of shared files, moved above every fd
    // number of the image first, so placing one never closes another.
    let parked = shared.park(inj, files, top)?;
    let mut pipes_done = Vec::new();
    for f in &files.fds {
        if let FdKind::Pipe { inode } = f.kind {
            if !pipes_done.contains(&inode) {
                pipe::restore(inj, files, inode, top)?;
                pipes_done.push(inode);
            }
            continue;
        }
        if let FdKind::SharedPipe { inode } = f.kind {
            pipe::place_shared(inj, &parked, f, inode)?;
            continue;
        }
        if let FdKind::SharedFile { id, .. } = f.kind {
            let src = parked.file(id).ok_or(FilesError::BadShared { fd: f.fd })?;
            place_fd(inj, src, f)?;
            continue;
        }
        path::restore(inj, f, objects)?;
    }
    parked.close(inj)?;
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

/// Duplicates descriptor `src` of the task to the lowest free number above `top` (`step` names
/// the call in errors), and returns that number.
fn dup_above(inj: &Injector, step: &str, src: u64, top: i32) -> Result<u64, FilesError> {
    let hi = inj.call(
        || step.into(),
        "fcntl",
        libc::SYS_fcntl,
        [src, libc::F_DUPFD as u64, (top + 1) as u64, 0, 0, 0],
    )?;
    Ok(hi)
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
