//! `/proc/PID/stat`: state, flags and the mm layout fields `PR_SET_MM_MAP` restores.

use std::path::PathBuf;

use super::{ProcError, parse_err, read};

/// The fields of `/proc/PID/stat` fastcr uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Task state letter (`R`, `S`, `D`, `T`, `t`, `Z`, ...).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// `PF_*` task flags.
    pub flags: u32,
    /// Number of threads.
    pub num_threads: u32,
    /// mm->start_code.
    pub start_code: u64,
    /// mm->end_code.
    pub end_code: u64,
    /// mm->start_stack.
    pub start_stack: u64,
    /// mm->start_data.
    pub start_data: u64,
    /// mm->end_data.
    pub end_data: u64,
    /// mm->start_brk.
    pub start_brk: u64,
    /// mm->arg_start.
    pub arg_start: u64,
    /// mm->arg_end.
    pub arg_end: u64,
    /// mm->env_start.
    pub env_start: u64,
    /// mm->env_end.
    pub env_end: u64,
}

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Parses a stat line. The comm field may hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    let close = text
        .rfind(')')
        .ok_or_else(|| parse_err("stat", "no comm"))?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| -> Result<&str, ProcError> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| parse_err("stat", format!("field {n} missing")))
    };
    let num = |n: usize| -> Result<u64, ProcError> {
        field(n)?
            .parse::<u64>()
            .map_err(|_| parse_err("stat", format!("field {n} not a number")))
    };
    let int = |n: usize| -> Result<i32, ProcError> {
        field(n)?
            .parse::<i32>()
            .map_err(|_| parse_err("stat", format!("field {n} not a number")))
    };
    Ok(Stat {
        state: field(3)?.chars().next().unwrap_or('?'),
        ppid: int(4)?,
        pgid: int(5)?,
        sid: int(6)?,
        flags: num(9)? as u32,
        num_threads: num(20)? as u32,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
    })
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: i32) -> Result<Stat, ProcError> {
    parse_stat(&read(PathBuf::from(format!("/proc/{pid}/stat")))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let mut f: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        f[0] = "S".into();
        let line = format!("42 (a b) c)) {}", f.join(" "));
        let s = parse_stat(&line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 4);
        assert_eq!(s.sid, 6);
        assert_eq!(s.flags, 9);
        assert_eq!(s.num_threads, 20);
        assert_eq!(s.start_code, 26);
        assert_eq!(s.start_brk, 47);
        assert_eq!(s.env_end, 51);
    }

    #[test]
    fn rejects_short_lines() {
        assert!(parse_stat("1 (x) S 0").is_err());
        assert!(parse_stat("no paren").is_err());
    }
}
