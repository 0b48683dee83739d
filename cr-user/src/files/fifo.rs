//! Named pipes (FIFOs): at dump, the path (which must still name the open FIFO) and, once per
//! FIFO for the whole dump, its capacity and data in flight; at restore, the `O_RDWR` holders
//! fastcr opens (sized and refilled) before it forks the tree's root. The processes' own FIFO
//! fds are reopened by path like files (see `path`); this module must not open them in the task.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use super::FilesError;
use super::tree::TreePipes;
use crate::image::files::{Fd, FdKind, FilesImage, Pipe};

/// The kind of an fd on the FIFO `target` with `meta`, or why it cannot be saved. Its data is
/// saved later, once per FIFO (see [`save_once`]).
pub(super) fn dump(target: &str, meta: &std::fs::Metadata) -> Result<FdKind, &'static str> {
    if target.ends_with(" (deleted)") {
        return Err("a FIFO whose path was removed");
    }
    if !super::path::names(target, meta) {
        return Err("the path no longer names the open FIFO");
    }
    Ok(FdKind::Fifo {
        path: target.to_string(),
        dev: meta.dev(),
        ino: meta.ino(),
        contents: None,
    })
}

/// Saves the data of the FIFO at `f` (an fd of `pid`) if it is the first fd seen on that FIFO
/// (`seen` lists those) and `pid` is the process of the tree that saves it.
pub(super) fn save_once(
    pid: i32,
    f: &mut Fd,
    tree: &TreePipes,
    seen: &mut Vec<(u64, u64)>,
) -> Result<(), FilesError> {
    if let FdKind::Fifo {
        path,
        dev,
        ino,
        contents,
    } = &mut f.kind
        && !seen.contains(&(*dev, *ino))
    {
        seen.push((*dev, *ino));
        if tree
            .fifo_owner
            .get(&(*dev, *ino))
            .is_none_or(|&owner| owner == pid)
        {
            *contents = Some(save_fifo(pid, f.fd, *ino, path)?);
        }
    }
    Ok(())
}

/// Reads the unread bytes out of the FIFO at `fd` of `pid` and writes them straight back, as
/// [`super::pipe::save_pipe`] does: through one `O_RDWR | O_NONBLOCK` open of
/// `/proc/PID/fd/N`, which on a FIFO never blocks (it is both a reader and a writer).
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
    let data = super::pipe::drain(&f).map_err(io)?;
    f.write_all(&data).map_err(io)?;
    Ok(Pipe {
        inode: ino,
        size,
        data,
    })
}

/// Opens a holder for each FIFO of `images` and refills it (see [`super::SharedPipes`]), into
/// `fifos` by FIFO (dev, ino).
pub(super) fn hold(
    images: &[&FilesImage],
    fifos: &mut BTreeMap<(u64, u64), OwnedFd>,
) -> Result<(), FilesError> {
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
        let holder = match fifos.entry((*dev, *ino)) {
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
