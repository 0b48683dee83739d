//! A process tree: `frozen_time` of `dump --leave-running` and `restore_time` of `restore -d`
//! for `wl_combo 512` (a 4-thread parent with 512 MiB and a child joined to it by a pipe and a
//! socketpair), as `tree_frozen_time/512MiB` and `tree_restore_time/512MiB`. The figure is what
//! fastcr reports (`frozen_time_us`, `restore_time_us`), one operation per sample. Every dumped
//! tree ends by verifying itself (memory of both processes, the numbers through the pipe and
//! back, the child's exit), so a fast but wrong dump or restore fails the bench.
//!
//! Needs root and a release fastcr, otherwise prints `skipping: <reason>`.

use benches::tree::{TREE_SIZE_MIB, TreeRestore};
use benches::{one_op_per_sample, prerequisites};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn tree(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let id = BenchmarkId::from_parameter(format!("{TREE_SIZE_MIB}MiB"));
    let frozen = benches::tree::frozen(&bin);
    let mut group = one_op_per_sample(c, "tree_frozen_time");
    group.bench_function(id.clone(), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    frozen
                        .measure_once()
                        .unwrap_or_else(|e| panic!("tree frozen time: {e:#}"))
                })
                .sum()
        });
    });
    group.finish();
    frozen.finish();

    let mut restore =
        TreeRestore::prepare(&bin).unwrap_or_else(|e| panic!("tree restore: dump: {e:#}"));
    let mut group = one_op_per_sample(c, "tree_restore_time");
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    restore
                        .measure_once()
                        .unwrap_or_else(|e| panic!("tree restore time: {e:#}"))
                })
                .sum()
        });
    });
    group.finish();
    restore
        .finish()
        .unwrap_or_else(|e| panic!("tree restore: final restore: {e:#}"));
}

criterion_group!(benches, tree);
criterion_main!(benches);
