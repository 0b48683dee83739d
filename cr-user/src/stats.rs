//! Statistics of a dump or restore, split the way CRIU splits its own so the two compare.

use std::time::Duration;

use serde::Serialize;

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
    /// How the task set was known: "bpf" (confirmed against /proc) or "proc" (BPF unavailable).
    pub task_tracking: String,
}

/// What a restore measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Creating the tasks with their pids.
    pub forking_time_us: u64,
    /// From reading the image until the tasks run.
    pub restore_time_us: u64,
    /// Pages written into the tasks.
    pub pages_restored: u64,
    /// Pid of the restored root task.
    pub pid: i32,
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
            ("task_tracking", self.task_tracking.clone()),
        ];
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
        ] {
            assert!(j.get(k).is_some(), "{k} missing");
        }
        let r = serde_json::to_value(RestoreStats::default()).unwrap();
        for k in ["forking_time_us", "restore_time_us", "pages_restored"] {
            assert!(r.get(k).is_some(), "{k} missing");
        }
    }
}
