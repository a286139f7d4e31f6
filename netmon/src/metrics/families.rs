//! The `netmon_*` families fed by events, and their update from one event
//! ([`Families::observe`], pure: no I/O, no clock). Every label is bounded by design:
//! directions, protocols, results, DNS types and codes from fixed lists (anything else
//! is `other`), rule names from the configuration, consumer and program names from
//! netmon itself, processes through [`super::top`]. Peer addresses, ports and names
//! are never labels.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use self::hot::{HotCounters, connection_slot, hot, proto_index};
use super::{
    risk::HostRisk,
    top::{TopPeers, TopProcesses},
};
use crate::event::{Connection, Direction, Event, EventBody, Proto, Stats};

mod hot;

/// DNS query types kept as label values; the rest count as `other`.
const QTYPES: [&str; 16] = [
    "A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "ANY", "CAA", "DS", "DNSKEY",
    "HTTPS", "SVCB", "NULL",
];
/// DNS response codes kept as label values (`none`: no response), the rest `other`.
const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];
/// Label values netmon makes from names it gets at run time (rules, programs,
/// consumers, capabilities) are cut to this many bytes.
const MAX_LABEL: usize = 64;

/// The families the event stream feeds; owned by the metrics thread.
pub struct Families {
    connections: IntCounterVec,
    udp_peers: IntCounterVec,
    listens: IntCounterVec,
    closes: IntCounterVec,
    bytes: IntCounterVec,
    packets: IntCounterVec,
    flows_active: IntGauge,
    flows_evicted: IntCounter,
    dns_queries: IntCounterVec,
    dns_latency: HistogramVec,
    alerts: IntCounterVec,
    alerts_by_severity: IntCounterVec,
    events: IntCounterVec,
    lost: IntCounterVec,
    malformed: IntCounter,
    skipped_runs: IntCounterVec,
    kernel_map_insert_failed: IntCounterVec,
    kernel_map_evicted: IntCounterVec,
    kernel_map_missed: IntCounterVec,
    dns_rate_limited: IntCounter,
    consumer_dropped: IntCounterVec,
    consumer_queued: IntGaugeVec,
    backend: IntGaugeVec,
    uptime: Gauge,
    scan_hosts: IntGaugeVec,
    scan_open_ports: IntGauge,
    scan_sweeps: IntCounter,
    scan_pings: IntCounter,
    scan_port_scans: IntCounter,
    risk: Arc<Mutex<HostRisk>>,
    top: Arc<Mutex<TopProcesses>>,
    /// `[metrics] peers` above 0 only.
    peers: Option<Arc<Mutex<TopPeers>>>,
    /// The counters every connection event moves, found once.
    hot: HotCounters,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid family");
    r.register(Box::new(c.clone())).expect("unique family");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid family");
    r.register(Box::new(g.clone())).expect("unique family");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid family");
    r.register(Box::new(c.clone())).expect("unique family");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid family");
    r.register(Box::new(g.clone())).expect("unique family");
    g
}

/// Raises a counter to `total` (a cumulative value netmon reports in `stats`).
fn raise(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn bounded(s: &str) -> &str {
    if s.len() <= MAX_LABEL {
        return s;
    }
    let mut end = MAX_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn direction_name(d: Option<Direction>) -> &'static str {
    match d {
        Some(Direction::Outbound) => "outbound",
        Some(Direction::Inbound) => "inbound",
        None => "unknown",
    }
}

fn one_of<'a>(value: &'a str, known: &[&'static str]) -> &'a str {
    if known.contains(&value) {
        value
    } else {
        "other"
    }
}

impl Families {
    /// Registers every event-fed family (and the per-process collector) in `r`.
    pub fn register(r: &Registry, top_limit: usize, grace_s: f64) -> Families {
        let top = Arc::new(Mutex::new(TopProcesses::new(top_limit, grace_s)));
        r.register(Box::new(super::top::Collector::new(
            top.clone(),
            &super::top::PROCESS_FAMILIES,
        )))
        .expect("unique family");
        let risk = Arc::new(Mutex::new(HostRisk::new(&[], super::risk::DEFAULT_HOSTS)));
        r.register(Box::new(super::risk::Collector::new(risk.clone())))
            .expect("unique family");

        let dns_latency = HistogramVec::new(
            HistogramOpts::new(
                "netmon_dns_latency_seconds",
                "Time from a DNS query to its response on the same socket.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["role"],
        )
        .expect("valid family");
        r.register(Box::new(dns_latency.clone()))
            .expect("unique family");
        let uptime = Gauge::new("netmon_uptime_seconds", "Seconds since netmon started.")
            .expect("valid family");
        r.register(Box::new(uptime.clone())).expect("unique family");
        let f = Families {
            connections: counter_vec(
                r,
                "netmon_connections_total",
                "TCP connections netmon saw begin: outbound `connect` (result established or failed) and inbound `accept`.",
                &["direction", "proto", "result"],
            ),
            udp_peers: counter_vec(
                r,
                "netmon_udp_peers_total",
                "UDP flows netmon saw begin (a process sending to a new peer).",
                &["direction"],
            ),
            listens: counter_vec(
                r,
                "netmon_listens_total",
                "Sockets that started listening.",
                &["proto"],
            ),
            closes: counter_vec(
                r,
                "netmon_closes_total",
                "Flows that ended (TCP close, UDP idle expiry).",
                &["proto"],
            ),
            bytes: counter_vec(
                r,
                "netmon_flow_bytes_total",
                "Payload bytes of flows that ended, by direction (counted at close).",
                &["direction", "proto"],
            ),
            packets: counter_vec(
                r,
                "netmon_flow_packets_total",
                "Packets of flows that ended, where the kernel counts them (counted at close).",
                &["direction", "proto"],
            ),
            flows_active: gauge(r, "netmon_flows_active", "Flows in netmon's flow table."),
            flows_evicted: counter(
                r,
                "netmon_flows_evicted_total",
                "Flows dropped from the table to stay under --max-flows.",
            ),
            dns_queries: counter_vec(
                r,
                "netmon_dns_queries_total",
                "DNS transactions by query type and response code (`none`: no response).",
                &["qtype", "rcode"],
            ),
            dns_latency,
            alerts: counter_vec(
                r,
                "netmon_alerts_total",
                "Alerts written, by rule and severity.",
                &["rule", "severity"],
            ),
            alerts_by_severity: counter_vec(
                r,
                "netmon_alerts_by_severity_total",
                "Alerts written, by severity (every severity present, 0 included).",
                &["severity"],
            ),
            events: counter_vec(
                r,
                "netmon_events_total",
                "Events netmon wrote, by type (from `stats.events`).",
                &["type"],
            ),
            lost: counter_vec(
                r,
                "netmon_events_lost_total",
                "Events the kernel could not hand over (ring buffer full), by type.",
                &["type"],
            ),
            malformed: counter(
                r,
                "netmon_records_malformed_total",
                "Records from the kernel that netmon could not decode.",
            ),
            skipped_runs: counter_vec(
                r,
                "netmon_skipped_runs_total",
                "Runs of netmon's eBPF programs the kernel skipped (recursion misses), by program.",
                &["program"],
            ),
            kernel_map_insert_failed: counter_vec(
                r,
                "netmon_kernel_map_insert_failed_total",
                "Inserts a kernel map of netmon's refused (full): that socket, flow or listener lost its process, by map.",
                &["map"],
            ),
            kernel_map_evicted: counter_vec(
                r,
                "netmon_kernel_map_evicted_total",
                "Entries a full LRU kernel map of netmon's dropped to make room, by map.",
                &["map"],
            ),
            kernel_map_missed: counter_vec(
                r,
                "netmon_kernel_map_missed_total",
                "Events the kernel sent without the process (or flow start) a map should have held, by map.",
                &["map"],
            ),
            dns_rate_limited: counter(
                r,
                "netmon_dns_rate_limited_total",
                "DNS packets the kernel did not copy because their process was over `[dns] rate_limit`.",
            ),
            consumer_dropped: counter_vec(
                r,
                "netmon_consumer_dropped_total",
                "Events a consumer of the pipeline missed because its queue was full.",
                &["consumer"],
            ),
            consumer_queued: gauge_vec(
                r,
                "netmon_consumer_queued",
                "Events waiting in a consumer's queue (at the last stats line).",
                &["consumer"],
            ),
            backend: gauge_vec(
                r,
                "netmon_backend_info",
                "The kernel hook family in use per capability (value 1).",
                &["capability", "backend"],
            ),
            uptime,
            scan_hosts: gauge_vec(
                r,
                "netmon_scan_hosts",
                "Hosts in the scanner's inventory, by state.",
                &["state"],
            ),
            scan_open_ports: gauge(
                r,
                "netmon_scan_open_ports",
                "Ports the scanner found open and has not seen close.",
            ),
            scan_sweeps: counter(r, "netmon_scan_sweeps_total", "Scanner sweeps."),
            scan_pings: counter(
                r,
                "netmon_scan_probes_total",
                "Scanner probes (pings) sent.",
            ),
            scan_port_scans: counter(r, "netmon_scan_port_scans_total", "Scanner port scans."),
            risk,
            top,
            peers: None,
            hot: HotCounters::default(),
        };
        f.initialise();
        f
    }

    /// Scores ports with `[rules.port_risk]`'s table (`extra` applied) and starts from
    /// the scanner's inventory, when it runs.
    pub fn set_risk(
        &mut self,
        extra: &[crate::rules::ports::RiskEntry],
        inventory: Option<&crate::scan::inventory::Inventory>,
    ) {
        let mut risk = HostRisk::new(extra, super::risk::DEFAULT_HOSTS);
        if let Some(inv) = inventory {
            risk.seed(inv);
        }
        self.scan_open_ports.set(risk.open_ports() as i64);
        *self.risk() = risk;
    }

    /// Adds the per-peer families (`[metrics] peers = limit`, above 0) to `r`.
    pub fn enable_peers(&mut self, r: &Registry, limit: usize, grace_s: f64) {
        let peers = Arc::new(Mutex::new(TopPeers::new(limit, grace_s)));
        r.register(Box::new(super::top::Collector::new(
            peers.clone(),
            &super::top::PEER_FAMILIES,
        )))
        .expect("unique family");
        self.peers = Some(peers);
    }

    /// The series every host has, present at 0 from the start (so a rate or a
    /// dashboard panel has data before the first event, and a missing series means a
    /// broken netmon, not a quiet host).
    fn initialise(&self) {
        for (direction, result) in [
            ("outbound", "established"),
            ("outbound", "failed"),
            ("inbound", "established"),
        ] {
            self.connections
                .with_label_values(&[direction, "tcp", result]);
        }
        for direction in ["outbound", "inbound"] {
            self.udp_peers.with_label_values(&[direction]);
        }
        for proto in ["tcp", "udp"] {
            self.listens.with_label_values(&[proto]);
            self.closes.with_label_values(&[proto]);
            for direction in ["sent", "received"] {
                self.bytes.with_label_values(&[direction, proto]);
                self.packets.with_label_values(&[direction, proto]);
            }
        }
        for qtype in ["A", "AAAA"] {
            for rcode in ["NOERROR", "NXDOMAIN", "SERVFAIL", "none"] {
                self.dns_queries.with_label_values(&[qtype, rcode]);
            }
        }
        self.dns_latency.with_label_values(&["client"]);
        for severity in ["info", "low", "medium", "high", "critical"] {
            self.alerts_by_severity.with_label_values(&[severity]);
        }
        for state in ["up", "down"] {
            self.scan_hosts.with_label_values(&[state]);
        }
    }

    /// Applies one event.
    pub fn observe(&mut self, event: &Event) {
        let ts = event.ts.timestamp_millis() as f64 / 1000.0;
        match &event.body {
            EventBody::Connect(c) if !c.existing => {
                let (slot, labels) = connection_slot(c, c.failed);
                hot(&mut self.hot.connections[slot], &self.connections, &labels).inc();
                self.process_and_peer_connection(c, ts);
            }
            EventBody::Accept(c) if !c.existing => {
                let (slot, labels) = connection_slot(c, false);
                hot(&mut self.hot.connections[slot], &self.connections, &labels).inc();
                self.process_and_peer_connection(c, ts);
            }
            EventBody::Udp(c) if !c.existing => {
                self.udp_peers
                    .with_label_values(&[direction_name(c.direction)])
                    .inc();
                self.process_and_peer_connection(c, ts);
            }
            EventBody::Listen(c) => {
                self.listens.with_label_values(&[proto_name(c.proto)]).inc();
            }
            EventBody::Close(c) => {
                let (proto, ix) = (proto_name(c.conn.proto), proto_index(c.conn.proto));
                let hot_counters = &mut self.hot;
                hot(&mut hot_counters.closes[ix], &self.closes, &[proto]).inc();
                let sent = c.bytes_sent.unwrap_or(0);
                let received = c.bytes_received.unwrap_or(0);
                hot(&mut hot_counters.bytes[ix], &self.bytes, &["sent", proto]).inc_by(sent);
                hot(
                    &mut hot_counters.bytes[2 + ix],
                    &self.bytes,
                    &["received", proto],
                )
                .inc_by(received);
                if let Some(p) = c.packets_sent {
                    hot(
                        &mut hot_counters.packets[ix],
                        &self.packets,
                        &["sent", proto],
                    )
                    .inc_by(p);
                }
                if let Some(p) = c.packets_received {
                    hot(
                        &mut hot_counters.packets[2 + ix],
                        &self.packets,
                        &["received", proto],
                    )
                    .inc_by(p);
                }
                self.top()
                    .process_bytes(c.conn.process.as_ref(), sent, received, ts);
                if let Some(peers) = &self.peers {
                    lock(peers).bytes(remote(&c.conn), sent, received, ts);
                }
            }
            EventBody::Dns(d) => {
                let rcode = d.rcode.as_deref().map_or("none", |r| one_of(r, &RCODES));
                self.dns_queries
                    .with_label_values(&[one_of(&d.qtype, &QTYPES), rcode])
                    .inc();
                if let Some(ms) = d.latency_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                    let role = match d.role {
                        crate::event::DnsRole::Client => "client",
                        crate::event::DnsRole::Server => "server",
                    };
                    self.dns_latency
                        .with_label_values(&[role])
                        .observe(ms / 1000.0);
                }
            }
            EventBody::Alert(a) => {
                self.alerts
                    .with_label_values(&[bounded(&a.rule), a.severity.name()])
                    .inc();
                self.alerts_by_severity
                    .with_label_values(&[a.severity.name()])
                    .inc();
            }
            EventBody::Probe(p) => {
                self.backend.reset();
                for c in &p.capabilities {
                    let backend = c.backend.as_deref().unwrap_or("none");
                    self.backend
                        .with_label_values(&[bounded(&c.capability), bounded(backend)])
                        .set(1);
                }
            }
            EventBody::Stats(s) => {
                self.stats(s);
                self.top().expire(ts);
                if let Some(peers) = &self.peers {
                    lock(peers).expire(ts);
                }
            }
            EventBody::Port(p) if p.state == crate::event::scan::PortState::Open => {
                self.port_open(p.addr, p.port, p.proto);
            }
            EventBody::PortOpened(p) => self.port_open(p.addr, p.port, p.proto),
            EventBody::PortClosed(p) => {
                let mut risk = self.risk();
                risk.close(p.addr, p.port, p.proto);
                self.scan_open_ports.set(risk.open_ports() as i64);
            }
            _ => {}
        }
    }

    fn top(&self) -> std::sync::MutexGuard<'_, TopProcesses> {
        lock(&self.top)
    }

    fn risk(&self) -> std::sync::MutexGuard<'_, HostRisk> {
        lock(&self.risk)
    }

    fn process_and_peer_connection(&self, c: &Connection, ts: f64) {
        self.top().process_connection(c.process.as_ref(), ts);
        if let Some(peers) = &self.peers {
            lock(peers).connection(remote(c), ts);
        }
    }

    fn port_open(&mut self, addr: IpAddr, port: u16, proto: Proto) {
        let mut risk = self.risk();
        risk.open(addr, port, proto);
        self.scan_open_ports.set(risk.open_ports() as i64);
    }

    fn stats(&mut self, s: &Stats) {
        self.uptime.set(s.uptime_s);

        raise_all(&self.events, &s.events);
        raise_all(&self.lost, &s.lost_by_type);
        raise(&self.malformed, s.malformed);
        raise_all(&self.skipped_runs, &s.skipped_runs_by_program);
        for (map, k) in &s.kernel_maps {
            let map = [bounded(map)];
            raise(
                &self.kernel_map_insert_failed.with_label_values(&map),
                k.insert_failed,
            );
            raise(&self.kernel_map_evicted.with_label_values(&map), k.evicted);
            raise(&self.kernel_map_missed.with_label_values(&map), k.missed);
        }
        if let Some(d) = &s.dns {
            raise(&self.dns_rate_limited, d.rate_limited);
        }
        for (name, c) in &s.consumers {
            let name = bounded(name);
            raise(&self.consumer_dropped.with_label_values(&[name]), c.dropped);
            self.consumer_queued
                .with_label_values(&[name])
                .set(c.queued.min(i64::MAX as u64) as i64);
        }
        if let Some(f) = &s.flows {
            self.flows_active.set(f.active.min(i64::MAX as u64) as i64);
            raise(&self.flows_evicted, f.evicted);
        }
        if let Some(scan) = &s.scan {
            let up = scan.hosts_up.min(scan.hosts);
            self.scan_hosts.with_label_values(&["up"]).set(up as i64);
            self.scan_hosts
                .with_label_values(&["down"])
                .set((scan.hosts - up) as i64);
            raise(&self.scan_sweeps, scan.sweeps);
            raise(&self.scan_pings, scan.pings);
            raise(&self.scan_port_scans, scan.port_scans);
        }
    }
}

/// A panic while holding one of these cannot leave the counts half-updated in a way
/// that matters for metrics: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The other end of a flow: the destination of an outbound one, the source of an
/// inbound one (the destination when the source is unknown).
fn remote(c: &Connection) -> IpAddr {
    match (c.direction, &c.src) {
        (Some(Direction::Inbound), Some(src)) => src.ip,
        _ => c.dst.ip,
    }
}

fn raise_all(family: &IntCounterVec, totals: &BTreeMap<String, u64>) {
    for (key, total) in totals {
        raise(&family.with_label_values(&[bounded(key)]), *total);
    }
}

#[cfg(test)]
mod tests;
