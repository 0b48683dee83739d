//! Letting the original run again after a failed migration. It must be called only when the
//! destination cannot be running its copy: before `Go` reached it, or after its link timeout
//! ended the copy (the ownership rules are in `migrate`).

use crate::migrate::{MigrateError, io_err};

/// Thaws an original that also has a SIGSTOP queued: detach, then continue it. A process that
/// was already stopped by job control before the migration is left stopped, as it was.
pub(super) fn thaw_stopped(
    frozen: crate::freeze::FrozenTree,
    _pid: i32,
) -> Result<(), MigrateError> {
    let pids: Vec<i32> = frozen
        .procs()
        .iter()
        .filter(|p| p.main().group_stop().is_none())
        .map(|p| p.main().pid())
        .collect();
    frozen.thaw()?;
    for pid in pids {
        crate::sys::process::kill(pid, libc::SIGCONT)
            .map_err(|e| io_err(format!("SIGCONT of process {pid}"))(e.io_error))?;
    }
    Ok(())
}
