//! `cargo xtask bench`: builds fastcr in release mode, runs the criterion benches against it, and
//! rewrites the figures section of `docs/benchmarks.md` from criterion's estimates
//! (`target/criterion/**/new/{benchmark,estimates}.json`).
//!
//! Only estimates written by this run are used, so a skipped bench never leaves stale figures
//! behind, and the docs are not touched when nothing was measured.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{cargo, probe_output, run, step, target_dir, workspace_root};
use crate::{build, setup};

/// The figures section of docs/benchmarks.md lies between these two lines.
const BEGIN: &str = "<!-- figures:begin (written by `cargo xtask bench`; do not edit by hand) -->";
const END: &str = "<!-- figures:end -->";

/// One benchmark's estimates, in nanoseconds of the measured quantity.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    group: String,
    function: String,
    value: String,
    mean: f64,
    lower: f64,
    upper: f64,
    median: f64,
    std_dev: f64,
}

fn number(value: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = value;
    for key in path {
        cur = cur
            .get(key)
            .with_context(|| format!("no `{}`", path.join(".")))?;
    }
    cur.as_f64()
        .with_context(|| format!("`{}` is not a number", path.join(".")))
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Parses one criterion `new/` directory.
fn parse_figure(benchmark: &Value, estimates: &Value) -> Result<Figure> {
    Ok(Figure {
        group: text(benchmark, "group_id"),
        function: text(benchmark, "function_id"),
        value: text(benchmark, "value_str"),
        mean: number(estimates, &["mean", "point_estimate"])?,
        lower: number(estimates, &["mean", "confidence_interval", "lower_bound"])?,
        upper: number(estimates, &["mean", "confidence_interval", "upper_bound"])?,
        median: number(estimates, &["median", "point_estimate"])?,
        std_dev: number(estimates, &["std_dev", "point_estimate"])?,
    })
}

/// Finds every `new/` directory under `dir` whose estimates were written at or after `since`.
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Figure>) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|name| name == "new") {
            let estimates_path = path.join("estimates.json");
            let benchmark_path = path.join("benchmark.json");
            let fresh = fs::metadata(&estimates_path)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since);
            if !fresh || !benchmark_path.is_file() {
                continue;
            }
            let read = |p: &Path| -> Result<Value> {
                let text =
                    fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
            };
            let figure = parse_figure(&read(&benchmark_path)?, &read(&estimates_path)?)
                .with_context(|| format!("in {}", path.display()))?;
            out.push(figure);
        } else {
            collect(&path, since, out)?;
        }
    }
    Ok(())
}

/// Sorts by group, function, then parameter; a function or parameter that starts with a number
/// sorts numerically (64 < 256 < 1024, 0.1% < 1% < 10%).
fn sort(figures: &mut [Figure]) {
    let leading = |s: &str| {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().unwrap_or(u64::MAX)
    };
    figures.sort_by(|a, b| {
        let key = |f: &Figure| {
            (
                f.group.clone(),
                leading(&f.function),
                f.function.clone(),
                leading(&f.value),
                f.value.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

fn ms(ns: f64) -> String {
    format!("{:.3}", ns / 1e6)
}

/// The Markdown of the figures section (without the marker lines).
fn render(figures: &[Figure], context: &str) -> String {
    let mut out = String::new();
    out.push_str(context);
    out.push_str(
        "\n| benchmark | parameter | mean (ms) | 95% CI of the mean (ms) | median (ms) | std dev (ms) |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    for f in figures {
        let name = if f.function.is_empty() {
            f.group.clone()
        } else {
            format!("{}/{}", f.group, f.function)
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} – {} | {} | {} |",
            f.value,
            ms(f.mean),
            ms(f.lower),
            ms(f.upper),
            ms(f.median),
            ms(f.std_dev)
        );
    }
    out
}

/// Replaces the text between the markers in `doc`, or appends a marked section if there is none.
fn splice(doc: &str, section: &str) -> String {
    if let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END))
        && begin < end
    {
        let head = &doc[..begin + BEGIN.len()];
        let tail = &doc[end..];
        return format!("{head}\n{section}{tail}");
    }
    let mut out = doc.trim_end().to_owned();
    out.push_str(&format!("\n\n## Figures\n\n{BEGIN}\n{section}{END}\n"));
    out
}

fn one_line(cmd: &mut Command) -> String {
    probe_output(cmd).map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

fn run_context(fastcr: &Path) -> String {
    let root = workspace_root();
    let date = one_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let kernel = one_line(Command::new("uname").arg("-r"));
    let cpus = one_line(&mut Command::new("nproc"));
    let commit =
        one_line(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        );
    let dirty = probe_output(
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain"]),
    )
    .is_some_and(|s| !s.trim().is_empty());
    format!(
        "Produced by `cargo xtask bench` (which runs `FASTCR_BIN={} cargo bench -p benches`) on \
         {date}: kernel {kernel}, {cpus} CPUs, commit {commit}{}. Times are per operation; \
         criterion reports a mean over 10 samples.\n",
        fastcr.strip_prefix(&root).map_or_else(
            |_| fastcr.display().to_string(),
            |p| p.display().to_string()
        ),
        if dirty {
            " plus uncommitted changes"
        } else {
            ""
        },
    )
}

/// `cargo xtask bench`.
pub(crate) fn cmd() -> Result<()> {
    step("setup");
    setup::ensure()?;
    let fastcr = build::fastcr()?;

    step("bench: cargo bench -p benches");
    let since = SystemTime::now();
    run(cargo()
        .env("FASTCR_BIN", &fastcr)
        .args(["bench", "-p", "benches"]))?;

    step("bench: update docs/benchmarks.md");
    let mut figures = Vec::new();
    collect(&target_dir().join("criterion"), since, &mut figures)?;
    if figures.is_empty() {
        bail!(
            "no benchmark was measured (did the benches print `skipping: ...`? they need root); \
             docs/benchmarks.md is unchanged"
        );
    }
    sort(&mut figures);
    let doc_path: PathBuf = workspace_root().join("docs/benchmarks.md");
    let doc = fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let section = render(&figures, &run_context(&fastcr));
    fs::write(&doc_path, splice(&doc, &section))
        .with_context(|| format!("writing {}", doc_path.display()))?;
    print!("{section}");
    println!("wrote {} figures to {}", figures.len(), doc_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(group: &str, value: &str) -> Figure {
        Figure {
            group: group.to_owned(),
            function: String::new(),
            value: value.to_owned(),
            mean: 1_500_000.0,
            lower: 1_000_000.0,
            upper: 2_000_000.0,
            median: 1_400_000.0,
            std_dev: 100_000.0,
        }
    }

    #[test]
    fn parses_criterion_json() {
        let benchmark: Value = serde_json::from_str(
            r#"{"group_id":"frozen_time","function_id":null,"value_str":"64MiB","full_id":"frozen_time/64MiB"}"#,
        )
        .expect("valid json");
        let estimates: Value = serde_json::from_str(
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},
                "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5,"standard_error":0.1},
                "std_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.1,"upper_bound":0.3},"point_estimate":0.2,"standard_error":0.01}}"#,
        )
        .expect("valid json");
        let f = parse_figure(&benchmark, &estimates).expect("parses");
        assert_eq!(f.group, "frozen_time");
        assert_eq!(f.function, "");
        assert_eq!(f.value, "64MiB");
        assert!((f.mean - 2.0).abs() < f64::EPSILON);
        assert!((f.upper - 3.0).abs() < f64::EPSILON);
        assert!((f.median - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn sorts_sizes_numerically() {
        let mut figures = vec![
            figure("a", "1024MiB"),
            figure("a", "64MiB"),
            figure("a", "256MiB"),
        ];
        sort(&mut figures);
        let order: Vec<&str> = figures.iter().map(|f| f.value.as_str()).collect();
        assert_eq!(order, ["64MiB", "256MiB", "1024MiB"]);
    }

    #[test]
    fn sorts_sizes_in_functions_and_rates_numerically() {
        let fig = |function: &str, value: &str| Figure {
            function: function.to_owned(),
            ..figure("precopy_frozen", value)
        };
        let mut figures = vec![
            fig("4096MiB", "1%"),
            fig("1024MiB", "10%"),
            fig("256MiB", "1%"),
            fig("1024MiB", "0.1%"),
            fig("1024MiB", "1%"),
        ];
        sort(&mut figures);
        let order: Vec<String> = figures
            .iter()
            .map(|f| format!("{}/{}", f.function, f.value))
            .collect();
        assert_eq!(
            order,
            [
                "256MiB/1%",
                "1024MiB/0.1%",
                "1024MiB/1%",
                "1024MiB/10%",
                "4096MiB/1%"
            ]
        );
    }

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let doc = format!("# B\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n");
        let out = splice(&doc, "new table\n");
        assert!(out.contains("intro"));
        assert!(out.contains("after"));
        assert!(out.contains("new table"));
        assert!(!out.contains("old table"));
        assert_eq!(splice(&out, "new table\n"), out);
    }

    #[test]
    fn splice_appends_a_section_when_there_is_none() {
        let out = splice("# B\n", "table\n");
        assert!(out.contains(BEGIN) && out.contains("table\n") && out.contains(END));
    }

    #[test]
    fn renders_milliseconds() {
        let out = render(&[figure("frozen_time", "64MiB")], "ctx\n");
        assert!(out.contains("| frozen_time | 64MiB | 1.500 | 1.000 – 2.000 | 1.400 | 0.100 |"));
    }
}
