//! Freeze window of `fastcr dump --leave-running`: the `frozen_time_us` the dump reports, for
//! 64 / 256 / 1024 MiB of pattern-filled anonymous memory.
//!
//! Each sample is one dump (criterion gets the reported frozen time through `iter_custom`, not
//! the wall time of the command, which includes writing the image). Needs root and a release
//! fastcr; otherwise prints `skipping: <reason>` and measures nothing.

use benches::{FrozenTime, SIZES_MIB, one_op_per_sample, prerequisites};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn frozen_time(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let mut group = one_op_per_sample(c, "frozen_time");
    for &size in SIZES_MIB {
        let scenario = FrozenTime::start(&bin, size);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{size}MiB")),
            &size,
            |b, _| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            scenario
                                .measure_once()
                                .unwrap_or_else(|e| panic!("frozen_time {size} MiB: {e:#}"))
                        })
                        .sum()
                });
            },
        );
        scenario.finish();
    }
    group.finish();
}

criterion_group!(benches, frozen_time);
criterion_main!(benches);
