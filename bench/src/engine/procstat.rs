//! CPU time and resident memory of another process, read from /proc.

use std::time::Duration;

use anyhow::{Context, Result};

/// Linux reports utime and stime in USER_HZ ticks, which is 100 on every architecture
/// Linux supports (it is fixed for userspace, independent of the kernel's HZ).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of `pid` so far (all its threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SEC))
        .with_context(|| format!("unexpected /proc/{pid}/stat: {stat:?}"))
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but is no longer running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "2961 (beam.smp (x) y) S 1 2960 2960 0 -1 4194560 105 0 0 0 2734 719 0 0 20 0 36 0 2191 2287697920 30729 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(2734 + 719));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tbeam.smp\nVmPeak:\t 2233972 kB\nVmRSS:\t  123100 kB\nThreads:\t36\n";
        assert_eq!(parse_rss(status), Some(123_100 * 1024));
        assert_eq!(parse_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(rss_bytes(pid).expect("readable") > 0);
        cpu_time(pid).expect("readable");
        assert!(!is_alive(u32::MAX));
    }
}
