//! What the processes of a tree share through their fds, both halves: at dump, [`tree_pipes`]
//! finds the pipe ends, the open file descriptions held by several processes and which process
//! saves each FIFO's data ([`TreePipes`]); at restore, [`SharedPipes`] is what fastcr makes before
//! it forks the root, which every process inherits, keeps ([`close_inherited`]) and parks above
//! its fd numbers ([`SharedPipes::park`]) until [`super::restore`] places it. Saving and making
//! one pipe, FIFO or description belongs to `pipe`, `fifo` and `description`; this module only
//! gathers them across the tree.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{FilesError, close, description, dup_above, fifo, is_reader, objects, pipe};
use crate::image::files::{FdKind, FilesImage};
use crate::inject::Injector;
use crate::proc;

/// What the processes of a dumped tree share: where the ends of its pipes are, the open file
/// descriptions held by several of its processes, and which process saves each FIFO's data.
/// Empty for one process.
#[derive(Debug, Default)]
pub struct TreePipes {
    /// Pipe inode → (a reader, a writer, the first process holding either end), each end as
    /// (pid, fd).
    pub(super) pipes: BTreeMap<u64, TreePipe>,
    /// (pid, fd) → id of the open file description, for the fds (of files reopened by path)
    /// whose description is held by more than one process.
    pub(super) shared: BTreeMap<(i32, i32), u64>,
    /// FIFO (dev, ino) → the first process (in tree order) holding it: it saves the data.
    pub(super) fifo_owner: BTreeMap<(u64, u64), i32>,
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
    out.shared = description::tree_shared(by_file)?;
    Ok(out)
}

/// Closes everything the child inherited from fastcr, except the standard streams the image
/// hands over (`--shell-job`), the ends of the tree's shared pipes (inherited from fastcr,
/// placed by [`super::restore`]) and the range `keep` (the process's parked sockets, see
/// [`super::park`]).
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
    ends: BTreeMap<u64, (OwnedFd, OwnedFd)>,
    files: BTreeMap<u64, OwnedFd>,
    fifos: BTreeMap<(u64, u64), OwnedFd>,
}

impl SharedPipes {
    /// Makes every pipe and file description the images refer to as shared, and a holder
    /// for every FIFO (see above). `objects` are the recreated memfds and deleted files.
    pub fn create(images: &[&FilesImage], objects: &objects::Objects) -> Result<Self, FilesError> {
        let mut out = Self::default();
        fifo::hold(images, &mut out.fifos)?;
        description::open_shared(images, objects, &mut out.files)?;
        pipe::make_shared(images, &mut out.ends)?;
        Ok(out)
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

    /// In a restored process, moves the inherited ends of shared pipes and descriptions of
    /// files shared across the tree that `files` uses above every fd number of the image
    /// (`top`), so placing one never closes another, and closes the inherited ones it does not
    /// use.
    pub(super) fn park(
        &self,
        inj: &Injector,
        files: &FilesImage,
        top: i32,
    ) -> Result<ParkedShared, FilesError> {
        let mut parked = ParkedShared::default();
        for f in &files.fds {
            if let FdKind::SharedPipe { inode } = f.kind {
                let key = (inode, is_reader(f.flags));
                if parked.pipes.contains_key(&key) {
                    continue;
                }
                let src = self
                    .raw(key.0, key.1)
                    .ok_or(FilesError::MissingPipe { fd: f.fd, inode })?;
                let hi = dup_above(inj, "fcntl(F_DUPFD) of an inherited pipe end", src, top)?;
                parked.pipes.insert(key, hi);
            }
        }
        // The same for the descriptions of files shared across the tree.
        for f in &files.fds {
            if let FdKind::SharedFile { id, .. } = f.kind {
                if parked.files.contains_key(&id) {
                    continue;
                }
                let src = self
                    .raw_file(id)
                    .ok_or(FilesError::BadShared { fd: f.fd })?;
                let hi = dup_above(
                    inj,
                    "fcntl(F_DUPFD) of an inherited file description",
                    src,
                    top,
                )?;
                parked.files.insert(id, hi);
            }
        }
        for fd in self.raw_fds() {
            if !parked
                .pipes
                .values()
                .chain(parked.files.values())
                .any(|&p| p == fd)
            {
                // EBADF is fine: a number the image's own fds took since.
                inj.raw("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            }
        }
        Ok(parked)
    }
}

/// The inherited ends of shared pipes and shared file descriptions of one restored process,
/// parked above its fd numbers (see [`SharedPipes::park`]).
#[derive(Debug, Default)]
pub(super) struct ParkedShared {
    /// (pipe inode, read end) → parked fd number.
    pipes: BTreeMap<(u64, bool), u64>,
    /// Description id → parked fd number.
    files: BTreeMap<u64, u64>,
}

impl ParkedShared {
    /// The parked end (`reader` or writer) of pipe `inode`.
    pub(super) fn pipe(&self, inode: u64, reader: bool) -> Option<u64> {
        self.pipes.get(&(inode, reader)).copied()
    }

    /// The parked copy of the description `id`.
    pub(super) fn file(&self, id: u64) -> Option<u64> {
        self.files.get(&id).copied()
    }

    /// Closes every parked fd, once they are all placed.
    pub(super) fn close(self, inj: &Injector) -> Result<(), FilesError> {
        for fd in self.pipes.into_values().chain(self.files.into_values()) {
            close(inj, fd)?;
        }
        Ok(())
    }
}
