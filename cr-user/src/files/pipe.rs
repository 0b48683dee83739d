//! Anonymous pipes: at dump, which ends a process holds, and each pipe's capacity and data in
//! flight (read out of the frozen processes and written straight back); at restore, a pipe whose
//! both ends one process holds is made again in it, and the ends of a pipe shared across the tree
//! (made in fastcr before the root is forked, see [`super::SharedPipes`]) are moved to their
//! numbers. Finding the pipes shared across a tree belongs to `tree`; FIFOs to `fifo`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use super::tree::{ParkedShared, TreePipe, TreePipes};
use super::{FilesError, RawFd, close, dup_above, is_reader, place_fd};
use crate::image::files::{Fd, FdKind, FilesImage, Pipe};
use crate::inject::Injector;

const DEFAULT_PIPE_SIZE: u32 = 65536;
const SCRATCH_PIPEFDS: u64 = 512;

/// Which ends of each pipe (by inode) the fds `raw` of one process hold: (a reader, a writer).
pub(super) fn ends(raw: &[RawFd]) -> BTreeMap<u64, (Option<i32>, Option<i32>)> {
    let mut ends: BTreeMap<u64, (Option<i32>, Option<i32>)> = BTreeMap::new();
    for r in raw {
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
    ends
}

/// Saves into `pipes` the pipe of an fd of `pid` of kind `kind`, once: a pipe whose both ends
/// (`ends`) the process holds, or a pipe of the tree that `pid` owns.
pub(super) fn dump(
    pid: i32,
    kind: &FdKind,
    ends: &BTreeMap<u64, (Option<i32>, Option<i32>)>,
    tree: &TreePipes,
    pipes: &mut Vec<Pipe>,
) -> Result<(), FilesError> {
    if let FdKind::Pipe { inode } = *kind
        && !pipes.iter().any(|p: &Pipe| p.inode == inode)
        && let Some(&(Some(rd), Some(wr))) = ends.get(&inode)
    {
        pipes.push(save_pipe(inode, (pid, rd), (pid, wr))?);
    }
    if let FdKind::SharedPipe { inode } = *kind
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
    Ok(())
}

/// Reads the unread bytes out of a pipe through `/proc/PID/fd` of a read end, and writes them
/// straight back through a write end, so the (frozen) processes find the pipe as they left it.
pub(super) fn save_pipe(
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
pub(super) fn drain(reader: &std::fs::File) -> std::io::Result<Vec<u8>> {
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

/// Makes in fastcr every pipe the images refer to as shared across the tree, with its size and
/// data in flight, into `ends` ((read, write) by inode).
pub(super) fn make_shared(
    images: &[&FilesImage],
    ends: &mut BTreeMap<u64, (OwnedFd, OwnedFd)>,
) -> Result<(), FilesError> {
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
        if ends.contains_key(&inode) {
            continue;
        }
        let pipe = images
            .iter()
            .flat_map(|i| i.pipes.iter())
            .find(|p| p.inode == inode)
            .ok_or(FilesError::MissingPipe { fd: f.fd, inode })?;
        let (r, w) = crate::sys::process::pipe().map_err(|e| refill(f.fd)(e.io_error))?;
        if pipe.size != DEFAULT_PIPE_SIZE {
            crate::sys::fs::set_pipe_size(&w, pipe.size).map_err(|e| refill(f.fd)(e.io_error))?;
        }
        let mut writer = std::fs::File::from(w);
        writer.write_all(&pipe.data).map_err(refill(f.fd))?;
        ends.insert(inode, (r, writer.into()));
    }
    Ok(())
}

/// Moves the inherited end of the shared pipe `inode` (parked in `parked`) to `f`'s number,
/// with `f`'s flags.
pub(super) fn place_shared(
    inj: &Injector,
    parked: &ParkedShared,
    f: &Fd,
    inode: u64,
) -> Result<(), FilesError> {
    let src = parked
        .pipe(inode, is_reader(f.flags))
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
    Ok(())
}

/// Creates one pipe, puts its ends at every fd number the image has for it, sets its size and
/// flags, and refills the data that was in flight.
pub(super) fn restore(
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
        let hi = dup_above(inj, "fcntl(F_DUPFD)", fd, top)?;
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
