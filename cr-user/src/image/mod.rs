//! The image directory: pure encoding of every image kind, and the files that hold them.
//!
//! ```text
//! DIR/
//!   inventory.img        Inventory            magic "FCIN"
//!   core-<pid>.img       CoreImage            magic "FCCO"
//!   mm-<pid>.img         MmImage              magic "FCMM"
//!   files-<pid>.img      FilesImage           magic "FCFI"
//!   pagemap-<pid>.img    PagemapImage         magic "FCPM"
//!   pages-<pid>.img      raw pages, page-aligned, indexed by pagemap-<pid>.img
//!   sigstate-<pid>.img   SigStateImage        magic "FCSG"  (absent in older images)
//!   stopped-<pid>.img    StoppedImage         magic "FCST"  (only for a job-control stopped process)
//! ```
//! Metadata files use the envelope in [`header`]; payloads are bincode with a size limit, so a
//! corrupt length can never make a reader allocate more than the file holds. This module never
//! calls into `sys`.

pub mod core;
pub mod files;
pub mod header;
pub mod inventory;
pub mod locks;
pub mod mm;
pub mod objects;
pub mod pagemap;
pub mod sigstate;
pub mod tree;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::core::CoreImage;
pub use self::files::FilesImage;
pub use self::header::HeaderError;
pub use self::inventory::Inventory;
pub use self::mm::MmImage;
pub use self::pagemap::PagemapImage;

/// An image kind: its magic and file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `inventory.img`.
    Inventory,
    /// `core-<pid>.img`.
    Core,
    /// `mm-<pid>.img`.
    Mm,
    /// `files-<pid>.img`.
    Files,
    /// `pagemap-<pid>.img`.
    Pagemap,
    /// `threads-<pid>.img` (multi-threaded processes only).
    Threads,
    /// `tree.img` (trees only).
    Tree,
    /// `sigstate-<pid>.img`: pending signals, POSIX timers, limits, identity.
    SigState,
    /// `objects.img`: memfds, shared anonymous memory, deleted files (absent: none).
    Objects,
    /// `locks-<pid>.img`: file locks held (absent: none).
    Locks,
    /// `stopped-<pid>.img`: the process was stopped by job control (absent: it was not).
    Stopped,
}

impl Kind {
    /// The kind's magic number.
    pub fn magic(self) -> u32 {
        let tag: &[u8; 4] = match self {
            Kind::Inventory => b"FCIN",
            Kind::Core => b"FCCO",
            Kind::Mm => b"FCMM",
            Kind::Files => b"FCFI",
            Kind::Pagemap => b"FCPM",
            Kind::Threads => b"FCTH",
            Kind::Tree => b"FCTR",
            Kind::SigState => b"FCSG",
            Kind::Objects => b"FCOB",
            Kind::Locks => b"FCLK",
            Kind::Stopped => b"FCST",
        };
        u32::from_le_bytes(*tag)
    }

    /// The file name for process `pid` (ignored for the inventory).
    pub fn file_name(self, pid: i32) -> String {
        match self {
            Kind::Inventory => "inventory.img".to_string(),
            Kind::Core => format!("core-{pid}.img"),
            Kind::Mm => format!("mm-{pid}.img"),
            Kind::Files => format!("files-{pid}.img"),
            Kind::Pagemap => format!("pagemap-{pid}.img"),
            Kind::Threads => format!("threads-{pid}.img"),
            Kind::Tree => "tree.img".to_string(),
            Kind::SigState => format!("sigstate-{pid}.img"),
            Kind::Objects => "objects.img".to_string(),
            Kind::Locks => format!("locks-{pid}.img"),
            Kind::Stopped => format!("stopped-{pid}.img"),
        }
    }
}

/// File name of the raw pages of `pid`.
pub fn pages_file_name(pid: i32) -> String {
    format!("pages-{pid}.img")
}

/// Why an image could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image directory does not exist or is not a directory.
    #[error("image dir {path} does not exist or is not a directory")]
    NoDir {
        /// The directory.
        path: PathBuf,
    },
    /// A file the image needs is missing.
    #[error("image file {path} is missing")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// An I/O error on an image file.
    #[error("cannot access image file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The envelope is damaged or from another version.
    #[error("image file {path} is invalid")]
    Envelope {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// The payload does not decode (or encode).
    #[error("image file {path} does not decode")]
    Codec {
        /// The file.
        path: PathBuf,
        /// The codec's error.
        #[source]
        source: bincode::Error,
    },
    /// Decoded fine but contradicts itself or another file.
    #[error("image file {path} is inconsistent: {detail}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What contradicts what.
        detail: String,
    },
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(header::MAX_PAYLOAD)
        .reject_trailing_bytes()
}

/// Encodes `value` as a sealed image file body.
pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, bincode::Error> {
    Ok(header::seal(kind.magic(), &codec().serialize(value)?))
}

/// Decodes a sealed image file body of `kind`. `path` names it in errors.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8], path: &Path) -> Result<T, ImageError> {
    let payload = header::open(kind.magic(), bytes).map_err(|source| ImageError::Envelope {
        path: path.to_path_buf(),
        source,
    })?;
    codec()
        .deserialize(payload)
        .map_err(|source| ImageError::Codec {
            path: path.to_path_buf(),
            source,
        })
}

/// An image directory on disk.
#[derive(Debug, Clone)]
pub struct ImageDir {
    path: PathBuf,
}

impl ImageDir {
    /// Opens an existing image dir for reading.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        if !path.is_dir() {
            return Err(ImageError::NoDir {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Creates the dir (and parents) if needed, for writing.
    pub fn create(path: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::open(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Full path of a file in the dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `value` as `kind` for `pid`: to a temporary name, synced, then renamed, so a
    /// crash never leaves a half-written file under the real name.
    pub fn write<T: Serialize>(&self, kind: Kind, pid: i32, value: &T) -> Result<(), ImageError> {
        let path = self.file(&kind.file_name(pid));
        let bytes = encode(kind, value).map_err(|source| ImageError::Codec {
            path: path.clone(),
            source,
        })?;
        self.write_raw(&path, &bytes)
    }

    /// Writes raw bytes to `path` atomically (tmp + fsync + rename).
    pub fn write_raw(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("img.tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Writes `path` atomically (tmp + fsync + rename) through a buffered writer given to `fill`.
    pub fn write_with(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("img.tmp");
        let f = File::create(&tmp).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        fill(&mut w).map_err(io)?;
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Reads `kind` for `pid`.
    pub fn read<T: DeserializeOwned>(&self, kind: Kind, pid: i32) -> Result<T, ImageError> {
        let path = self.file(&kind.file_name(pid));
        let bytes = self.read_bytes(&path)?;
        decode(kind, &bytes, &path)
    }

    /// Reads a whole file, refusing anything larger than an envelope may be.
    pub fn read_bytes(&self, path: &Path) -> Result<Vec<u8>, ImageError> {
        let meta = fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ImageError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                ImageError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        if meta.len() > header::MAX_PAYLOAD + header::HEADER_LEN as u64 + 4 {
            return Err(ImageError::Envelope {
                path: path.to_path_buf(),
                source: HeaderError::TooLarge { len: meta.len() },
            });
        }
        fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::inventory::Inventory;
    use super::*;

    fn inv() -> Inventory {
        Inventory {
            tool_version: "0.1.0".into(),
            root_pid: 42,
            pids: vec![42],
            shell_job: false,
            created_unix_ms: 1,
            parent: None,
            pre_dump: false,
            tracking: None,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let bytes = encode(Kind::Inventory, &inv()).unwrap();
        let back: Inventory = decode(Kind::Inventory, &bytes, Path::new("x")).unwrap();
        assert_eq!(back, inv());
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let bytes = encode(Kind::Inventory, &inv()).unwrap();
        let r: Result<Inventory, _> = decode(Kind::Core, &bytes, Path::new("x"));
        assert!(matches!(r, Err(ImageError::Envelope { .. })));
    }

    #[test]
    fn corrupt_payload_with_valid_crc_is_rejected_without_panic() {
        // A payload that claims a huge vector length, sealed with a correct CRC.
        let mut payload = vec![0u8; 4];
        payload.extend_from_slice(&[0xfd; 9]);
        let bytes = header::seal(Kind::Inventory.magic(), &payload);
        let r: Result<Inventory, _> = decode(Kind::Inventory, &bytes, Path::new("x"));
        assert!(matches!(r, Err(ImageError::Codec { .. })));
    }

    #[test]
    fn dir_write_read_and_missing() {
        let dir = std::env::temp_dir().join(format!("fastcr-image-test-{}", std::process::id()));
        let d = ImageDir::create(&dir).unwrap();
        d.write(Kind::Inventory, 0, &inv()).unwrap();
        let back: Inventory = d.read(Kind::Inventory, 0).unwrap();
        assert_eq!(back, inv());
        let r: Result<Inventory, _> = d.read(Kind::Core, 7);
        assert!(matches!(r, Err(ImageError::Missing { .. })));
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            ImageDir::open(&dir),
            Err(ImageError::NoDir { .. })
        ));
    }
}
