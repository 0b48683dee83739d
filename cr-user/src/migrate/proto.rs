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

use std::io::{self, IoSlice, Read, Write};
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

/// Largest header: len 4 + type 1 + name length 2 + name 255 + offset 8.
const HEAD_CAP: usize = 4 + 1 + 2 + MAX_NAME_LEN + 8;

/// A frame's length, type and fixed fields, built on the stack.
struct Head {
    buf: [u8; HEAD_CAP],
    len: usize,
}

impl Head {
    fn new(ty: u8) -> Self {
        let mut buf = [0; HEAD_CAP];
        buf[4] = ty;
        Head { buf, len: 5 }
    }

    /// Callers never exceed `HEAD_CAP`: names are checked to be ≤ 255 bytes first.
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
            self.len = end;
        }
    }

    fn put_str(&mut self, s: &str) {
        // Only names (≤ 255 bytes) go through here; `Failed` messages travel as the body.
        self.put(&(s.len() as u16).to_le_bytes());
        self.put(s.as_bytes());
    }
}

/// Writes `f`. Validates it first (an invalid frame is never sent) except that a `Failed`
/// message longer than [`MAX_MESSAGE_LEN`] is truncated rather than refused. Does not allocate
/// or copy `data`; does not flush.
pub fn write_frame<W: Write>(w: &mut W, f: &Frame<'_>) -> Result<(), ProtoError> {
    let mut head = Head::new(f.type_byte());
    let message_len: [u8; 2];
    // `pre` goes between the head and the body: only the Failed message length uses it, so the
    // message itself need not fit the stack header.
    let mut pre: &[u8] = &[];
    let body: &[u8] = match *f {
        Frame::ImageFile { name, data } => {
            check_file_name(name)?;
            check_data_len("ImageFile", data.len())?;
            head.put_str(name);
            data
        }
        Frame::FileChunk { name, offset, data } => {
            check_file_name(name)?;
            check_chunk(offset, data.len())?;
            head.put_str(name);
            head.put(&offset.to_le_bytes());
            data
        }
        Frame::ImagesEnd { lazy } => {
            head.put(&[u8::from(lazy)]);
            &[]
        }
        Frame::Resumed { pid, restore_us } => {
            head.put(&pid.to_le_bytes());
            head.put(&restore_us.to_le_bytes());
            &[]
        }
        Frame::PageRequest { pid, addr, npages } => {
            check_page_request(addr, npages)?;
            head.put(&pid.to_le_bytes());
            head.put(&addr.to_le_bytes());
            head.put(&npages.to_le_bytes());
            &[]
        }
        Frame::Pages { pid, addr, data } => {
            check_pages(addr, data.len())?;
            head.put(&pid.to_le_bytes());
            head.put(&addr.to_le_bytes());
            data
        }
        Frame::BulkEnd { pages_sent } => {
            head.put(&pages_sent.to_le_bytes());
            &[]
        }
        Frame::Absent { pid, addr, npages } => {
            check_absent(addr, npages)?;
            head.put(&pid.to_le_bytes());
            head.put(&addr.to_le_bytes());
            head.put(&npages.to_le_bytes());
            &[]
        }
        Frame::Done(s) => {
            for v in [
                s.pages_placed,
                s.demand_faults,
                s.fault_p50_us,
                s.fault_p99_us,
                s.time_to_all_pages_us,
            ] {
                head.put(&v.to_le_bytes());
            }
            &[]
        }
        Frame::Failed { message } => {
            let message = clip_message(message);
            message_len = (message.len() as u16).to_le_bytes();
            pre = &message_len;
            message.as_bytes()
        }
        Frame::Bye | Frame::Ping | Frame::Pong | Frame::Ready | Frame::Go => &[],
    };
    let total = (head.len - 4 + pre.len() + body.len()) as u64;
    if total > u64::from(MAX_FRAME_LEN) {
        return Err(ProtoError::TooLarge {
            len: total,
            max: u64::from(MAX_FRAME_LEN),
        });
    }
    head.buf[..4].copy_from_slice(&(total as u32).to_le_bytes());
    let mut bufs = [
        IoSlice::new(&head.buf[..head.len]),
        IoSlice::new(pre),
        IoSlice::new(body),
    ];
    write_all_vectored(w, &mut bufs).map_err(|source| ProtoError::Io {
        op: "writing a frame",
        source,
    })
}

/// Writes a `Pages` frame: header and `data` in one vectored write, no allocation, no copy.
/// `addr` must be page-aligned and `data` a non-zero multiple of [`PAGE_SIZE`] of at most
/// [`MAX_DATA_LEN`] bytes.
pub fn write_pages<W: Write>(
    w: &mut W,
    pid: i32,
    addr: u64,
    data: &[u8],
) -> Result<(), ProtoError> {
    write_frame(w, &Frame::Pages { pid, addr, data })
}

/// Sends everything `src` yields as `FileChunk` frames named `name` of at most
/// [`MAX_DATA_LEN`] bytes (one empty chunk for an empty source), reading through `buf`, which
/// is reused and grows to [`MAX_DATA_LEN`]. Returns the bytes sent.
pub fn write_file_chunks<W: Write, R: Read>(
    w: &mut W,
    name: &str,
    src: &mut R,
    buf: &mut Vec<u8>,
) -> Result<u64, ProtoError> {
    check_file_name(name)?;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = (&mut *src)
            .take(MAX_DATA_LEN as u64)
            .read_to_end(buf)
            .map_err(|source| ProtoError::Io {
                op: "reading the file to send",
                source,
            })?;
        if n == 0 && offset > 0 {
            return Ok(offset);
        }
        write_frame(
            w,
            &Frame::FileChunk {
                name,
                offset,
                data: buf,
            },
        )?;
        offset += n as u64;
        if n < MAX_DATA_LEN {
            return Ok(offset);
        }
    }
}

/// `Write::write_all_vectored` is unstable; this is the same loop.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of stream; returns the bytes read.
pub(super) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one frame into `buf` (cleared, then reused: no allocation once its capacity covers the
/// largest frame seen) and decodes it. The returned frame borrows `buf`.
///
/// End of stream before the first byte is [`ProtoError::Closed`]; inside a frame,
/// [`ProtoError::Truncated`]. A read timeout before the first byte is [`ProtoError::TimedOut`]
/// and leaves the stream usable; any other error leaves it out of sync.
pub fn read_frame<'b, R: Read>(r: &mut R, buf: &'b mut Vec<u8>) -> Result<Frame<'b>, ProtoError> {
    let mut len = [0u8; 4];
    // The first byte alone, so that a timeout while idle is distinguishable from one mid-frame.
    loop {
        match r.read(&mut len[..1]) {
            Ok(0) => return Err(ProtoError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ProtoError::TimedOut),
            Err(source) => {
                return Err(ProtoError::Io {
                    op: "reading a frame",
                    source,
                });
            }
        }
    }
    let got = read_full(r, &mut len[1..]).map_err(|source| ProtoError::Io {
        op: "reading a frame",
        source,
    })?;
    if got < 3 {
        return Err(ProtoError::Truncated {
            what: "a frame length",
            expected: 4,
            got: got + 1,
        });
    }
    let len = u32::from_le_bytes(len);
    if len == 0 {
        return Err(invalid("(empty)", "length 0: no type byte"));
    }
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::TooLarge {
            len: u64::from(len),
            max: u64::from(MAX_FRAME_LEN),
        });
    }
    buf.clear();
    // `take` + `read_to_end` fills the spare capacity without zeroing it first.
    let got = (&mut *r)
        .take(u64::from(len))
        .read_to_end(buf)
        .map_err(|source| ProtoError::Io {
            op: "reading a frame",
            source,
        })?;
    if got < len as usize {
        return Err(ProtoError::Truncated {
            what: "a frame",
            expected: len as usize,
            got,
        });
    }
    decode(buf)
}

/// Cursor over a payload; every read is bounds-checked.
struct Dec<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Dec<'a> {
    fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(invalid(
                self.frame,
                format!(
                    "payload ends before {field} ({} of {n} bytes)",
                    self.buf.len()
                ),
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], ProtoError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    fn u64(&mut self, field: &str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn str(&mut self, field: &str) -> Result<&'a str, ProtoError> {
        let len = u16::from_le_bytes(self.array(field)?);
        let bytes = self.bytes(usize::from(len), field)?;
        std::str::from_utf8(bytes)
            .map_err(|_| invalid(self.frame, format!("{field} is not valid UTF-8")))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn end(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(invalid(
                self.frame,
                format!("{} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }
}

/// Decodes `type + payload`.
fn decode(buf: &[u8]) -> Result<Frame<'_>, ProtoError> {
    let Some((&t, payload)) = buf.split_first() else {
        return Err(invalid("(empty)", "no type byte"));
    };
    let name = match t {
        ty::IMAGE_FILE => "ImageFile",
        ty::FILE_CHUNK => "FileChunk",
        ty::IMAGES_END => "ImagesEnd",
        ty::RESUMED => "Resumed",
        ty::PAGE_REQUEST => "PageRequest",
        ty::PAGES => "Pages",
        ty::BULK_END => "BulkEnd",
        ty::DONE => "Done",
        ty::BYE => "Bye",
        ty::FAILED => "Failed",
        ty::PING => "Ping",
        ty::PONG => "Pong",
        ty::READY => "Ready",
        ty::GO => "Go",
        ty::ABSENT => "Absent",
        other => return Err(ProtoError::UnknownFrame(other)),
    };
    let mut d = Dec {
        buf: payload,
        frame: name,
    };
    let f = match t {
        ty::IMAGE_FILE => {
            let name = d.str("name")?;
            check_file_name(name)?;
            let data = d.rest();
            check_data_len("ImageFile", data.len())?;
            Frame::ImageFile { name, data }
        }
        ty::FILE_CHUNK => {
            let name = d.str("name")?;
            check_file_name(name)?;
            let offset = d.u64("offset")?;
            let data = d.rest();
            check_chunk(offset, data.len())?;
            Frame::FileChunk { name, offset, data }
        }
        ty::IMAGES_END => {
            let lazy = match d.array::<1>("lazy")? {
                [0] => false,
                [1] => true,
                [v] => {
                    return Err(invalid(
                        "ImagesEnd",
                        format!("lazy flag is {v}, not 0 or 1"),
                    ));
                }
            };
            Frame::ImagesEnd { lazy }
        }
        ty::RESUMED => Frame::Resumed {
            pid: i32::from_le_bytes(d.array("pid")?),
            restore_us: d.u64("restore_us")?,
        },
        ty::PAGE_REQUEST => {
            let pid = i32::from_le_bytes(d.array("pid")?);
            let addr = d.u64("addr")?;
            let npages = u32::from_le_bytes(d.array("npages")?);
            check_page_request(addr, npages)?;
            Frame::PageRequest { pid, addr, npages }
        }
        ty::PAGES => {
            let pid = i32::from_le_bytes(d.array("pid")?);
            let addr = d.u64("addr")?;
            let data = d.rest();
            check_pages(addr, data.len())?;
            Frame::Pages { pid, addr, data }
        }
        ty::ABSENT => {
            let pid = i32::from_le_bytes(d.array("pid")?);
            let addr = d.u64("addr")?;
            let npages = d.u64("npages")?;
            check_absent(addr, npages)?;
            Frame::Absent { pid, addr, npages }
        }
        ty::BULK_END => Frame::BulkEnd {
            pages_sent: d.u64("pages_sent")?,
        },
        ty::DONE => Frame::Done(DoneStats {
            pages_placed: d.u64("pages_placed")?,
            demand_faults: d.u64("demand_faults")?,
            fault_p50_us: d.u64("fault_p50_us")?,
            fault_p99_us: d.u64("fault_p99_us")?,
            time_to_all_pages_us: d.u64("time_to_all_pages_us")?,
        }),
        ty::FAILED => {
            let message = d.str("message")?;
            if message.len() > MAX_MESSAGE_LEN {
                return Err(invalid(
                    "Failed",
                    format!(
                        "message of {} bytes exceeds {MAX_MESSAGE_LEN}",
                        message.len()
                    ),
                ));
            }
            Frame::Failed { message }
        }
        ty::BYE => Frame::Bye,
        ty::PING => Frame::Ping,
        ty::READY => Frame::Ready,
        ty::GO => Frame::Go,
        _ => Frame::Pong,
    };
    d.end()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;

    fn encode(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, f).unwrap();
        out
    }

    fn round_trip(f: &Frame<'_>) {
        let bytes = encode(f);
        let mut r = Cursor::new(&bytes);
        let mut buf = Vec::new();
        let got = read_frame(&mut r, &mut buf).unwrap();
        assert_eq!(&got, f);
        assert_eq!(
            r.position() as usize,
            bytes.len(),
            "{} not fully read",
            f.name()
        );
    }

    fn sample_frames<'a>(page: &'a [u8], file: &'a [u8]) -> Vec<Frame<'a>> {
        vec![
            Frame::ImageFile {
                name: "core-42.img",
                data: file,
            },
            Frame::ImageFile {
                name: "empty.img",
                data: &[],
            },
            Frame::FileChunk {
                name: "pages-42.img",
                offset: 8 << 20,
                data: file,
            },
            Frame::ImagesEnd { lazy: true },
            Frame::ImagesEnd { lazy: false },
            Frame::Resumed {
                pid: -7,
                restore_us: u64::MAX,
            },
            Frame::PageRequest {
                pid: 42,
                addr: 0x7fff_f000,
                npages: MAX_REQUEST_PAGES,
            },
            Frame::Pages {
                pid: 42,
                addr: 0x1000,
                data: page,
            },
            Frame::BulkEnd { pages_sent: 12345 },
            Frame::Done(DoneStats {
                pages_placed: 1,
                demand_faults: 2,
                fault_p50_us: 3,
                fault_p99_us: 4,
                time_to_all_pages_us: 5,
            }),
            Frame::Bye,
            Frame::Failed {
                message: "restore failed: mmap: ENOMEM — ünïcode",
            },
            Frame::Failed { message: "" },
            Frame::Ping,
            Frame::Pong,
            Frame::Ready,
            Frame::Go,
            Frame::Absent {
                pid: 42,
                addr: 0x7000_0000,
                npages: 1 << 20,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let page: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        let file = b"some image bytes".to_vec();
        let frames = sample_frames(&page, &file);
        for f in &frames {
            round_trip(f);
        }
        // All types are covered.
        let mut types: Vec<u8> = frames.iter().map(Frame::type_byte).collect();
        types.dedup();
        assert_eq!(types, (1..=15).collect::<Vec<u8>>());
    }

    #[test]
    fn frames_cross_a_socket_in_order() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = thread::spawn(move || {
            let page = vec![0xabu8; PAGE_SIZE];
            let file = vec![1u8; 100_000];
            for f in sample_frames(&page, &file) {
                write_frame(&mut a, &f).unwrap();
            }
        });
        let page = vec![0xabu8; PAGE_SIZE];
        let file = vec![1u8; 100_000];
        let mut buf = Vec::new();
        for want in sample_frames(&page, &file) {
            assert_eq!(read_frame(&mut b, &mut buf).unwrap(), want);
        }
        writer.join().unwrap();
        assert!(matches!(
            read_frame(&mut b, &mut buf),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn pages_reuse_the_read_buffer() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        const N: usize = 64;
        let writer = thread::spawn(move || {
            let mut data = vec![0u8; 16 * PAGE_SIZE];
            for i in 0..N {
                data.fill(i as u8);
                let len = (1 + i % 16) * PAGE_SIZE;
                write_pages(&mut a, 7, (i as u64) << 20, &data[..len]).unwrap();
            }
        });
        let mut buf = Vec::with_capacity(16 * PAGE_SIZE + 64);
        let ptr = buf.as_ptr();
        let cap = buf.capacity();
        for i in 0..N {
            match read_frame(&mut b, &mut buf).unwrap() {
                Frame::Pages { pid, addr, data } => {
                    assert_eq!(pid, 7);
                    assert_eq!(addr, (i as u64) << 20);
                    assert_eq!(data.len(), (1 + i % 16) * PAGE_SIZE);
                    assert!(data.iter().all(|&x| x == i as u8));
                }
                other => panic!("expected Pages, got {other:?}"),
            }
            assert_eq!(buf.as_ptr(), ptr, "buffer reallocated at frame {i}");
            assert_eq!(buf.capacity(), cap);
        }
        writer.join().unwrap();
    }

    #[test]
    fn max_size_pages_frame_fits() {
        let data = vec![7u8; MAX_DATA_LEN];
        let bytes = {
            let mut out = Vec::new();
            write_pages(&mut out, 1, 0, &data).unwrap();
            out
        };
        let mut buf = Vec::new();
        let f = read_frame(&mut Cursor::new(&bytes), &mut buf).unwrap();
        assert!(matches!(f, Frame::Pages { pid: 1, addr: 0, data } if data.len() == MAX_DATA_LEN));
        // The largest FileChunk (255-byte name, 8 MiB) fits the cap too.
        let name = "n".repeat(MAX_NAME_LEN);
        let f = Frame::FileChunk {
            name: &name,
            offset: 0,
            data: &data,
        };
        round_trip(&f);
    }

    #[test]
    fn writers_refuse_invalid_frames() {
        let mut out = Vec::new();
        let page = vec![0u8; PAGE_SIZE];
        let err = write_pages(&mut out, 1, 0x1001, &page).unwrap_err();
        assert!(err.to_string().contains("not page-aligned"), "{err}");
        let err = write_pages(&mut out, 1, 0x1000, &page[..100]).unwrap_err();
        assert!(err.to_string().contains("whole pages"), "{err}");
        let err = write_pages(&mut out, 1, 0x1000, &[]).unwrap_err();
        assert!(matches!(err, ProtoError::Invalid { frame: "Pages", .. }));
        let big = vec![0u8; MAX_DATA_LEN + PAGE_SIZE];
        let err = write_pages(&mut out, 1, 0, &big).unwrap_err();
        assert!(err.to_string().contains("exceed"), "{err}");
        let err = write_frame(
            &mut out,
            &Frame::ImageFile {
                name: "../etc/passwd",
                data: &[],
            },
        )
        .unwrap_err();
        assert!(matches!(err, ProtoError::BadFileName { .. }));
        for npages in [0, MAX_REQUEST_PAGES + 1] {
            let err = write_frame(
                &mut out,
                &Frame::PageRequest {
                    pid: 1,
                    addr: 0,
                    npages,
                },
            )
            .unwrap_err();
            assert!(matches!(
                err,
                ProtoError::Invalid {
                    frame: "PageRequest",
                    ..
                }
            ));
        }
        assert!(
            out.is_empty(),
            "nothing may be written for an invalid frame"
        );
    }

    #[test]
    fn long_failed_message_is_clipped_at_a_char_boundary() {
        let message = "é".repeat(3000); // 6000 bytes
        let bytes = encode(&Frame::Failed { message: &message });
        let mut buf = Vec::new();
        match read_frame(&mut Cursor::new(&bytes), &mut buf).unwrap() {
            Frame::Failed { message: got } => {
                assert_eq!(got.len(), MAX_MESSAGE_LEN);
                assert!(message.starts_with(got));
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        let page = vec![1u8; PAGE_SIZE];
        let bytes = encode(&Frame::Pages {
            pid: 1,
            addr: 0,
            data: &page,
        });
        let mut buf = Vec::new();
        // Cut inside the body.
        let err = read_frame(&mut Cursor::new(&bytes[..100]), &mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::Truncated {
                    what: "a frame",
                    expected,
                    got: 96
                } if expected == PAGE_SIZE + 13
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "connection closed in the middle of a frame (96 of 4109 bytes)"
        );
        // Cut inside the length.
        let err = read_frame(&mut Cursor::new(&bytes[..2]), &mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Truncated {
                what: "a frame length",
                got: 2,
                ..
            }
        ));
        // Over a socket: the writer dies mid-frame.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let half = bytes[..bytes.len() / 2].to_vec();
        thread::spawn(move || a.write_all(&half).unwrap())
            .join()
            .unwrap();
        assert!(matches!(
            read_frame(&mut b, &mut buf),
            Err(ProtoError::Truncated {
                what: "a frame",
                ..
            })
        ));
        // Nothing at all: a clean close.
        assert!(matches!(
            read_frame(&mut Cursor::new(&[]), &mut buf),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn oversize_length_is_refused_before_allocating() {
        for len in [MAX_FRAME_LEN + 1, u32::MAX] {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.push(ty::PAGES);
            let mut buf = Vec::new();
            let err = read_frame(&mut Cursor::new(&bytes), &mut buf).unwrap_err();
            assert!(
                matches!(err, ProtoError::TooLarge { len: l, .. } if l == u64::from(len)),
                "{err:?}"
            );
            assert_eq!(buf.capacity(), 0, "allocated for a refused frame");
        }
        let mut buf = Vec::new();
        let err = read_frame(&mut Cursor::new(&0u32.to_le_bytes()), &mut buf).unwrap_err();
        assert!(matches!(err, ProtoError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn unknown_type_is_reported() {
        for t in [0u8, 16, 255] {
            let bytes = [1, 0, 0, 0, t];
            let mut buf = Vec::new();
            let err = read_frame(&mut Cursor::new(&bytes), &mut buf).unwrap_err();
            assert!(
                matches!(err, ProtoError::UnknownFrame(x) if x == t),
                "{err:?}"
            );
            assert_eq!(err.to_string(), format!("unknown frame type {t}"));
        }
    }

    /// Builds a raw frame from a type and payload, bypassing the writer's checks.
    fn raw(t: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        out.push(t);
        out.extend_from_slice(payload);
        out
    }

    fn read_raw(bytes: &[u8]) -> Result<(), ProtoError> {
        let mut buf = Vec::new();
        read_frame(&mut Cursor::new(bytes), &mut buf).map(|_| ())
    }

    fn name_payload(name: &[u8]) -> Vec<u8> {
        let mut p = (name.len() as u16).to_le_bytes().to_vec();
        p.extend_from_slice(name);
        p
    }

    #[test]
    fn readers_refuse_malformed_payloads() {
        // Path traversal and other bad names from the network.
        for name in [
            &b"../../etc/cron.d/x"[..],
            b"a/b",
            b"..",
            b".",
            b"",
            b"a\0b",
        ] {
            let err = read_raw(&raw(ty::IMAGE_FILE, &name_payload(name))).unwrap_err();
            assert!(matches!(err, ProtoError::BadFileName { .. }), "{err:?}");
        }
        let err = read_raw(&raw(ty::IMAGE_FILE, &name_payload(&[0xff, 0xfe]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid ImageFile frame: name is not valid UTF-8"
        );
        // Name length beyond the payload.
        let err = read_raw(&raw(ty::IMAGE_FILE, &[200, 0, b'a'])).unwrap_err();
        assert!(
            err.to_string().contains("payload ends before name"),
            "{err}"
        );
        // Fixed-size frames: short and long.
        let err = read_raw(&raw(ty::RESUMED, &[0; 5])).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid Resumed frame"),
            "{err}"
        );
        let err = read_raw(&raw(ty::BULK_END, &[0; 9])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid BulkEnd frame: 1 unexpected trailing bytes"
        );
        let err = read_raw(&raw(ty::BYE, &[0])).unwrap_err();
        assert!(matches!(err, ProtoError::Invalid { frame: "Bye", .. }));
        let err = read_raw(&raw(ty::IMAGES_END, &[2])).unwrap_err();
        assert!(err.to_string().contains("not 0 or 1"), "{err}");
        // Pages: misaligned address, partial page, no data.
        let mut p = with_pid(0x1234);
        p.extend_from_slice(&[0; PAGE_SIZE]);
        assert!(read_raw(&raw(ty::PAGES, &p)).is_err());
        let mut p = with_pid(0x1000);
        p.extend_from_slice(&[0; 100]);
        assert!(read_raw(&raw(ty::PAGES, &p)).is_err());
        assert!(read_raw(&raw(ty::PAGES, &with_pid(0x1000))).is_err());
        // Pages whose end overflows the address space.
        let mut p = with_pid(u64::MAX - 0xfff);
        p.extend_from_slice(&[0; PAGE_SIZE]);
        assert!(read_raw(&raw(ty::PAGES, &p)).is_err());
        // PageRequest for zero or too many pages.
        for npages in [0u32, MAX_REQUEST_PAGES + 1] {
            let mut p = with_pid(0x1000);
            p.extend_from_slice(&npages.to_le_bytes());
            assert!(read_raw(&raw(ty::PAGE_REQUEST, &p)).is_err());
        }
        // FileChunk whose end overflows.
        let mut p = name_payload(b"pages-1.img");
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        p.push(0);
        let err = read_raw(&raw(ty::FILE_CHUNK, &p)).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        // Failed message over the limit.
        let long = vec![b'x'; MAX_MESSAGE_LEN + 1];
        let err = read_raw(&raw(ty::FAILED, &name_payload(&long))).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    /// A pid (1) then `addr`: the start of a Pages, PageRequest or Absent payload.
    fn with_pid(addr: u64) -> Vec<u8> {
        let mut p = 1i32.to_le_bytes().to_vec();
        p.extend_from_slice(&addr.to_le_bytes());
        p
    }

    #[test]
    fn file_names() {
        for ok in ["inventory.img", "pages-1.img", "a..b", ".hidden", "x"] {
            check_file_name(ok).unwrap();
        }
        check_file_name(&"n".repeat(255)).unwrap();
        for (bad, reason) in [
            ("", "empty"),
            ("a/b", "contains '/'"),
            ("/etc", "contains '/'"),
            ("..", "is '.' or '..'"),
            (".", "is '.' or '..'"),
            ("a\0", "contains a NUL byte"),
        ] {
            match check_file_name(bad) {
                Err(ProtoError::BadFileName { reason: r, .. }) => assert_eq!(r, reason, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = check_file_name(&"n".repeat(256)).unwrap_err();
        assert!(err.to_string().ends_with("longer than 255 bytes"), "{err}");
    }

    #[test]
    fn file_chunks_cover_a_large_file() {
        let len = 2 * MAX_DATA_LEN + 12345;
        let file: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let sent =
            write_file_chunks(&mut out, "pages-9.img", &mut Cursor::new(&file), &mut buf).unwrap();
        assert_eq!(sent, len as u64);
        let mut r = Cursor::new(&out);
        let mut rebuilt = Vec::new();
        let mut chunks = 0;
        while let Ok(f) = read_frame(&mut r, &mut buf) {
            match f {
                Frame::FileChunk { name, offset, data } => {
                    assert_eq!(name, "pages-9.img");
                    assert_eq!(offset, rebuilt.len() as u64);
                    rebuilt.extend_from_slice(data);
                    chunks += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(chunks, 3);
        assert!(rebuilt == file);
        // An empty file is one empty chunk.
        let mut out = Vec::new();
        let sent = write_file_chunks(&mut out, "e.img", &mut Cursor::new(&[]), &mut buf).unwrap();
        assert_eq!(sent, 0);
        assert!(matches!(
            read_frame(&mut Cursor::new(&out), &mut buf).unwrap(),
            Frame::FileChunk {
                offset: 0,
                data: &[],
                ..
            }
        ));
    }

    #[test]
    fn idle_timeout_keeps_the_stream_usable() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut b, &mut buf),
            Err(ProtoError::TimedOut)
        ));
        write_frame(&mut a, &Frame::Ping).unwrap();
        assert_eq!(read_frame(&mut b, &mut buf).unwrap(), Frame::Ping);
    }
}
