//! Pre-copy: the freeze window of `fastcr dump --pre-copy auto --leave-running` against the
//! stop-the-world `dump --leave-running`, on the same running workload, plus the workload's
//! slowdown while it is tracked.
//!
//! - `stw_frozen/<size>`, `precopy_frozen/<size>` and `precopy_full_scan_frozen/<size>`,
//!   parameter the dirty rate: `frozen_time_us` of one dump of `wl_dirty SIZE_MIB PERMILLE`,
//!   which dirties 0.1 %, 1 % or 10 % of its pages every 100 ms. For each (size, rate) one
//!   workload is started, the baseline is measured, then the pre-copy (its final scan limited
//!   to the hinted pages whenever the guards allow), then the pre-copy with
//!   `--full-final-scan` (the final scan walks all memory); the workload then verifies its
//!   memory and must pass.
//! - `write_cost_1000_pages/untracked` and `write_cost_1000_pages/tracked`, parameter the size:
//!   the time `wl_dirty SIZE_MIB 0 max` takes to dirty 1000 pages (so ms in the table are µs per
//!   page) while nothing watches it, and during the rounds of `dump --pre-copy 5
//!   --leave-running` (write-protect faults, the copy competing for memory bandwidth).
//!
//! Each sample is one dump (one measurement window for `untracked`); criterion gets the figures
//! through `iter_custom`. Needs root and a release fastcr, otherwise prints `skipping: <reason>`;
//! without `--pre-copy` in the binary only the stop-the-world baseline is measured.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use benches::{
    DirtyFrozen, DumpMode, PRECOPY_CASES, WRITE_COST_SIZES_MIB, WriteCost, dump_has_option,
    prerequisites, rate_label, supports_pre_copy,
};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main,
};

/// One operation per sample (see freeze.rs for why the target times are tiny).
fn flat(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
}

/// Runs one benchmark whose every operation is `measure`.
fn bench(
    c: &mut Criterion,
    group: &str,
    id: BenchmarkId,
    what: &str,
    measure: impl Fn() -> Result<Duration>,
) {
    let mut g = c.benchmark_group(group);
    flat(&mut g);
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| measure().unwrap_or_else(|e| panic!("{what}: {e:#}")))
                .sum()
        });
    });
    g.finish();
}

fn frozen(c: &mut Criterion, bin: &Path, pre_copy: bool) {
    let full_scan = pre_copy && dump_has_option(bin, "--full-final-scan");
    for &(size, rates) in PRECOPY_CASES {
        for &permille in rates {
            let rate = rate_label(permille);
            let scenario = DirtyFrozen::start(bin, size, permille)
                .unwrap_or_else(|e| panic!("wl_dirty {size} MiB {rate}: {e:#}"));
            let id = || BenchmarkId::new(format!("{size}MiB"), &rate);
            bench(
                c,
                "stw_frozen",
                id(),
                &format!("stw {size} MiB {rate}"),
                || scenario.measure_once(DumpMode::StopTheWorld),
            );
            if pre_copy {
                bench(
                    c,
                    "precopy_frozen",
                    id(),
                    &format!("pre-copy {size} MiB {rate}"),
                    || scenario.measure_once(DumpMode::PreCopy),
                );
            }
            if full_scan {
                bench(
                    c,
                    "precopy_full_scan_frozen",
                    id(),
                    &format!("pre-copy --full-final-scan {size} MiB {rate}"),
                    || scenario.measure_once(DumpMode::PreCopyFullScan),
                );
            }
            match scenario.achieved_rate() {
                Ok(r) => println!("wl_dirty {size} MiB {rate}: dirtied {r:.0} pages/s"),
                Err(e) => println!("wl_dirty {size} MiB {rate}: no rate: {e:#}"),
            }
            scenario.finish();
        }
    }
}

fn write_cost(c: &mut Criterion, bin: &Path) {
    for &size in WRITE_COST_SIZES_MIB {
        let scenario = WriteCost::start(bin, size);
        let id = |f: &str| BenchmarkId::new(f, format!("{size}MiB"));
        bench(
            c,
            "write_cost_1000_pages",
            id("untracked"),
            &format!("untracked writes {size} MiB"),
            || scenario.untracked(),
        );
        bench(
            c,
            "write_cost_1000_pages",
            id("tracked"),
            &format!("tracked writes {size} MiB"),
            || scenario.tracked(),
        );
        scenario.finish();
    }
}

fn precopy(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let pre_copy = supports_pre_copy(&bin);
    if !pre_copy {
        println!(
            "skipping the pre-copy figures: {} has no `dump --pre-copy`; measuring the \
             stop-the-world baseline only",
            bin.display()
        );
    }
    frozen(c, &bin, pre_copy);
    if pre_copy {
        write_cost(c, &bin);
    }
}

criterion_group!(benches, precopy);
criterion_main!(benches);
