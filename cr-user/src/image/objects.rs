//! `objects.img`: file objects that only exist while something holds them open or mapped —
//! memfds, `MAP_SHARED` anonymous memory (a shmem file, `/dev/zero (deleted)` in maps) and
//! regular files deleted while open — saved once per inode for the whole dump, whichever fds
//! and VMAs of whichever processes refer to them. The contents of object *i* are in the raw
//! file `object-<i>.img`: its data extents back to back (holes are not stored).

use serde::{Deserialize, Serialize};

/// What an object was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A `memfd_create` file.
    Memfd {
        /// Its name (without the `memfd:` prefix).
        name: String,
        /// `F_GET_SEALS` (`F_SEAL_SEAL` alone: created without `MFD_ALLOW_SEALING`).
        seals: u32,
    },
    /// The shmem file behind `MAP_SHARED | MAP_ANONYMOUS` memory.
    SharedAnon,
    /// A regular file unlinked while open.
    Deleted {
        /// Its path when it was deleted (without ` (deleted)`).
        path: String,
        /// `st_mode` permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// `st_dev` at dump time: with `ino`, what fds and VMAs refer to.
    pub dev: u64,
    /// `st_ino` at dump time.
    pub ino: u64,
    /// What it is.
    pub kind: ObjectKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its data ranges `(offset, len)`, ascending, inside `size`; the rest reads as zeros.
    pub extents: Vec<(u64, u64)>,
    /// CRC-32 of `object-<i>.img` (the extents' bytes back to back).
    pub crc32: u32,
}

/// Every object of the dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsImage {
    /// The objects; object *i*'s contents are in `object-<i>.img`.
    pub objects: Vec<Object>,
}

/// File name of object `i`'s contents.
pub fn data_file_name(i: usize) -> String {
    format!("object-{i}.img")
}

impl ObjectsImage {
    /// Checks what decoding cannot: extents inside the object, ascending and disjoint, no two
    /// objects with one identity. Returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (i, o) in self.objects.iter().enumerate() {
            if self.objects[..i]
                .iter()
                .any(|p| p.dev == o.dev && p.ino == o.ino)
            {
                return Err(format!("object {}:{} appears twice", o.dev, o.ino));
            }
            let mut at = 0u64;
            for &(off, len) in &o.extents {
                let end = off.checked_add(len).filter(|&e| e <= o.size);
                if off < at || end.is_none() || len == 0 {
                    return Err(format!(
                        "object {}:{} has a bad extent {off}+{len} (size {})",
                        o.dev, o.ino, o.size
                    ));
                }
                at = off + len;
            }
        }
        Ok(())
    }

    /// The object with this identity.
    pub fn find(&self, dev: u64, ino: u64) -> Option<(usize, &Object)> {
        self.objects
            .iter()
            .enumerate()
            .find(|(_, o)| o.dev == dev && o.ino == ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(extents: Vec<(u64, u64)>) -> Object {
        Object {
            dev: 1,
            ino: 2,
            kind: ObjectKind::SharedAnon,
            size: 8192,
            extents,
            crc32: 0,
        }
    }

    #[test]
    fn extents_are_checked() {
        let ok = ObjectsImage {
            objects: vec![obj(vec![(0, 4096), (4096, 4096)])],
        };
        assert!(ok.validate().is_ok());
        for bad in [
            vec![(0, 8193)],
            vec![(4096, 10), (0, 10)],
            vec![(u64::MAX, 2)],
            vec![(0, 0)],
        ] {
            let img = ObjectsImage {
                objects: vec![obj(bad)],
            };
            assert!(img.validate().is_err());
        }
        let twice = ObjectsImage {
            objects: vec![obj(vec![]), obj(vec![])],
        };
        assert!(twice.validate().is_err());
    }
}
