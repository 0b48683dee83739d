//! Restore time of `fastcr restore -d`: the `restore_time_us` the restore reports (from reading
//! the image until the tasks run; it contains `forking_time_us`), for 64 / 256 / 1024 MiB of
//! pattern-filled anonymous memory.
//!
//! The workload is dumped once; each sample restores that image, waits until the restored
//! process runs, then kills and reaps it. A last restore is stopped cleanly so the workload
//! verifies its memory. Needs root and a release fastcr; otherwise prints `skipping: <reason>`
//! and measures nothing.

use benches::{RestoreTime, SIZES_MIB, one_op_per_sample, prerequisites};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn restore_time(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let mut group = one_op_per_sample(c, "restore_time");
    for &size in SIZES_MIB {
        let mut scenario = RestoreTime::prepare(&bin, size)
            .unwrap_or_else(|e| panic!("restore_time {size} MiB: dump: {e:#}"));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{size}MiB")),
            &size,
            |b, _| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            scenario
                                .measure_once()
                                .unwrap_or_else(|e| panic!("restore_time {size} MiB: {e:#}"))
                        })
                        .sum()
                });
            },
        );
        scenario
            .finish()
            .unwrap_or_else(|e| panic!("restore_time {size} MiB: final restore: {e:#}"));
    }
    group.finish();
}

criterion_group!(benches, restore_time);
criterion_main!(benches);
