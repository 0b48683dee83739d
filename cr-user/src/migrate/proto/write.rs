//! Encoding: a frame header on the stack and the data slice in one vectored write.

use std::io::{self, IoSlice, Read, Write};

use super::*;

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

/// Writes only the head of a `Pages` frame carrying `len` bytes: the caller sends exactly those
/// bytes next (spliced from a pipe, say). Same rules as [`write_pages`].
pub fn write_pages_head<W: Write>(
    w: &mut W,
    pid: i32,
    addr: u64,
    len: usize,
) -> Result<(), ProtoError> {
    check_pages(addr, len)?;
    let mut head = Head::new(ty::PAGES);
    head.put(&pid.to_le_bytes());
    head.put(&addr.to_le_bytes());
    let total = (head.len - 4 + len) as u32;
    head.buf[..4].copy_from_slice(&total.to_le_bytes());
    w.write_all(&head.buf[..head.len])
        .map_err(|source| ProtoError::Io {
            op: "writing a frame",
            source,
        })
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
