//! The tracers under test, as child processes writing to a file: `netmon run --output`
//! and the `bpftrace` peer. Starting them (and waiting until they are attached),
//! stopping them, and counting what they wrote about one storm.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{proc, storm::StormReport};

/// The bpftrace peer: every TCP connect and accept, on the hook netmon's tracepoint
/// backend uses on this kernel (`sock:inet_sock_set_state`), with the transitions that
/// mean connect (SYN_SENT → ESTABLISHED) and accept (SYN_RECV → ESTABLISHED), and the
/// same fields netmon reads (pid, comm, addresses, ports, network namespace).
pub const BPFTRACE_SCRIPT: &str = r#"tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && args->newstate == 1 && (args->oldstate == 2 || args->oldstate == 3)/
{
  $sk = (struct sock *)args->skaddr;
  $netns = $sk->__sk_common.skc_net.net->ns.inum;
  if (args->oldstate == 2) {
    printf("connect %d %s %s:%d -> %s:%d netns=%u\n", pid, comm,
      ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, $netns);
  } else {
    printf("accept %d %s %s:%d -> %s:%d netns=%u\n", pid, comm,
      ntop(args->daddr), args->dport, ntop(args->saddr), args->sport, $netns);
  }
}
"#;

/// The floor of `bench web`: attached to every state change of every socket, it does
/// nothing, so what it costs is the hook's own (the record the kernel builds, the
/// program's dispatch).
pub const FLOOR_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state { }\n";

/// How long a tracer may take to attach (bpftrace compiles with LLVM first; on a busy
/// two-core machine that takes tens of seconds).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Netmon,
    Bpftrace,
}

/// A running tracer; killed on drop if not stopped.
pub struct Tracer {
    child: Child,
    kind: Kind,
    pub output: PathBuf,
    stopped: bool,
}

impl Tracer {
    /// `netmon run --output OUTPUT EXTRA…` (under `nice -n NICE` when given), once its
    /// `probe` line is written.
    pub fn netmon(
        bin: &Path,
        nice: Option<i32>,
        output: &Path,
        extra: &[String],
    ) -> Result<Tracer> {
        let mut cmd = match nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &n.to_string()]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(netmon_args(output, extra));
        Tracer::start(cmd, Kind::Netmon, output, "\"type\":\"probe\"")
    }

    /// `bpftrace -o OUTPUT SCRIPT`, once it says it attached.
    pub fn bpftrace(script: &Path, output: &Path) -> Result<Tracer> {
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-o").arg(output).arg(script);
        Tracer::start(cmd, Kind::Bpftrace, output, "Attaching ")
    }

    fn start(mut cmd: Command, kind: Kind, output: &Path, ready: &str) -> Result<Tracer> {
        let _ = fs::remove_file(output);
        let stderr = File::create(output.with_extension("stderr"))
            .with_context(|| format!("cannot create {}", output.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", crate::exec::describe(&cmd)))?;
        let mut tracer = Tracer {
            child,
            kind,
            output: output.to_path_buf(),
            stopped: false,
        };
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            if fs::read_to_string(output).is_ok_and(|t| t.contains(ready)) {
                return Ok(tracer);
            }
            if let Some(status) = tracer.child.try_wait()? {
                tracer.stopped = true;
                bail!(
                    "{} exited with {status} before attaching: {}",
                    crate::exec::describe(&cmd),
                    fs::read_to_string(output.with_extension("stderr")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not attach within {ATTACH_TIMEOUT:?}",
                    crate::exec::describe(&cmd)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_time(&self) -> Result<Duration> {
        proc::cpu_time(self.pid())
    }

    pub fn recursion_misses(&self) -> u64 {
        proc::recursion_misses(self.pid())
    }

    pub fn peak_rss_kib(&self) -> Result<u64> {
        proc::peak_rss_kib(self.pid())
    }

    /// SIGSTOP / SIGCONT: a consumer that stops reading for a while.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Asks the tracer to finish (netmon: SIGTERM, writes its final `stats`; bpftrace:
    /// SIGINT, flushes its output), waits for it, and returns what it used over its
    /// whole life (from `wait4`).
    pub fn stop(mut self) -> Result<Usage> {
        let sig = match self.kind {
            Kind::Netmon => libc::SIGTERM,
            Kind::Bpftrace => libc::SIGINT,
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some((status, usage)) = try_wait4(self.pid())? {
                self.stopped = true;
                // bpftrace's exit status after SIGINT varies by version; netmon's must be 0.
                if self.kind == Kind::Netmon && status != 0 {
                    bail!(
                        "netmon exited with wait status {status:#x}: {}",
                        fs::read_to_string(self.output.with_extension("stderr"))
                            .unwrap_or_default()
                    );
                }
                return Ok(usage);
            }
            if Instant::now() > deadline {
                if self.kind == Kind::Bpftrace {
                    // The peer, not the code under test: once in a while bpftrace 0.17
                    // never returns from SIGINT. Kill it and go on (its last lines may
                    // be missing from that run's count).
                    eprintln!(
                        "xtask: bpftrace did not exit within {STOP_TIMEOUT:?} of SIGINT: killed"
                    );
                    // SAFETY: signalling our own child by its pid.
                    unsafe { libc::kill(self.pid() as i32, libc::SIGKILL) };
                    thread::sleep(Duration::from_millis(200));
                    if let Some((_, usage)) = try_wait4(self.pid())? {
                        self.stopped = true;
                        return Ok(usage);
                    }
                }
                bail!("{:?} did not exit within {STOP_TIMEOUT:?}", self.kind);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// CPU time of a process that exited. (Not `ru_maxrss`: it also counts the memory of
/// the forked xtask before `exec`; `Tracer::peak_rss_kib` reads `VmHWM` instead.)
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// User + system time, all threads.
    pub cpu: Duration,
}

/// `wait4(WNOHANG)`: the exit status and usage of our child once it has exited.
fn try_wait4(pid: u32) -> Result<Option<(i32, Usage)>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut ru) };
    if rc < 0 {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    if rc == 0 {
        return Ok(None);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Some((
        status,
        Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        },
    )))
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn netmon_args(output: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    // Only the final `stats` line matters here, unless `extra` asks for more.
    if !extra.iter().any(|a| a == "--stats-interval") {
        args.extend(["--stats-interval".into(), "3600".into()]);
    }
    // History off unless a benchmark names a file: these benchmarks measure tracing
    // and the pipeline as they did before the history was on by default (its cost is
    // `bench history`'s), and never write to the default /var/lib/netmon/netmon.db.
    if !extra
        .iter()
        .any(|a| a == "--history" || a == "--no-history")
    {
        args.push("--no-history".into());
    }
    args.extend_from_slice(extra);
    args
}

/// What netmon wrote, split into the storm's events and everyone else's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetmonCount {
    /// Events of the storm (its network namespace, or its pid for `udp`, which carries
    /// no namespace), per type.
    pub storm: BTreeMap<String, u64>,
    /// Connection events of other processes on the machine.
    pub other: u64,
    /// All connection events written (what netmon spent its CPU on).
    pub written: u64,
    /// From the final `stats` line.
    pub lost: Option<u64>,
    pub lost_by_type: BTreeMap<String, u64>,
    pub malformed: u64,
}

impl NetmonCount {
    pub fn storm_total(&self) -> u64 {
        self.storm.values().sum()
    }
}

const CONNECTION_TYPES: &[&str] = &["connect", "accept", "udp", "listen", "close"];

/// Reads netmon's JSON Lines output. Only the few fields needed are picked out of each
/// line (this runs on millions of lines in a debug-built xtask); the final `stats` line
/// is parsed with serde.
pub fn count_netmon(path: &Path, storm: &StormReport) -> Result<NetmonCount> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    count_netmon_lines(&text, storm.netns, storm.pid)
}

pub fn count_netmon_lines(text: &str, netns: u64, pid: u32) -> Result<NetmonCount> {
    let mut c = NetmonCount::default();
    let netns = netns.to_string();
    let pid = pid.to_string();
    for line in text.lines() {
        let Some(ty) = raw_field(line, "type") else {
            continue;
        };
        let ty = ty.trim_matches('"');
        if let Some(&kind) = CONNECTION_TYPES.iter().find(|k| **k == ty) {
            c.written += 1;
            let mine = raw_field(line, "netns") == Some(netns.as_str())
                || (kind == "udp" && raw_field(line, "pid") == Some(pid.as_str()));
            if mine {
                *c.storm.entry(kind.to_string()).or_default() += 1;
            } else {
                c.other += 1;
            }
        } else if ty == "stats" {
            let v: serde_json::Value =
                serde_json::from_str(line).context("a stats line that is not JSON")?;
            c.lost = v["lost"].as_u64();
            c.malformed = v["malformed"].as_u64().unwrap_or(0);
            c.lost_by_type = v["lost_by_type"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
        }
    }
    Ok(c)
}

/// The raw JSON token after the first `"key":` in a line (a number, or a string with its
/// quotes). netmon escapes every `"` inside strings, so `"key":` only matches a key.
fn raw_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":");
    let start = line.find(&needle)? + needle.len();
    let rest = &line[start..];
    let end = if let Some(s) = rest.strip_prefix('"') {
        s.find('"')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

/// What the bpftrace peer wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BpftraceCount {
    /// connect + accept lines in the storm's namespace.
    pub storm: u64,
    /// All event lines written.
    pub written: u64,
    /// Events bpftrace itself reported lost (`Lost N events`).
    pub lost: u64,
}

pub fn count_bpftrace(path: &Path, storm: &StormReport) -> Result<BpftraceCount> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(count_bpftrace_lines(&text, storm.netns))
}

pub fn count_bpftrace_lines(text: &str, netns: u64) -> BpftraceCount {
    let mut c = BpftraceCount::default();
    let suffix = format!(" netns={netns}");
    for line in text.lines() {
        if line.starts_with("connect ") || line.starts_with("accept ") {
            c.written += 1;
            if line.ends_with(&suffix) {
                c.storm += 1;
            }
        } else if let Some(n) = line
            .strip_prefix("Lost ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            c.lost += n;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"probe","requested":"auto"}
{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"connect","proto":"tcp","family":"ipv4","direction":"outbound","src":{"ip":"127.0.0.1","port":40000},"dst":{"ip":"127.0.0.1","port":80},"process":{"pid":7,"tid":8,"comm":"a \"netns\":5","uid":0,"gid":0,"cgroup_id":1},"backend":"tracepoint","netns":5}
{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"close","proto":"tcp","family":"ipv4","direction":"inbound","src":{"ip":"127.0.0.1","port":40000},"dst":{"ip":"127.0.0.1","port":80},"process":null,"backend":"tracepoint","netns":6}
{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"udp","proto":"udp","family":"ipv4","direction":"outbound","src":{"ip":"127.0.0.1","port":4000},"dst":{"ip":"127.0.0.1","port":53},"process":{"pid":7,"tid":9,"comm":"x","uid":0,"gid":0,"cgroup_id":1},"backend":"tracepoint","bytes":40}
{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"udp","proto":"udp","family":"ipv4","direction":"outbound","src":{"ip":"127.0.0.1","port":4000},"dst":{"ip":"127.0.0.1","port":53},"process":{"pid":77,"tid":9,"comm":"x","uid":0,"gid":0,"cgroup_id":1},"backend":"tracepoint","bytes":40}
{"ts":"2026-11-21T15:26:13.7Z","host":"vm","type":"stats","uptime_s":1.0,"events":{"connect":1},"lost":3,"lost_by_type":{"accept":1,"close":2},"malformed":0,"final":true}
"#;

    #[test]
    fn counts_the_storms_netmon_events() {
        let c = count_netmon_lines(LINES, 5, 7).unwrap();
        assert_eq!(c.storm.get("connect"), Some(&1));
        assert_eq!(c.storm.get("udp"), Some(&1));
        assert_eq!(c.storm.get("close"), None);
        assert_eq!((c.storm_total(), c.other, c.written), (2, 2, 4));
        assert_eq!(c.lost, Some(3));
        assert_eq!(c.lost_by_type.get("close"), Some(&2));
    }

    #[test]
    fn picks_raw_fields() {
        let line = r#"{"type":"udp","netns":12,"process":{"pid":7}}"#;
        assert_eq!(raw_field(line, "type"), Some("\"udp\""));
        assert_eq!(raw_field(line, "netns"), Some("12"));
        assert_eq!(raw_field(line, "pid"), Some("7"));
        assert_eq!(raw_field(line, "nope"), None);
    }

    #[test]
    fn counts_the_storms_bpftrace_lines() {
        let text = "Attaching 1 probe...\nconnect 1 x 127.0.0.1:1 -> 127.0.0.1:2 netns=5\naccept 1 x 127.0.0.1:1 -> 127.0.0.1:2 netns=5\nconnect 1 x 127.0.0.1:1 -> 127.0.0.1:2 netns=55\nLost 12 events\n";
        let c = count_bpftrace_lines(text, 5);
        assert_eq!(
            c,
            BpftraceCount {
                storm: 2,
                written: 3,
                lost: 12
            }
        );
    }
}
