//! Migration frames: what the source and the destination exchange after the handshake
//! ([`super::auth`]). Full description with sequence diagrams: `docs/protocol.md`.
//!
//! ```text
//! offset  size     field
//! 0       4        len (u32 LE): bytes of type + payload, 1 ..= MAX_FRAME_LEN
//! 4       1        type (see the table below)
//! 5       len - 1  payload: fixed little-endian fields in the order listed on each `Frame` variant;
//!                  strings are u16 LE length + UTF-8 bytes; a trailing `data` runs to the end
//!
//! type  frame         direction             payload
//! 1     ImageFile     src → dst  control    name: str, data: rest
//! 2     FileChunk     src → dst  control    name: str, offset: u64, data: rest
//! 3     ImagesEnd     src → dst  control    lazy: u8 (0 or 1)
//! 4     Resumed       dst → src  control    pid: i32, restore_us: u64
//! 5     PageRequest   dst → src  control    pid: i32, addr: u64, npages: u32
//! 6     Pages         src → dst  both       pid: i32, addr: u64, data: rest (whole pages)
//! 7     BulkEnd       src → dst  bulk       pages_sent: u64
//! 8     Done          dst → src  control    pages_placed, demand_faults, fault_p50_us,
//!                                           fault_p99_us, time_to_all_pages_us: u64 each
//! 9     Bye           src → dst  control    (empty)
//! 10    Failed        either     either     message: str (≤ 4096 bytes)
//! 11    Ping          either     either     (empty)
//! 12    Pong          either     either     (empty)
//! 13    Ready         dst → src  control    (empty): restored, held stopped until Go
//! 14    Go            src → dst  control    (empty): the source commits; the copy may resume
//! 15    Absent        src → dst  bulk       pid: i32, addr: u64, npages: u64: pages never had
//! ```
//!
//! **Buffers.** [`Frame`] borrows its strings and byte slices. [`read_frame`] reads the whole
//! frame into a caller-owned `Vec<u8>` that is reused from frame to frame (after the first few
//! frames it has the capacity of the largest one and nothing is allocated), and returns a `Frame`
//! pointing into it; copy out (`to_vec`, `to_owned`) what must outlive the next read.
//! [`write_frame`] and [`write_pages`] send a fixed-size header from the stack and the data slice
//! in one vectored write, without allocating or copying the data.
//!
//! **Validation.** Both directions check the same rules: the frame length cap, file names
//! ([`check_file_name`]), whole page-aligned pages, at most [`MAX_DATA_LEN`] bytes of data, no
//! trailing bytes. Nothing read from the peer can make the reader allocate more than
//! [`MAX_FRAME_LEN`] bytes or panic.
//!
//! **Errors.** Any error from [`read_frame`] other than [`ProtoError::TimedOut`] leaves the stream
//! at an unknown position: drop the connection. Writers do not flush; pass an unbuffered stream
//! (a `TcpStream`, with `TCP_NODELAY` on the control connection so that demand-page answers are
//! not held back by Nagle's algorithm) or flush yourself.

use std::io;
use std::path::PathBuf;

/// Page size assumed by `Pages` and `PageRequest` frames.
pub const PAGE_SIZE: usize = 4096;
/// Largest `data` of one `ImageFile`, `FileChunk` or `Pages` frame (8 MiB).
pub const MAX_DATA_LEN: usize = 8 << 20;
/// Largest number of pages one `PageRequest` may ask for: its answer fits one `Pages` frame.
pub const MAX_REQUEST_PAGES: u32 = (MAX_DATA_LEN / PAGE_SIZE) as u32;
/// Largest `len` field a reader accepts: [`MAX_DATA_LEN`] plus room for the largest header
/// (`FileChunk`: type, name length, a 255-byte name, offset).
pub const MAX_FRAME_LEN: u32 = (MAX_DATA_LEN + 512) as u32;
/// Longest file name (bytes), as on Linux file systems.
pub const MAX_NAME_LEN: usize = 255;
/// Longest `Failed` message (bytes); [`write_frame`] truncates longer ones.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Frame type bytes.
mod ty {
    pub(super) const IMAGE_FILE: u8 = 1;
    pub(super) const FILE_CHUNK: u8 = 2;
    pub(super) const IMAGES_END: u8 = 3;
    pub(super) const RESUMED: u8 = 4;
    pub(super) const PAGE_REQUEST: u8 = 5;
    pub(super) const PAGES: u8 = 6;
    pub(super) const BULK_END: u8 = 7;
    pub(super) const DONE: u8 = 8;
    pub(super) const BYE: u8 = 9;
    pub(super) const FAILED: u8 = 10;
    pub(super) const PING: u8 = 11;
    pub(super) const PONG: u8 = 12;
    pub(super) const READY: u8 = 13;
    pub(super) const GO: u8 = 14;
    pub(super) const ABSENT: u8 = 15;
}

/// Why a frame or a handshake could not be sent or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the connection (or a file being sent) failed.
    #[error("{op} failed")]
    Io {
        /// What was being done, e.g. "reading a frame".
        op: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection cleanly between two frames.
    #[error("connection closed by peer")]
    Closed,
    /// The socket's read timeout fired before the first byte of a frame: the stream is still in
    /// sync and may be read again.
    #[error("no frame arrived before the read timeout")]
    TimedOut,
    /// The connection ended in the middle of a frame or handshake message.
    #[error("connection closed in the middle of {what} ({got} of {expected} bytes)")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes received before end of stream.
        got: usize,
    },
    /// A frame length over [`MAX_FRAME_LEN`] (nothing was allocated for it).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared (or, when writing, computed) length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame type this build does not know.
    #[error("unknown frame type {0}")]
    UnknownFrame(u8),
    /// A frame whose fields break the protocol's rules.
    #[error("invalid {frame} frame: {detail}")]
    Invalid {
        /// Frame (or handshake message) name.
        frame: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A file name that could escape the image directory or is not a plain name.
    #[error("invalid file name {name:?}: {reason}")]
    BadFileName {
        /// The name (first 64 characters).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The peer's first bytes are not the fastcr handshake magic.
    #[error("peer is not a fastcr endpoint")]
    NotFastcr,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this fastcr speaks version {ours}, the peer {theirs}")]
    Version {
        /// [`super::auth::PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// Server side: the client's proof is wrong.
    #[error("peer failed authentication (wrong token?)")]
    BadToken,
    /// Client side: the server could not prove it holds the token; nothing was sent to it.
    #[error("peer could not prove it holds the token (wrong token?); nothing was sent")]
    BadPeerProof,
    /// Client side: the server refused our proof.
    #[error("peer rejected our authentication (wrong token?)")]
    Rejected,
    /// The token is too short to be a secret.
    #[error(
        "token is {len} bytes after trimming trailing whitespace; at least {min} are required",
        min = super::auth::MIN_TOKEN_LEN
    )]
    WeakToken {
        /// Length after trimming.
        len: usize,
    },
    /// The token file could not be read.
    #[error("cannot read token file {}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The token file is larger than a token can be.
    #[error(
        "token file {} is larger than {max} bytes",
        path.display(),
        max = super::auth::MAX_TOKEN_FILE_LEN
    )]
    TokenFileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// No random bytes for a nonce or session id.
    #[error("cannot read random bytes from /dev/urandom")]
    Random {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Counters the destination reports when every page is in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DoneStats {
    /// Pages written into the restored processes (demand and background).
    pub pages_placed: u64,
    /// Page faults that had to wait for a `PageRequest`.
    pub demand_faults: u64,
    /// Median demand-fault latency, µs.
    pub fault_p50_us: u64,
    /// 99th percentile demand-fault latency, µs.
    pub fault_p99_us: u64,
    /// From resume to the last page placed, µs.
    pub time_to_all_pages_us: u64,
}

/// One frame. Borrowed fields point into the buffer given to [`read_frame`] (or into the
/// caller's data when writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole image file (src → dst, control).
    ImageFile {
        /// File name ([`check_file_name`]).
        name: &'a str,
        /// Contents, at most [`MAX_DATA_LEN`] bytes; larger files go as `FileChunk`s.
        data: &'a [u8],
    },
    /// Part of a large image file (src → dst, control). Chunks of one file come in order: the
    /// receiver must require `offset` to equal the bytes received so far for `name`.
    FileChunk {
        /// File name ([`check_file_name`]).
        name: &'a str,
        /// Where `data` goes in the file.
        offset: u64,
        /// At most [`MAX_DATA_LEN`] bytes (empty only for an empty file).
        data: &'a [u8],
    },
    /// All image files are sent (src → dst, control).
    ImagesEnd {
        /// Pages will follow lazily (`PageRequest` / bulk `Pages`) instead of in a pages file.
        lazy: bool,
    },
    /// The destination restored and resumed the tree (dst → src, control).
    Resumed {
        /// Root pid on the destination.
        pid: i32,
        /// Restore duration, µs.
        restore_us: u64,
    },
    /// Demand fault: send these pages now (dst → src, control).
    PageRequest {
        /// The process (its pid in the image).
        pid: i32,
        /// Page-aligned start address.
        addr: u64,
        /// 1 ..= [`MAX_REQUEST_PAGES`].
        npages: u32,
    },
    /// Page contents at `addr` (src → dst; answers on control, background stream on bulk).
    Pages {
        /// The process (its pid in the image).
        pid: i32,
        /// Page-aligned start address.
        addr: u64,
        /// A non-zero multiple of [`PAGE_SIZE`], at most [`MAX_DATA_LEN`] bytes.
        data: &'a [u8],
    },
    /// The background stream is complete (src → dst, bulk).
    BulkEnd {
        /// Pages sent on the bulk connection.
        pages_sent: u64,
    },
    /// Every page is in place (dst → src, control).
    Done(DoneStats),
    /// The source has killed its original; end of migration (src → dst, control).
    Bye,
    /// The sender gives up (either direction, either connection).
    Failed {
        /// Why, at most [`MAX_MESSAGE_LEN`] bytes.
        message: &'a str,
    },
    /// `npages` pages from `addr` hold nothing (never populated): the destination leaves
    /// them to read as zeros instead of waiting for them (src → dst, bulk).
    Absent {
        /// The process (its pid in the image).
        pid: i32,
        /// First page.
        addr: u64,
        /// Number of pages.
        npages: u64,
    },
    /// Keepalive request.
    Ping,
    /// Keepalive answer.
    Pong,
    /// The tree is restored and held stopped, waiting for [`Frame::Go`] (dst → src, control).
    Ready,
    /// The source commits to the migration: the destination may resume (src → dst, control).
    /// Before it, a destination that loses the link kills its copy; after it, a source that
    /// loses the link waits for the destination's link timeout before thawing its original.
    Go,
}

impl Frame<'_> {
    /// The frame's name, for messages such as "unexpected Pages frame".
    pub fn name(&self) -> &'static str {
        match self {
            Frame::ImageFile { .. } => "ImageFile",
            Frame::FileChunk { .. } => "FileChunk",
            Frame::ImagesEnd { .. } => "ImagesEnd",
            Frame::Resumed { .. } => "Resumed",
            Frame::PageRequest { .. } => "PageRequest",
            Frame::Pages { .. } => "Pages",
            Frame::BulkEnd { .. } => "BulkEnd",
            Frame::Done(_) => "Done",
            Frame::Bye => "Bye",
            Frame::Failed { .. } => "Failed",
            Frame::Ping => "Ping",
            Frame::Pong => "Pong",
            Frame::Ready => "Ready",
            Frame::Go => "Go",
            Frame::Absent { .. } => "Absent",
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            Frame::ImageFile { .. } => ty::IMAGE_FILE,
            Frame::FileChunk { .. } => ty::FILE_CHUNK,
            Frame::ImagesEnd { .. } => ty::IMAGES_END,
            Frame::Resumed { .. } => ty::RESUMED,
            Frame::PageRequest { .. } => ty::PAGE_REQUEST,
            Frame::Pages { .. } => ty::PAGES,
            Frame::BulkEnd { .. } => ty::BULK_END,
            Frame::Done(_) => ty::DONE,
            Frame::Bye => ty::BYE,
            Frame::Failed { .. } => ty::FAILED,
            Frame::Ping => ty::PING,
            Frame::Pong => ty::PONG,
            Frame::Ready => ty::READY,
            Frame::Go => ty::GO,
            Frame::Absent { .. } => ty::ABSENT,
        }
    }
}

/// Checks that `name` is a plain file name: not empty, at most [`MAX_NAME_LEN`] bytes, no `/`,
/// no NUL, and not `.` or `..`. Such a name joined to a directory stays inside it.
pub fn check_file_name(name: &str) -> Result<(), ProtoError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name == "." || name == ".." {
        "is '.' or '..'"
    } else {
        return Ok(());
    };
    Err(ProtoError::BadFileName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

fn invalid(frame: &'static str, detail: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        frame,
        detail: detail.into(),
    }
}

fn check_data_len(frame: &'static str, len: usize) -> Result<(), ProtoError> {
    if len > MAX_DATA_LEN {
        return Err(invalid(
            frame,
            format!("{len} bytes of data exceed the {MAX_DATA_LEN}-byte limit"),
        ));
    }
    Ok(())
}

fn check_pages(addr: u64, len: usize) -> Result<(), ProtoError> {
    if !addr.is_multiple_of(PAGE_SIZE as u64) {
        return Err(invalid(
            "Pages",
            format!("address {addr:#x} is not page-aligned"),
        ));
    }
    if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
        return Err(invalid(
            "Pages",
            format!("{len} bytes of data is not a non-zero number of whole pages"),
        ));
    }
    check_data_len("Pages", len)?;
    if addr.checked_add(len as u64).is_none() {
        return Err(invalid("Pages", format!("{addr:#x} + {len} overflows")));
    }
    Ok(())
}

fn check_absent(addr: u64, npages: u64) -> Result<(), ProtoError> {
    let end = npages
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|len| addr.checked_add(len));
    if !addr.is_multiple_of(PAGE_SIZE as u64) || npages == 0 || end.is_none() {
        return Err(invalid(
            "Absent",
            format!("{npages} pages at {addr:#x} is not a page-aligned, non-empty range"),
        ));
    }
    Ok(())
}

fn check_page_request(addr: u64, npages: u32) -> Result<(), ProtoError> {
    if !addr.is_multiple_of(PAGE_SIZE as u64) {
        return Err(invalid(
            "PageRequest",
            format!("address {addr:#x} is not page-aligned"),
        ));
    }
    if npages == 0 || npages > MAX_REQUEST_PAGES {
        return Err(invalid(
            "PageRequest",
            format!("{npages} pages (must be 1 to {MAX_REQUEST_PAGES})"),
        ));
    }
    if addr
        .checked_add(u64::from(npages) * PAGE_SIZE as u64)
        .is_none()
    {
        return Err(invalid(
            "PageRequest",
            format!("{addr:#x} + {npages} pages overflows"),
        ));
    }
    Ok(())
}

fn check_chunk(offset: u64, len: usize) -> Result<(), ProtoError> {
    check_data_len("FileChunk", len)?;
    if offset.checked_add(len as u64).is_none() {
        return Err(invalid(
            "FileChunk",
            format!("offset {offset} + {len} overflows"),
        ));
    }
    Ok(())
}

/// `message` cut to at most [`MAX_MESSAGE_LEN`] bytes at a character boundary.
fn clip_message(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_LEN {
        return message;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

mod read;
mod write;

pub use read::read_frame;
pub(super) use read::read_full;
pub use write::{write_file_chunks, write_frame, write_pages, write_pages_head};

#[cfg(test)]
mod tests;
