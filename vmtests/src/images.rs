//! Image directories as the tests of bad input handle them: a private copy of a good image
//! directory, and the damage done to one of its files, so that the good images stay usable for
//! the positive control.
//!
//! Must not: write to the directory it copies from.

use std::fmt;
use std::fs;
use std::path::Path;

use crate::Scratch;

/// A copy of the image directory `images` (its files, not subdirectories) in a new scratch
/// directory.
pub fn copy_images(images: &Scratch) -> Scratch {
    let copy = Scratch::new("img-copy");
    for entry in fs::read_dir(images.path()).expect("read the image dir") {
        let entry = entry.expect("dir entry");
        fs::copy(
            entry.path(),
            copy.join(&entry.file_name().to_string_lossy()),
        )
        .expect("copy an image file");
    }
    copy
}

/// How a test damages an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Cut to half its length.
    Truncated,
    /// The byte in the middle inverted.
    Flipped,
}

impl Damage {
    /// Every kind of damage.
    pub const ALL: [Damage; 2] = [Damage::Truncated, Damage::Flipped];

    /// Damages the file at `path` in place.
    pub fn apply(self, path: &Path) {
        let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let len = bytes.len();
        match self {
            Damage::Truncated => bytes.truncate(len / 2),
            Damage::Flipped => bytes[len / 2] ^= 0xff,
        }
        fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Damage::Truncated => "truncated",
            Damage::Flipped => "flipped",
        })
    }
}
