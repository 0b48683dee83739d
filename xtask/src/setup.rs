//! `cargo xtask setup`: installs what building and testing fastcr needs, and nothing that is
//! already there. When everything is present it only runs a few cheap probes.
//!
//! - Debian packages: a C toolchain for the demo and the vmtests workloads, LLVM 22 for
//!   bpf-linker, and the tools the tests use.
//! - `rust-src` and `clippy` on the nightly toolchain: cr-user's build script compiles cr-ebpf for
//!   `bpfel-unknown-none` with `-Z build-std=core`, and `xtask test` lints it there.
//! - `bpf-linker` linked against LLVM 22 (the LLVM of current nightly rustc), see DESIGN §4.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{self, probe, probe_output, run, step, which};

/// Debian packages, with the reason each is needed (printed when it gets installed).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("gcc", "compiles the demo and the vmtests workloads"),
    ("libc6-dev", "C headers for the workloads"),
    ("make", "build tool used by the workloads"),
    ("llvm-22-dev", "LLVM 22, linked by bpf-linker"),
    ("strace", "debugging failed dumps and restores"),
    ("iproute2", "network tooling used by tests"),
    (
        "python3",
        "TCP endpoints in the netns tests, and a real program the vmtests restore",
    ),
    (
        "redis-server",
        "a real program the vmtests dump and restore with its dataset",
    ),
    ("procps", "kill(1) and ps(1), used by xtask and tests"),
];

/// Nightly components, with the reason each is needed.
const NIGHTLY_COMPONENTS: &[(&str, &str)] = &[
    ("rust-src", "build-std=core for bpfel-unknown-none"),
    ("clippy", "lints cr-ebpf for bpfel-unknown-none"),
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What is missing on this machine.
#[derive(Debug, Default)]
struct Missing {
    apt: Vec<&'static str>,
    nightly_toolchain: bool,
    nightly_components: Vec<&'static str>,
    bpf_linker: bool,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.apt.is_empty()
            && !self.nightly_toolchain
            && self.nightly_components.is_empty()
            && !self.bpf_linker
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.apt.iter().map(|p| format!("apt:{p}")).collect();
        if self.nightly_toolchain {
            parts.push("nightly toolchain".to_owned());
        }
        parts.extend(
            self.nightly_components
                .iter()
                .map(|c| format!("nightly:{c}")),
        );
        if self.bpf_linker {
            parts.push("bpf-linker".to_owned());
        }
        parts.join(", ")
    }
}

fn dpkg_installed(package: &str) -> bool {
    probe_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn find_missing() -> Missing {
    let mut missing = Missing::default();
    for (package, _) in APT_PACKAGES {
        if !dpkg_installed(package) {
            missing.apt.push(package);
        }
    }
    match probe_output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ])) {
        None => {
            missing.nightly_toolchain = true;
            missing.nightly_components = NIGHTLY_COMPONENTS.iter().map(|(c, _)| *c).collect();
        }
        Some(installed) => {
            for (component, _) in NIGHTLY_COMPONENTS {
                // Installed components are listed with the host triple appended, except rust-src.
                let present = installed
                    .lines()
                    .any(|line| line == *component || line.starts_with(&format!("{component}-")));
                if !present {
                    missing.nightly_components.push(component);
                }
            }
        }
    }
    missing.bpf_linker = which("bpf-linker").is_none();
    missing
}

/// Installs whatever is missing. Prints one line and returns quickly when nothing is.
pub(crate) fn ensure() -> Result<()> {
    let missing = find_missing();
    if missing.is_empty() {
        println!("setup: all build and test prerequisites are installed");
        return Ok(());
    }
    step(&format!("setup: installing {}", missing.describe()));
    if util::euid()? != 0 {
        bail!(
            "setup: must run as root to install missing prerequisites ({})",
            missing.describe()
        );
    }
    if !missing.apt.is_empty() {
        install_apt(&missing.apt)?;
    }
    if missing.nightly_toolchain {
        println!("setup: installing the nightly toolchain (minimal profile)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .map_err(|e| anyhow::anyhow!("setup: rustup could not install nightly ({e})"))?;
    }
    for component in &missing.nightly_components {
        let reason = NIGHTLY_COMPONENTS
            .iter()
            .find(|(c, _)| c == component)
            .map_or("", |(_, r)| *r);
        println!("setup: installing nightly component {component} ({reason})");
        run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))
            .map_err(|e| {
                anyhow::anyhow!("setup: rustup could not add {component} (is static.rust-lang.org reachable?): {e}")
            })?;
    }
    if missing.bpf_linker {
        println!("setup: installing bpf-linker built against LLVM 22 (takes about 2 minutes)");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo).env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))
        .map_err(|e| {
            anyhow::anyhow!("setup: cargo install bpf-linker failed (is crates.io reachable?): {e}")
        })?;
    }
    let left = find_missing();
    if !left.is_empty() {
        bail!("setup: still missing after installing: {}", left.describe());
    }
    println!("setup: done");
    Ok(())
}

fn install_apt(packages: &[&'static str]) -> Result<()> {
    for package in packages {
        let reason = APT_PACKAGES
            .iter()
            .find(|(p, _)| p == package)
            .map_or("", |(_, r)| *r);
        println!("setup: installing {package} ({reason})");
    }
    // `--error-on=any` makes a mirror that cannot be reached an error instead of a warning.
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["update", "-q", "--error-on=any"]))
    .map_err(|e| {
        anyhow::anyhow!("setup: apt-get update failed (are the Debian mirrors reachable?): {e}")
    })?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
    .map_err(|e| anyhow::anyhow!("setup: apt-get install failed: {e}"))?;
    Ok(())
}

/// `cargo xtask setup`: like [`ensure`], and also reports where the tools are.
pub(crate) fn cmd() -> Result<()> {
    step("setup: checking prerequisites");
    ensure()?;
    if let Some(path) = which("bpf-linker") {
        let version = probe_output(Command::new(&path).arg("--version")).unwrap_or_default();
        println!("bpf-linker: {} {}", path.display(), version.trim());
    }
    if !probe(Command::new("gcc").arg("--version")) {
        bail!("setup: gcc is installed but does not run");
    }
    Ok(())
}
