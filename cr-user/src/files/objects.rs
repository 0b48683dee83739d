//! File objects saved by contents rather than by path, once per inode for the whole dump:
//! memfds (name, size, data, seals), the shmem file behind `MAP_SHARED | MAP_ANONYMOUS` memory
//! shared by processes of a tree, and regular files deleted while open or mapped.
//!
//! Dump: every fd and VMA that refers to one is found in the frozen processes' images
//! ([`FdKind::Object`], [`VmaKind::Object`]); each object is read once, through
//! `/proc/PID/fd/N` or `/proc/PID/map_files/A-B` of its first user, data ranges only
//! (`SEEK_DATA`/`SEEK_HOLE`).
//!
//! Restore: fastcr recreates each object once and holds it open ([`Objects`]); every restored
//! process opens its fds and maps its VMAs through `/proc/<fastcr>/fd/N`, which opens the very
//! same inode, so fds and mappings of all processes are one object again. Seals are added last,
//! once every process is built.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use crate::image::files::{FdKind, FilesImage};
use crate::image::mm::{Vma, VmaKind};
use crate::image::objects::{Object, ObjectKind, ObjectsImage, data_file_name};
use crate::image::{ImageDir, ImageError, Kind};
use crate::sys::memfd;

/// Largest deleted file whose contents are saved.
pub const MAX_DELETED_SIZE: u64 = 64 << 20;

/// Why an object could not be saved or recreated.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// An object fastcr cannot save.
    #[error("process {pid}: cannot dump {what} ({name}): {why}")]
    Unsupported {
        /// The process.
        pid: i32,
        /// `fd N` or `mapping A-B`.
        what: String,
        /// Its name in `/proc`.
        name: String,
        /// Why.
        why: String,
    },
    /// Reading an object failed.
    #[error("process {pid}: cannot read {what} ({name})")]
    Read {
        /// The process.
        pid: i32,
        /// `fd N` or `mapping A-B`.
        what: String,
        /// Its name in `/proc`.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Recreating an object failed.
    #[error("cannot recreate {what}")]
    Create {
        /// Which object.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An fd or VMA refers to an object the image does not hold.
    #[error("{what} refers to object {dev}:{ino}, which objects.img does not hold")]
    Missing {
        /// `fd N` or `mapping A-B`.
        what: String,
        /// Device.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// The image files are unreadable or inconsistent.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// `major:minor` (hex, as maps prints it) as an `st_dev`.
pub fn parse_dev(dev: &str) -> Option<u64> {
    let (maj, min) = dev.split_once(':')?;
    let maj = u32::from_str_radix(maj, 16).ok()?;
    let min = u32::from_str_radix(min, 16).ok()?;
    Some(libc::makedev(maj, min))
}

/// Whether an fd to a regular file with `/proc` name `target` is saved as an object (a memfd's
/// name always ends in ` (deleted)` too).
pub fn is_object_fd(target: &str) -> bool {
    target.ends_with(" (deleted)")
}

/// The object kind a `/proc` name and stat stand for.
fn kind_of(name: &str, meta: &std::fs::Metadata, file: &File) -> Result<ObjectKind, String> {
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if name.starts_with("/SYSV") {
        return Err("SysV shared memory is not supported yet".into());
    }
    let shmem = |what: &str| -> Result<(), String> {
        match memfd::fs_type(file) {
            Ok(memfd::HUGETLBFS_MAGIC) => Err(format!("hugetlbfs {what} is not supported")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("fstatfs: {}", e.io_error)),
        }
    };
    if let Some(rest) = name.strip_prefix("/memfd:").filter(|_| {
        meta.nlink() == 0
            && memfd::fs_type(file)
                .is_ok_and(|t| t == memfd::TMPFS_MAGIC || t == memfd::HUGETLBFS_MAGIC)
    }) {
        shmem("memfd")?;
        let seals = memfd::get_seals(file).map_err(|e| format!("F_GET_SEALS: {}", e.io_error))?;
        return Ok(ObjectKind::Memfd {
            name: rest.strip_suffix(" (deleted)").unwrap_or(rest).to_string(),
            seals,
        });
    }
    if name == "/dev/zero (deleted)" {
        shmem("shared memory")?;
        return Ok(ObjectKind::SharedAnon);
    }
    let Some(path) = name.strip_suffix(" (deleted)") else {
        return Err("not a deleted file".into());
    };
    if meta.nlink() != 0 {
        return Err("a deleted name of a file still linked elsewhere".into());
    }
    if meta.len() > MAX_DELETED_SIZE {
        return Err(format!(
            "deleted file of {} bytes (limit {MAX_DELETED_SIZE})",
            meta.len()
        ));
    }
    Ok(ObjectKind::Deleted {
        path: path.to_string(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// The objects of a dump and their contents, read while the processes are frozen.
#[derive(Debug, Default)]
pub struct SavedObjects {
    /// The index.
    pub image: ObjectsImage,
    data: Vec<Vec<u8>>,
}

/// Reads every object the images of `procs` (pid, VMAs, files; tree order) refer to, once.
pub fn dump(procs: &[(i32, &[Vma], &FilesImage)]) -> Result<SavedObjects, ObjectError> {
    let mut out = SavedObjects::default();
    for &(pid, vmas, files) in procs {
        let fds = files.fds.iter().filter_map(|f| match *f.kind.base() {
            FdKind::Object { dev, ino } => Some((
                dev,
                ino,
                format!("fd {}", f.fd),
                format!("/proc/{pid}/fd/{}", f.fd),
            )),
            _ => None,
        });
        let maps = vmas.iter().filter_map(|v| match v.kind {
            VmaKind::Object { dev, ino, .. } => Some((
                dev,
                ino,
                format!("mapping {:#x}-{:#x}", v.start, v.end),
                format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end),
            )),
            _ => None,
        });
        for (dev, ino, what, source) in fds.chain(maps).collect::<Vec<_>>() {
            if out.image.find(dev, ino).is_some() {
                continue;
            }
            let (obj, data) = read_object(pid, &what, &source, (dev, ino))?;
            out.image.objects.push(obj);
            out.data.push(data);
        }
    }
    Ok(out)
}

fn read_object(
    pid: i32,
    what: &str,
    source: &str,
    (dev, ino): (u64, u64),
) -> Result<(Object, Vec<u8>), ObjectError> {
    let name = std::fs::read_link(source)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| source.to_string());
    let read_err = |source| ObjectError::Read {
        pid,
        what: what.to_string(),
        name: name.clone(),
        source,
    };
    let unsupported = |why: String| ObjectError::Unsupported {
        pid,
        what: what.to_string(),
        name: name.clone(),
        why,
    };
    let file = File::open(source).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.dev() != dev || meta.ino() != ino {
        return Err(unsupported("it changed while being dumped".into()));
    }
    let kind = kind_of(&name, &meta, &file).map_err(unsupported)?;
    let size = meta.len();
    let mut extents = Vec::new();
    let mut data = Vec::new();
    let mut at = 0;
    while at < size {
        let Some((start, end)) = memfd::next_data(&file, at).map_err(|e| read_err(e.io_error))?
        else {
            break;
        };
        let end = end.min(size);
        if start >= end {
            break;
        }
        let len = end - start;
        let from = data.len();
        data.resize(from + len as usize, 0);
        file.read_exact_at(&mut data[from..], start)
            .map_err(read_err)?;
        extents.push((start, len));
        at = end;
    }
    let crc32 = crc32fast::hash(&data);
    Ok((
        Object {
            dev,
            ino,
            kind,
            size,
            extents,
            crc32,
        },
        data,
    ))
}

impl SavedObjects {
    /// Writes `objects.img` and the contents, if there is any object.
    pub fn write(&self, dir: &ImageDir) -> Result<(), ImageError> {
        if self.image.objects.is_empty() {
            return Ok(());
        }
        for (i, data) in self.data.iter().enumerate() {
            dir.write_raw(&dir.file(&data_file_name(i)), data)?;
        }
        dir.write(Kind::Objects, 0, &self.image)
    }
}

/// Reads `objects.img` if the image has one, checked.
pub fn load(dir: &ImageDir) -> Result<ObjectsImage, ImageError> {
    if !dir.file(&Kind::Objects.file_name(0)).exists() {
        return Ok(ObjectsImage::default());
    }
    let img: ObjectsImage = dir.read(Kind::Objects, 0)?;
    img.validate().map_err(|detail| ImageError::Inconsistent {
        path: dir.file(&Kind::Objects.file_name(0)),
        detail,
    })?;
    Ok(img)
}

/// Checks that the fds and VMAs of `files`/`vmas` refer to objects `objects` holds.
pub fn check_refs(
    objects: &ObjectsImage,
    files: &FilesImage,
    vmas: &[Vma],
) -> Result<(), ObjectError> {
    for f in &files.fds {
        if let FdKind::Object { dev, ino } = *f.kind.base()
            && objects.find(dev, ino).is_none()
        {
            return Err(ObjectError::Missing {
                what: format!("fd {}", f.fd),
                dev,
                ino,
            });
        }
    }
    for v in vmas {
        if let VmaKind::Object { dev, ino, .. } = v.kind
            && objects.find(dev, ino).is_none()
        {
            return Err(ObjectError::Missing {
                what: format!("mapping {:#x}-{:#x}", v.start, v.end),
                dev,
                ino,
            });
        }
    }
    Ok(())
}

/// The recreated objects, held open by fastcr until every process has opened or mapped its own.
#[derive(Debug, Default)]
pub struct Objects {
    held: Vec<(u64, u64, File, u32)>,
}

impl Objects {
    /// Recreates every object of `img`, contents from `dir` (each file's CRC checked first).
    pub fn create(img: &ObjectsImage, dir: &ImageDir) -> Result<Self, ObjectError> {
        let mut out = Self::default();
        for (i, o) in img.objects.iter().enumerate() {
            let path = dir.file(&data_file_name(i));
            let data = std::fs::read(&path).map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
            let total: u64 = o.extents.iter().map(|e| e.1).sum();
            if data.len() as u64 != total || crc32fast::hash(&data) != o.crc32 {
                return Err(ImageError::Inconsistent {
                    path,
                    detail: "contents do not match objects.img (size or checksum)".into(),
                }
                .into());
            }
            let what = describe(o);
            let create = |source| ObjectError::Create {
                what: what.clone(),
                source,
            };
            let file = match &o.kind {
                ObjectKind::Memfd { name, .. } => File::from(
                    memfd::memfd_create(name, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
                        .map_err(|e| create(e.io_error))?,
                ),
                ObjectKind::SharedAnon => {
                    memfd::shared_anon_file(o.size).map_err(|e| create(e.io_error))?
                }
                ObjectKind::Deleted {
                    path,
                    mode,
                    uid,
                    gid,
                } => {
                    let f = deleted_file(path, *mode).map_err(create)?;
                    std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid)).map_err(create)?;
                    f.set_permissions(std::fs::Permissions::from_mode(*mode))
                        .map_err(create)?;
                    f
                }
            };
            if !matches!(o.kind, ObjectKind::SharedAnon) {
                file.set_len(o.size).map_err(create)?;
            }
            let mut at = 0usize;
            for &(off, len) in &o.extents {
                let len = len as usize;
                file.write_all_at(&data[at..at + len], off)
                    .map_err(create)?;
                at += len;
            }
            let seals = match o.kind {
                ObjectKind::Memfd { seals, .. } => seals,
                _ => 0,
            };
            out.held.push((o.dev, o.ino, file, seals));
        }
        Ok(out)
    }

    /// The path a restored process opens to reach object `dev:ino`.
    pub fn path(&self, dev: u64, ino: u64) -> Option<String> {
        let (_, _, f, _) = self.held.iter().find(|h| h.0 == dev && h.1 == ino)?;
        Some(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
    }

    /// Adds each memfd's seals, once every process has mapped what it maps (a seal may forbid
    /// a new writable mapping).
    pub fn seal(&self) -> Result<(), ObjectError> {
        for (dev, ino, f, seals) in &self.held {
            if *seals != 0 {
                memfd::add_seals(f, *seals).map_err(|e| ObjectError::Create {
                    what: format!("the seals of memfd {dev}:{ino}"),
                    source: e.io_error,
                })?;
            }
        }
        Ok(())
    }
}

fn describe(o: &Object) -> String {
    match &o.kind {
        ObjectKind::Memfd { name, .. } => format!("memfd {name:?}"),
        ObjectKind::SharedAnon => format!("shared anonymous memory {}:{}", o.dev, o.ino),
        ObjectKind::Deleted { path, .. } => format!("deleted file {path}"),
    }
}

/// A new regular file in `path`'s directory, without a name: created under `path` and unlinked
/// (so `/proc` shows `path (deleted)`), or, if that name is taken now, an `O_TMPFILE`.
fn deleted_file(path: &str, mode: u32) -> std::io::Result<File> {
    let created = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path);
    match created {
        Ok(f) => {
            std::fs::remove_file(path)?;
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let dir = std::path::Path::new(path)
                .parent()
                .and_then(|p| p.to_str())
                .filter(|p| !p.is_empty())
                .unwrap_or("/");
            memfd::tmpfile_in(dir, mode & 0o777)
                .map(File::from)
                .map_err(|e| e.io_error)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_maps_prints_them() {
        assert_eq!(parse_dev("00:01"), Some(libc::makedev(0, 1)));
        assert_eq!(parse_dev("fe:01"), Some(libc::makedev(0xfe, 1)));
        assert_eq!(parse_dev("x"), None);
        assert_eq!(parse_dev("zz:01"), None);
    }

    #[test]
    fn object_fds() {
        assert!(is_object_fd("/memfd:abc (deleted)"));
        assert!(is_object_fd("/tmp/x (deleted)"));
        assert!(!is_object_fd("/tmp/x"));
        assert!(!is_object_fd("/memfd:dir/file"));
    }
}
