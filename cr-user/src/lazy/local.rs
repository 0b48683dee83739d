//! The feed of `fastcr restore --lazy`: pages come from the image dir (through its parent
//! chain), read from the mapped pages files, so a demand fault costs one `UFFDIO_COPY`.

use super::{Feed, LazyError, Placer};
use crate::mm::pages::PageChain;
use crate::sys::PAGE_SIZE;

/// Pages placed per background step: large enough for `UFFDIO_COPY` to run near its best
/// rate, small enough that a fault waits at most one step (~0.5 ms).
const BACKGROUND_CHUNK: u64 = 512 * PAGE_SIZE;
/// Pages placed on a demand fault: the faulting page and a few after it, since faults tend to
/// walk forward.
const DEMAND_CHUNK: u64 = 16 * PAGE_SIZE;

/// Feeds pages from an image: each process's through its own chain.
pub struct ImageFeed<'a> {
    chains: Vec<(i32, &'a PageChain)>,
    cursor: u64,
}

impl<'a> ImageFeed<'a> {
    /// A feed over the chains of the image's processes, by pid.
    pub fn new(chains: Vec<(i32, &'a PageChain)>) -> Self {
        Self { chains, cursor: 0 }
    }

    fn place_from(
        &self,
        pid: i32,
        src: u64,
        max: u64,
        placer: &mut Placer,
    ) -> Result<(), LazyError> {
        let chain = self
            .chains
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, c)| *c)
            .ok_or(LazyError::Missing { addr: src })?;
        match chain.bytes_at(src, max)? {
            Some(bytes) => placer.place(pid, src, bytes),
            None => Err(LazyError::Missing { addr: src }),
        }
    }
}

impl Feed for ImageFeed<'_> {
    fn demand(&mut self, pid: i32, src: u64, placer: &mut Placer) -> Result<(), LazyError> {
        self.place_from(pid, src, DEMAND_CHUNK, placer)
    }

    fn background(&mut self, placer: &mut Placer) -> Result<bool, LazyError> {
        let Some((pid, src, len)) = placer.next_pending(self.cursor) else {
            return Ok(false);
        };
        self.place_from(pid, src, len.min(BACKGROUND_CHUNK), placer)?;
        self.cursor = src + len.min(BACKGROUND_CHUNK);
        Ok(true)
    }
}
