//! The active scanner: host discovery, TCP (connect or SYN) and UDP port scans,
//! service detection and host hints, behind one entry point (`run`) that the
//! `netmon scan` command and the inventory monitor both use.
//!
//! Layout: pure parts (`target`, `ports`, `rate`, `service` parsers, `hints`,
//! `inventory`, `config`) are unit-tested without a network; the probes
//! (`discover`, `connect`, `syn`, `udp`, `neigh`, `rdns`, `traceroute`) do the I/O.
//! This module must not write output: it returns results and the caller renders them.
//!
//! Safety lives here too: every address is checked (public addresses need
//! `allow_public`, and when an allow-list is given nothing outside it is touched), and
//! every packet the scanner sends first takes a token from one shared rate limiter.
//!
//! Targets are streamed: a `Plan` keeps each target as its bounds and `run` takes its
//! addresses a host group at a time, so a large range plans in constant memory and
//! reports its first hosts while the rest wait.
//!
//! Over 600 lines: `run_with_limiter` orders one scan's phases over per-host state they
//! share (each phase's work is in the submodules below); the rest is the options and
//! the plan.
use std::{
    collections::{BTreeMap, HashMap},
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

pub mod batch;
pub mod config;
pub mod connect;
pub mod discover;
pub mod fingerprint;
pub mod hints;
pub mod inventory;
pub mod monitor;
pub mod neigh;
pub mod net;
pub mod ports;
pub mod rate;
pub mod rdns;
pub mod reply;
pub mod service;
pub mod syn;
pub mod target;
pub mod tcpopt;
pub mod text;
pub mod traceroute;
pub mod udp;
pub mod uptime;

pub use crate::event::scan::{HostState, PortState, ScanHost, ScanPort};

use crate::event::Proto;
use discover::DiscoveryOptions;
use ports::PortList;
use rate::RateLimiter;
use service::{DetectOptions, ServiceInfo};
use target::{Target, TargetError};

/// How TCP ports are scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// SYN scan when the process has CAP_NET_RAW, connect scan otherwise.
    Auto,
    /// Full handshakes through the socket API (no privilege needed).
    Connect,
    /// Half-open scan with a raw socket (needs CAP_NET_RAW).
    Syn,
}

/// Everything a scan needs to know; built once from flags or from the monitor's config.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub ports: PortList,
    pub method: Method,
    /// Global packets per second; 0 = no limit.
    pub rate_pps: u32,
    /// How long to wait for an answer to one probe.
    pub timeout: Duration,
    /// False: treat every target as up (nmap's `-Pn`).
    pub discovery: bool,
    pub discovery_opts: DiscoveryOptions,
    pub service_detection: bool,
    /// How long detecting one port's service may take (all its probes together).
    pub service_timeout: Duration,
    /// After a SYN scan, send timing probes to one open port per host (three SYNs,
    /// 100 ms apart, beside service detection) for the uptime guess.
    pub os_probes: bool,
    /// SYN-ACK signatures for the OS fingerprint (`fingerprint::load`).
    pub signatures: Arc<fingerprint::SignatureSets>,
    pub reverse_dns: bool,
    pub traceroute: bool,
    pub allow_public: bool,
    /// When set, only addresses inside these networks may be scanned.
    pub allow: Option<Vec<IpNet>>,
    /// Print a progress line on stderr when it is a terminal.
    pub progress: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            ports: PortList {
                tcp: ports::top(Proto::Tcp, 1000),
                udp: Vec::new(),
            },
            method: Method::Connect,
            rate_pps: DEFAULT_RATE_PPS,
            timeout: Duration::from_millis(1000),
            discovery: true,
            discovery_opts: DiscoveryOptions::default(),
            service_detection: true,
            service_timeout: DEFAULT_SERVICE_TIMEOUT,
            os_probes: false,
            signatures: Arc::default(),
            reverse_dns: true,
            traceroute: false,
            allow_public: false,
            allow: None,
            progress: false,
        }
    }
}

/// `netmon scan`'s default cap on packets per second: none. The SYN scan's congestion
/// window (`rate::Window`) and the connect scan's bounded connects in flight pace a
/// typed scan by what the target answers; `--rate` adds a hard cap, and the monitor of
/// `netmon run` keeps its own fixed budget (`scan.rate_pps`).
pub const DEFAULT_RATE_PPS: u32 = 0;

/// Where `netmon scan` looks for p0f's signatures by default (Debian's `p0f` package).
pub const DEFAULT_P0F_FP: &str = "/etc/p0f/p0f.fp";

/// How long service detection of one port may take by default (`--service-timeout`).
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(
        "refusing to scan {addr} (from `{token}`): it is outside the allowed networks ({allowed})"
    )]
    NotAllowed {
        token: String,
        addr: IpAddr,
        allowed: String,
    },
    #[error("nothing to scan: no target addresses")]
    NoTargets,
}

/// One address to scan and where it came from.
#[derive(Clone, Debug)]
pub struct Planned {
    pub addr: IpAddr,
    pub token: String,
    /// Other addresses of the same name.
    pub siblings: Vec<IpAddr>,
    /// The target was a single address or a name (its `host` event is written even
    /// when down); false for members of a range or network.
    pub single: bool,
}

/// The checked targets of one scan. It holds each target once (a range as its
/// bounds, a name as its resolved addresses) and `iter` produces the addresses as
/// the scan reaches them, so a /12 plans in the memory of one address.
#[derive(Debug)]
pub struct Plan {
    entries: Vec<PlanEntry>,
}

#[derive(Debug)]
struct PlanEntry {
    token: String,
    addrs: PlanAddrs,
}

#[derive(Debug)]
enum PlanAddrs {
    Range(target::Addrs),
    /// A name's addresses, resolved once.
    Name(Vec<IpAddr>),
}

impl PlanAddrs {
    fn iter(&self) -> Box<dyn Iterator<Item = IpAddr> + Send + '_> {
        match self {
            PlanAddrs::Range(a) => a.iter(),
            PlanAddrs::Name(v) => Box::new(v.iter().copied()),
        }
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            PlanAddrs::Range(a) => a.contains(ip),
            PlanAddrs::Name(v) => v.contains(ip),
        }
    }
}

impl Plan {
    /// Every address to scan, in target order, each once (an address that an earlier
    /// target already gave is skipped: asked of the earlier targets, not remembered).
    pub fn iter(&self) -> impl Iterator<Item = Planned> + Send + '_ {
        self.entries.iter().enumerate().flat_map(move |(i, e)| {
            let earlier = &self.entries[..i];
            let single = match &e.addrs {
                PlanAddrs::Range(a) => matches!(a, target::Addrs::One(_)),
                PlanAddrs::Name(_) => true,
            };
            e.addrs
                .iter()
                .filter(move |a| !earlier.iter().any(|p| p.addrs.contains(a)))
                .map(move |addr| Planned {
                    addr,
                    token: e.token.clone(),
                    // Only a name's addresses are one host's; a range's members are
                    // hosts of their own.
                    siblings: match &e.addrs {
                        PlanAddrs::Name(v) => v.iter().copied().filter(|a| *a != addr).collect(),
                        PlanAddrs::Range(_) => Vec::new(),
                    },
                    single,
                })
        })
    }
}

/// Resolves and checks the targets. Fails on the first address that may not be
/// scanned, naming the token it came from. Every address is checked here, one at a
/// time, before anything is probed; none is kept.
pub async fn plan(
    targets: &[(String, Target)],
    allow_public: bool,
    allow: Option<&[IpNet]>,
) -> Result<Plan, ScanError> {
    let mut entries = Vec::with_capacity(targets.len());
    for (token, t) in targets {
        let addrs = match t {
            Target::Addrs(a) => PlanAddrs::Range(a.clone()),
            Target::Name(n) => PlanAddrs::Name(target::resolve(n).await?),
        };
        for addr in addrs.iter() {
            target::check_allowed(token, addr, allow_public || allow.is_some())?;
            if let Some(nets) = allow
                && !nets.iter().any(|n| n.contains(&addr))
            {
                return Err(ScanError::NotAllowed {
                    token: token.clone(),
                    addr,
                    allowed: if nets.is_empty() {
                        "none configured".into()
                    } else {
                        nets.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                });
            }
        }
        entries.push(PlanEntry {
            token: token.clone(),
            addrs,
        });
    }
    if entries.is_empty() {
        return Err(ScanError::NoTargets);
    }
    Ok(Plan { entries })
}

/// How many addresses one group of a streamed scan (`run`) takes: enough that the
/// probes of a group keep the discovery and port scans busy, few enough that a
/// group's jobs and results stay bounded (about a million port probes).
pub fn host_group(opts: &ScanOptions) -> usize {
    ((1usize << 20) / opts.ports.len().max(1)).clamp(256, 4096)
}

/// What a streamed scan hands its caller as it goes.
#[derive(Debug)]
pub enum Found {
    /// Something the user should know, given once.
    Warning(String),
    /// A host's results (live hosts, and down hosts that were named singly), in
    /// target order.
    Host(Box<HostResult>),
}

/// Counters a progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub phase: Mutex<&'static str>,
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub open: AtomicU64,
}

impl Progress {
    fn start_phase(&self, phase: &'static str, total: u64) {
        *self.phase.lock().unwrap() = phase;
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }
}

/// One host's results.
#[derive(Clone, Debug)]
pub struct HostResult {
    pub host: ScanHost,
    /// Every scanned port's state (all states, for the inventory).
    pub states: BTreeMap<(Proto, u16), PortState>,
    /// Open (and UDP open|filtered) ports, with their services.
    pub ports: Vec<ScanPort>,
}

/// Everything a scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Live hosts, and down hosts that were named singly, in target order.
    pub hosts: Vec<HostResult>,
    pub up: usize,
    pub down: usize,
    pub elapsed: Duration,
    /// Things the user should know (fallbacks, exhaustion).
    pub warnings: Vec<String>,
    /// `connect` or `syn`.
    pub method: &'static str,
    pub probes_sent: u64,
}

/// Runs a whole scan over a plan, a group of `host_group` addresses at a time (as
/// nmap's host groups): each group goes through every phase and its hosts are handed
/// to `found` before the next group is taken from the plan, so results start at once
/// and memory follows the group, not the range. The outcome has the totals; its
/// `hosts` stay empty. An error from `found` stops the scan and is returned.
pub async fn run<E>(
    plan: &Plan,
    opts: &ScanOptions,
    mut found: impl FnMut(Found) -> Result<(), E>,
) -> Result<ScanOutcome, E> {
    let started = Instant::now();
    let rate = Arc::new(RateLimiter::new(opts.rate_pps));
    let mut total = ScanOutcome::default();
    let mut addrs = plan.iter().peekable();
    let group_size = host_group(opts);
    while addrs.peek().is_some() {
        let group: Vec<Planned> = addrs.by_ref().take(group_size).collect();
        let outcome = run_with_limiter(&group, opts, rate.clone()).await;
        for w in outcome.warnings {
            if !total.warnings.contains(&w) {
                found(Found::Warning(w.clone()))?;
                total.warnings.push(w);
            }
        }
        for h in outcome.hosts {
            found(Found::Host(Box::new(h)))?;
        }
        total.up += outcome.up;
        total.down += outcome.down;
        total.probes_sent += outcome.probes_sent;
        if total.method.is_empty() || outcome.method == "connect" {
            total.method = outcome.method;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Scans a list of addresses through every phase (one group of `run`; the monitor's
/// peers), sharing a rate limiter the caller owns.
pub async fn run_with_limiter(
    planned: &[Planned],
    opts: &ScanOptions,
    rate: Arc<RateLimiter>,
) -> ScanOutcome {
    let started = Instant::now();
    let mut outcome = ScanOutcome::default();
    let progress = Arc::new(Progress::default());
    let printer = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let p = progress.clone();
        tokio::spawn(async move { print_progress(p, started).await })
    });
    let nofile = net::raise_nofile();
    let concurrency = net::concurrency_for(nofile);
    // NETMON_SCAN_TIMING=1 prints how long each phase took (for benchmarking).
    let timing = std::env::var_os("NETMON_SCAN_TIMING").is_some();
    let mut phase_start = Instant::now();
    let mut phase_done = |name: &str| {
        if timing {
            crate::eline!(
                "netmon scan: {name} took {:.3} s",
                phase_start.elapsed().as_secs_f64()
            );
        }
        phase_start = Instant::now();
    };

    // 1. Discovery.
    let addrs: Vec<IpAddr> = planned.iter().map(|p| p.addr).collect();
    progress.start_phase("discovery", addrs.len() as u64);
    let alive: HashMap<IpAddr, discover::Alive> = if opts.discovery {
        let d = DiscoveryOptions {
            concurrency: opts.discovery_opts.concurrency.min(concurrency),
            ..opts.discovery_opts.clone()
        };
        let sweep = discover::sweep(&addrs, &d, rate.clone()).await;
        outcome.warnings.extend(sweep.warnings);
        sweep.alive
    } else {
        addrs
            .iter()
            .map(|&a| {
                (
                    a,
                    discover::Alive {
                        reason: "user".into(),
                        ttl: None,
                        rtt: None,
                    },
                )
            })
            .collect()
    };
    let live: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|a| alive.contains_key(a))
        .collect();
    phase_done("discovery");

    // 2. TCP ports.
    let mut states: HashMap<IpAddr, BTreeMap<(Proto, u16), PortState>> = HashMap::new();
    let mut syn_info: HashMap<IpAddr, reply::Reply, syn::FastHash> = HashMap::default();
    let mut stamps: HashMap<IpAddr, Vec<(u32, std::time::Instant)>, syn::FastHash> =
        HashMap::default();
    let use_syn = match opts.method {
        Method::Connect => false,
        Method::Syn | Method::Auto if net::has_net_raw() => true,
        Method::Syn => {
            outcome.warnings.push(
                "SYN scan needs CAP_NET_RAW (run as root): falling back to a connect scan".into(),
            );
            false
        }
        Method::Auto => {
            if !opts.ports.tcp.is_empty() {
                outcome.warnings.push(
                    "no CAP_NET_RAW: using a connect scan (run as root for a SYN scan)".into(),
                );
            }
            false
        }
    };
    outcome.method = if use_syn { "syn" } else { "connect" };
    let tcp_jobs: Vec<SocketAddr> = live
        .iter()
        .flat_map(|&a| opts.ports.tcp.iter().map(move |&p| SocketAddr::new(a, p)))
        .collect();
    outcome.probes_sent += tcp_jobs.len() as u64;
    progress.start_phase("tcp scan", tcp_jobs.len() as u64);
    let mut tcp_results: Option<Vec<(SocketAddr, PortState)>> = None;
    if use_syn && !tcp_jobs.is_empty() {
        // The slowest discovery round trip seeds the retransmission timeout.
        let rtt_hint = live
            .iter()
            .filter_map(|a| alive.get(a)?.rtt)
            .filter(|d| !d.is_zero())
            .max();
        match syn::scan(
            &tcp_jobs,
            opts.timeout,
            rtt_hint,
            rate.clone(),
            progress.clone(),
        )
        .await
        {
            Ok(r) => {
                if timing {
                    crate::eline!(
                        "netmon scan: SYN scan: {} retransmissions, {} window cuts",
                        r.retransmissions,
                        r.cuts
                    );
                }
                syn_info = r.replies;
                tcp_results = Some(r.states);
            }
            Err(e) => {
                outcome.warnings.push(format!(
                    "SYN scan unavailable ({e}): falling back to a connect scan"
                ));
                outcome.method = "connect";
            }
        }
    }
    let tcp_results = match tcp_results {
        Some(r) => r,
        None => {
            let trouble = Arc::new(connect::LocalTrouble::default());
            let r = connect::scan(
                tcp_jobs,
                opts.timeout,
                concurrency,
                rate.clone(),
                progress.clone(),
                trouble.clone(),
            )
            .await
            .unwrap_or_else(|e| {
                outcome.warnings.push(format!(
                    "the connect scan failed ({e}): its ports are reported filtered"
                ));
                HashMap::new()
            });
            let fd = trouble.fd_exhausted.load(Ordering::Relaxed);
            let lp = trouble.ports_exhausted.load(Ordering::Relaxed);
            if fd > 0 {
                outcome.warnings.push(format!(
                    "ran out of file descriptors {fd} times (RLIMIT_NOFILE {nofile}); those probes were retried"
                ));
            }
            if lp > 0 {
                outcome.warnings.push(format!(
                    "ran out of local ports {lp} times; those probes were retried (a lower --rate avoids it)"
                ));
            }
            r.into_iter().collect()
        }
    };
    for (sa, st) in tcp_results {
        states
            .entry(sa.ip())
            .or_default()
            .insert((Proto::Tcp, sa.port()), st);
    }
    phase_done("tcp scan");

    // 3. UDP ports.
    let mut udp_services: HashMap<(IpAddr, u16), ServiceInfo> = HashMap::new();
    if !opts.ports.udp.is_empty() {
        let jobs: Vec<SocketAddr> = live
            .iter()
            .flat_map(|&a| opts.ports.udp.iter().map(move |&p| SocketAddr::new(a, p)))
            .collect();
        outcome.probes_sent += jobs.len() as u64;
        progress.start_phase("udp scan", jobs.len() as u64);
        let sem = Arc::new(Semaphore::new(concurrency.min(256)));
        let mut set = JoinSet::new();
        for sa in jobs {
            let permit = sem.clone().acquire_owned().await.expect("open semaphore");
            rate.acquire().await;
            let (timeout, progress) = (opts.timeout, progress.clone());
            set.spawn(async move {
                let r = udp::probe(sa, timeout).await;
                drop(permit);
                progress.done.fetch_add(1, Ordering::Relaxed);
                (sa, r)
            });
        }
        while let Some(Ok((sa, (st, svc)))) = set.join_next().await {
            states
                .entry(sa.ip())
                .or_default()
                .insert((Proto::Udp, sa.port()), st);
            if let Some(svc) = svc {
                udp_services.insert((sa.ip(), sa.port()), svc);
            }
        }
    }

    // 4. Services on open TCP ports.
    let open_tcp: Vec<SocketAddr> = states
        .iter()
        .flat_map(|(ip, m)| {
            m.iter()
                .filter(|((proto, _), st)| *proto == Proto::Tcp && **st == PortState::Open)
                .map(move |((_, port), _)| SocketAddr::new(*ip, *port))
        })
        .collect();
    // Timing probes for the uptime guess run beside service detection.
    let timing_probes =
        (opts.os_probes && outcome.method == "syn" && !open_tcp.is_empty()).then(|| {
            let mut one_per_host: HashMap<IpAddr, SocketAddr> = HashMap::new();
            for sa in &open_tcp {
                one_per_host.entry(sa.ip()).or_insert(*sa);
            }
            let targets: Vec<SocketAddr> = one_per_host.into_values().collect();
            let rate = rate.clone();
            tokio::task::spawn_blocking(move || {
                syn::timestamp_probes(&targets, 3, Duration::from_millis(100), &rate)
            })
        });
    let mut tcp_services: HashMap<SocketAddr, ServiceInfo> = HashMap::new();
    if opts.service_detection && !open_tcp.is_empty() {
        progress.start_phase("services", open_tcp.len() as u64);
        let names: HashMap<IpAddr, String> = planned
            .iter()
            .filter(|p| p.token.parse::<IpAddr>().is_err() && p.single)
            .map(|p| (p.addr, p.token.clone()))
            .collect();
        let sem = Arc::new(Semaphore::new(64));
        let mut set = JoinSet::new();
        for sa in open_tcp {
            let permit = sem.clone().acquire_owned().await.expect("open semaphore");
            let d = DetectOptions {
                timeout: opts.service_timeout,
                host_name: names.get(&sa.ip()).cloned().unwrap_or_default(),
            };
            let (rate, progress) = (rate.clone(), progress.clone());
            set.spawn(async move {
                let s = service::detect(sa, &d, &rate).await;
                drop(permit);
                progress.done.fetch_add(1, Ordering::Relaxed);
                (sa, s)
            });
        }
        while let Some(Ok((sa, s))) = set.join_next().await {
            tcp_services.insert(sa, s);
        }
    }

    if let Some(h) = timing_probes {
        match h.await {
            Ok(Ok((more, replies))) => {
                for (ip, mut v) in more {
                    stamps.entry(ip).or_default().append(&mut v);
                }
                for (ip, r) in replies {
                    syn_info.entry(ip).or_insert(r);
                }
            }
            Ok(Err(e)) => outcome
                .warnings
                .push(format!("timing probes for the uptime guess failed: {e}")),
            Err(e) => outcome
                .warnings
                .push(format!("timing probes for the uptime guess failed: {e}")),
        }
    }
    phase_done("udp scan and services");
    // 5. Names, MACs, hints, routes.
    progress.start_phase("host details", live.len() as u64);
    let macs = neigh::table().unwrap_or_else(|e| {
        outcome
            .warnings
            .push(format!("{e}: hosts are reported without MAC addresses"));
        HashMap::new()
    });
    let mut dns: HashMap<IpAddr, String> = HashMap::new();
    if opts.reverse_dns {
        let mut set = JoinSet::new();
        for &a in &live {
            set.spawn(async move { (a, rdns::lookup(a, Duration::from_secs(2)).await) });
        }
        while let Some(Ok((a, n))) = set.join_next().await {
            if let Some(n) = n {
                dns.insert(a, n);
            }
        }
    }
    let mut traces: HashMap<IpAddr, Vec<crate::event::scan::TraceHop>> = HashMap::new();
    if opts.traceroute {
        for &a in live
            .iter()
            .filter(|a| alive.get(a).is_none_or(|al| al.reason != "localhost"))
        {
            match traceroute::trace(a, 30, opts.timeout, &rate).await {
                Ok(hops) => {
                    traces.insert(a, hops);
                }
                Err(e) => {
                    outcome
                        .warnings
                        .push(format!("traceroute to {a} failed: {e}"));
                    break;
                }
            }
        }
    }

    phase_done("host details");
    for p in planned {
        let Some(al) = alive.get(&p.addr) else {
            outcome.down += 1;
            if p.single {
                outcome.hosts.push(HostResult {
                    host: ScanHost {
                        addr: p.addr,
                        addresses: std::iter::once(p.addr)
                            .chain(p.siblings.iter().copied())
                            .collect(),
                        target: p.token.clone(),
                        state: HostState::Down,
                        reason: None,
                        mac: None,
                        name: None,
                        rtt_ms: None,
                        distance: None,
                        os_hint: None,
                        trace: None,
                        os: None,
                        uptime: None,
                        ports_scanned: 0,
                        open: 0,
                        closed: 0,
                        filtered: 0,
                    },
                    states: BTreeMap::new(),
                    ports: Vec::new(),
                });
            }
            continue;
        };
        outcome.up += 1;
        let st = states.remove(&p.addr).unwrap_or_default();
        let (ttl, window) = match syn_info.get(&p.addr) {
            Some(r) => (Some(r.ttl), Some(r.window)),
            None => (al.ttl, None),
        };
        let hints = hints::of_reply(ttl, window, al.reason == "localhost");
        let os = syn_info
            .get(&p.addr)
            .filter(|r| r.is_syn_ack() && al.reason != "localhost")
            .and_then(|r| fingerprint::best(&opts.signatures, r));
        let linux = os.as_ref().is_some_and(|o| o.family == "Linux");
        let uptime = stamps.get_mut(&p.addr).and_then(|v| {
            v.sort_by_key(|s| s.1);
            uptime::guess(v, std::time::Instant::now(), chrono::Utc::now(), linux)
        });
        let count = |f: &dyn Fn(PortState) -> bool| st.values().filter(|s| f(**s)).count();
        let mut ports = Vec::new();
        for (&(proto, port), &state) in &st {
            if !matches!(state, PortState::Open | PortState::OpenFiltered) {
                continue;
            }
            let svc = match proto {
                Proto::Tcp => tcp_services.remove(&SocketAddr::new(p.addr, port)),
                Proto::Udp => udp_services.remove(&(p.addr, port)),
            }
            .unwrap_or_else(|| ServiceInfo {
                name: ports::well_known(proto, port).map(str::to_owned),
                guessed: ports::well_known(proto, port).is_some(),
                ..ServiceInfo::default()
            });
            ports.push(ScanPort {
                addr: p.addr,
                port,
                proto,
                state,
                service: svc.name,
                version: svc.version,
                banner: svc.banner,
                service_guessed: svc.guessed,
            });
        }
        outcome.hosts.push(HostResult {
            host: ScanHost {
                addr: p.addr,
                addresses: std::iter::once(p.addr)
                    .chain(p.siblings.iter().copied())
                    .collect(),
                target: p.token.clone(),
                state: HostState::Up,
                reason: Some(al.reason.clone()),
                mac: macs.get(&p.addr).cloned(),
                name: dns.get(&p.addr).cloned(),
                rtt_ms: al.rtt.map(|d| d.as_secs_f64() * 1000.0),
                distance: hints.distance,
                os_hint: hints.os_hint,
                trace: traces.remove(&p.addr),
                os,
                uptime,
                ports_scanned: st.len(),
                open: count(&|s| s == PortState::Open),
                closed: count(&|s| s == PortState::Closed),
                filtered: count(&|s| matches!(s, PortState::Filtered | PortState::OpenFiltered)),
            },
            states: st,
            ports,
        });
    }
    if let Some(h) = printer {
        h.abort();
        eprint!("\r\x1b[2K");
    }
    outcome.elapsed = started.elapsed();
    outcome
}

async fn print_progress(p: Arc<Progress>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let phase = *p.phase.lock().unwrap();
        let (done, total) = (
            p.done.load(Ordering::Relaxed),
            p.total.load(Ordering::Relaxed),
        );
        let pct = if total == 0 {
            0.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        eprint!(
            "\r\x1b[2Knetmon scan: {phase} {done}/{total} ({pct:.0}%), {} open, {:.1} s",
            p.open.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests;
