//! The scanner inside `netmon run`: remote peers seen in flows (when inside
//! `scan.allow`) and the configured networks are discovered, port-scanned and pinged
//! on three intervals, and the inventory's change events come out.
//!
//! `netmon run` spawns [`Monitor::run`] beside its event loop, feeds it flow peers
//! and emits the events it sends back (see `pipeline/scanner.rs`); the tests drive
//! [`Monitor::tick`] directly. With `scan.allow` empty it is inert.
//!
//! `Schedule` (pure) decides what is due; it never lets a host be probed more often
//! than its interval. One `RateLimiter` covers everything the monitor sends.
use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{
    Method, Planned, ScanOptions,
    config::{ConfigError, MonitorSettings, ScanConfig},
    discover::{self, DiscoveryOptions},
    hints,
    inventory::{Inventory, PortObservation, Sighting},
    neigh,
    ports::PortList,
    rate::RateLimiter,
    rdns, target,
};
pub use crate::event::scan::MonitorCounters;
use crate::{event::Event, system};

/// What is due at a moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Sweep the configured networks.
    pub discovery: bool,
    /// New peers (from flows) to discover now.
    pub new_peers: Vec<IpAddr>,
    /// Known hosts whose liveness check is due.
    pub ping: Vec<IpAddr>,
    /// Live hosts whose port scan is due.
    pub port_scan: Vec<IpAddr>,
}

/// When each thing was last done. Pure: time comes in.
#[derive(Debug, Default)]
pub struct Schedule {
    pub discovery: Duration,
    pub port_scan: Duration,
    pub ping: Duration,
    last_sweep: Option<Instant>,
    /// Last probe of any kind sent to a host (discovery or liveness).
    last_probe: HashMap<IpAddr, Instant>,
    last_port_scan: HashMap<IpAddr, Instant>,
}

impl Schedule {
    pub fn new(discovery: Duration, port_scan: Duration, ping: Duration) -> Schedule {
        Schedule {
            discovery,
            port_scan,
            ping,
            ..Schedule::default()
        }
    }

    fn elapsed(last: Option<&Instant>, every: Duration, now: Instant) -> bool {
        last.is_none_or(|t| now.saturating_duration_since(*t) >= every)
    }

    /// What is due at `now`, given the known hosts (and which are up) and the peers
    /// waiting for discovery.
    pub fn due(&self, now: Instant, known: &[(IpAddr, bool)], peers: &BTreeSet<IpAddr>) -> Due {
        let mut d = Due {
            discovery: Self::elapsed(self.last_sweep.as_ref(), self.discovery, now),
            ..Due::default()
        };
        let known_set: std::collections::HashSet<IpAddr> = known.iter().map(|(a, _)| *a).collect();
        for p in peers {
            // A new peer is discovered once per discovery interval at most.
            if !known_set.contains(p) && Self::elapsed(self.last_probe.get(p), self.discovery, now)
            {
                d.new_peers.push(*p);
            }
        }
        for &(a, up) in known {
            if Self::elapsed(self.last_probe.get(&a), self.ping, now) {
                d.ping.push(a);
            }
            if up && Self::elapsed(self.last_port_scan.get(&a), self.port_scan, now) {
                d.port_scan.push(a);
            }
        }
        d
    }

    pub fn swept(&mut self, now: Instant) {
        self.last_sweep = Some(now);
    }

    pub fn probed(&mut self, a: IpAddr, now: Instant) {
        self.last_probe.insert(a, now);
    }

    pub fn port_scanned(&mut self, a: IpAddr, now: Instant) {
        self.last_port_scan.insert(a, now);
    }

    /// The earliest moment something may become due.
    pub fn next_due(&self, known: &[(IpAddr, bool)], has_peers: bool, now: Instant) -> Instant {
        let mut next = self.last_sweep.map_or(now, |t| t + self.discovery);
        for &(a, up) in known {
            next = next.min(self.last_probe.get(&a).map_or(now, |t| *t + self.ping));
            if up {
                next = next.min(
                    self.last_port_scan
                        .get(&a)
                        .map_or(now, |t| *t + self.port_scan),
                );
            }
        }
        if has_peers {
            next = next.min(now + Duration::from_millis(200));
        }
        next.max(now)
    }
}

/// The monitor: owns the inventory, the schedule and the rate limiter.
pub struct Monitor {
    settings: MonitorSettings,
    inventory: Inventory,
    schedule: Schedule,
    rate: Arc<RateLimiter>,
    peers: BTreeSet<IpAddr>,
    host: std::sync::Arc<str>,
    pub counters: MonitorCounters,
    /// Addresses of the configured networks, expanded once.
    network_addrs: Vec<IpAddr>,
    /// SYN-ACK signatures: Debian's p0f.fp when installed, and the built-in ones.
    signatures: Arc<super::fingerprint::SignatureSets>,
}

impl Monitor {
    /// Checks the config and loads the inventory from the state file when there is one.
    pub fn new(cfg: &ScanConfig) -> Result<Monitor, ConfigError> {
        let settings = cfg.validate()?;
        let inventory = load_or_set_aside(&settings.raw.state_file);
        let network_addrs = settings
            .raw
            .networks
            .iter()
            .flat_map(target::net_hosts)
            .collect();
        let signatures =
            super::fingerprint::load(Some(std::path::Path::new(super::DEFAULT_P0F_FP)), false)
                .map(|(sets, _)| sets)
                .unwrap_or_default();
        Ok(Monitor {
            signatures: Arc::new(signatures),
            schedule: Schedule::new(
                settings.raw.discovery_interval,
                settings.raw.port_scan_interval,
                settings.raw.ping_interval,
            ),
            rate: Arc::new(RateLimiter::new(settings.raw.rate_pps)),
            inventory,
            settings,
            peers: BTreeSet::new(),
            host: system::hostname().into(),
            counters: MonitorCounters::default(),
            network_addrs,
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled()
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// A remote address seen in a flow. Ignored (and counted) outside `scan.allow`;
    /// returns whether it was taken.
    pub fn observe_peer(&mut self, ip: IpAddr) -> bool {
        if !self.settings.raw.flow_peers || !self.settings.allows(&ip) {
            self.counters.peers_outside_allow += 1;
            return false;
        }
        if self.inventory.hosts.contains_key(&ip) {
            return true;
        }
        if self.inventory.hosts.len() + self.peers.len() >= self.settings.raw.max_hosts {
            self.counters.peers_over_limit += 1;
            return false;
        }
        self.peers.insert(ip);
        true
    }

    fn known(&self) -> Vec<(IpAddr, bool)> {
        self.inventory
            .hosts()
            .map(|h| (h.addr, h.state == super::HostState::Up))
            .collect()
    }

    /// When `tick` next has work.
    pub fn next_due(&self) -> Instant {
        if !self.enabled() {
            return Instant::now() + Duration::from_secs(3600);
        }
        self.schedule
            .next_due(&self.known(), !self.peers.is_empty(), Instant::now())
    }

    /// Does whatever is due; returns the change events. Writes the state file when
    /// something changed.
    pub async fn tick(&mut self) -> Vec<Event> {
        if !self.enabled() {
            return Vec::new();
        }
        let now = Instant::now();
        let due = self.schedule.due(now, &self.known(), &self.peers);
        let mut events = Vec::new();
        let cfg = self.settings.raw.clone();

        // Discovery: configured networks when due, plus new flow peers.
        let mut sweep_addrs: Vec<IpAddr> = Vec::new();
        if due.discovery {
            sweep_addrs.extend(self.network_addrs.iter().copied());
            self.schedule.swept(now);
            self.counters.sweeps += 1;
        }
        for p in &due.new_peers {
            self.peers.remove(p);
        }
        sweep_addrs.extend(due.new_peers.iter().copied());
        // Known hosts due a ping are checked in the same sweep, with their open ports
        // as extra TCP probes.
        let mut ping_ports: Vec<u16> = discover::DEFAULT_TCP_PING_PORTS.to_vec();
        for a in &due.ping {
            if let Some(h) = self.inventory.get(a) {
                ping_ports.extend(
                    h.ports
                        .values()
                        .filter(|p| {
                            p.state == super::PortState::Open && p.proto == crate::event::Proto::Tcp
                        })
                        .map(|p| p.port),
                );
            }
        }
        ping_ports.sort_unstable();
        ping_ports.dedup();
        let known_due: BTreeSet<IpAddr> = due.ping.iter().copied().collect();
        let mut all: BTreeSet<IpAddr> = sweep_addrs.into_iter().collect();
        all.extend(known_due.iter().copied());
        // Everything probed must be inside `allow` (networks were checked at start;
        // peers on entry; this is the last line of defence).
        let all: Vec<IpAddr> = all
            .into_iter()
            .filter(|a| self.settings.allows(a))
            .collect();
        if !all.is_empty() {
            let opts = DiscoveryOptions {
                timeout: cfg.timeout,
                tcp_ports: ping_ports,
                icmp: true,
                concurrency: 256,
            };
            let sweep = discover::sweep(&all, &opts, self.rate.clone()).await;
            self.counters.pings += all.len() as u64;
            // Without the table the hosts only lack their MAC addresses: counted.
            let macs = neigh::table().unwrap_or_else(|_| {
                self.counters.neighbour_errors += 1;
                HashMap::new()
            });
            // Names for live hosts that have none yet, looked up side by side.
            let mut names: HashMap<IpAddr, String> = HashMap::new();
            if cfg.reverse_dns {
                let mut set = tokio::task::JoinSet::new();
                for a in sweep.alive.keys().copied() {
                    if self.inventory.get(&a).is_none_or(|h| h.name.is_none()) {
                        set.spawn(
                            async move { (a, rdns::lookup(a, Duration::from_secs(2)).await) },
                        );
                    }
                }
                while let Some(Ok((a, n))) = set.join_next().await {
                    if let Some(n) = n {
                        names.insert(a, n);
                    }
                }
            }
            let stamp = Utc::now();
            for &a in &all {
                self.schedule.probed(a, now);
                match sweep.alive.get(&a) {
                    Some(alive) => {
                        let name = names.remove(&a);
                        let hints = hints::of_reply(alive.ttl, None, alive.reason == "localhost");
                        let s = Sighting {
                            reason: alive.reason.clone(),
                            mac: macs.get(&a).cloned(),
                            name,
                            os_hint: hints.os_hint,
                            distance: hints.distance,
                            source: if self.network_addrs.contains(&a) {
                                "network"
                            } else {
                                "flow"
                            }
                            .into(),
                        };
                        events.extend(self.inventory.host_alive(a, &s, stamp));
                    }
                    None => {
                        events.extend(self.inventory.host_silent(
                            a,
                            "no reply to ICMP echo or TCP probes",
                            cfg.down_after,
                            stamp,
                        ));
                    }
                }
            }
        }

        // Port scans of live hosts that are due (including ones just found).
        let due_scans = self
            .schedule
            .due(Instant::now(), &self.known(), &BTreeSet::new())
            .port_scan;
        if !due_scans.is_empty() {
            let planned: Vec<Planned> = due_scans
                .iter()
                .filter(|a| self.settings.allows(a))
                .map(|&addr| Planned {
                    addr,
                    token: addr.to_string(),
                    siblings: Vec::new(),
                    single: true,
                })
                .collect();
            let opts = ScanOptions {
                ports: self.settings.ports.clone(),
                // A SYN scan when the scanner kept CAP_NET_RAW (`privileges.rs`): its
                // SYN-ACKs give the inventory an OS fingerprint and an uptime guess.
                method: if super::net::has_net_raw() {
                    Method::Syn
                } else {
                    Method::Connect
                },
                rate_pps: cfg.rate_pps,
                timeout: cfg.timeout,
                discovery: false,
                discovery_opts: DiscoveryOptions::default(),
                service_detection: cfg.service_detection,
                service_timeout: (cfg.timeout * 2).max(super::DEFAULT_SERVICE_TIMEOUT),
                reverse_dns: false,
                traceroute: false,
                allow_public: false,
                allow: Some(cfg.allow.clone()),
                progress: false,
                os_probes: true,
                signatures: self.signatures.clone(),
            };
            let outcome = super::run_with_limiter(&planned, &opts, self.rate.clone()).await;
            self.counters.port_scans += planned.len() as u64;
            let stamp = Utc::now();
            let done = Instant::now();
            for h in outcome.hosts {
                self.schedule.port_scanned(h.host.addr, done);
                let mut obs: Vec<PortObservation> = Vec::new();
                let mut services: HashMap<(crate::event::Proto, u16), super::service::ServiceInfo> =
                    HashMap::new();
                for p in &h.ports {
                    services.insert(
                        (p.proto, p.port),
                        super::service::ServiceInfo {
                            name: p.service.clone(),
                            version: p.version.clone(),
                            banner: p.banner.clone(),
                            guessed: p.service_guessed,
                        },
                    );
                }
                for (&(proto, port), &state) in &h.states {
                    obs.push(PortObservation {
                        port,
                        proto,
                        state,
                        service: services.remove(&(proto, port)).unwrap_or_default(),
                    });
                }
                events.extend(self.inventory.ports_scanned(h.host.addr, &obs, stamp));
                self.inventory.host_details(
                    h.host.addr,
                    h.host.os.as_ref(),
                    h.host.uptime.as_ref(),
                );
            }
        }

        if (!events.is_empty() || due.discovery)
            && save_state(&cfg.state_file, &self.inventory).is_err()
        {
            self.counters.state_write_errors += 1;
        }
        let ts = Utc::now();
        events
            .into_iter()
            .map(|body| Event {
                ts,
                host: self.host.clone(),
                body,
            })
            .collect()
    }

    /// The counters, with the inventory's current host counts.
    pub fn counters(&self) -> MonitorCounters {
        let mut c = self.counters.clone();
        c.hosts = self.inventory.hosts.len() as u64;
        c.hosts_up = self
            .inventory
            .hosts()
            .filter(|h| h.state == super::HostState::Up)
            .count() as u64;
        c
    }

    /// Runs until `peers` closes or `events` is dropped: takes flow peers, ticks when
    /// due, sends the change events, and publishes its counters after each tick.
    pub async fn run(
        mut self,
        mut peers: mpsc::Receiver<IpAddr>,
        events: mpsc::Sender<Event>,
        counters: watch::Sender<MonitorCounters>,
    ) {
        counters.send_replace(self.counters());
        loop {
            let next = self.next_due();
            tokio::select! {
                p = peers.recv() => match p {
                    Some(ip) => {
                        if !self.observe_peer(ip) {
                            let c = &self.counters;
                            counters.send_modify(|p| {
                                p.peers_outside_allow = c.peers_outside_allow;
                                p.peers_over_limit = c.peers_over_limit;
                            });
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => {
                    let changes = self.tick().await;
                    counters.send_replace(self.counters());
                    for e in changes {
                        if events.send(e).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The port list scans use.
    pub fn ports(&self) -> &PortList {
        &self.settings.ports
    }
}

/// Reads the inventory from its state file.
pub fn load_state(path: &Path) -> io::Result<Inventory> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The inventory in `path` to start from: none when the file is missing; when it
/// cannot be read as an inventory, the file is renamed aside
/// (`<path>.corrupt-<unix time>`) with a warning, never silently replaced.
pub fn load_or_set_aside(path: &Path) -> Inventory {
    match load_state(path) {
        Ok(inv) => inv,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Inventory::new(),
        Err(e) => {
            let aside = aside_name(path, Utc::now().timestamp());
            match std::fs::rename(path, &aside) {
                Ok(()) => crate::eline!(
                    "netmon: warning: the scanner's state file {} cannot be read ({e}); kept as {} and started with an empty inventory",
                    path.display(),
                    aside.display()
                ),
                Err(r) => crate::eline!(
                    "netmon: warning: the scanner's state file {} cannot be read ({e}) nor set aside ({r}); starting with an empty inventory, the file is left as it is until the next save",
                    path.display()
                ),
            }
            Inventory::new()
        }
    }
}

fn aside_name(path: &Path, unix: i64) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{unix}"));
    name.into()
}

/// Writes the inventory atomically and privately: a new temporary file beside it
/// (0600, created exclusively and never through a symbolic link), synced, renamed over
/// the old one, and the directory synced, so a crash leaves the old or the new file,
/// whole.
pub fn save_state(path: &Path, inv: &Inventory) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let data = serde_json::to_vec_pretty(inv).map_err(io::Error::other)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    // A stale temporary file of an earlier run of this pid: ours to replace (a
    // symbolic link is removed, not followed).
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
