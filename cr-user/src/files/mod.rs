//! File descriptors and filesystem context: both the dump half and the restore half.
//!
//! Supported now: regular files and directories (reopened by path at the same offset and flags),
//! harmless character devices (`/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random`,
//! `/dev/urandom`), and with `--shell-job` standard streams that are terminals or pipes, which
//! are handed the restorer's own. Anything else is refused at dump time, naming the fd.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::image::files::{Fd, FdKind, FilesImage};
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
    /// Reading `/proc` failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
}

const SAFE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
const SCRATCH_PATH: u64 = 1024;

/// Saves cwd, umask and the fd table of `pid`.
pub fn dump(pid: i32, umask: u32, shell_job: bool) -> Result<FilesImage, FilesError> {
    let cwd = proc::read_link(pid, "cwd")?.to_string_lossy().into_owned();
    let mut fds = Vec::new();
    for fd in proc::fds(pid)? {
        let target = proc::read_link(pid, &format!("fd/{fd}"))?
            .to_string_lossy()
            .into_owned();
        let (pos, flags) = proc::fdinfo(pid, fd)?;
        let unsupported = |why| FilesError::Unsupported {
            pid,
            fd,
            target: target.clone(),
            why,
        };
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|_| unsupported("cannot stat it"))?;
        let ft = meta.file_type();
        let is_stream = target.starts_with("pipe:")
            || target.starts_with("/dev/pts/")
            || target.starts_with("/dev/tty");
        let kind = if ft.is_file() || ft.is_dir() {
            if target.ends_with(" (deleted)") {
                return Err(unsupported("the file was deleted (not supported yet)"));
            }
            // The path must still name the same file, or restore would open another one.
            let same = std::fs::metadata(&target)
                .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
            if !same {
                return Err(unsupported("the path no longer names the open file"));
            }
            FdKind::Path {
                path: target.clone(),
                size: ft.is_file().then_some(meta.len()),
            }
        } else if ft.is_char_device() && SAFE_DEVICES.contains(&target.as_str()) {
            FdKind::Path {
                path: target.clone(),
                size: None,
            }
        } else if is_stream && fd <= 2 && shell_job {
            FdKind::Inherited {
                was: target.clone(),
            }
        } else if is_stream && fd <= 2 {
            return Err(unsupported(
                "a terminal or pipe leading outside the dump; use --shell-job to hand it to the restorer",
            ));
        } else if target.starts_with("pipe:") || ft.is_fifo() {
            return Err(unsupported("pipes are not supported yet"));
        } else if target.starts_with("socket:") {
            return Err(unsupported("sockets are not supported yet"));
        } else if target.starts_with("anon_inode:") {
            return Err(unsupported("this kernel object is not supported yet"));
        } else {
            return Err(unsupported("device or special file"));
        };
        fds.push(Fd {
            fd,
            flags,
            pos,
            kind,
        });
    }
    Ok(FilesImage { cwd, umask, fds })
}

/// Checks before forking that every file the image reopens is still there and the same size.
pub fn validate(files: &FilesImage, shell_job: bool) -> Result<(), FilesError> {
    for f in &files.fds {
        match &f.kind {
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
            FdKind::Inherited { .. } => {}
        }
    }
    Ok(())
}

/// Closes everything the child inherited from fastcr, except the standard streams the image
/// hands over (`--shell-job`).
pub fn close_inherited(inj: &Injector, files: &FilesImage) -> Result<(), FilesError> {
    inj.call(
        || "close_range".into(),
        "close_range",
        libc::SYS_close_range,
        [3, u64::from(u32::MAX), 0, 0, 0, 0],
    )?;
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

/// Reopens every fd at its number, offset and flags; sets cwd and umask.
pub fn restore(inj: &Injector, files: &FilesImage) -> Result<(), FilesError> {
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
    for f in &files.fds {
        let FdKind::Path { path, .. } = &f.kind else {
            continue;
        };
        let oflags =
            f.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        let addr = inj.put_cstr(SCRATCH_PATH, path)?;
        let got = inj.call(
            || format!("open of {path} for fd {}", f.fd),
            "openat",
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, addr, u64::from(oflags), 0, 0, 0],
        )?;
        let fd = f.fd as u64;
        if got != fd {
            let cloexec = u64::from(f.flags & libc::O_CLOEXEC as u32);
            inj.call(
                || format!("dup3 to fd {fd}"),
                "dup3",
                libc::SYS_dup3,
                [got, fd, cloexec, 0, 0, 0],
            )?;
            inj.call(
                || "close".into(),
                "close",
                libc::SYS_close,
                [got, 0, 0, 0, 0, 0],
            )?;
        }
        if f.pos != 0 {
            inj.call(
                || format!("lseek of fd {fd} to {}", f.pos),
                "lseek",
                libc::SYS_lseek,
                [fd, f.pos, libc::SEEK_SET as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}
