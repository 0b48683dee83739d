//! The `fastcr` command line. Thin: parses flags, calls the library, prints the error chain once
//! on one line and exits non-zero on failure.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cr_user::dump::{DumpOptions, dump};
use cr_user::migrate::dest::{ReceiveOptions, receive};
use cr_user::migrate::source::{MigrateOptions, migrate};
use cr_user::predump::{PreDumpOptions, pre_dump};
use cr_user::restore::{RestoreOptions, finish_lazy, restore};
use cr_user::sys::process;
use cr_user::track::precopy::Rounds;

/// Checkpoint/restore of Linux processes.
#[derive(Parser)]
#[command(name = "fastcr", version, about)]
struct Cli {
    /// Log verbosity (repeat for more): warn, info, debug, trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report the kernel features fastcr uses; exit 1 if one required is missing.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint a process to an image directory (it is killed afterwards unless
    /// --leave-running).
    Dump {
        /// Pid of the process to checkpoint.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the process running after the dump.
        #[arg(short = 'R', long)]
        leave_running: bool,
        /// Save established TCP connections (TCP_REPAIR): the peer keeps its connection across
        /// dump and restore on the same host.
        #[arg(long)]
        tcp_established: bool,
        /// Allow standard streams that are terminals or pipes; restore hands them its own.
        #[arg(long)]
        shell_job: bool,
        /// Copy memory while the process runs (N full rounds, or `auto`: until the dirty set
        /// stops shrinking; then short rounds of the pages BPF saw written), then freeze only to
        /// copy what changed since.
        #[arg(long, value_name = "N|auto", num_args = 0..=1, default_missing_value = "auto", value_parser = parse_rounds)]
        pre_copy: Option<Rounds>,
        /// Parent image made by `fastcr pre-dump`: pages unchanged since are referenced, not
        /// copied (restore reads them through the chain).
        #[arg(long, value_name = "DIR")]
        prev_images_dir: Option<PathBuf>,
        /// With --leave-running: keep tracking writes for a further incremental dump.
        #[arg(long)]
        track_mem: bool,
        /// Do not use BPF (task set and layout from /proc only).
        #[arg(long)]
        no_bpf: bool,
        /// Do not use userfaultfd write-protect: --pre-copy then copies with the process stopped.
        #[arg(long)]
        no_wp_async: bool,
        /// With --pre-copy: the final scan in the freeze walks all memory, even when nothing
        /// but the process's own hinted faults can have written it since the last round.
        #[arg(long)]
        full_final_scan: bool,
        /// With --pre-copy: when the final scan walked only the hinted pages, walk all memory
        /// too and fail the dump if it finds a written page the hints missed (a check of the
        /// guards; lengthens the frozen window).
        #[arg(long)]
        verify_final_scan: bool,
        /// Print a stats table.
        #[arg(long)]
        stats: bool,
        /// Print stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a running process's memory into an image that a later `dump --prev-images-dir`
    /// builds on (the process is not stopped, and keeps a tracking fd until that dump).
    PreDump {
        /// Pid of the process.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// The previous pre-dump to build on.
        #[arg(long, value_name = "DIR")]
        prev_images_dir: Option<PathBuf>,
        /// Print a stats table.
        #[arg(long)]
        stats: bool,
        /// Print stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a process from an image directory. Without -d, waits for it and exits with its
    /// status.
    Restore {
        /// Image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Return as soon as the process runs (it is reparented to the nearest subreaper).
        #[arg(short = 'd', long = "restore-detached", alias = "detach")]
        detach: bool,
        /// Hand the image's terminal/pipe standard streams this process's own.
        #[arg(long)]
        shell_job: bool,
        /// Resume the process before its anonymous memory is in place; fastcr serves its page
        /// faults and fills the rest in the background (with -d it returns once all is in).
        #[arg(long)]
        lazy: bool,
        /// `new`: restore into a new pid namespace (same pids inside it), e.g. while the
        /// original still runs.
        #[arg(long, value_name = "new", value_parser = ["new"])]
        pidns: Option<String>,
        /// Print a stats table.
        #[arg(long)]
        stats: bool,
        /// Print stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a running process to a `fastcr receive` on another host (or namespace).
    Migrate {
        /// Pid of the process.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Destination `HOST:PORT` (where `fastcr receive` listens).
        #[arg(long)]
        to: String,
        /// Resume on the destination at once and send the memory afterwards (post-copy).
        #[arg(long)]
        lazy: bool,
        /// Copy memory while the process runs before the final stop-and-copy (not with --lazy).
        #[arg(long, value_name = "N|auto", num_args = 0..=1, default_missing_value = "auto", value_parser = parse_rounds)]
        pre_copy: Option<Rounds>,
        /// File holding the token shared with the destination (at least 16 bytes).
        #[arg(long)]
        token_file: PathBuf,
        /// Do not use BPF.
        #[arg(long)]
        no_bpf: bool,
        /// With --lazy: splice the background pages out of the original (no copy on the
        /// source, through a helper thread made in the frozen original) instead of copying
        /// them. Slower on the project's machines (see docs/benchmarks.md).
        #[arg(long, requires = "lazy")]
        splice: bool,
        /// Print a stats table.
        #[arg(long)]
        stats: bool,
        /// Print stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for one migration (`fastcr migrate`) and run the process here.
    Receive {
        /// `HOST:PORT` to listen on.
        #[arg(long)]
        listen: String,
        /// File holding the token shared with the source (at least 16 bytes).
        #[arg(long)]
        token_file: PathBuf,
        /// `new`: restore into a new pid namespace (needed when the source runs on this host).
        #[arg(long, value_name = "new", value_parser = ["new"])]
        pidns: Option<String>,
        /// Print a stats table.
        #[arg(long)]
        stats: bool,
        /// Print stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decode an image directory.
    Show {
        /// Image directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_rounds(s: &str) -> Result<Rounds, String> {
    if s == "auto" {
        return Ok(Rounds::Auto);
    }
    match s.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(Rounds::Fixed(n)),
        _ => Err(format!(
            "expected a number of rounds (1 or more) or `auto`, got {s:?}"
        )),
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FASTCR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn print_stats<T: serde::Serialize>(
    table: impl FnOnce() -> String,
    value: &T,
    stats: bool,
    json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(value)?)?;
    } else if stats {
        write!(out, "{}", table())?;
    }
    out.flush()?;
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { json } => {
            let ok = cr_user::kerndat::run_check(json, &mut std::io::stdout())?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Dump {
            pid,
            dir,
            leave_running,
            tcp_established,
            shell_job,
            pre_copy,
            no_bpf,
            no_wp_async,
            full_final_scan,
            verify_final_scan,
            prev_images_dir,
            track_mem,
            stats,
            json,
        } => {
            let opts = DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                shell_job,
                pre_copy,
                no_bpf,
                no_wp_async,
                full_final_scan,
                verify_final_scan,
                prev_images_dir,
                track_mem,
                lazy_pages: false,
                tcp_established,
            };
            let s = dump(&opts)
                .with_context(|| format!("dump of process {pid} into {} failed", dir.display()))?;
            print_stats(|| s.table(), &s, stats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PreDump {
            pid,
            dir,
            prev_images_dir,
            stats,
            json,
        } => {
            let opts = PreDumpOptions {
                pid,
                dir: dir.clone(),
                prev_images_dir,
            };
            let s = pre_dump(&opts).with_context(|| {
                format!("pre-dump of process {pid} into {} failed", dir.display())
            })?;
            print_stats(|| s.table(), &s, stats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            dir,
            detach,
            shell_job,
            lazy,
            pidns,
            stats,
            json,
        } => {
            let opts = RestoreOptions {
                dir: dir.clone(),
                shell_job,
                lazy,
                pidns_new: pidns.is_some(),
            };
            let failed = || format!("restore from {} failed", dir.display());
            let (mut r, img) = restore(&opts).with_context(failed)?;
            let mut feed = cr_user::lazy::local::ImageFeed::new(
                img.procs.iter().map(|p| (p.pid, &p.chain)).collect(),
            );
            let lazy_stats = finish_lazy(&mut r, &mut feed).with_context(failed)?;
            let both = serde_json::json!({ "restore": &r.stats, "lazy": &lazy_stats });
            let table = || {
                let mut t = r.stats.table();
                if let Some(l) = &lazy_stats {
                    t.push_str(&l.table());
                }
                t
            };
            print_stats(table, &both, stats, json)?;
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            let code =
                match process::wait_exit(r.pid_here).context("waiting for the restored process")? {
                    process::ExitStatus::Exited(c) => c,
                    process::ExitStatus::Killed(sig) => 128 + sig,
                };
            if let Some(ns) = &r.pidns {
                // Init ends once the namespace is empty.
                let _ = process::wait_exit(ns.init_pid());
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Migrate {
            pid,
            to,
            lazy,
            pre_copy,
            token_file,
            no_bpf,
            splice,
            stats,
            json,
        } => {
            let opts = MigrateOptions {
                pid,
                to: to.clone(),
                lazy,
                pre_copy,
                token_file,
                no_bpf,
                splice,
            };
            let s = migrate(&opts)
                .with_context(|| format!("migration of process {pid} to {to} failed"))?;
            print_stats(|| s.table(), &s, stats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Receive {
            listen,
            token_file,
            pidns,
            stats,
            json,
        } => {
            let opts = ReceiveOptions {
                listen: listen.clone(),
                token_file,
                pidns_new: pidns.is_some(),
            };
            let mut announce = |addr: &str| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening on {addr}");
                let _ = out.flush();
            };
            let s = receive(&opts, &mut announce)
                .with_context(|| format!("receiving a migration on {listen} failed"))?;
            print_stats(|| s.table(), &s, stats, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { dir, json } => {
            let mut out = std::io::stdout().lock();
            if json {
                let v = cr_user::show::to_json(&dir)
                    .with_context(|| format!("cannot read image {}", dir.display()))?;
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let s = cr_user::show::summary(&dir)
                    .with_context(|| format!("cannot read image {}", dir.display()))?;
                write!(out, "{s}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let line = format!("{err:#}").replace('\n', " ");
            eprintln!("Error: {line}");
            ExitCode::from(1)
        }
    }
}
