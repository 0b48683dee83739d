//! mmap-lock activity on tracked memory: the userspace half of `cr-ebpf`'s `mmlock` module.
//!
//! A pre-copy may limit the final `PAGEMAP_SCAN` to the pages hinted since its last walk of all
//! memory only if nothing could have written that memory without a hinted fault: nobody but
//! fastcr took the process's mmap lock since, and nobody holds it (`cr_common::mmlock` lists
//! the writers this covers). [`MmWatch`] learns each process's `mm_struct` pointer, puts it
//! in the watched set, and reads its [`MmGuard`] and its current holders.

use std::collections::HashMap as StdHashMap;
use std::fs::File;

use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use cr_common::mmlock::{HoldKey, MM_HOLDS_MAP, MM_LEARN_MAP, MM_WATCH_MAP, MmGuard, tp};

use super::{BpfError, Hook};
use crate::sys::uffd::{PAGE_IS_PRESENT, ScanRequest, pagemap_scan};

/// Attempts at reading a process's mm pointer back the same twice.
const LEARN_TRIES: usize = 3;

/// The mmap-lock tracepoints.
pub(super) const HOOKS: [Hook; 2] = [
    Hook {
        program: "mmap_lock_acquire_returned",
        category: "mmap_lock",
        tracepoint: "mmap_lock_acquire_returned",
        fields: &[("mm", tp::MM), ("success", tp::SUCCESS)],
    },
    Hook {
        program: "mmap_lock_released",
        category: "mmap_lock",
        tracepoint: "mmap_lock_released",
        fields: &[("mm", tp::MM)],
    },
];

/// A watched process's lock activity at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmActivity {
    /// Locks and unlocks by others since the mm was watched (compare two readings).
    pub events: u64,
    /// Somebody other than fastcr holds the lock now, or a hold could not be recorded.
    pub held: bool,
}

/// The watched mms and the maps that describe them.
pub(super) struct MmWatch {
    watch: PerCpuHashMap<MapData, u64, MmGuard>,
    holds: HashMap<MapData, HoldKey, u32>,
    learn: HashMap<MapData, u32, u64>,
    /// Tracked pid -> its mm pointer.
    mms: StdHashMap<i32, u64>,
}

impl MmWatch {
    pub(super) fn new(ebpf: &mut aya::Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            watch: super::take_map(ebpf, MM_WATCH_MAP)?,
            holds: super::take_map(ebpf, MM_HOLDS_MAP)?,
            learn: super::take_map(ebpf, MM_LEARN_MAP)?,
            mms: StdHashMap::new(),
        })
    }

    /// Starts counting the lock activity on `pid`'s memory (the hooks must be attached). Its
    /// mm pointer is learned by walking one page of its page tables from this thread (BPF notes
    /// the mm each fastcr thread locked last), twice, and checked against fastcr's own mm (a
    /// page fault of ours between the walk and the lookup would note that one). Watching a
    /// process twice is a no-op.
    pub(super) fn watch(&mut self, pid: i32) -> Result<(), BpfError> {
        if self.mms.contains_key(&pid) {
            return Ok(());
        }
        let own = self.learn_mm("self")?;
        let target = pid.to_string();
        let mut mm = None;
        for _ in 0..LEARN_TRIES {
            let (a, b) = (self.learn_mm(&target)?, self.learn_mm(&target)?);
            if a == b && a != own && a != 0 {
                mm = Some(a);
                break;
            }
        }
        let mm = mm.ok_or_else(|| BpfError::LearnMm {
            pid,
            source: std::io::Error::other("the mm pointer did not read back the same"),
        })?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| BpfError::LearnMm { pid, source })?;
        let zero = PerCpuValues::try_from(vec![MmGuard::default(); cpus])
            .map_err(|source| BpfError::LearnMm { pid, source })?;
        self.watch
            .insert(mm, zero, 0)
            .map_err(|source| BpfError::Map {
                map: MM_WATCH_MAP,
                source,
            })?;
        tracing::debug!(pid, mm = format_args!("{mm:#x}"), "mmap lock watched");
        self.mms.insert(pid, mm);
        Ok(())
    }

    /// The mm this thread locks when it walks one page of `/proc/<proc>/pagemap`.
    fn learn_mm(&self, proc: &str) -> Result<u64, BpfError> {
        let learn_err = |source: std::io::Error| BpfError::LearnMm {
            pid: proc.parse().unwrap_or(0),
            source,
        };
        let pagemap = File::open(format!("/proc/{proc}/pagemap")).map_err(learn_err)?;
        let req = ScanRequest {
            start: 0,
            end: crate::sys::PAGE_SIZE,
            flags: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_PRESENT,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_PRESENT,
        };
        pagemap_scan(&pagemap, &req, &mut Vec::new()).map_err(|e| learn_err(e.io_error))?;
        let tid = crate::sys::process::gettid().cast_unsigned();
        self.learn.get(&tid, 0).map_err(|source| BpfError::Map {
            map: MM_LEARN_MAP,
            source,
        })
    }

    /// `pid`'s lock activity now; `None` if it is not watched.
    pub(super) fn activity(&self, pid: i32) -> Result<Option<MmActivity>, BpfError> {
        let Some(&mm) = self.mms.get(&pid) else {
            return Ok(None);
        };
        let guard = match self.watch.get(&mm, 0) {
            Ok(per_cpu) => per_cpu.iter().fold(MmGuard::default(), |a, g| MmGuard {
                events: a.events.wrapping_add(g.events),
                overflow: a.overflow.wrapping_add(g.overflow),
            }),
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(BpfError::Map {
                    map: MM_WATCH_MAP,
                    source,
                });
            }
        };
        let mut held = guard.overflow != 0;
        for key in self.holds.keys() {
            let key = key.map_err(|source| BpfError::Map {
                map: MM_HOLDS_MAP,
                source,
            })?;
            held |= key.mm == mm;
        }
        Ok(Some(MmActivity {
            events: guard.events,
            held,
        }))
    }
}
