//! Live migration: `fastcr migrate [--lazy]` of `wl_heap SIZE_MIB` (256, 1024, 4096 MiB) to a
//! `fastcr receive --pidns new` in another network namespace (a veth pair on this host).
//!
//! - `migrate_downtime/lazy/<size>`, `migrate_downtime/stop_and_copy/<size>` and
//!   `migrate_downtime/precopy/<size>` (stop-and-copy after streamed pre-copy rounds): the source's
//!   `downtime_us`, from the freeze to the copy's first instruction on the destination (the
//!   arrival of `Resumed` minus half the measured round trip).
//! - `migrate_time_to_all_pages/lazy/<size>`: `time_to_all_pages_us`, from the copy's resume
//!   until the destination has every page in place; `.../lazy_splice/<size>` the same with
//!   `--splice` (background pages spliced out of the original, not copied).
//! - `migrate_fault_p50/lazy/<size>`: `dest.fault_p50_us`, the median latency of the demand
//!   faults of one migration (fault to page placed). A migration has only a handful of them
//!   (the copy touches its stack, libc and counter pages right after the resume; the pattern
//!   region is only read again when it verifies itself, by then it is all there), so each sample
//!   is the median over those few faults, not over many. A migration without any demand fault
//!   has no latency to report and is left out of this group (the bench prints it).
//!
//! One sample is one migration of a freshly started workload (filling it is setup, not
//! measured). After every migration the copy is checked: the source SIGKILLed the original, the
//! copy runs in a new pid namespace with the original's pid, its counter advances, and on SIGTERM
//! it verifies its whole memory and must report PASS, so a fast but wrong migration fails the
//! bench. The three lazy groups read their figures from the same lazy migrations, in order
//! (sample i of each is migration i, the warm-up included), so lazy mode costs 11 migrations
//! per size, not 33; a group run alone (criterion filter) migrates for itself. Each group runs
//! one warm-up operation and 10 samples of one operation each: the target times are 1 ns, so
//! criterion's warm-up stops after one call and every sample is one iteration, also for the
//! groups that read recorded migrations (their calls take no time).
//!
//! Physical limits (docs/benchmarks.md): lazy mode's downtime should not grow with memory
//! (readable private anonymous VMAs go into the image without reading a page). Its
//! time_to_all_pages is bounded below by placing the pages: `UFFDIO_COPY` moves about
//! 3.8 GiB/s in 2 MiB chunks, so about 0.27 s per GiB before any network or source-side
//! cost; here the pages also cross a veth (two TCP stacks, the same two CPUs). A demand fault
//! costs about 8 µs on the same vCPU and 45–60 µs across vCPUs with a blocking read, plus here
//! a round trip over the veth to the source. Stop-and-copy moves the whole image through
//! /dev/shm on both sides before the resume, so its downtime grows with memory.
//!
//! Needs root, the `ip` tool and a release fastcr, otherwise prints `skipping: <reason>`.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use benches::migrate::{Link, MIGRATE_SIZES_MIB, Migrated, Mode, Thawed, have_ip_tool};
use benches::prerequisites;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

/// Consecutive migrations without a demand fault after which the fault-latency group gives up.
const MAX_FAULTLESS_RUNS: u32 = 10;

/// Runs one benchmark whose every operation is `measure`, one operation per sample.
fn bench(
    c: &mut Criterion,
    group: &str,
    mode: Mode,
    size: u64,
    what: &str,
    mut measure: impl FnMut() -> Result<Duration>,
) {
    let param = format!("{size}MiB");
    let full_id = format!("{group}/{}/{param}", mode.label());
    let mut g = c.benchmark_group(group);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_nanos(1))
        .measurement_time(Duration::from_nanos(1));
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        g.bench_function(BenchmarkId::new(mode.label(), param), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| measure().unwrap_or_else(|e| panic!("{what}: {e:#}")))
                    .sum()
            });
        });
    }));
    g.finish();
    if let Err(payload) = run {
        match payload.downcast::<Abandon>() {
            // Criterion writes its estimates only after the last sample: nothing is left behind.
            Ok(abandon) => println!("skipping {full_id}: {}", abandon.0),
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

/// Unwinds out of a benchmark that cannot produce a figure here (see [`stop_and_copy`]), so
/// that it gets none and the bench goes on; carries the reason. Raised with
/// `panic::resume_unwind`, which does not run the panic hook.
struct Abandon(String);

/// The lazy migrations of one size, shared by the three lazy groups: the first group to ask for
/// migration i runs it, the others read it.
struct LazyRuns<'a> {
    link: &'a Link,
    size: u64,
    runs: RefCell<Vec<Migrated>>,
}

impl LazyRuns<'_> {
    /// Migration `i`, run now if nobody has run it yet.
    fn get(&self, i: usize) -> Result<Migrated> {
        if let Some(m) = self.runs.borrow().get(i) {
            return Ok(m.clone());
        }
        if i != self.runs.borrow().len() {
            bail!(
                "lazy migration {i} asked before {}",
                self.runs.borrow().len()
            );
        }
        let m = self.link.migrate_once(self.size, Mode::Lazy)?;
        println!("lazy {} MiB #{i}: {}", self.size, m.summary());
        self.runs.borrow_mut().push(m.clone());
        Ok(m)
    }

    /// A reader of the migrations in order, starting at the first.
    fn cursor(&self) -> impl FnMut() -> Result<Migrated> + '_ {
        let next = Cell::new(0);
        move || {
            let i = next.get();
            next.set(i + 1);
            self.get(i)
        }
    }
}

fn lazy(c: &mut Criterion, link: &Link, size: u64) {
    let runs = LazyRuns {
        link,
        size,
        runs: RefCell::new(Vec::new()),
    };

    let mut next = runs.cursor();
    bench(
        c,
        "migrate_downtime",
        Mode::Lazy,
        size,
        &format!("lazy downtime {size} MiB"),
        || next()?.downtime(),
    );

    let mut next = runs.cursor();
    bench(
        c,
        "migrate_time_to_all_pages",
        Mode::Lazy,
        size,
        &format!("lazy time to all pages {size} MiB"),
        || next()?.time_to_all_pages(),
    );

    let mut next = runs.cursor();
    let skipped = Cell::new(0u32);
    bench(
        c,
        "migrate_fault_p50",
        Mode::Lazy,
        size,
        &format!("lazy demand fault p50 {size} MiB"),
        || {
            for _ in 0..MAX_FAULTLESS_RUNS {
                if let Some(p50) = next()?.fault_p50()? {
                    return Ok(p50);
                }
                skipped.set(skipped.get() + 1);
            }
            bail!("{MAX_FAULTLESS_RUNS} migrations in a row without a demand fault")
        },
    );
    if skipped.get() > 0 {
        println!(
            "lazy {size} MiB: {} migrations had no demand fault and are not in \
             migrate_fault_p50",
            skipped.get()
        );
    }
    let faults: Vec<String> = runs
        .runs
        .borrow()
        .iter()
        .map(|m| {
            m.demand_faults()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string())
        })
        .collect();
    if !faults.is_empty() {
        println!(
            "lazy {size} MiB: demand faults per migration: {}",
            faults.join(" ")
        );
    }
}

/// Time to all pages of lazy migrations whose background pages are spliced out of the
/// original instead of copied (`--splice`), against the default copy in the same run.
fn lazy_splice(c: &mut Criterion, link: &Link, size: u64) {
    let i = Cell::new(0);
    bench(
        c,
        "migrate_time_to_all_pages",
        Mode::LazySplice,
        size,
        &format!("lazy_splice time to all pages {size} MiB"),
        || {
            let n = i.get();
            i.set(n + 1);
            let m = link.migrate_once(size, Mode::LazySplice)?;
            println!("lazy_splice {size} MiB #{n}: {}", m.summary());
            m.time_to_all_pages()
        },
    );
}

/// Stop-and-copy downtime. A migration that fails cleanly before the resume (the original
/// thawed and intact, checked) abandons the size without a figure: a mean over the migrations
/// that happened to succeed would be biased, and a failed migration has no downtime. (At
/// 4096 MiB on the 2-CPU bench machine the held dump plus writing the 4 GiB image to /dev/shm
/// takes longer than the destination's 10 s read timeout, see docs/benchmarks.md.) Any other
/// failure fails the bench.
fn stop_and_copy(c: &mut Criterion, link: &Link, size: u64, mode: Mode) {
    let i = Cell::new(0);
    bench(
        c,
        "migrate_downtime",
        mode,
        size,
        &format!("{} downtime {size} MiB", mode.label()),
        || {
            let n = i.get();
            i.set(n + 1);
            let m = match link.migrate_once(size, mode) {
                Ok(m) => m,
                Err(e) => match e.downcast_ref::<Thawed>() {
                    Some(thawed) => panic::resume_unwind(Box::new(Abandon(format!(
                        "migration #{n} (of 11: warm-up + 10 samples) failed: {thawed}"
                    )))),
                    None => return Err(e),
                },
            };
            println!("{} {size} MiB #{n}: {}", mode.label(), m.summary());
            m.downtime()
        },
    );
}

fn migrate(c: &mut Criterion) {
    let bin = match prerequisites() {
        Ok(bin) => bin,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    if !have_ip_tool() {
        println!("skipping: the `ip` tool (iproute2) is missing; `cargo xtask setup` installs it");
        return;
    }
    let link = Link::new(Path::new(&bin)).unwrap_or_else(|e| panic!("migration link: {e:#}"));
    for &size in MIGRATE_SIZES_MIB {
        lazy(c, &link, size);
        lazy_splice(c, &link, size);
        stop_and_copy(c, &link, size, Mode::StopAndCopy);
        stop_and_copy(c, &link, size, Mode::PreCopy);
    }
}

criterion_group!(benches, migrate);
criterion_main!(benches);
