//! `/proc/PID/status`: identity, tracer, umask, signal sets.

use std::path::PathBuf;

use super::{ProcError, parse_err, read};

/// The fields of `/proc/PID/status` fastcr uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Thread-group id.
    pub tgid: i32,
    /// Pid of the tracer (0: none).
    pub tracer_pid: i32,
    /// Real, effective, saved, fs uid.
    pub uid: [u32; 4],
    /// Real, effective, saved, fs gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// File mode creation mask.
    pub umask: u32,
    /// Signals ignored.
    pub sig_ign: u64,
    /// Signals with a handler.
    pub sig_cgt: u64,
    /// Signals pending for the thread.
    pub sig_pnd: u64,
    /// Signals pending for the process.
    pub shd_pnd: u64,
    /// Pid in each nested pid namespace, outermost first.
    pub ns_pid: Vec<i32>,
    /// Resident anonymous memory in KiB.
    pub rss_anon_kib: u64,
    /// Resident shared memory (shmem, shared anonymous) in KiB.
    pub rss_shmem_kib: u64,
    /// Capability sets: inheritable, permitted, effective, bounding, ambient.
    pub caps: [u64; 5],
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
}

/// Parses a status text.
pub fn parse_status(text: &str) -> Result<Status, ProcError> {
    let mut s = Status::default();
    let mut seen_tgid = false;
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let nums = |v: &str| -> Vec<u64> {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        let hex = |v: &str| {
            u64::from_str_radix(v, 16).map_err(|_| parse_err("status", format!("{key}: {v}")))
        };
        match key {
            "Tgid" => {
                s.tgid = val.parse().map_err(|_| parse_err("status", "Tgid"))?;
                seen_tgid = true;
            }
            "TracerPid" => {
                s.tracer_pid = val.parse().map_err(|_| parse_err("status", "TracerPid"))?
            }
            "Uid" | "Gid" => {
                let v = nums(val);
                if v.len() != 4 {
                    return Err(parse_err("status", format!("{key} has {} fields", v.len())));
                }
                let arr = [v[0] as u32, v[1] as u32, v[2] as u32, v[3] as u32];
                if key == "Uid" {
                    s.uid = arr;
                } else {
                    s.gid = arr;
                }
            }
            "Groups" => s.groups = nums(val).into_iter().map(|g| g as u32).collect(),
            "Umask" => {
                s.umask = u32::from_str_radix(val, 8).map_err(|_| parse_err("status", "Umask"))?
            }
            "SigIgn" => s.sig_ign = hex(val)?,
            "SigCgt" => s.sig_cgt = hex(val)?,
            "SigPnd" => s.sig_pnd = hex(val)?,
            "ShdPnd" => s.shd_pnd = hex(val)?,
            "RssAnon" => s.rss_anon_kib = nums(val).first().copied().unwrap_or(0),
            "RssShmem" => s.rss_shmem_kib = nums(val).first().copied().unwrap_or(0),
            "CapInh" => s.caps[0] = hex(val)?,
            "CapPrm" => s.caps[1] = hex(val)?,
            "CapEff" => s.caps[2] = hex(val)?,
            "CapBnd" => s.caps[3] = hex(val)?,
            "CapAmb" => s.caps[4] = hex(val)?,
            "NoNewPrivs" => s.no_new_privs = val == "1",
            "Seccomp" => {
                s.seccomp = val.parse().map_err(|_| parse_err("status", "Seccomp"))?;
            }
            "NSpid" => s.ns_pid = nums(val).into_iter().map(|p| p as i32).collect(),
            _ => {}
        }
    }
    if !seen_tgid {
        return Err(parse_err("status", "no Tgid"));
    }
    Ok(s)
}

/// Reads `/proc/PID/status`.
pub fn status(pid: i32) -> Result<Status, ProcError> {
    parse_status(&read(PathBuf::from(format!("/proc/{pid}/status")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let t = "Name:\tcat\nUmask:\t0027\nState:\tS (sleeping)\nTgid:\t77\nTracerPid:\t0\n\
                 Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 \n\
                 NSpid:\t77\t1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n\
                 SigIgn:\t0000000000001000\nSigCgt:\t0000000000004002\n";
        let s = parse_status(t).unwrap();
        assert_eq!(s.tgid, 77);
        assert_eq!(s.umask, 0o27);
        assert_eq!(s.uid, [1000; 4]);
        assert_eq!(s.groups, vec![4, 24]);
        assert_eq!(s.ns_pid, vec![77, 1]);
        assert_eq!(s.shd_pnd, 0x100);
        assert_eq!(s.sig_ign, 0x1000);
        assert_eq!(s.sig_cgt, 0x4002);
        assert_eq!((s.caps, s.no_new_privs, s.seccomp), ([0; 5], false, 0));
    }

    #[test]
    fn parses_caps_and_seccomp() {
        let t = "Tgid:\t5\nCapInh:\t0000000000000001\nCapPrm:\t000001ffffffffff\n\
                 CapEff:\t000001fffffffffe\nCapBnd:\t000001ffffbfffff\nCapAmb:\t0000000000000000\n\
                 NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let s = parse_status(t).unwrap();
        assert_eq!(
            s.caps,
            [1, 0x1ff_ffff_ffff, 0x1ff_ffff_fffe, 0x1ff_ffbf_ffff, 0]
        );
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
    }

    #[test]
    fn rejects_missing_tgid_and_bad_hex() {
        assert!(parse_status("Name:\tx\n").is_err());
        assert!(parse_status("Tgid:\t1\nSigCgt:\tzz\n").is_err());
    }
}
