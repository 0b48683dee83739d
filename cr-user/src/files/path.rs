//! Fds reopened by path: regular files, directories and the harmless character devices at dump
//! (the path must still name the open file), and at restore the injected `openat` at the fd's
//! number, flags and offset (FIFOs and memfds/deleted files through the object fastcr recreated
//! take the same way). It does not decide which fds share a description (see `description`)
//! nor save a FIFO's data (see `fifo`).

use std::os::unix::fs::MetadataExt;

use super::{FilesError, SCRATCH_PATH, close, objects, place_fd};
use crate::image::files::{Fd, FdKind};
use crate::inject::Injector;

const SAFE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The kind of an fd on the regular file or directory `target` with `meta`, or why it cannot be
/// saved.
pub(super) fn dump_file(target: &str, meta: &std::fs::Metadata) -> Result<FdKind, &'static str> {
    if target.ends_with(" (deleted)") {
        return Err("the file was deleted (not supported yet)");
    }
    // The path must still name the same file, or restore would open another one.
    if !names(target, meta) {
        return Err("the path no longer names the open file");
    }
    Ok(FdKind::Path {
        path: target.to_string(),
        size: meta.file_type().is_file().then_some(meta.len()),
    })
}

/// Whether `path` still names the open file with `meta` (same dev and inode).
pub(super) fn names(path: &str, meta: &std::fs::Metadata) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
}

/// The kind of an fd on the character device `target`, if it is one fastcr reopens by path.
pub(super) fn dump_device(target: &str) -> Option<FdKind> {
    SAFE_DEVICES.contains(&target).then(|| FdKind::Path {
        path: target.to_string(),
        size: None,
    })
}

/// The `open(2)` flags that reopen an fd with `flags` (its fdinfo flags): creation flags off.
pub(super) fn reopen_flags(flags: u32) -> u32 {
    flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32)
}

/// The path that reopens fd `fd` of kind `kind`: its own for a file, directory, device or FIFO,
/// the recreated object's for a memfd or deleted file; `None` for a kind not reopened by path.
pub(super) fn reopen_path(
    kind: &FdKind,
    fd: i32,
    objects: &objects::Objects,
) -> Result<Option<String>, FilesError> {
    Ok(Some(match kind {
        FdKind::Path { path, .. } | FdKind::Fifo { path, .. } => path.clone(),
        FdKind::Object { dev, ino } => {
            objects
                .path(*dev, *ino)
                .ok_or_else(|| objects::ObjectError::Missing {
                    what: format!("fd {fd}"),
                    dev: *dev,
                    ino: *ino,
                })?
        }
        _ => return Ok(None),
    }))
}

/// Reopens `f` in the task by path at its number, with its flags, at its offset; nothing for a
/// kind not reopened by path.
pub(super) fn restore(
    inj: &Injector,
    f: &Fd,
    objects: &objects::Objects,
) -> Result<(), FilesError> {
    let Some(path) = reopen_path(&f.kind, f.fd, objects)? else {
        return Ok(());
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
    Ok(())
}
