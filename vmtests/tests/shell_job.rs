//! `--shell-job`: a standard stream that is a pipe leading outside the dump is refused without
//! the flag (the workload keeps running), accepted with it, and on restore the process is given
//! the restorer's own stream.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use vmtests::{
    Scratch, Workload, assert_one_line_error, assert_success, fastcr, fastcr_bin, pid_exists,
    require_root,
};

#[test]
fn pipe_stdout_needs_shell_job_and_is_handed_over() {
    require_root();
    let mut wl = Workload::spawn_with_stdout("wl_sleep", &[], Some(Stdio::piped()));
    wl.wait_counter_advances();
    let pid = wl.pid_arg();
    let images = Scratch::new("shell-job-img");

    let out = fastcr(&["dump", "-t", &pid, "-D", images.as_str()]);
    assert_one_line_error(&out, "dump of a process whose stdout is a pipe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fd 1") && err.contains("--shell-job"),
        "error does not name fd 1 and --shell-job: {err}"
    );
    wl.assert_running_untraced();
    wl.wait_counter_advances();

    let out = fastcr(&["dump", "-t", &pid, "-D", images.as_str(), "--shell-job"]);
    assert_success(&out, "dump --shell-job");
    let status = wl.reap();
    assert!(
        status.signal().is_some(),
        "dump should have killed the process, but it {status}"
    );

    let out = fastcr(&["restore", "-D", images.as_str(), "-d"]);
    assert_one_line_error(&out, "restore of a shell-job image without --shell-job");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--shell-job"),
        "restore error does not mention --shell-job"
    );
    assert!(
        !pid_exists(wl.pid()),
        "a failed restore left pid {pid} behind"
    );

    let stdout_path = images.join("restorer-stdout");
    let restorer_stdout = fs::File::create(&stdout_path).expect("create restorer stdout");
    // Run directly (not through `run`, which captures stdout itself) so the restorer's stdout
    // is a file this test chose.
    let status = Command::new(fastcr_bin())
        .args(["restore", "-D", images.as_str(), "-d", "--shell-job"])
        .stdin(Stdio::null())
        .stdout(restorer_stdout)
        .status()
        .expect("run fastcr restore --shell-job");
    assert!(status.success(), "restore --shell-job failed: {status}");
    wl.adopt_restored();
    let fd1 =
        fs::read_link(format!("/proc/{pid}/fd/1")).expect("read fd 1 of the restored process");
    assert_eq!(fd1, stdout_path, "restored stdout is not the restorer's");
    wl.wait_counter_advances();
    wl.terminate_and_verify();
}
