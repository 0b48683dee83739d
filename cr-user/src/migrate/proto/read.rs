//! Decoding: a whole frame into a reused buffer, validated before anything is handed out.

use std::io::{self, Read};

use super::*;

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
    // One allocation of the whole frame (a recycled buffer already has it), not a series of
    // doublings that copy what was read so far.
    buf.reserve(len as usize);
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

/// Reads until `buf` is full or end of stream; returns the bytes read.
pub(in crate::migrate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
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
