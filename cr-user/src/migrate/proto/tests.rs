//! Round trips, validation and hostile input of the frame codec.

use std::io::{Cursor, Write};
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

#[test]
fn a_pages_head_and_its_data_read_as_one_frame() {
    let data = vec![7u8; 2 * PAGE_SIZE];
    let mut out = Vec::new();
    write_pages_head(&mut out, 42, 0x7000, data.len()).unwrap();
    out.extend_from_slice(&data);
    assert_eq!(
        out,
        encode(&Frame::Pages {
            pid: 42,
            addr: 0x7000,
            data: &data
        })
    );
    assert!(write_pages_head(&mut Vec::new(), 1, 0x7001, PAGE_SIZE).is_err());
    assert!(write_pages_head(&mut Vec::new(), 1, 0x7000, MAX_DATA_LEN + PAGE_SIZE).is_err());
}
