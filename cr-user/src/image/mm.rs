//! `mm-<pid>.img`: the address space layout of one process.

use serde::{Deserialize, Serialize};

/// What backs a VMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    /// Anonymous memory (incl. `[heap]` and `[stack]`).
    Anon,
    /// A regular file.
    File {
        /// Path at dump time.
        path: String,
        /// Offset of the VMA start in the file.
        offset: u64,
        /// File size at dump time (checked at restore).
        size: u64,
    },
    /// The vDSO text.
    Vdso,
    /// A vvar data page set (`[vvar]`, `[vvar_vclock]`), moved together with the vDSO.
    Vvar {
        /// Its name in maps.
        name: String,
    },
    /// A memfd, shared anonymous memory or a deleted file, saved once in `objects.img`.
    Object {
        /// `st_dev` at dump time.
        dev: u64,
        /// `st_ino` at dump time.
        ino: u64,
        /// Offset of the VMA start in the object.
        offset: u64,
    },
}

/// One VMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// MAP_SHARED rather than MAP_PRIVATE.
    pub shared: bool,
    /// MAP_GROWSDOWN (the main stack).
    pub growsdown: bool,
    /// What backs it.
    pub kind: VmaKind,
    /// Its name in maps (`[heap]`, `[stack]`, a path, or empty).
    pub name: String,
    /// smaps VmFlags worth restoring with madvise (`dd`, `hg`, `nh`, `dc`, `wf`).
    pub madv: Vec<String>,
}

/// The mm fields `PR_SET_MM_MAP` restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// A process's address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmImage {
    /// `/proc/PID/exe` target.
    pub exe: String,
    /// Layout fields.
    pub fields: MmFields,
    /// The saved auxiliary vector (pairs of u64).
    pub auxv: Vec<u64>,
    /// VMAs, ascending, excluding `[vsyscall]`.
    pub vmas: Vec<Vma>,
}
