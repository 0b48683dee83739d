//! Reading an image dir for restore: every file of every process, checked against each other
//! before anything is forked.

use std::path::{Path, PathBuf};

use super::RestoreError;
use crate::image::core::{CoreImage, ThreadsImage};
use crate::image::files::FilesImage;
use crate::image::inventory::Inventory;
use crate::image::mm::{MmImage, VmaKind};
use crate::image::pagemap::PagemapImage;
use crate::image::sigstate::SigStateImage;
use crate::image::tree::{TreeImage, TreeProc};
use crate::image::{ImageDir, ImageError, Kind, pages_file_name};
use crate::mm::MmError;
use crate::mm::pages::{PageChain, load_parents};
use crate::sys::PAGE_SIZE;

/// Everything saved of one process.
pub struct ProcImage {
    /// Its pid.
    pub pid: i32,
    /// Main thread and process-wide CPU and signal state.
    pub core: CoreImage,
    /// Its other threads.
    pub threads: ThreadsImage,
    /// Pending signals, POSIX timers, limits, identity (absent in images of older versions).
    pub sigstate: Option<SigStateImage>,
    /// Address space.
    pub mm: MmImage,
    /// Files.
    pub files: FilesImage,
    /// The job-control stop signal it had taken (`stopped-<pid>.img`; `None` if absent).
    pub stopped: Option<i32>,
    /// File locks to take back (`locks-<pid>.img`; empty if absent).
    pub locks: crate::image::locks::LocksImage,
    /// Page index.
    pub pagemap: PagemapImage,
    /// Path of the pages file.
    pub pages_path: PathBuf,
    /// The pages, through the parent chain.
    pub chain: PageChain,
}

/// Everything read from an image dir, checked for consistency.
pub struct LoadedImage {
    /// The inventory.
    pub inventory: Inventory,
    /// The process tree (one entry for a single process).
    pub tree: TreeImage,
    /// The live processes, in tree order: the root first.
    pub procs: Vec<ProcImage>,
    /// Memfds, shared anonymous memory and deleted files (`objects.img`; empty if absent).
    pub objects: crate::image::objects::ObjectsImage,
    /// Where the image is (the objects' contents are read from it).
    pub dir: ImageDir,
}

impl LoadedImage {
    /// The root process.
    pub fn root(&self) -> &ProcImage {
        &self.procs[0]
    }
}

fn inconsistent(dir: &ImageDir, name: &str, detail: String) -> ImageError {
    ImageError::Inconsistent {
        path: dir.file(name),
        detail,
    }
}

/// Reads every file of the image and checks them against each other.
pub fn load(path: &Path) -> Result<LoadedImage, RestoreError> {
    let dir = ImageDir::open(path)?;
    let inventory: Inventory = dir.read(Kind::Inventory, 0)?;
    if inventory.pre_dump {
        return Err(RestoreError::PreDumpOnly {
            path: path.to_path_buf(),
        });
    }
    let root = inventory.root_pid;
    if root <= 0 {
        return Err(inconsistent(&dir, "inventory.img", format!("invalid root pid {root}")).into());
    }
    let single = !dir.file(&Kind::Tree.file_name(0)).exists();
    let mut tree: TreeImage = if !single {
        dir.read(Kind::Tree, 0)?
    } else {
        TreeImage {
            procs: vec![TreeProc {
                pid: root,
                ppid: 0,
                sid: 0,
                pgid: 0,
                comm: String::new(),
                zombie: None,
            }],
        }
    };
    tree.validate(root)
        .map_err(|d| inconsistent(&dir, "tree.img", d))?;
    let live: Vec<i32> = tree
        .procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| p.pid)
        .collect();
    if live != inventory.pids {
        return Err(inconsistent(
            &dir,
            "inventory.img",
            format!(
                "processes {:?} do not match the tree's {live:?}",
                inventory.pids
            ),
        )
        .into());
    }
    let mut procs: Vec<ProcImage> = Vec::with_capacity(live.len());
    for &pid in &live {
        // Only a root can have parent images (trees are not dumped incrementally); a child's
        // pages shared copy-on-write with its parent are in the parent's (or further up).
        let pages = if pid == root {
            Parents::Images(load_parents(&dir, &inventory)?)
        } else {
            Parents::Processes(ancestors(&tree, &procs, pid))
        };
        procs.push(load_proc(&dir, pid, pages)?);
    }
    if single {
        // An image of one process records its session and group only as "led them or not".
        let core = &procs[0].core;
        tree.procs[0].sid = if core.session_leader { root } else { 0 };
        tree.procs[0].pgid = if core.pgrp_leader { root } else { 0 };
    }
    let objects = crate::files::objects::load(&dir)?;
    for p in &procs {
        crate::files::objects::check_refs(&objects, &p.files, &p.mm.vmas)
            .map_err(crate::files::FilesError::from)?;
    }
    Ok(LoadedImage {
        inventory,
        tree,
        procs,
        objects,
        dir,
    })
}

/// Where the pages a process's image does not store are.
enum Parents {
    /// The parent images of an incremental dump (the root only).
    Images(Vec<(ImageDir, PagemapImage)>),
    /// The page indexes of its ancestor processes, parent first (a tree's child).
    Processes(Vec<(i32, PagemapImage)>),
}

/// The ancestors of `pid` (already in `procs`, which holds parents before children) whose
/// pages its `PE_COW_PARENT` runs may lead to: the parent, and further up only while the
/// nearer one shares pages with its own parent.
fn ancestors(tree: &TreeImage, procs: &[ProcImage], pid: i32) -> Vec<(i32, PagemapImage)> {
    let mut out = Vec::new();
    let mut at = pid;
    while let Some(ppid) = tree.procs.iter().find(|p| p.pid == at).map(|p| p.ppid) {
        let Some(parent) = procs.iter().find(|p| p.pid == ppid) else {
            break;
        };
        out.push((ppid, parent.pagemap.clone()));
        if parent.pagemap.cow_pages() == 0 || out.len() >= crate::mm::pages::MAX_CHAIN {
            break;
        }
        at = ppid;
    }
    out
}

fn load_proc(dir: &ImageDir, pid: i32, parents: Parents) -> Result<ProcImage, RestoreError> {
    let core: CoreImage = dir.read(Kind::Core, pid)?;
    let threads: ThreadsImage = if dir.file(&Kind::Threads.file_name(pid)).exists() {
        dir.read(Kind::Threads, pid)?
    } else {
        ThreadsImage::default()
    };
    if let Some(t) = threads.threads.iter().find(|t| t.tid <= 0 || t.tid == pid) {
        return Err(inconsistent(
            dir,
            &Kind::Threads.file_name(pid),
            format!("invalid thread id {}", t.tid),
        )
        .into());
    }
    let sigstate: Option<SigStateImage> = if dir.file(&Kind::SigState.file_name(pid)).exists() {
        Some(dir.read(Kind::SigState, pid)?)
    } else {
        None
    };
    if let Some(s) = &sigstate {
        let tids: Vec<i32> = std::iter::once(pid)
            .chain(threads.threads.iter().map(|t| t.tid))
            .collect();
        s.validate(&tids)
            .map_err(|d| inconsistent(dir, &Kind::SigState.file_name(pid), d))?;
    }
    let stopped = if dir.file(&Kind::Stopped.file_name(pid)).exists() {
        let s: crate::image::core::StoppedImage = dir.read(Kind::Stopped, pid)?;
        s.validate()
            .map_err(|d| inconsistent(dir, &Kind::Stopped.file_name(pid), d))?;
        Some(s.signal)
    } else {
        None
    };
    let mm: MmImage = dir.read(Kind::Mm, pid)?;
    let files: FilesImage = dir.read(Kind::Files, pid)?;
    let pagemap: PagemapImage = dir.read(Kind::Pagemap, pid)?;
    let locks: crate::image::locks::LocksImage = if dir.file(&Kind::Locks.file_name(pid)).exists() {
        dir.read(Kind::Locks, pid)?
    } else {
        Default::default()
    };
    locks
        .validate()
        .map_err(|d| inconsistent(dir, &Kind::Locks.file_name(pid), d))?;
    if let Some(l) = locks
        .locks
        .iter()
        .find(|l| !files.fds.iter().any(|f| f.fd == l.fd))
    {
        return Err(inconsistent(
            dir,
            &Kind::Locks.file_name(pid),
            format!("a lock on fd {}, which files-{pid}.img does not have", l.fd),
        )
        .into());
    }
    if core.tid != pid {
        return Err(inconsistent(
            dir,
            &Kind::Core.file_name(pid),
            format!("task {} is not {pid}", core.tid),
        )
        .into());
    }
    let mut last = 0;
    for v in &mm.vmas {
        if v.start >= v.end || v.start < last || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0
        {
            return Err(inconsistent(
                dir,
                &Kind::Mm.file_name(pid),
                format!("bad VMA {:#x}-{:#x}", v.start, v.end),
            )
            .into());
        }
        last = v.end;
    }
    let ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    pagemap
        .validate(&ranges)
        .map_err(|d| inconsistent(dir, &Kind::Pagemap.file_name(pid), d))?;
    let pages_path = dir.file(&pages_file_name(pid));
    let chain = match parents {
        Parents::Images(images) => PageChain::open(dir, pid, pagemap.clone(), images)?,
        Parents::Processes(procs) => PageChain::open_tree(dir, pid, pagemap.clone(), procs)?,
    };
    chain
        .check_refs()
        .map_err(|d| inconsistent(dir, &Kind::Pagemap.file_name(pid), d))?;
    Ok(ProcImage {
        pid,
        core,
        threads,
        sigstate,
        stopped,
        mm,
        files,
        locks,
        pagemap,
        pages_path,
        chain,
    })
}

/// Checks before forking that the files the image maps are still there, unchanged in size.
pub(super) fn check_mapped_files(mm: &MmImage) -> Result<(), MmError> {
    let exe_ok = std::fs::metadata(&mm.exe).is_ok_and(|m| m.is_file());
    if !exe_ok {
        return Err(MmError::FileChanged {
            path: mm.exe.clone(),
            source: None,
        });
    }
    for v in &mm.vmas {
        if let VmaKind::File { path, size, .. } = &v.kind {
            match std::fs::metadata(path) {
                Ok(m) if m.len() == *size => {}
                Ok(_) => {
                    return Err(MmError::FileChanged {
                        path: path.clone(),
                        source: None,
                    });
                }
                Err(e) => {
                    return Err(MmError::FileChanged {
                        path: path.clone(),
                        source: Some(e),
                    });
                }
            }
        }
    }
    Ok(())
}
