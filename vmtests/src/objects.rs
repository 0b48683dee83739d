//! Helpers for the tests of objects fastcr recreates rather than reopens (memfds, shared
//! anonymous memory, deleted files): their inode numbers change across a restore, everything
//! else must not.

use std::fs;
use std::path::Path;

use crate::VisibleState;

/// `state` with the inode number of every mapping of a recreated object (a name ending in
/// ` (deleted)`) replaced by `#`: the only field such a mapping may change across a restore.
pub fn without_object_inodes(mut state: VisibleState) -> VisibleState {
    for line in &mut state.maps {
        if !line.ends_with(" (deleted)") {
            continue;
        }
        let mut words: Vec<&str> = line.splitn(6, ' ').collect();
        if words.len() == 6 {
            words[4] = "#";
            *line = words.join(" ");
        }
    }
    state
}

/// The visible state of `pid` as [`without_object_inodes`] leaves it: what must not change across
/// a restore of a process that maps or holds recreated objects.
pub fn capture_without_object_inodes(pid: i32) -> VisibleState {
    without_object_inodes(VisibleState::capture(pid))
}

/// The pid a workload wrote into `STATEDIR/name`.
pub fn pid_file(statedir: &Path, name: &str) -> i32 {
    let path = statedir.join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path:?} holds {text:?}: {e}"))
}

/// SIGKILLs `pid`, a process the test started that has become its child (reparented to this
/// subreaper once its parent died), and reaps it.
pub fn kill_orphan(pid: i32) {
    let stat = crate::ProcStat::read(pid).unwrap_or_else(|| panic!("pid {pid} is gone"));
    assert_eq!(
        stat.ppid,
        std::process::id() as i32,
        "pid {pid} is not the test's child"
    );
    // The pid is our unreaped child (checked above), so it cannot have been recycled.
    crate::send_signal(pid, libc::SIGKILL);
    crate::reap_orphan(pid);
}

/// SIGTERMs `pid` (the test's child), reaps it and returns its raw wait status.
pub fn terminate_orphan(pid: i32) -> i32 {
    // The caller names a process it found descending from the test.
    crate::send_signal(pid, libc::SIGTERM);
    crate::reap_orphan(pid)
}

/// After `restore --pidns new -d`: SIGTERMs the restored root `outer` (the test's child once
/// fastcr exited), reaps it, then reaps the namespace's init, which exits once the namespace is
/// empty. Returns the root's raw wait status.
pub fn terminate_in_pidns(outer: i32) -> i32 {
    let init = crate::restored::pidns_init_of(outer)
        .unwrap_or_else(|| panic!("no init (pid 1) in the namespace of {outer}"));
    let status = terminate_orphan(outer);
    crate::reap_orphan(init);
    status
}
