//! What the benchmarks read about a running process from `/proc`: CPU time, peak RSS,
//! and the BPF programs it holds. Thin readers over pure parsers.
use std::{fs, time::Duration};

use anyhow::{Context as _, Result, bail};

/// `utime + stime` of the whole process (all threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = stat_cpu_ticks(&text).with_context(|| format!("cannot parse {path}"))?;
    Ok(ticks_to_duration(ticks))
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
pub fn stat_cpu_ticks(stat: &str) -> Result<u64> {
    // `comm` (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' after comm")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    if fields.len() < 13 {
        bail!("only {} fields after comm", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
}

/// A `Key:   N kB` line of `/proc/PID/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Sum of `recursion_misses` over the BPF programs the process holds (fdinfo, 5.12+):
/// how often the kernel skipped one of its tracing programs because a BPF program was
/// already running on that CPU (a softirq interrupting the same tracepoint program).
/// Such invocations produce no event and no `lost` count.
pub fn recursion_misses(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .map(|text| fdinfo_value(&text, "recursion_misses:").unwrap_or(0))
        .sum()
}

fn fdinfo_value(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/loadavg`'s first three fields.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_tricky_comm() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 500 0 0 0 37 5 0 0 20 0 1 0 100 1000 10";
        assert_eq!(stat_cpu_ticks(stat).unwrap(), 42);
        assert!(stat_cpu_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn reads_status_and_fdinfo_values() {
        let status = "Name:\tnetmon\nVmPeak:\t  90000 kB\nVmHWM:\t   42760 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(42760));
        let fdinfo = "pos:\t0\nprog_type:\t5\nrun_cnt:\t0\nrecursion_misses:\t46\n";
        assert_eq!(fdinfo_value(fdinfo, "recursion_misses:"), Some(46));
        assert_eq!(fdinfo_value("pos:\t0\n", "recursion_misses:"), None);
    }
}
