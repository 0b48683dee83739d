//! Memory of one process: VMA classification (pure), the dump half (`dump.rs`) and the restore
//! half (`restore.rs`).

pub mod dump;
pub mod pages;
pub mod restore;

use crate::image::mm::{Vma, VmaKind};
use crate::proc::maps::MapEntry;

/// Why memory could not be saved or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    /// A mapping fastcr cannot save yet.
    #[error("process {pid}: cannot dump mapping {start:#x}-{end:#x} ({name}): {why}")]
    Unsupported {
        /// The process.
        pid: i32,
        /// VMA start.
        start: u64,
        /// VMA end.
        end: u64,
        /// Its name in maps.
        name: String,
        /// Why it cannot be saved.
        why: &'static str,
    },
    /// Reading `/proc` failed.
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    /// A file-backed mapping's file is gone or changed.
    #[error("mapped file {path} is missing or changed since the dump")]
    FileChanged {
        /// The file.
        path: String,
        /// What stat said.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Reading or writing another process's memory failed.
    #[error("{what} of process {pid} at {addr:#x} failed")]
    Memory {
        /// The process.
        pid: i32,
        /// What was done.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Stored pages do not match their checksum.
    #[error("page image is corrupt at {vaddr:#x} ({pages} pages): checksum mismatch")]
    PagesCorrupt {
        /// First page of the damaged run.
        vaddr: u64,
        /// Run length.
        pages: u32,
    },
    /// An in-parent page is in no parent image.
    #[error(
        "page {vaddr:#x} is marked as held by a parent image or by the parent process, but it does not hold it"
    )]
    NotInParent {
        /// The page.
        vaddr: u64,
    },
    /// A parent image could not be read.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The restorer's kernel lays out special mappings differently from the dump's.
    #[error(
        "special mapping {name} differs between dump and restore (size {dumped} vs {here}); restore on the same kernel"
    )]
    SpecialMismatch {
        /// `[vdso]`, `[vvar]`, ...
        name: String,
        /// Size in the image.
        dumped: u64,
        /// Size here.
        here: u64,
    },
    /// A VMA refers to an object fastcr did not recreate.
    #[error("a mapping refers to object {dev}:{ino}, which the image does not hold")]
    MissingObject {
        /// Device.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// No room for the restore trampoline.
    #[error("no free address range for the restore trampoline")]
    NoGap,
    /// An injected syscall failed.
    #[error(transparent)]
    Inject(#[from] crate::inject::InjectError),
}

/// A VMA of a memfd, of shared anonymous memory or of a deleted file: saved in `objects.img`.
fn object(pid: i32, e: &MapEntry) -> Result<VmaKind, MmError> {
    let dev = crate::files::objects::parse_dev(&e.dev).ok_or_else(|| MmError::Unsupported {
        pid,
        start: e.start,
        end: e.end,
        name: e.path.clone(),
        why: "unreadable device number",
    })?;
    Ok(VmaKind::Object {
        dev,
        ino: e.inode,
        offset: e.offset,
    })
}

/// Classifies one smaps entry; `None` for mappings that are not saved (`[vsyscall]`).
pub fn classify(
    pid: i32,
    e: &MapEntry,
    file_size: impl Fn(&str) -> Option<u64>,
) -> Result<Option<Vma>, MmError> {
    let unsupported = |why| MmError::Unsupported {
        pid,
        start: e.start,
        end: e.end,
        name: e.path.clone(),
        why,
    };
    let kind = match e.path.as_str() {
        "[vsyscall]" => return Ok(None),
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" | "[vvar_vclock]" => VmaKind::Vvar {
            name: e.path.clone(),
        },
        "" | "[heap]" | "[stack]" => VmaKind::Anon,
        "/dev/zero (deleted)" if e.shared && e.inode != 0 => object(pid, e)?,
        p if p.starts_with("[anon:") => VmaKind::Anon,
        p if p.starts_with('[') => return Err(unsupported("special kernel mapping")),
        p if p.starts_with("anon_inode:") => {
            return Err(unsupported(
                "a mapping of a kernel object (io_uring rings, perf buffers, ...) is not supported",
            ));
        }
        p if p.starts_with("/SYSV") => {
            return Err(unsupported("SysV shared memory is not supported yet"));
        }
        p if p.ends_with(" (deleted)") || p.starts_with("/memfd:") => object(pid, e)?,
        p if p.starts_with("/dev/") => {
            return Err(unsupported("device mappings are not supported"));
        }
        p if p.starts_with('/') => {
            if e.has_flag("io") || e.has_flag("pf") {
                return Err(unsupported("I/O or PFN mapping"));
            }
            let size =
                file_size(p).ok_or_else(|| unsupported("mapped file is not reachable by path"))?;
            VmaKind::File {
                path: p.to_string(),
                offset: e.offset,
                size,
            }
        }
        _ => return Err(unsupported("unknown mapping kind")),
    };
    let madv = e
        .vm_flags
        .iter()
        .filter(|f| matches!(f.as_str(), "dd" | "hg" | "nh" | "dc" | "wf"))
        .cloned()
        .collect();
    Ok(Some(Vma {
        start: e.start,
        end: e.end,
        prot: e.prot,
        shared: e.shared,
        growsdown: e.has_flag("gd"),
        kind,
        name: e.path.clone(),
        madv,
    }))
}

/// Finds the lowest address ≥ `from` where `len` bytes fit between the sorted-or-not `busy`
/// ranges, below the top of the user address space.
pub fn find_gap(busy: &[(u64, u64)], len: u64, from: u64) -> Option<u64> {
    const USER_TOP: u64 = 0x7fff_ffff_f000;
    let mut ranges: Vec<(u64, u64)> = busy.to_vec();
    ranges.sort_unstable();
    let mut cand = from;
    for (s, e) in ranges {
        if e <= cand {
            continue;
        }
        if s >= cand && s - cand >= len {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    (cand.checked_add(len)? <= USER_TOP).then_some(cand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::maps::parse_maps_line;

    fn entry(line: &str) -> MapEntry {
        parse_maps_line(line).unwrap()
    }

    #[test]
    fn classifies_kinds() {
        let size = |_: &str| Some(100);
        let v = classify(
            1,
            &entry("1000-2000 r-xp 00000000 fe:00 12 /usr/bin/x"),
            size,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(v.kind, VmaKind::File { size: 100, .. }));
        let v = classify(1, &entry("1000-2000 rw-p 00000000 00:00 0 [heap]"), size)
            .unwrap()
            .unwrap();
        assert_eq!(v.kind, VmaKind::Anon);
        let v = classify(
            1,
            &entry("1000-2000 rw-s 00000000 00:01 7 /dev/zero (deleted)"),
            size,
        )
        .unwrap()
        .unwrap();
        assert!(
            v.shared
                && matches!(
                    v.kind,
                    VmaKind::Object {
                        ino: 7,
                        dev: 1,
                        offset: 0
                    }
                )
        );
        assert!(
            classify(1, &entry("1000-2000 r-xp 0 00:00 0 [vsyscall]"), size)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            classify(1, &entry("1000-2000 rw-p 0 fe:00 3 /tmp/x (deleted)"), size)
                .unwrap()
                .unwrap()
                .kind,
            VmaKind::Object { ino: 3, .. }
        ));
        assert!(
            classify(
                1,
                &entry("1000-2000 rw-s 0 00:01 3 /SYSV00000000 (deleted)"),
                size
            )
            .is_err()
        );
        assert!(classify(1, &entry("1000-2000 rw-s 0 00:05 3 /dev/fb0"), size).is_err());
        assert!(classify(1, &entry("1000-2000 r-xp 0 fe:00 3 /gone"), |_| None).is_err());
    }

    #[test]
    fn gap_finding() {
        let busy = [
            (0x10_0000, 0x20_0000),
            (0x20_0000, 0x30_0000),
            (0x40_0000, 0x50_0000),
        ];
        assert_eq!(find_gap(&busy, 0x1000, 0x10_0000), Some(0x30_0000));
        assert_eq!(find_gap(&busy, 0x20_0000, 0x10_0000), Some(0x50_0000));
        assert_eq!(find_gap(&busy, 0x1000, 0x1000), Some(0x1000));
        assert_eq!(find_gap(&[], 0x1000, 0x7fff_ffff_f000), None);
    }
}
