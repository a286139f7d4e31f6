//! `netmon snapshot`: a one-shot report of every TCP and UDP socket of this network
//! namespace (connections and listeners) with the processes that hold them, and
//! statistics: counts by protocol and TCP state, top processes by connection count,
//! listening ports with their processes, and the number of unique external peers.
//!
//! It reads sock_diag, `/proc/*/fd` and `/proc/<pid>/*`; it loads no eBPF and needs no
//! root (without it, other users' sockets show no process, and the report says how
//! many `/proc` directories it could not read).
//!
//! The detection rules of the configuration (`--config`) run over the snapshot with the
//! code `netmon run` uses: the sockets become the events the live stream would carry
//! for them ([`events`]) and go through a [`rules::Engine`]; its alerts are the report's.
//! DNS_TUNNELING needs a stream of DNS queries and does not run here. Exit 1 when an
//! alert is high or critical, 0 otherwise, 2 on error (an invalid configuration, a
//! socket dump that failed).
//!
//! Over 600 lines: one command: gather (sock_diag, `/proc`), build the report and
//! render it as text; the rules' part is in `snapshot/events.rs`, the tests in
//! `snapshot/tests.rs`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    io::{self, Write as _},
    net::IpAddr,
    path::Path,
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    event::{Alert, Endpoint, Event, EventBody, Family, ProcessInfo, Proto},
    output::Format,
    process::ProcessCache,
    rules::{self, Engine, ProcessResolver, RuleInfo, RulesConfig},
    sockets::{self, DumpOptions, SocketInfo},
    system,
};

pub mod events;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// `text` for people, `json` (one object) for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// List every socket, not only the summary and the listeners.
    #[arg(long)]
    pub show_all: bool,
    /// Print what would be read and which rules would run, touch nothing, exit 0
    /// (2 when the configuration is invalid).
    #[arg(long)]
    pub plan: bool,
    /// Processes listed under "top processes".
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Also read every other network namespace a process is in (containers); needs
    /// root. Each socket then says its `netns`.
    #[arg(long)]
    pub all_netns: bool,
    /// The detection rules to run (the `[rules]` section; DNS_TUNNELING does not run
    /// on a snapshot).
    #[command(flatten)]
    pub config: super::ConfigArgs,
}

/// The report (`--format json` writes it as one object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(with = "ts")]
    pub ts: DateTime<Utc>,
    pub host: String,
    /// Inode of the network namespace the sockets were read from.
    pub netns: Option<u32>,
    pub summary: Summary,
    /// Every TCP listener and unconnected UDP socket, with its processes.
    pub listening: Vec<SocketEntry>,
    /// Every socket (with `--show-all` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<SocketEntry>>,
    /// Alerts of the rules that ran, most severe first: the same objects as the
    /// `alert` events of `netmon run` (without `ts`, `type` and `host`).
    pub alerts: Vec<Alert>,
    /// Names of the rules that ran.
    pub rules: Vec<String>,
    /// What could not be read, and why.
    pub unreadable: Unreadable,
    /// Milliseconds the snapshot took.
    pub elapsed_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub sockets: u64,
    /// Sockets with a peer (TCP not listening, connected UDP).
    pub connections: u64,
    pub listeners: u64,
    pub by_protocol: BTreeMap<String, u64>,
    pub by_family: BTreeMap<String, u64>,
    /// TCP sockets per state (`established`, `listen`, `time_wait`, …).
    pub by_tcp_state: BTreeMap<String, u64>,
    /// Unique remote addresses outside loopback, private, link-local, CGNAT, ULA and
    /// multicast ranges.
    pub external_ips: u64,
    /// Processes with the most connections (listeners not counted), most first.
    pub top_processes: Vec<TopProcess>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopProcess {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub connections: u64,
}

/// One socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketEntry {
    pub proto: Proto,
    pub family: Family,
    /// `listen`, `established`, `time_wait`, … (TCP); `unconn` or `established` (UDP).
    pub state: String,
    pub local: Endpoint,
    /// Null for listeners and unconnected UDP sockets.
    pub remote: Option<Endpoint>,
    pub inode: u32,
    pub uid: u32,
    /// Inode of the socket's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// Every process holding a descriptor to the socket (empty for TIME_WAIT sockets,
    /// and for sockets of processes whose `/proc/<pid>/fd` could not be read).
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    /// `/proc/<pid>/fd` directories that could not be listed, by reason.
    pub proc_fd: BTreeMap<String, u64>,
    /// Process context reads that failed, by reason.
    pub process: BTreeMap<String, u64>,
    /// sock_diag parts that failed (the report lacks those sockets).
    pub sock_diag: Vec<String>,
}

mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

pub fn snapshot(args: SnapshotArgs) -> Result<ExitCode> {
    // A bad configuration stops everything before anything is read.
    let (config, file) = crate::config::load(args.config.config.as_deref())?;
    let rules = snapshot_rules(&config.rules);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.plan {
        let text = plan_text(&args, &rules, file.as_deref());
        write_ok(out.write_all(text.as_bytes()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (report, errors) = gather(&rules, args.all_netns, args.show_all, args.top);

    let text = match args.format {
        Format::Json => {
            let mut s = serde_json::to_string(&report).context("rendering the report")?;
            s.push('\n');
            s
        }
        Format::Text => render_text(&report, args.show_all),
    };
    write_ok(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("netmon: snapshot is incomplete: {e}");
        }
        return Ok(ExitCode::from(crate::cli::EXIT_ERROR));
    }
    let serious = report
        .alerts
        .iter()
        .any(|a| a.severity >= crate::event::Severity::High);
    Ok(if serious {
        ExitCode::from(crate::cli::EXIT_FINDING)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads the current sockets (this namespace; every one with `all_netns`), their
/// processes, and runs `rules` over them: the report, and the sock_diag parts that
/// failed (the report lacks those sockets). `netmon report` gathers its snapshot here.
pub fn gather(
    rules: &RulesConfig,
    all_netns: bool,
    show_all: bool,
    top: usize,
) -> (Report, Vec<sockets::SockDiagError>) {
    let started = Instant::now();
    let own = sockets::own_netns();
    let (mut sockets, mut errors) = sockets::dump_partial(DumpOptions::ALL);
    for s in &mut sockets {
        s.netns = own;
    }
    if all_netns {
        for (netns, pid) in sockets::namespaces(Path::new("/proc")) {
            if Some(netns) == own {
                continue;
            }
            match sockets::dump_in_netns_of(pid, DumpOptions::ALL) {
                Ok(found) => sockets.extend(found.into_iter().map(|mut s| {
                    s.netns = Some(netns);
                    s
                })),
                // The process left or exited meanwhile: nothing is lost but its sockets.
                Err(e) => errors.push(e),
            }
        }
    }
    let inodes: HashSet<u32> = sockets
        .iter()
        .map(|s| s.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = sockets::socket_owners(Path::new("/proc"), Some(&inodes));
    let mut cache = ProcessCache::default();
    let cgroup2 = system::cgroup2_mount().ok();
    let mut processes: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
    for pids in owners.by_inode.values() {
        for &pid in pids {
            processes
                .entry(pid)
                .or_insert_with(|| cache.from_proc(pid, cgroup2.as_deref()));
        }
    }
    let owners_of = |inode| {
        owners
            .by_inode
            .get(&inode)
            .map(|pids| {
                pids.iter()
                    .filter_map(|p| processes.get(p)?.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut report = build(&sockets, &owners_of, show_all, top);
    report.host = system::hostname();
    report.netns = own;
    // Every socket, whether or not the report lists them (`--show-all`).
    let events = events::socket_events(&sockets, &owners_of, report.ts, &report.host);
    (report.rules, report.alerts) = detect(rules, &events, Box::new(ProcessCache::default()));
    report.unreadable.proc_fd = owners.unreadable;
    report.unreadable.process = cache.stats().unreadable;
    report.unreadable.sock_diag = errors.iter().map(|e| format!("{e:#}")).collect();
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    (report, errors)
}

/// The rules of `cfg` that make sense on a point-in-time view: all but DNS_TUNNELING,
/// which needs a stream of DNS queries.
pub fn snapshot_rules(cfg: &RulesConfig) -> RulesConfig {
    let mut cfg = cfg.clone();
    cfg.dns_tunneling.enabled = false;
    cfg
}

/// Runs the rules of `cfg` over `events` (as [`events::socket_events`] makes them):
/// the names of the rules that ran, and their alerts, most severe first. Pure but for
/// what `resolver` reads.
pub fn detect(
    cfg: &RulesConfig,
    events: &[Event],
    resolver: Box<dyn ProcessResolver>,
) -> (Vec<String>, Vec<Alert>) {
    let held = Box::new(events::Held::of(events));
    let mut engine = Engine::with_connections(cfg, resolver, held);
    let mut out = Vec::new();
    for ev in events {
        engine.on_event(ev, &mut out);
    }
    let mut alerts: Vec<Alert> = out
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Alert(a) => Some(a),
            _ => None,
        })
        .collect();
    alerts.sort_by_key(|a| std::cmp::Reverse(a.severity));
    (engine.names(), alerts)
}

/// A closed stdout (`| head`) is not an error.
fn write_ok(r: io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing the snapshot"),
        _ => Ok(()),
    }
}

/// `config_file`: where the rules come from (`None`: the built-in defaults).
fn plan_text(args: &SnapshotArgs, rules: &RulesConfig, config_file: Option<&Path>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "netmon snapshot would read, changing nothing:");
    let _ = writeln!(
        s,
        "  - netlink sock_diag (NETLINK_SOCK_DIAG) dumps of TCP and UDP sockets, IPv4 and IPv6, all states, in this network namespace{}",
        if args.all_netns {
            " and in every other one a process is in (found through /proc/*/ns/net)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  - /proc/*/fd links, to find the processes holding each socket"
    );
    let _ = writeln!(
        s,
        "  - /proc/<pid>/status, exe, cmdline and cgroup of those processes, and /etc/passwd for user names"
    );
    let _ = writeln!(
        s,
        "  - /proc/mounts, to find the cgroup v2 mount for cgroup ids"
    );
    let _ = writeln!(
        s,
        "and write a {} report{} to stdout.",
        match args.format {
            Format::Json => "JSON",
            Format::Text => "text",
        },
        if args.show_all {
            " listing every socket"
        } else {
            ""
        }
    );
    let source = config_file.map_or_else(
        || "the built-in defaults".to_owned(),
        |f| f.display().to_string(),
    );
    let _ = writeln!(s, "Rules from {source}.");
    let on: Vec<RuleInfo> = rules::describe(rules)
        .into_iter()
        .filter(|r| r.enabled)
        .collect();
    if on.is_empty() {
        let _ = writeln!(
            s,
            "Rules: none enabled in the configuration (exit code 0 unless an error occurs)."
        );
    } else {
        let _ = writeln!(
            s,
            "Rules ({}), over the sockets seen as listen, connect, accept and udp events \
             (exit code 1 when an alert is high or critical):",
            on.len()
        );
        for r in &on {
            let _ = writeln!(s, "  - {} ({}): {}", r.rule, r.severity, r.purpose);
        }
    }
    let _ = writeln!(
        s,
        "Not run: DNS_TUNNELING (it needs a stream of DNS queries: netmon run or replay)."
    );
    s
}

/// Builds the report from sockets and a lookup of the processes holding an inode.
/// Pure: no I/O, unit-tested.
pub fn build(
    sockets: &[SocketInfo],
    owners_of: &dyn Fn(u32) -> Vec<ProcessInfo>,
    show_all: bool,
    top: usize,
) -> Report {
    let mut summary = Summary::default();
    let mut listening = Vec::new();
    let mut all = Vec::new();
    let mut external: BTreeSet<IpAddr> = BTreeSet::new();
    let mut per_process: HashMap<u32, (String, Option<String>, u64)> = HashMap::new();
    for s in sockets {
        let processes = if s.inode == 0 {
            Vec::new()
        } else {
            owners_of(s.inode)
        };
        summary.sockets += 1;
        *summary
            .by_protocol
            .entry(proto_name(s.proto).into())
            .or_default() += 1;
        *summary
            .by_family
            .entry(family_name(s.family).into())
            .or_default() += 1;
        if s.proto == Proto::Tcp {
            *summary
                .by_tcp_state
                .entry(s.state_name().into())
                .or_default() += 1;
        }
        let listener = s.is_listener();
        if listener {
            summary.listeners += 1;
        } else if !(s.proto == Proto::Tcp && s.state == sockets::TCP_LISTEN) {
            summary.connections += 1;
            if is_external(s.remote.ip()) {
                external.insert(s.remote.ip());
            }
            for p in &processes {
                let e = per_process
                    .entry(p.pid)
                    .or_insert_with(|| (p.comm.to_string(), p.detail.exe.clone(), 0));
                e.2 += 1;
            }
        }
        let entry = SocketEntry {
            proto: s.proto,
            family: s.family,
            state: s.state_name().into(),
            local: Endpoint::new(s.local.ip(), s.local.port()),
            remote: (!listener).then_some(Endpoint::new(s.remote.ip(), s.remote.port())),
            inode: s.inode,
            uid: s.uid,
            netns: s.netns,
            processes,
        };
        if listener {
            listening.push(entry.clone());
        }
        if show_all {
            all.push(entry);
        }
    }
    summary.external_ips = external.len() as u64;
    let mut top_processes: Vec<TopProcess> = per_process
        .into_iter()
        .map(|(pid, (comm, exe, connections))| TopProcess {
            pid,
            comm,
            exe,
            connections,
        })
        .collect();
    top_processes.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.pid.cmp(&b.pid)));
    top_processes.truncate(top);
    summary.top_processes = top_processes;
    listening.sort_by(|a, b| {
        (proto_name(a.proto), a.local.port, a.local.ip).cmp(&(
            proto_name(b.proto),
            b.local.port,
            b.local.ip,
        ))
    });
    Report {
        ts: Utc::now(),
        host: String::new(),
        netns: None,
        summary,
        listening,
        sockets: show_all.then_some(all),
        alerts: Vec::new(),
        rules: Vec::new(),
        unreadable: Unreadable::default(),
        elapsed_ms: 0.0,
    }
}

/// Public (routable) unicast: see [`crate::addr::is_external`].
pub fn is_external(ip: IpAddr) -> bool {
    crate::addr::is_external(ip)
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    }
}

fn endpoint(e: &Endpoint) -> String {
    std::net::SocketAddr::new(e.ip, e.port).to_string()
}

fn processes_text(ps: &[ProcessInfo]) -> String {
    if ps.is_empty() {
        return "-".into();
    }
    ps.iter()
        .map(|p| format!("{}[{}]", p.comm, p.pid))
        .collect::<Vec<_>>()
        .join(",")
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report for people.
pub fn render_text(r: &Report, show_all: bool) -> String {
    let mut s = String::new();
    let netns = r
        .netns
        .map(|n| format!(" (network namespace {n})"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "netmon snapshot of {} at {}{netns}",
        r.host,
        r.ts.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let m = &r.summary;
    let _ = writeln!(
        s,
        "Sockets: {} ({}); {} connections, {} listening",
        m.sockets,
        counts(&m.by_protocol),
        m.connections,
        m.listeners
    );
    if !m.by_tcp_state.is_empty() {
        let _ = writeln!(s, "TCP states: {}", counts(&m.by_tcp_state));
    }
    let _ = writeln!(s, "Unique external IPs: {}", m.external_ips);
    if !m.top_processes.is_empty() {
        let _ = writeln!(s, "\nTop processes by connections:");
        for p in &m.top_processes {
            let _ = writeln!(s, "  {:>6}  {}[{}]", p.connections, p.comm, p.pid);
        }
    }
    let _ = writeln!(s, "\nListening:");
    if r.listening.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for l in &r.listening {
        let _ = writeln!(
            s,
            "  {:<4} {:<40} {}",
            proto_name(l.proto),
            endpoint(&l.local),
            processes_text(&l.processes)
        );
    }
    if let (true, Some(all)) = (show_all, &r.sockets) {
        let _ = writeln!(s, "\nAll sockets:");
        let _ = writeln!(
            s,
            "  {:<4} {:<12} {:<40} {:<40} processes",
            "", "state", "local", "remote"
        );
        for e in all {
            let remote = e
                .remote
                .as_ref()
                .map(endpoint)
                .unwrap_or_else(|| "*".into());
            let _ = writeln!(
                s,
                "  {:<4} {:<12} {:<40} {:<40} {}",
                proto_name(e.proto),
                e.state,
                endpoint(&e.local),
                remote,
                processes_text(&e.processes)
            );
        }
    }
    if r.rules.is_empty() {
        let _ = writeln!(s, "\nRules: none ran");
    } else {
        let _ = writeln!(
            s,
            "\nAlerts: {} from {} rules ({})",
            r.alerts.len(),
            r.rules.len(),
            r.rules.join(", ")
        );
        let mut block = String::new();
        for a in &r.alerts {
            block.clear();
            crate::output::alert_text(a, &mut block);
            for line in block.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    let u = &r.unreadable;
    if !u.proc_fd.is_empty() || !u.process.is_empty() || !u.sock_diag.is_empty() {
        let _ = writeln!(s, "\nCould not read:");
        if !u.proc_fd.is_empty() {
            let _ = writeln!(
                s,
                "  /proc/<pid>/fd of {} processes (their sockets show no process)",
                counts(&u.proc_fd)
            );
        }
        if !u.process.is_empty() {
            let _ = writeln!(s, "  process details: {}", counts(&u.process));
        }
        for e in &u.sock_diag {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests;
