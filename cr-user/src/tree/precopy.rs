//! Pre-copy of a whole tree: every live process has its own tracking session and shadow, and
//! the rounds go over the tree as it is at each round. A child forked during the rounds is
//! tracked from the next round on (its round 0 copies all of it while it runs); one forked
//! after the last round, or one whose tracking broke (it called `execve`), is copied whole in
//! the freeze. A process that exited is forgotten.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Instant;

use crate::bpf::TaskTracker;
use crate::proc::maps::MapEntry;
use crate::proc::{self, ProcError};
use crate::stats::micros;
use crate::track::TrackError;
use crate::track::precopy::{self, PreCopy, RoundStat, Rounds, auto_converged};

/// What the rounds over a tree produced.
pub struct TreePreCopy {
    /// One session per process still tracked, by pid.
    pub sessions: BTreeMap<i32, PreCopy>,
    /// Each tracked process's layout read with `smaps` when its session started, kept only
    /// while BPF saw no VMA syscall of it since (nor lost any event): its freeze then reads
    /// the cheap `maps` instead, and its pages were selected during the rounds.
    pub layouts: BTreeMap<i32, Vec<MapEntry>>,
    /// BPF's lost-event count when the rounds began.
    pub lost_before: Option<u64>,
    /// Per-round figures summed over the tree (time is the round's wall time).
    pub rounds: Vec<RoundStat>,
    /// Pages written per second over the tree, from the last full round.
    pub dirty_rate: f64,
}

/// Runs the copy rounds over the tree rooted at `root` while it runs.
/// `seed`, the root's pre-copy made before it forked, is carried on.
pub fn run(
    root: i32,
    rounds: Rounds,
    mut hints: Option<&mut TaskTracker>,
    seed: Option<PreCopy>,
) -> Result<TreePreCopy, TrackError> {
    let mut sessions: BTreeMap<i32, PreCopy> = seed.map(|pc| (root, pc)).into_iter().collect();
    // The seed's rounds are the first of the story.
    let mut stats: Vec<RoundStat> = sessions
        .get(&root)
        .map(|pc| pc.rounds.clone())
        .unwrap_or_default();
    let limit = rounds.limit();
    let mut layouts: BTreeMap<i32, Vec<MapEntry>> = BTreeMap::new();
    let lost_before = hints.as_deref().and_then(|t| t.lost_vma_events().ok());
    for round in 0..limit {
        let t = Instant::now();
        let live = live(root)?;
        sessions.retain(|pid, _| live.contains(pid));
        forget_moved_layouts(&mut hints, &mut layouts, lost_before);
        let hinted = precopy::drain_hints(&mut hints);
        let last = round + 1 == limit;
        let mut sum = RoundStat::default();
        for &pid in &live {
            let mut layout = None;
            let pc = match sessions.entry(pid) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => match PreCopy::start(pid) {
                    Ok(pc) => {
                        // Read before its round 0 (which selects its pages from it), after the
                        // events drained above.
                        if lost_before.is_some()
                            && let Ok(smaps) = proc::maps::smaps(pid)
                            && let Ok(vmas) = crate::mm::dump::layout(pid, &smaps)
                        {
                            layouts.insert(pid, smaps);
                            layout = Some(vmas);
                        }
                        v.insert(pc)
                    }
                    Err(_) if !alive(pid) => continue,
                    Err(e) => return Err(e),
                },
            };
            let before = pc.rounds.len();
            let mine = hinted.get(&pid).map_or(&[][..], Vec::as_slice);
            if let Err(e) = pc.full_round(mine, last, layout.as_deref(), None) {
                // It exited, or its tracking broke (execve): copied whole in the freeze, or
                // tracked afresh next round.
                tracing::debug!(pid, error = %e, "tracking dropped");
                sessions.remove(&pid);
                layouts.remove(&pid);
                continue;
            }
            add(&mut sum, &pc.rounds[before..]);
        }
        sum.time_us = micros(t.elapsed());
        stats.push(sum);
        if rounds == Rounds::Auto && auto_converged(&stats) {
            break;
        }
    }
    if let Some(bpf) = hints {
        let mut all: Vec<(i32, &mut PreCopy)> =
            sessions.iter_mut().map(|(pid, pc)| (*pid, pc)).collect();
        stats.extend(precopy::closing_rounds(bpf, &mut all, None)?);
    }
    let dirty_rate = sessions.values().map(|pc| pc.dirty_rate).sum();
    layouts.retain(|pid, _| sessions.contains_key(pid));
    Ok(TreePreCopy {
        sessions,
        layouts,
        lost_before,
        rounds: stats,
        dirty_rate,
    })
}

/// Forgets the layout of every process BPF saw making a VMA syscall since the last call (all
/// of them if an event was lost since `lost_before`, or BPF is gone).
pub fn forget_moved_layouts(
    hints: &mut Option<&mut TaskTracker>,
    layouts: &mut BTreeMap<i32, Vec<MapEntry>>,
    lost_before: Option<u64>,
) {
    let Some(bpf) = hints.as_deref_mut() else {
        layouts.clear();
        return;
    };
    let events = bpf.drain_vma_events().unwrap_or_default();
    for e in &events {
        layouts.remove(&(e.tgid as i32));
    }
    if bpf.lost_vma_events().ok() != lost_before {
        layouts.clear();
    }
}

fn add(sum: &mut RoundStat, rounds: &[RoundStat]) {
    for r in rounds {
        sum.pages += r.pages;
        sum.deferred += r.deferred;
        sum.hinted += r.hinted;
    }
}

/// The live (not zombie) processes of the tree. Listing races with exits; it is tried again.
fn live(root: i32) -> Result<Vec<i32>, ProcError> {
    let mut tries = 0;
    loop {
        match super::collect(root) {
            Ok(tree) => {
                return Ok(tree
                    .procs
                    .iter()
                    .filter(|p| p.zombie.is_none())
                    .map(|p| p.pid)
                    .collect());
            }
            Err(_) if tries < 3 && alive(root) => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `pid` still exists and is not a zombie.
fn alive(pid: i32) -> bool {
    crate::proc::stat::stat(pid).is_ok_and(|s| s.state != 'Z')
}
