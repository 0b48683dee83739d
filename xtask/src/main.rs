//! `cargo xtask`: the project's automation, one module per command.
//!
//! - `setup`: install what building and testing need (apt packages, nightly `rust-src`,
//!   `bpf-linker`), and nothing that is already there.
//! - `build`: the release `fastcr` binary.
//! - `run`: the demo: check, then live-migrate a small counter (lazily) into another network
//!   namespace.
//! - `test`: everything CI runs (fmt, clippy, tests, vmtests, benches compile).
//! - `vmtest`: only the privileged end-to-end tests.
//! - `bench`: run the benches and refresh `docs/benchmarks.md`.

mod bench;
mod build;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "fastcr's build, test and demo automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing to build and test fastcr (needs root when something is missing).
    Setup,
    /// Set up if needed, then build the release fastcr binary and print its path.
    Build,
    /// Set up, build, run `fastcr check`, then live-migrate a demo counter into another netns.
    Run,
    /// Run everything CI runs: fmt, clippy, unit/integration tests, vmtests, bench build.
    Test(test::Options),
    /// Build fastcr and run only the privileged vmtests (root).
    Vmtest,
    /// Run the criterion benches (root) and rewrite the figures in docs/benchmarks.md.
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::cmd(),
        Cmd::Build => build::cmd(),
        Cmd::Run => run::cmd(),
        Cmd::Test(options) => test::cmd(&options),
        Cmd::Vmtest => test::vmtest_cmd(),
        Cmd::Bench => bench::cmd(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
