//! Open file descriptions shared by several fds (`dup`, or a file opened before a fork), for the
//! fds reopened by path: at dump, which fds share one (`kcmp`, only between fds on the same
//! file), saved as [`FdKind::Dup`] within a process and [`FdKind::SharedFile`] across a tree;
//! at restore, fastcr opens each description shared across the tree (with its flags, at its
//! offset) before the root is forked. Moving the inherited copies to their numbers is left to
//! [`super::restore`]; pipes and sockets keep their sharing by other means and are not handled
//! here.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::path::{reopen_flags, reopen_path};
use super::tree::TreePipes;
use super::{FilesError, RawFd, fifo, objects};
use crate::image::files::{Fd, FdKind, FilesImage};

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

/// The descriptions held by more than one process of a tree: (pid, fd) → id of the description,
/// from the fds on each file reopened by path (`by_file`, by (dev, ino), in tree order).
pub(super) fn tree_shared(
    by_file: BTreeMap<(u64, u64), Vec<(i32, i32)>>,
) -> Result<BTreeMap<(i32, i32), u64>, FilesError> {
    let mut shared = BTreeMap::new();
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
                    shared.insert(h, next_id);
                }
                next_id += 1;
            }
        }
    }
    Ok(shared)
}

/// Whether an fd is the first of its process on a description shared across the tree.
pub(super) fn is_shared_file(kind: &FdKind) -> bool {
    matches!(kind, FdKind::SharedFile { file, .. } if reopened(file))
}

/// Whether an fd of this kind is reopened by path (so it may share its description).
pub(super) fn reopened(kind: &FdKind) -> bool {
    matches!(
        kind,
        FdKind::Path { .. } | FdKind::Object { .. } | FdKind::Fifo { .. }
    )
}

/// Saves each FIFO's data once (on the first fd of its owner), and records which fds share an
/// open file description: an fd sharing it with a lower fd of the process becomes
/// [`FdKind::Dup`] of it (kcmp, only between fds on the same file); the first fd of a
/// description held by several processes of the tree becomes [`FdKind::SharedFile`].
pub(super) fn dump(
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
        fifo::save_once(pid, f, tree, &mut fifos_seen)?;
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

/// Opens in fastcr each description shared across the tree, with its flags, at its offset, into
/// `files` by id. `objects` are the recreated memfds and deleted files.
pub(super) fn open_shared(
    images: &[&FilesImage],
    objects: &objects::Objects,
    files: &mut BTreeMap<u64, OwnedFd>,
) -> Result<(), FilesError> {
    for f in images.iter().flat_map(|i| i.fds.iter()) {
        let FdKind::SharedFile { id, file } = &f.kind else {
            continue;
        };
        if files.contains_key(id) {
            continue;
        }
        let path = reopen_path(file, f.fd, objects)?.ok_or(FilesError::BadShared { fd: f.fd })?;
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
            files.insert(*id, file.into());
        } else {
            files.insert(*id, fd);
        }
    }
    Ok(())
}
