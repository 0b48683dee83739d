//! Pre-copy of a stop-and-copy migration, streamed: the pages the rounds copy go to the
//! destination on the bulk connection while the process still runs (`Pages` frames, then one
//! `BulkEnd`), the destination keeps them, and the image sent after the freeze stores only the
//! residue, leaving the rest to a parent image the destination writes from what it kept.
//! Every migration starts its bulk connection with this stream, empty unless it pre-copies.

use std::collections::BTreeMap;
use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{self, Frame};
use super::{IMAGE_WAIT, MigrateError, io_err};
use crate::dump::{Pages, STREAMED_PARENT};
use crate::image::inventory::Inventory;
use crate::image::pagemap::PagemapImage;
use crate::image::{ImageDir, Kind};
use crate::track::precopy::PageSink;
use crate::track::shadow::Shadow;

/// Longest run of one parent pagemap entry (as in dumps).
const MAX_RUN_PAGES: u32 = 512;

/// The source's end: pages as the rounds copy them, straight onto the bulk connection.
pub struct BulkSink {
    /// The bulk connection.
    pub bulk: TcpStream,
    /// Pages sent so far.
    pub pages: u64,
}

impl PageSink for BulkSink {
    fn pages(&mut self, pid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
        proto::write_pages(&mut self.bulk, pid, addr, data).map_err(io::Error::other)?;
        self.pages += (data.len() / proto::PAGE_SIZE) as u64;
        Ok(())
    }
}

impl BulkSink {
    /// Ends the stream; returns the connection for what follows.
    pub fn end(mut self) -> Result<(TcpStream, u64), MigrateError> {
        proto::write_frame(
            &mut self.bulk,
            &Frame::BulkEnd {
                pages_sent: self.pages,
            },
        )?;
        Ok((self.bulk, self.pages))
    }
}

/// What the destination kept of the stream, by pid.
#[derive(Default)]
pub struct Mirror {
    procs: BTreeMap<i32, Shadow>,
    /// Pages received.
    pub pages: u64,
}

/// The destination's end: reads the stream up to its `BulkEnd` (on a thread of its own while the
/// control connection waits for the image) and returns what it kept with the connection.
pub fn receive(mut bulk: TcpStream) -> Result<(Mirror, TcpStream), MigrateError> {
    bulk.set_read_timeout(Some(IMAGE_WAIT))
        .map_err(io_err("setsockopt(SO_RCVTIMEO)"))?;
    let mut mirror = Mirror::default();
    let mut buf = Vec::new();
    loop {
        match proto::read_frame(&mut bulk, &mut buf)? {
            Frame::Pages { pid, addr, data } => {
                mirror.procs.entry(pid).or_default().store(addr, data);
                mirror.pages += (data.len() / proto::PAGE_SIZE) as u64;
            }
            Frame::BulkEnd { .. } => return Ok((mirror, bulk)),
            Frame::Failed { message } => return Err(MigrateError::Peer(message.to_string())),
            f => {
                return Err(MigrateError::Unexpected {
                    got: f.name(),
                    expected: "pre-copied Pages or BulkEnd",
                });
            }
        }
    }
}

/// If the image in `images` leaves pages to a streamed parent, writes `mirror` as that parent
/// in `parent_dir` and points the image's inventory at it.
pub fn attach_parent(images: &Path, parent_dir: &Path, mirror: Mirror) -> Result<(), MigrateError> {
    let bad = |e: crate::image::ImageError| MigrateError::Peer(e.to_string());
    let dir = ImageDir::open(images).map_err(bad)?;
    let mut inventory: Inventory = dir.read(Kind::Inventory, 0).map_err(bad)?;
    if inventory.parent.as_deref() != Some(STREAMED_PARENT) {
        return Ok(());
    }
    let root = inventory.root_pid;
    let Some(mut shadow) = mirror
        .procs
        .into_iter()
        .find_map(|(pid, s)| (pid == root).then_some(s))
    else {
        return Err(MigrateError::Peer(format!(
            "the image leaves pages of process {root} to the pre-copy stream, which sent none"
        )));
    };
    let pdir = ImageDir::create(parent_dir).map_err(bad)?;
    let ranges = shadow.covered().to_vec();
    let mut pagemap = PagemapImage::of_ranges(&ranges, MAX_RUN_PAGES);
    let pages = Pages::Shadow(shadow);
    pages.write(&pdir, root, &mut pagemap).map_err(bad)?;
    pdir.write(Kind::Pagemap, root, &pagemap).map_err(bad)?;
    let parent = Inventory {
        tool_version: inventory.tool_version.clone(),
        root_pid: root,
        pids: vec![root],
        shell_job: false,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        parent: None,
        pre_dump: true,
        tracking: None,
    };
    pdir.write(Kind::Inventory, 0, &parent).map_err(bad)?;
    inventory.parent = Some(parent_dir.to_string_lossy().into_owned());
    dir.write(Kind::Inventory, 0, &inventory).map_err(bad)
}
