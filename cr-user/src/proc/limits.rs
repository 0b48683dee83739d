//! `/proc/PID/limits` and `/proc/PID/personality`: read from outside, so the freeze does not
//! pay an injected `prlimit64` per resource. `/proc/PID/limits` is readable whatever the
//! target's credentials, where `prlimit64` on another process would need them to match ours
//! or `CAP_SYS_RESOURCE`.

use std::path::PathBuf;

use super::{ProcError, parse_err, read};

/// One resource's limits, in the kernel's units (`u64::MAX` is `RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// `RLIMIT_*` number: the row's position (the kernel prints them in that order).
    pub resource: u32,
    /// Soft limit.
    pub cur: u64,
    /// Hard limit.
    pub max: u64,
}

/// Columns start after the name, which is padded to 26 characters.
const NAME_WIDTH: usize = 26;

fn value(field: &str) -> Result<u64, ProcError> {
    match field {
        "unlimited" => Ok(u64::MAX),
        n => n
            .parse::<u64>()
            .map_err(|_| parse_err("limits", format!("bad value {n:?}"))),
    }
}

/// Parses a `/proc/PID/limits` text.
pub fn parse_limits(text: &str) -> Result<Vec<Limit>, ProcError> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with("Limit") => {}
        _ => return Err(parse_err("limits", "missing header")),
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let cols = line
                .get(NAME_WIDTH..)
                .ok_or_else(|| parse_err("limits", format!("short line {line:?}")))?;
            let mut fields = cols.split_whitespace();
            let (Some(cur), Some(max)) = (fields.next(), fields.next()) else {
                return Err(parse_err("limits", format!("short line {line:?}")));
            };
            Ok(Limit {
                resource: u32::try_from(i).map_err(|_| parse_err("limits", "too many rows"))?,
                cur: value(cur)?,
                max: value(max)?,
            })
        })
        .collect()
}

/// Reads `/proc/PID/limits`.
pub fn limits(pid: i32) -> Result<Vec<Limit>, ProcError> {
    parse_limits(&read(PathBuf::from(format!("/proc/{pid}/limits")))?)
}

/// Reads `/proc/PID/personality` (needs ptrace access to `pid`).
pub fn personality(pid: i32) -> Result<u32, ProcError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/personality")))?;
    u32::from_str_radix(text.trim(), 16)
        .map_err(|_| parse_err("personality", format!("bad value {:?}", text.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             95524                95524                processes 
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       95524                95524                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

    #[test]
    fn parses_every_row_in_resource_order() {
        let l = parse_limits(SAMPLE).unwrap();
        assert_eq!(l.len(), 16);
        assert_eq!(
            l[3],
            Limit {
                resource: 3,
                cur: 8_388_608,
                max: u64::MAX
            }
        );
        assert_eq!((l[7].cur, l[7].max), (1024, 524_288));
        assert_eq!((l[13].cur, l[13].max), (0, 0));
        assert_eq!(l[15].resource, 15);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_limits("").is_err());
        assert!(parse_limits("Limit x\nMax cpu time              lots  unlimited\n").is_err());
        assert!(parse_limits("Limit x\nshort\n").is_err());
    }
}
