//! The envelope of every metadata image file: magic, format version, length, payload, CRC.
//!
//! ```text
//! offset  size  field
//! 0       4     magic (u32 LE, one per image kind)
//! 4       2     format major (u16 LE): a different major is not readable
//! 6       2     format minor (u16 LE): a newer minor than ours is refused
//! 8       8     payload length (u64 LE), capped at MAX_PAYLOAD
//! 16      len   payload (bincode of the kind's struct)
//! 16+len  4     CRC-32 (u32 LE) of bytes 0 .. 16+len
//! ```
//! Nothing may follow the CRC.

/// Format major version written by this build.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written by this build.
pub const FORMAT_MINOR: u16 = 2;
/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest payload a reader accepts (64 MiB).
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Why an envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than its header or than the length it declares.
    #[error("truncated: {len} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header requires.
        expected: u64,
    },
    /// Not the magic of the expected kind.
    #[error("bad magic {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        /// What the file holds.
        found: u32,
        /// What this kind uses.
        expected: u32,
    },
    /// Written by a newer or incompatible fastcr.
    #[error(
        "format version {major}.{minor} is not supported (this fastcr reads {FORMAT_MAJOR}.0 to {FORMAT_MAJOR}.{FORMAT_MINOR})"
    )]
    Version {
        /// File's major.
        major: u16,
        /// File's minor.
        minor: u16,
    },
    /// Declared payload larger than the cap.
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge {
        /// Declared length.
        len: u64,
    },
    /// Bytes after the CRC.
    #[error("{extra} unexpected bytes after the checksum")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// The CRC does not match: the file was modified or damaged.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC in the file.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
}

/// Wraps `payload` in an envelope with `magic`.
pub fn seal(magic: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks an envelope and returns its payload.
pub fn open(magic: u32, bytes: &[u8]) -> Result<&[u8], HeaderError> {
    if bytes.len() < HEADER_LEN {
        return Err(HeaderError::Truncated {
            len: bytes.len(),
            expected: HEADER_LEN as u64 + 4,
        });
    }
    let found = u32_at(bytes, 0);
    if found != magic {
        return Err(HeaderError::BadMagic {
            found,
            expected: magic,
        });
    }
    let (major, minor) = (u16_at(bytes, 4), u16_at(bytes, 6));
    if major != FORMAT_MAJOR || minor > FORMAT_MINOR {
        return Err(HeaderError::Version { major, minor });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_PAYLOAD {
        return Err(HeaderError::TooLarge { len });
    }
    let need = HEADER_LEN as u64 + len + 4;
    if (bytes.len() as u64) < need {
        return Err(HeaderError::Truncated {
            len: bytes.len(),
            expected: need,
        });
    }
    let need = need as usize;
    if bytes.len() > need {
        return Err(HeaderError::Trailing {
            extra: bytes.len() - need,
        });
    }
    let body_end = need - 4;
    let stored = u32_at(bytes, body_end);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(HeaderError::Checksum { stored, computed });
    }
    Ok(&bytes[HEADER_LEN..body_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 0x1234_5678;

    #[test]
    fn round_trip() {
        let sealed = seal(M, b"hello");
        assert_eq!(open(M, &sealed).unwrap(), b"hello");
        assert_eq!(open(M, &seal(M, b"")).unwrap(), b"");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let sealed = seal(M, b"some payload bytes");
        for cut in 0..sealed.len() {
            assert!(open(M, &sealed[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let sealed = seal(M, b"some payload bytes");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                assert!(open(M, &b).is_err(), "flip at {i}.{bit} accepted");
            }
        }
    }

    #[test]
    fn newer_versions_and_wrong_kind_are_rejected() {
        let mut b = seal(M, b"x");
        b[6] = (FORMAT_MINOR + 1) as u8;
        assert!(matches!(open(M, &b), Err(HeaderError::Version { .. })));
        let mut b = seal(M, b"x");
        b[4] = (FORMAT_MAJOR + 1) as u8;
        assert!(matches!(open(M, &b), Err(HeaderError::Version { .. })));
        assert!(matches!(
            open(M + 1, &seal(M, b"x")),
            Err(HeaderError::BadMagic { .. })
        ));
    }

    #[test]
    fn huge_length_and_trailing_bytes_are_rejected() {
        let mut b = seal(M, b"x");
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(open(M, &b), Err(HeaderError::TooLarge { .. })));
        let mut b = seal(M, b"x");
        b.push(0);
        assert!(matches!(open(M, &b), Err(HeaderError::Trailing { .. })));
    }
}
