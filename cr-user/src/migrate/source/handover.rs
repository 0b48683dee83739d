//! The control connection's steps around the hand-over: connecting (and reconnecting after a
//! lost link), sending the image files, reading the destination's answers. It must not decide
//! who owns the process: that is `migrate`'s.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::migrate::auth::{self, Role, SessionId, Token};
use crate::migrate::proto::{self, Frame, MAX_DATA_LEN};
use crate::migrate::{MigrateError, io_err, tune};

pub(super) fn connect(
    to: &str,
    token: &Token,
    role: Role,
    session: SessionId,
) -> Result<TcpStream, MigrateError> {
    let cerr = |source| MigrateError::Connect {
        addr: to.to_string(),
        source,
    };
    let addr = to
        .to_socket_addrs()
        .map_err(cerr)?
        .next()
        .ok_or_else(|| cerr(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(cerr)?;
    tune(&s)?;
    auth::client_handshake(&mut s, token, role, session)?;
    Ok(s)
}

/// Sends every file of the image dir, the inventory last, then `ImagesEnd`. Returns bytes.
pub(super) fn send_images(
    ctl: &mut TcpStream,
    dir: &std::path::Path,
    lazy: bool,
) -> Result<u64, MigrateError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| (n == "inventory.img", n.clone()));
    let mut bytes = 0;
    let mut buf = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let mut f = std::fs::File::open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let len = f
            .metadata()
            .map_err(io_err(format!("cannot stat {}", path.display())))?
            .len();
        if len as usize <= MAX_DATA_LEN {
            buf.clear();
            f.read_to_end(&mut buf)
                .map_err(io_err(format!("cannot read {}", path.display())))?;
            proto::write_frame(
                ctl,
                &Frame::ImageFile {
                    name: &name,
                    data: &buf,
                },
            )?;
            bytes += len;
        } else {
            bytes += proto::write_file_chunks(ctl, &name, &mut f, &mut buf)?;
        }
    }
    proto::write_frame(ctl, &Frame::ImagesEnd { lazy })?;
    Ok(bytes)
}

/// Reads the next control frame, answering nothing; for the steps before `Go`.
pub(super) fn expect<'b>(
    ctl: &mut TcpStream,
    buf: &'b mut Vec<u8>,
    expected: &'static str,
) -> Result<Frame<'b>, MigrateError> {
    match proto::read_frame(ctl, buf)? {
        Frame::Failed { message } => Err(MigrateError::Peer(message.to_string())),
        f if f.name() == expected => Ok(f),
        f => Err(MigrateError::Unexpected {
            got: f.name(),
            expected,
        }),
    }
}
