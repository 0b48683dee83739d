//! Bad input: every case must end in one `Error: ...` line on stderr and a non-zero exit, and
//! harm nothing. After a failed dump the workload still runs, unstopped and untraced, and its own
//! verification passes; after a failed restore no process holds the dumped PID (or the original
//! still does, untouched) and fastcr left no process behind.

use std::fs;
use std::os::unix::fs::chown;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmtests::images::copy_images;
use vmtests::roundtrip::{dump, restore};
use vmtests::{
    KillOnDrop, ProcStat, Scratch, Workload, assert_no_stray_children, assert_one_line_error,
    fastcr, fastcr_bin, pid_exists, require_root, run, spawn_registered, status_field, unused_pid,
};

/// A small workload with files, fds and a few mappings: its images have every metadata kind the
/// current scope produces.
const WORKLOAD: &str = "wl_files";

/// After a failed dump: the workload is intact and passes its own verification.
fn assert_dump_harmless(wl: Workload, context: &str) {
    wl.assert_running_untraced();
    assert_no_stray_children(context);
    wl.terminate_and_verify();
}

#[test]
fn dump_no_such_pid() {
    require_root();
    let images = Scratch::new("nopid-img");
    let pid = unused_pid().to_string();
    let out = fastcr(&["dump", "-t", &pid, "-D", images.as_str()]);
    assert_one_line_error(&out, "dump of a PID nobody uses");
    assert_no_stray_children("dump of a PID nobody uses");
}

#[test]
fn dump_pid_not_permitted() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &[]);
    let images = Scratch::new("eperm-img");
    // The image dir is writable by the unprivileged user, so only the missing permission to
    // trace a root process can fail the dump.
    chown(images.path(), Some(65534), Some(65534)).expect("chown the image dir");
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(fastcr_bin())
        .args(["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]));
    assert_one_line_error(&out, "dump of a root process by uid 65534");
    assert_dump_harmless(wl, "dump of a root process by uid 65534");
}

#[test]
fn dump_kernel_thread() {
    require_root();
    // kthreadd: only looked at. --leave-running so that even a wrongly accepted dump would not
    // try to kill it.
    let before = ProcStat::read(2).expect("kthreadd (pid 2) exists");
    assert_eq!(before.comm, "kthreadd", "pid 2 is not kthreadd");
    let images = Scratch::new("kthread-img");
    let out = fastcr(&["dump", "-t", "2", "-D", images.as_str(), "--leave-running"]);
    assert_one_line_error(&out, "dump of kthreadd");
    let after = ProcStat::read(2).expect("kthreadd still exists");
    assert_eq!(
        after.starttime, before.starttime,
        "pid 2 is another process"
    );
    assert!(
        !matches!(after.state, 't' | 'T'),
        "kthreadd left in state {}",
        after.state
    );
    assert_eq!(status_field(2, "TracerPid").as_deref(), Some("0"));
    assert_no_stray_children("dump of kthreadd");
}

#[test]
fn dump_pid_already_traced() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &[]);
    let mut strace = KillOnDrop(spawn_registered(
        Command::new("strace")
            .args(["-qq", "-e", "trace=none", "-o", "/dev/null", "-p"])
            .arg(wl.pid_arg())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    ));
    let strace_pid = strace.pid().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_field(wl.pid(), "TracerPid").as_deref() != Some(strace_pid.as_str()) {
        assert!(
            Instant::now() < deadline,
            "strace never attached to {}",
            wl.pid()
        );
        sleep(Duration::from_millis(10));
    }
    let images = Scratch::new("traced-img");
    let out = fastcr(&["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]);
    assert_one_line_error(&out, "dump of a process traced by strace");
    assert_eq!(
        status_field(wl.pid(), "TracerPid").as_deref(),
        Some(strace_pid.as_str()),
        "the failed dump changed who traces the workload"
    );
    // strace detaches on SIGINT; then the workload must run freely again.
    // SAFETY: strace is our unreaped child.
    unsafe { libc::kill(strace.pid(), libc::SIGINT) };
    let status = strace.0.wait().expect("wait for strace");
    assert!(
        status.success() || status.signal() == Some(libc::SIGINT),
        "strace {status}"
    );
    assert_dump_harmless(wl, "dump of a process traced by strace");
}

#[test]
fn dump_into_impossible_dir() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &[]);
    let out = fastcr(&[
        "dump",
        "-t",
        &wl.pid_arg(),
        "-D",
        "/proc/fastcr-vmtests-no-such-dir/images",
    ]);
    assert_one_line_error(&out, "dump into a directory under /proc");
    assert_dump_harmless(wl, "dump into a directory under /proc");
}

#[test]
fn dump_into_unwritable_dir() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &[]);
    // A regular file where the image directory should be.
    let scratch = Scratch::new("notadir");
    let file = scratch.join("file");
    fs::write(&file, b"not a directory").expect("create the file");
    let target = file.join("images");
    let out = fastcr(&[
        "dump",
        "-t",
        &wl.pid_arg(),
        "-D",
        target.to_str().expect("utf-8"),
    ]);
    assert_one_line_error(&out, "dump into a path below a regular file");
    assert_dump_harmless(wl, "dump into a path below a regular file");
}

#[test]
fn restore_missing_dir() {
    require_root();
    let scratch = Scratch::new("missing");
    let missing = scratch.join("no-such-images");
    let out = fastcr(&["restore", "-D", missing.to_str().expect("utf-8"), "-d"]);
    assert_one_line_error(&out, "restore from a missing directory");
    assert_no_stray_children("restore from a missing directory");
}

#[test]
fn show_missing_dir() {
    require_root();
    let scratch = Scratch::new("missing-show");
    let missing = scratch.join("no-such-images");
    let out = fastcr(&["show", missing.to_str().expect("utf-8")]);
    assert_one_line_error(&out, "show of a missing directory");
}

/// A dumped-and-killed workload and its image dir.
struct Dumped {
    wl: Workload,
    images: Scratch,
}

fn dumped_workload() -> Dumped {
    let mut wl = Workload::spawn(WORKLOAD, &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("good-img");
    dump(&wl, &images, &[]);
    wl.reap();
    Dumped { wl, images }
}

impl Dumped {
    /// The `*.img` files of the image dir, sorted.
    fn image_files(&self, metadata_only: bool) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.images.path())
            .expect("read the image dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".img") && !(metadata_only && n.starts_with("pages-")))
            .collect();
        names.sort();
        assert!(!names.is_empty(), "the image dir has no .img files");
        names
    }

    /// Copies the good images, lets `corrupt` damage `name` in the copy, and checks that
    /// `restore` refuses the copy cleanly and `show` does not panic on it.
    fn expect_refused(&self, name: &str, what: &str, corrupt: impl FnOnce(&Path)) {
        let copy = copy_images(&self.images);
        corrupt(&copy.join(name));
        let context = format!("restore with {name} {what}");
        let out = fastcr(&["restore", "-D", copy.as_str(), "-d"]);
        assert_one_line_error(&out, &context);
        assert!(
            !pid_exists(self.wl.pid()),
            "{context}: a process with the dumped pid {} exists: {:?}",
            self.wl.pid(),
            ProcStat::read(self.wl.pid())
        );
        assert_no_stray_children(&context);
        // show may accept damage that only restore notices (e.g. short page data), but it must
        // not panic.
        let out = fastcr(&["show", copy.as_str()]);
        if !out.status.success() {
            assert_one_line_error(&out, &format!("show with {name} {what}"));
        }
    }

    /// The positive control: the untouched images restore and the workload passes.
    fn restore_good_images(mut self) {
        restore(&mut self.wl, &self.images, &[]);
        self.wl.wait_counter_advances();
        self.wl.terminate_and_verify();
    }
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).expect("read an image file");
    edit(&mut bytes);
    fs::write(path, bytes).expect("write an image file");
}

#[test]
fn restore_truncated_images() {
    require_root();
    let dumped = dumped_workload();
    for name in dumped.image_files(false) {
        dumped.expect_refused(&name, "truncated to half", |path| {
            let len = fs::metadata(path).expect("stat").len();
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len / 2))
                .expect("truncate");
        });
    }
    dumped.restore_good_images();
}

#[test]
fn restore_flipped_byte_in_metadata() {
    require_root();
    let dumped = dumped_workload();
    for name in dumped.image_files(true) {
        let len = fs::metadata(dumped.images.join(&name)).expect("stat").len();
        let len = usize::try_from(len).expect("small file");
        // The magic, the major version, the middle of the payload, the checksum's last byte.
        let mut offsets = vec![0, 4, len / 2, len.saturating_sub(1)];
        offsets.sort_unstable();
        offsets.dedup();
        for off in offsets.into_iter().filter(|&o| o < len) {
            dumped.expect_refused(&name, &format!("byte {off} flipped"), |path| {
                rewrite(path, |b| b[off] ^= 0xff);
            });
        }
    }
    dumped.restore_good_images();
}

#[test]
fn restore_newer_minor_version() {
    require_root();
    let dumped = dumped_workload();
    for name in dumped.image_files(true) {
        dumped.expect_refused(&name, "with its minor version bumped", |path| {
            rewrite(path, |b| {
                assert!(b.len() >= 8, "{} is shorter than a header", path.display());
                let minor = u16::from_le_bytes([b[6], b[7]]).wrapping_add(1);
                b[6..8].copy_from_slice(&minor.to_le_bytes());
            });
        });
    }
    dumped.restore_good_images();
}

#[test]
fn restore_while_pid_in_use() {
    require_root();
    let wl = Workload::spawn(WORKLOAD, &[]);
    wl.wait_counter_advances();
    let images = Scratch::new("inuse-img");
    dump(&wl, &images, &["--leave-running"]);
    let original = ProcStat::read(wl.pid()).expect("the original runs");
    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    assert_one_line_error(&out, "restore while the pid is in use");
    let now = ProcStat::read(wl.pid()).expect("the original still runs");
    assert_eq!(
        (now.starttime, now.ppid),
        (original.starttime, original.ppid),
        "the pid now names another process"
    );
    assert_dump_harmless(wl, "restore while the pid is in use");
}

#[test]
fn restore_empty_dir() {
    require_root();
    let empty = Scratch::new("empty-img");
    let out = fastcr(&["restore", "-D", empty.as_str(), "-d"]);
    assert_one_line_error(&out, "restore from an empty directory");
    assert_no_stray_children("restore from an empty directory");
}

/// A process holding what fastcr cannot save (`wl_unsupported KIND`): the dump fails with one
/// line naming the process, the fd or task, and the kind, and the workload runs on as before and
/// verifies that its object still works (an io_uring NOP completes, the pty master keeps its
/// number, the child is still traced by it).
fn dump_refuses(kind: &str, names: &dyn Fn(&Workload) -> Vec<String>) {
    require_root();
    let wl = Workload::spawn("wl_unsupported", &[kind]);
    wl.wait_counter_advances();
    let images = Scratch::new("unsupported-img");
    let context = format!("dump of a process holding {kind}");
    let out = fastcr(&["dump", "-t", &wl.pid_arg(), "-D", images.as_str()]);
    assert_one_line_error(&out, &context);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in names(&wl) {
        assert!(
            stderr.contains(&name),
            "{context}: the error does not name {name:?}: {stderr}"
        );
    }
    assert!(
        !images.join("inventory.img").exists(),
        "{context}: a refused dump left a complete image"
    );
    wl.wait_counter_advances();
    assert_dump_harmless(wl, &context);
}

#[test]
fn dump_refuses_io_uring() {
    // Its rings are mapped: whichever the dump meets first, fd 10 or a ring's VMA, is named.
    dump_refuses("io_uring", &|wl| {
        vec![
            format!("process {}", wl.pid()),
            "[io_uring]".into(),
            "not supported".into(),
        ]
    });
}

#[test]
fn dump_refuses_device() {
    dump_refuses("ptmx", &|wl| {
        vec![
            format!("process {}", wl.pid()),
            "fd 10".into(),
            "/dev/ptmx".into(),
            "device".into(),
        ]
    });
}

#[test]
fn dump_refuses_ptraced_child() {
    dump_refuses("ptraced", &|wl| {
        let path = wl.statedir().join("child");
        let child =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        vec![format!("process {}", child.trim()), "traced".into()]
    });
}
