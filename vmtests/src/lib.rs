//! Harness for the privileged end-to-end tests (root, BPF, userfaultfd).
//!
//! Owns: building the C workloads (`vmtests/workloads/*.c`, the ZDTM-style contract described in
//! `workloads/wl_common.h`), spawning them, driving the `fastcr` binary, and comparing the
//! /proc-visible state of a process before a checkpoint and after its restore.
//!
//! Must not: touch any process the test did not start (everything is killed by PID, and only after
//! checking it is still our child), or skip silently: [`require_root`] panics.
//!
//! The test process makes itself a child subreaper, so a process restored with `restore -d`
//! (whose parent, `fastcr`, exits) is reparented to the test and can be waited for like the
//! original workload.
//!
//! Modules: `host` (workspace, root), `scratch` ([`Scratch`] directories), `children` (spawning,
//! reaping, strays), `procfs` ([`ProcStat`] and friends), `compile` ([`build_workloads`]),
//! `workload` ([`Workload`]), `cli` (running `fastcr`), `state` ([`VisibleState`]); the public
//! ones hold the helpers of a family of tests: [`roundtrip`] (dump, restore, verify one
//! workload), [`images`] (image directories to damage), [`background`] (a `fastcr` the test
//! watches while it runs), [`restored`] (processes reached by PID), [`objects`], [`migration`],
//! [`netns`].

use std::time::Duration;

pub mod background;
mod children;
mod cli;
mod compile;
mod host;
pub mod images;
pub mod migration;
pub mod netns;
pub mod objects;
mod procfs;
pub mod restored;
pub mod roundtrip;
mod scratch;
mod state;
mod workload;

pub use children::{
    KillOnDrop, assert_no_stray_children, become_subreaper, close_inherited_fds, reap_orphan,
    spawn_registered, stray_children,
};
pub use cli::{assert_error_names, assert_one_line_error, assert_success, fastcr, fastcr_bin, run};
pub use compile::{WORKLOADS, build_workloads};
pub use host::{euid, require_root, workspace_dir};
pub use procfs::{ProcStat, numeric_entries, pid_exists, status_field, unused_pid};
pub use scratch::{SCRATCH_ROOT, Scratch};
pub use state::{FdState, VisibleState};
pub use workload::{Workload, read_published};

pub(crate) use children::{describe_status, our_pid, send_signal};

/// Hang guard for a process to exit once signalled, not a timing assertion.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the harness polls while it waits.
const POLL: Duration = Duration::from_millis(10);
