//! Statistics of a dump or restore, split the way CRIU splits its own so the two compare.

use std::time::Duration;

use serde::Serialize;

use crate::track::precopy::RoundStat;

/// What a dump measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DumpStats {
    /// From the start of the freeze until every task was stopped.
    pub freezing_time_us: u64,
    /// From every task stopped until the tasks ran again (or were killed).
    pub frozen_time_us: u64,
    /// Copying pages out of the tasks (inside the frozen window).
    pub memdump_time_us: u64,
    /// Writing the image files (after thaw with --leave-running).
    pub memwrite_time_us: u64,
    /// Pages looked at in pagemap.
    pub pages_scanned: u64,
    /// Pages saved in the image.
    pub pages_written: u64,
    /// Pages an incremental image leaves to its parent chain (unchanged since the parent).
    pub pages_in_parent: u64,
    /// Pages of a tree's children left to their parent process's image: still shared
    /// copy-on-write with it, so saved once (`PE_COW_PARENT`).
    pub pages_cow_shared: u64,
    /// How the task set was known: "bpf" (confirmed against /proc) or "proc" (BPF unavailable).
    pub task_tracking: String,
    /// How memory was copied: "off" (stop-the-world, as asked), "uffd-wp-async" (pre-copy), or
    /// "stop-the-world (reason)" when pre-copy was asked for but could not run.
    pub precopy_mode: String,
    /// What the final `PAGEMAP_SCAN` of a pre-copy walked: "hinted: ..." (only the pages
    /// hinted since the last round, the guard having shown nothing else could write) or
    /// "all memory: reason"; empty without pre-copy.
    pub final_scan: String,
    /// Pre-copy rounds (empty for a stop-the-world dump).
    pub rounds: Vec<RoundStat>,
    /// Processes whose memory was pre-copied (a child forked during the rounds counts from
    /// the round after its fork).
    pub precopy_processes: u32,
    /// Time spent in pre-copy rounds before the freeze.
    pub precopy_time_us: u64,
    /// Pages copied inside the frozen window.
    pub residual_pages: u64,
    /// Measured dirty rate in the last pre-copy round.
    pub dirty_rate_pages_per_s: f64,
    /// The frozen window, step by step.
    pub frozen_steps: FrozenSteps,
}

/// The steps of the frozen window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrozenSteps {
    /// Stopping the task.
    pub stop_us: u64,
    /// Registers, signal state and the other injected queries.
    pub registers_us: u64,
    /// The final write-tracking scan (pre-copy only).
    pub final_scan_us: u64,
    /// Copying pages inside the window (all of them without pre-copy).
    pub residual_copy_us: u64,
    /// smaps, layout, files.
    pub metadata_us: u64,
}

/// What a restore measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Creating the tasks with their pids (in a tree, with the memory of every process that
    /// has children, rebuilt before it forks them).
    pub forking_time_us: u64,
    /// From reading the image until the tasks run.
    pub restore_time_us: u64,
    /// Pages written into the tasks.
    pub pages_restored: u64,
    /// Pid of the restored root task.
    pub pid: i32,
}

/// What the handler measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LazyStats {
    /// Pages that were missing when the process resumed.
    pub lazy_pages: u64,
    /// Pages placed (in any address space).
    pub pages_placed: u64,
    /// Faults on missing pages that had to be fetched.
    pub demand_faults: u64,
    /// Faults answered with zeros (pages the image never had, or the process dropped).
    pub zero_faults: u64,
    /// Demand fault latency, from reading the fault to placing its page: median.
    pub fault_p50_us: u64,
    /// ... and 99th percentile.
    pub fault_p99_us: u64,
    /// From resume to the last page in place.
    pub time_to_all_pages_us: u64,
    /// Address spaces created by fork during the lazy phase.
    pub forks: u64,
    /// mremap, MADV_DONTNEED and munmap events honoured.
    pub layout_events: u64,
}

/// Microseconds of a duration, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl DumpStats {
    /// A human table.
    pub fn table(&self) -> String {
        let rows = [
            ("freezing_time", ms(self.freezing_time_us)),
            ("frozen_time", ms(self.frozen_time_us)),
            ("memdump_time", ms(self.memdump_time_us)),
            ("memwrite_time", ms(self.memwrite_time_us)),
            ("pages_scanned", self.pages_scanned.to_string()),
            ("pages_written", self.pages_written.to_string()),
            ("pages_in_parent", self.pages_in_parent.to_string()),
            ("pages_cow_shared", self.pages_cow_shared.to_string()),
            ("task_tracking", self.task_tracking.clone()),
            ("precopy_mode", self.precopy_mode.clone()),
            ("final_scan_over", self.final_scan.clone()),
            ("residual_pages", self.residual_pages.to_string()),
            ("  stop", ms(self.frozen_steps.stop_us)),
            ("  registers", ms(self.frozen_steps.registers_us)),
            ("  metadata", ms(self.frozen_steps.metadata_us)),
            ("  final_scan", ms(self.frozen_steps.final_scan_us)),
            ("  residual_copy", ms(self.frozen_steps.residual_copy_us)),
        ];
        let mut rows: Vec<(&str, String)> = rows.to_vec();
        let round_rows: Vec<(String, String)> = self
            .rounds
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("round {i}"),
                    if r.hinted_only {
                        format!(
                            "{} pages (closing round, {} hinted) {}",
                            r.pages,
                            r.hinted,
                            ms(r.time_us)
                        )
                    } else {
                        format!(
                            "{} pages ({} hot deferred) {}",
                            r.pages,
                            r.deferred,
                            ms(r.time_us)
                        )
                    },
                )
            })
            .collect();
        if !self.rounds.is_empty() {
            rows.push(("precopy_time", ms(self.precopy_time_us)));
            rows.push((
                "dirty_rate",
                format!("{:.0} pages/s", self.dirty_rate_pages_per_s),
            ));
        }
        for (k, v) in &round_rows {
            rows.push((k.as_str(), v.clone()));
        }
        render("dump", &rows)
    }
}

impl RestoreStats {
    /// A human table.
    pub fn table(&self) -> String {
        let rows = [
            ("pid", self.pid.to_string()),
            ("forking_time", ms(self.forking_time_us)),
            ("restore_time", ms(self.restore_time_us)),
            ("pages_restored", self.pages_restored.to_string()),
        ];
        render("restore", &rows)
    }
}

impl LazyStats {
    /// A human table.
    pub fn table(&self) -> String {
        let rows = [
            ("lazy_pages", self.lazy_pages.to_string()),
            ("pages_placed", self.pages_placed.to_string()),
            ("demand_faults", self.demand_faults.to_string()),
            ("zero_faults", self.zero_faults.to_string()),
            ("fault_p50", format!("{} us", self.fault_p50_us)),
            ("fault_p99", format!("{} us", self.fault_p99_us)),
            ("time_to_all_pages", ms(self.time_to_all_pages_us)),
            ("forks", self.forks.to_string()),
            ("layout_events", self.layout_events.to_string()),
        ];
        render("lazy", &rows)
    }
}

fn render(title: &str, rows: &[(&str, String)]) -> String {
    let mut out = format!("{title} stats\n");
    for (k, v) in rows {
        out.push_str(&format!("  {k:<16} {v:>16}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_name_every_field() {
        let s = DumpStats {
            frozen_time_us: 1500,
            pages_written: 7,
            ..Default::default()
        };
        let t = s.table();
        assert!(t.contains("frozen_time") && t.contains("1.500 ms") && t.contains('7'));
        let j = serde_json::to_value(&s).unwrap();
        for k in [
            "freezing_time_us",
            "frozen_time_us",
            "memdump_time_us",
            "memwrite_time_us",
            "pages_scanned",
            "pages_written",
            "pages_cow_shared",
        ] {
            assert!(j.get(k).is_some(), "{k} missing");
        }
        let r = serde_json::to_value(RestoreStats::default()).unwrap();
        for k in ["forking_time_us", "restore_time_us", "pages_restored"] {
            assert!(r.get(k).is_some(), "{k} missing");
        }
    }
}
