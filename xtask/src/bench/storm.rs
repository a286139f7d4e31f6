//! Driving the load generator `netmon-storm` (`xtask/src/bin/netmon-storm.rs`): build
//! it, run it with a bounded configuration, read back its report.
use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{build, exec};

/// One storm: bounded in time (`duration_ms`) and in count (`max_*`).
#[derive(Clone, Debug)]
pub struct StormConfig {
    pub duration_ms: u64,
    pub clients: u32,
    pub listeners: u32,
    pub udp_ports: u32,
    pub max_connections: u64,
    pub max_datagrams: u64,
}

impl StormConfig {
    pub fn args(&self) -> Vec<String> {
        vec![
            "--duration-ms".into(),
            self.duration_ms.to_string(),
            "--clients".into(),
            self.clients.to_string(),
            "--listeners".into(),
            self.listeners.to_string(),
            "--udp-ports".into(),
            self.udp_ports.to_string(),
            "--max-connections".into(),
            self.max_connections.to_string(),
            "--max-datagrams".into(),
            self.max_datagrams.to_string(),
        ]
    }

    /// The command line, for the report.
    pub fn command_line(&self) -> String {
        format!("target/release/netmon-storm {}", self.args().join(" "))
    }
}

/// What a storm did and the events it made the kernel generate.
#[derive(Clone, Debug)]
pub struct StormReport {
    pub pid: u32,
    /// Inode of the storm's network namespace: netmon's `netns` field.
    pub netns: u64,
    pub tcp_connections: u64,
    pub tcp_per_s: f64,
    pub udp_per_s: f64,
    /// Events netmon's kernel side generates for this storm, per type.
    pub events: BTreeMap<String, u64>,
    pub events_total: u64,
    /// No connection failed and every socket settled: `events` is exact.
    pub exact: bool,
    /// The storm process's own CPU time (user + system, all threads), from `wait4`.
    /// eBPF programs attached to its syscalls and its softirqs are charged here.
    pub cpu: Duration,
}

impl StormReport {
    /// Events of the given types (e.g. the connect and accept a bpftrace peer prints).
    pub fn events_of(&self, kinds: &[&str]) -> u64 {
        kinds.iter().filter_map(|k| self.events.get(*k)).sum()
    }

    /// Storm CPU per TCP connection, in microseconds.
    pub fn cpu_us_per_connection(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.tcp_connections.max(1) as f64
    }

    pub fn parse(json: &str, cpu: Duration) -> Result<StormReport> {
        let v: Value = serde_json::from_str(json.trim()).with_context(|| {
            format!("netmon-storm printed something else than its report: {json}")
        })?;
        let u = |k: &str| v[k].as_u64().with_context(|| format!("report has no {k}"));
        let f = |k: &str| v[k].as_f64().with_context(|| format!("report has no {k}"));
        let events = v["events"]
            .as_object()
            .context("report has no events")?
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        Ok(StormReport {
            pid: u("pid")? as u32,
            netns: u("netns")?,
            tcp_connections: u("tcp_connections")?,
            tcp_per_s: f("tcp_per_s")?,
            udp_per_s: f("udp_per_s")?,
            events,
            events_total: u("events_total")?,
            exact: v["exact"].as_bool().unwrap_or(false),
            cpu,
        })
    }
}

/// Builds `netmon-storm` (release) and returns its path.
pub fn build() -> Result<PathBuf> {
    exec::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "xtask", "--bin", "netmon-storm"])
            .current_dir(build::workspace_root()),
    )?;
    Ok(build::workspace_root().join("target/release/netmon-storm"))
}

/// A storm in progress.
pub struct Running {
    child: Child,
}

pub fn spawn(bin: &Path, cfg: &StormConfig) -> Result<Running> {
    let child = Command::new(bin)
        .args(cfg.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Running { child })
}

impl Running {
    /// Waits for the storm to end and returns its report.
    pub fn finish(mut self) -> Result<StormReport> {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .context("storm stdout")?
            .read_to_string(&mut out)
            .context("reading the storm's report")?;
        let (status, cpu) = wait_with_rusage(self.child.id())?;
        if status != 0 {
            bail!("netmon-storm failed (wait status {status:#x})");
        }
        StormReport::parse(&out, cpu)
    }
}

pub fn run(bin: &Path, cfg: &StormConfig) -> Result<StormReport> {
    spawn(bin, cfg)?.finish()
}

/// `wait4`: the exit status and the child's user + system CPU time.
fn wait_with_rusage(pid: u32) -> Result<(i32, Duration)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((status, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_storm_report() {
        let json = r#"{"duration_s":3.0,"events":{"accept":10,"close":20,"connect":10,"listen":4,"udp":7},"events_total":51,"exact":true,"first_error":null,"listeners":4,"netns":4026532177,"pid":23068,"settle_s":0.2,"tcp_connections":10,"tcp_duration_s":3.0,"tcp_failed":0,"tcp_per_s":3.3,"udp_datagrams":100,"udp_per_s":33.3,"udp_ports":7,"unsettled_sockets":0}"#;
        let r = StormReport::parse(json, Duration::from_millis(20)).unwrap();
        assert_eq!((r.pid, r.netns, r.events_total), (23068, 4026532177, 51));
        assert_eq!(r.events_of(&["connect", "accept"]), 20);
        assert!(r.exact);
        assert!((r.cpu_us_per_connection() - 2000.0).abs() < 1e-6);
        assert!(StormReport::parse("oops", Duration::ZERO).is_err());
    }
}
