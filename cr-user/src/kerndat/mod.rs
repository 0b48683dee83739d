//! `fastcr check`: which kernel features fastcr needs are really there.
//!
//! Every entry is probed by using the feature once (CRIU's kerndat does the same), never read
//! from `/boot/config-*` or `/proc/config.gz`: a config file says what was compiled, not what
//! this process is allowed to use (fentry is compiled in on the project's kernels, and refused).
//! The raw calls live in `sys::probe`; this module interprets them, and renders the report as a
//! table or JSON. Probes clean up every child, descriptor and cgroup they create.

use std::{fmt::Write as _, io};

use crate::sys::SyscallError;

use serde::Serialize;

mod probes;

pub use probes::probe;

/// What a feature is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// `fastcr dump`.
    Dump,
    /// `fastcr restore`.
    Restore,
    /// `restore --lazy` and post-copy migration.
    Lazy,
    /// `pre-dump` and pre-copy migration (dirty tracking).
    PreCopy,
}

impl Need {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dump => "dump",
            Self::Restore => "restore",
            Self::Lazy => "lazy",
            Self::PreCopy => "pre-copy",
        }
    }
}

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
pub enum Status {
    /// The feature works.
    Ok,
    /// The kernel does not have it (unknown syscall/ioctl, feature bit absent).
    Missing(String),
    /// The probe failed for another reason (permission, resource); the feature may exist.
    Error(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing(_) => "missing",
            Self::Error(_) => "error",
        }
    }

    /// Classifies a failed call: "not there" errnos are `Missing`, everything else `Error`.
    fn from_syscall(err: &SyscallError) -> Self {
        let text = format!("{}: {}", err.call, err.io_error);
        match err.errno() {
            Some(libc::ENOSYS | libc::ENOTTY | libc::EOPNOTSUPP | libc::ENOENT) => {
                Self::Missing(text)
            }
            _ => Self::Error(text),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Stable identifier, e.g. `uffd-wp-async`.
    pub name: &'static str,
    /// What the probe found.
    #[serde(flatten)]
    pub status: Status,
    /// What was measured when it works (sizes, timings), for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Commands that cannot work without it; empty for informational rows.
    pub required_for: Vec<Need>,
}

impl Feature {
    fn new(
        name: &'static str,
        required_for: &[Need],
        status: Status,
        detail: Option<String>,
    ) -> Self {
        Self {
            name,
            status,
            detail,
            required_for: required_for.to_vec(),
        }
    }

    /// Does the feature work?
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Kerndat {
    /// `uname -r`.
    pub kernel: String,
    /// One entry per probed feature, in a stable order.
    pub features: Vec<Feature>,
}

impl Kerndat {
    /// Features that are not ok and are required for `dump` or `restore` (the ones that make
    /// `fastcr check` fail).
    #[must_use]
    pub fn missing_required(&self) -> Vec<&Feature> {
        self.missing_for(&[Need::Dump, Need::Restore])
    }

    /// Features that are not ok and are required for any of `needs`.
    #[must_use]
    pub fn missing_for(&self, needs: &[Need]) -> Vec<&Feature> {
        self.features
            .iter()
            .filter(|f| !f.is_ok() && f.required_for.iter().any(|n| needs.contains(n)))
            .collect()
    }

    /// The entry called `name`, if probed.
    #[must_use]
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// Human-readable table, one line per feature, then a verdict line per command.
    #[must_use]
    pub fn render_table(&self) -> String {
        let name_w = self
            .features
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let need_cells: Vec<String> = self
            .features
            .iter()
            .map(|f| {
                if f.required_for.is_empty() {
                    "-".to_owned()
                } else {
                    f.required_for
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect();
        let need_w = need_cells
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(12);

        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "kernel {}", self.kernel);
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<7}  {:<need_w$}  detail",
            "feature", "status", "required-for"
        );
        for (f, needs) in self.features.iter().zip(&need_cells) {
            let detail = match (&f.status, &f.detail) {
                (Status::Missing(r) | Status::Error(r), _) => r.as_str(),
                (Status::Ok, Some(d)) => d.as_str(),
                (Status::Ok, None) => "",
            };
            let line = format!(
                "{:<name_w$}  {:<7}  {:<need_w$}  {detail}",
                f.name,
                f.status.label(),
                needs
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for need in [Need::Dump, Need::Restore, Need::Lazy, Need::PreCopy] {
            let missing: Vec<&str> = self.missing_for(&[need]).iter().map(|f| f.name).collect();
            let verdict = if missing.is_empty() {
                "supported".to_owned()
            } else {
                format!("NOT supported (needs {})", missing.join(", "))
            };
            let _ = writeln!(out, "{:<9} {verdict}", format!("{}:", need.as_str()));
        }
        out
    }

    /// The report as JSON: `{kernel, features: [{name, status, reason?, detail?,
    /// required_for}], all_required_ok}`.
    ///
    /// # Errors
    /// Serialization errors (none expected for this data).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            kerndat: &'a Kerndat,
            all_required_ok: bool,
        }
        serde_json::to_string_pretty(&Report {
            kerndat: self,
            all_required_ok: self.missing_required().is_empty(),
        })
    }
}

/// Errors of [`run_check`].
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Writing the report failed.
    #[error("cannot write the check report")]
    Write {
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// Encoding the report as JSON failed.
    #[error("cannot encode the check report as JSON")]
    Json {
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Probes the kernel, writes the report (table, or JSON if `json`) to `out`, and returns whether
/// everything required for dump and restore works (the CLI exits 1 when it does not).
///
/// # Errors
/// Only failures to encode or write the report; failed probes are part of the report.
pub fn run_check(json: bool, out: &mut dyn io::Write) -> Result<bool, CheckError> {
    let kerndat = probe();
    let text = if json {
        let mut s = kerndat
            .to_json()
            .map_err(|source| CheckError::Json { source })?;
        s.push('\n');
        s
    } else {
        kerndat.render_table()
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| CheckError::Write { source })?;
    Ok(kerndat.missing_required().is_empty())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::probes::find_cgroup2_mount;
    use super::*;

    fn sample() -> Kerndat {
        Kerndat {
            kernel: "6.18.0-test".to_owned(),
            features: vec![
                Feature::new(
                    "ptrace",
                    &[Need::Dump, Need::Restore],
                    Status::Ok,
                    Some("xstate 2432 B".to_owned()),
                ),
                Feature::new(
                    "uffd-wp-async",
                    &[Need::PreCopy],
                    Status::Missing("UFFDIO_API lacks WP_ASYNC".to_owned()),
                    None,
                ),
                Feature::new(
                    "soft-dirty",
                    &[],
                    Status::Missing("absent".to_owned()),
                    None,
                ),
            ],
        }
    }

    #[test]
    fn missing_required_ignores_optional_and_other_modes() {
        let k = sample();
        assert!(k.missing_required().is_empty());
        let pre: Vec<_> = k
            .missing_for(&[Need::PreCopy])
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(pre, ["uffd-wp-async"]);

        let mut broken = sample();
        broken.features[0].status = Status::Error("ptrace(PTRACE_SEIZE): EPERM".to_owned());
        let names: Vec<_> = broken.missing_required().iter().map(|f| f.name).collect();
        assert_eq!(names, ["ptrace"]);
    }

    #[test]
    fn table_has_a_row_per_feature_and_verdicts() {
        let table = sample().render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "kernel 6.18.0-test");
        assert!(lines[1].starts_with("feature "));
        assert!(
            lines[2].starts_with("ptrace ")
                && lines[2].contains(" ok ")
                && lines[2].contains("dump,restore")
        );
        assert!(lines[3].contains("missing") && lines[3].ends_with("UFFDIO_API lacks WP_ASYNC"));
        assert!(lines[4].starts_with("soft-dirty") && lines[4].contains(" - "));
        assert!(table.contains("dump:     supported"));
        assert!(table.contains("pre-copy: NOT supported (needs uffd-wp-async)"));
        // Columns line up: every status starts at the same offset.
        let col = lines[1].find("status").expect("header");
        for l in &lines[2..5] {
            assert!(matches!(&l[col..col + 2], "ok" | "mi" | "er"), "{l}");
        }
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&sample().to_json().expect("json")).expect("parse");
        assert_eq!(v["kernel"], "6.18.0-test");
        assert_eq!(v["all_required_ok"], true);
        let f = &v["features"];
        assert_eq!(f[0]["name"], "ptrace");
        assert_eq!(f[0]["status"], "ok");
        assert_eq!(f[0]["detail"], "xstate 2432 B");
        assert_eq!(f[0]["required_for"], serde_json::json!(["dump", "restore"]));
        assert!(f[0].get("reason").is_none());
        assert_eq!(f[1]["status"], "missing");
        assert_eq!(f[1]["reason"], "UFFDIO_API lacks WP_ASYNC");
        assert_eq!(f[1]["required_for"], serde_json::json!(["pre-copy"]));
        assert!(f[1].get("detail").is_none());
    }

    #[test]
    fn finds_cgroup2_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            find_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn errno_classification() {
        let e = SyscallError::from_errno("ioctl(PAGEMAP_SCAN)", libc::ENOTTY);
        assert!(
            matches!(Status::from_syscall(&e), Status::Missing(t) if t.starts_with("ioctl(PAGEMAP_SCAN): "))
        );
        let e = SyscallError::from_errno("ptrace(PTRACE_SEIZE)", libc::EPERM);
        assert!(matches!(Status::from_syscall(&e), Status::Error(_)));
    }
}
