//! Freeze window of `fastcr dump --leave-running`: the `frozen_time_us` the dump reports, for
//! 64 / 256 / 1024 MiB of pattern-filled anonymous memory.
//!
//! Each sample is one dump (criterion gets the reported frozen time through `iter_custom`, not
//! the wall time of the command, which includes writing the image). Needs root and a release
//! fastcr; otherwise prints `skipping: <reason>` and measures nothing.

use std::time::Duration;

use benches::{FrozenTime, SIZES_MIB, prerequisites};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

fn frozen_time(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let mut group = c.benchmark_group("frozen_time");
    // One dump per sample: the target times are tiny on purpose, so criterion runs one warm-up
    // dump and then exactly `sample_size` dumps (it warns that it cannot fit them in the target
    // time; that is expected).
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
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
