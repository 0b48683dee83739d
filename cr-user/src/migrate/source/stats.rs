//! What a migration measured, and its human table. Figures only: nothing here talks to the
//! destination or touches the process.

use serde::Serialize;

use crate::migrate::proto::DoneStats;
use crate::stats::DumpStats;

/// What the migration measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateStats {
    /// Lazy or not.
    pub lazy: bool,
    /// The dump on the source (frozen_time runs until the image was complete).
    pub dump: DumpStats,
    /// Source freeze to the first instruction on the destination (estimated as the arrival of
    /// `Resumed` minus half the round-trip time).
    pub downtime_us: u64,
    /// Destination restore time, as it reported.
    pub restore_us: u64,
    /// Resume to every page in place on the destination (0 if not lazy).
    pub time_to_all_pages_us: u64,
    /// Bytes sent: image files plus pages.
    pub bytes_sent: u64,
    /// Pages sent while the process still ran (a stop-and-copy with pre-copy rounds).
    pub precopy_pages_streamed: u64,
    /// Pages sent in the background stream.
    pub bulk_pages: u64,
    /// Pages the process wrote in the window watched before a lazy migration's freeze: they
    /// are streamed right after the stack.
    pub hot_pages: u64,
    /// Page requests answered (demand faults on the destination).
    pub requests_served: u64,
    /// The destination's figures.
    pub dest: DoneStats,
    /// Background throughput, MiB/s.
    pub background_mib_s: f64,
    /// Processes whose background pages were spliced out of the original by a helper thread
    /// (the others', if any, were copied).
    pub spliced_processes: u32,
    /// Measured round-trip time of the control connection.
    pub rtt_us: u64,
}

impl MigrateStats {
    /// A human table.
    pub fn table(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let rows = [
            (
                "mode",
                if self.lazy { "lazy" } else { "stop-and-copy" }.to_string(),
            ),
            ("downtime", ms(self.downtime_us)),
            ("  frozen_dump", ms(self.dump.frozen_time_us)),
            ("  dest_restore", ms(self.restore_us)),
            ("time_to_all_pages", ms(self.time_to_all_pages_us)),
            ("bytes_sent", self.bytes_sent.to_string()),
            ("bulk_pages", self.bulk_pages.to_string()),
            ("  hot_pages (first)", self.hot_pages.to_string()),
            ("demand_faults", self.dest.demand_faults.to_string()),
            ("fault_p50", format!("{} us", self.dest.fault_p50_us)),
            ("fault_p99", format!("{} us", self.dest.fault_p99_us)),
            ("background", format!("{:.0} MiB/s", self.background_mib_s)),
            ("  spliced (processes)", self.spliced_processes.to_string()),
            ("rtt", format!("{} us", self.rtt_us)),
        ];
        let mut out = String::from("migration stats\n");
        for (k, v) in rows {
            out.push_str(&format!("  {k:<18} {v:>16}\n"));
        }
        out
    }
}
