//! What the benchmarks read about a running process from `/proc`: CPU time, peak RSS,
//! and the BPF programs it holds. Thin readers over pure parsers.
use std::{fs, time::Duration};

use anyhow::{Context as _, Result, bail};

/// `utime + stime` of the whole process (all threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    cpu_times(pid).map(|t| t.user + t.system)
}

/// A process's CPU time, split: its own code, and the kernel working for it (syscalls).
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// `utime` and `stime` of the whole process (all threads), from `/proc/PID/stat`.
pub fn cpu_times(pid: u32) -> Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let (user, system) = stat_cpu_ticks(&text).with_context(|| format!("cannot parse {path}"))?;
    Ok(CpuTimes {
        user: ticks_to_duration(user),
        system: ticks_to_duration(system),
    })
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// `utime` and `stime` in clock ticks from the text of `/proc/PID/stat`.
pub fn stat_cpu_ticks(stat: &str) -> Result<(u64, u64)> {
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
    Ok((utime, stime))
}

/// A `Key:   N kB` line of `/proc/PID/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Sum of `recursion_misses` over the BPF programs the process holds (fdinfo, 5.12+),
/// each program once however many fds refer to it: how often the kernel skipped one of
/// its tracing programs because a BPF program was already running on that CPU (a
/// softirq interrupting the same tracepoint program). Such runs produce no event and no
/// `lost` count.
pub fn recursion_misses(pid: u32) -> u64 {
    programs(pid).iter().map(|p| p.recursion_misses).sum()
}

/// Peak resident set size (`VmHWM`) in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status_kib(&text, "VmHWM:").with_context(|| format!("no VmHWM in {path}"))
}

fn fdinfo_value(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// Run counters of one BPF program a process holds (fdinfo; the time needs
/// [`BpfStats`] on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgCounters {
    pub id: u32,
    pub prog_type: u32,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

/// The BPF programs a process holds, one entry per program id.
pub fn programs(pid: u32) -> Vec<ProgCounters> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut progs: Vec<ProgCounters> = dir
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            Some(ProgCounters {
                id: fdinfo_value(&text, "prog_id:")? as u32,
                prog_type: fdinfo_value(&text, "prog_type:")? as u32,
                run_cnt: fdinfo_value(&text, "run_cnt:").unwrap_or(0),
                run_time_ns: fdinfo_value(&text, "run_time_ns:").unwrap_or(0),
                recursion_misses: fdinfo_value(&text, "recursion_misses:").unwrap_or(0),
            })
        })
        .collect();
    progs.sort_by_key(|p| p.id);
    progs.dedup_by_key(|p| p.id);
    progs
}

/// Run-time statistics of every BPF program (`BPF_ENABLE_STATS`, 5.8+) for as long as
/// this value lives: the kernel turns them off again when its fd is closed, even if
/// xtask dies. Costs two clock reads per program run, so only diagnostic runs use it.
pub struct BpfStats {
    /// Held, never read: closing it turns the statistics off.
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        use std::os::fd::FromRawFd;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }: BPF_STATS_RUN_TIME = 0.
        let attr = [0u8; 8];
        // SAFETY: a valid attr buffer of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                attr.len() as u32,
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd.
        Ok(BpfStats {
            _fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// A program's name from `bpftool prog show id ID`, or its type number.
pub fn program_name(id: u32, prog_type: u32) -> String {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| {
            Some(format!(
                "{} {}",
                v["type"].as_str()?,
                v["name"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or_else(|| format!("type {prog_type} #{id}"))
}

/// Other tracers on the machine (processes named `netmon` or `bpftrace` that are not
/// ours): they attach to the same hooks, so they too receive the storm's events and
/// spend CPU on them, and their own runs suffer from the storm.
pub fn foreign_tracers(ours: &[u32]) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            matches!(comm, "netmon" | "bpftrace").then(|| (pid, comm.to_string()))
        })
        .collect()
}

/// Waits (at most `max`) until no other tracer runs; returns how many still ran.
pub fn wait_for_quiet(max: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + max;
    let mut announced = false;
    loop {
        let others = foreign_tracers(&[]);
        if others.is_empty() || std::time::Instant::now() >= deadline {
            return others.len();
        }
        if !announced {
            eprintln!(
                "bench: waiting up to {max:?} for other tracers to finish: {}",
                others
                    .iter()
                    .map(|(pid, comm)| format!("{comm}[{pid}]"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            announced = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
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
        assert_eq!(stat_cpu_ticks(stat).unwrap(), (37, 5));
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
