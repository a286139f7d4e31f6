//! Detection rules: events in, alerts out. Pure: no aya, no I/O (what a rule needs to
//! know about a process beyond the event comes through [`ProcessResolver`]); time is
//! the events' own `ts`, so `netmon replay` gives the same alerts as the live run.
//!
//! Each rule turns an event into zero or more [`Hit`]s; the [`Engine`] applies the
//! cooldown per condition (rule plus what it is about) and counts the hits it held
//! back, reporting them in the next alert's `hits`.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub mod config;
pub mod connections;
pub mod custom;
pub mod dns_tunnel;
pub mod listeners;
pub mod matchers;
pub mod ports;

pub use config::RulesConfig;
pub use matchers::{NoResolver, ProcessResolver};

use crate::event::{
    Alert, Connection, Direction, Endpoint, Event, EventBody, FlowSample, ProcessInfo, RuleStats,
    Severity,
};

/// Flows an alert carries at most.
pub const MAX_SAMPLES: usize = 5;

/// One rule firing on one condition, before the cooldown decides whether it alerts.
#[derive(Clone, Debug)]
pub struct Hit {
    pub rule: String,
    pub severity: Severity,
    /// What the hit is about (`pid=42 port=31337`); with the rule, the cooldown's key.
    pub condition: String,
    pub summary: String,
    pub recommendation: String,
    pub process: Option<ProcessInfo>,
    pub flows: Vec<FlowSample>,
    pub score: Option<u32>,
    pub details: BTreeMap<String, serde_json::Value>,
    /// Seconds this condition stays quiet after an alert.
    pub cooldown_s: u64,
}

/// A detection rule.
pub trait Rule {
    fn name(&self) -> &str;
    /// Looks at one event; pushes a hit for each condition it fires on.
    fn check(&mut self, ev: &Event, resolver: &mut dyn ProcessResolver, hits: &mut Vec<Hit>);
}

/// The state of one condition's cooldown.
struct Cooldown {
    last_alert: DateTime<Utc>,
    cooldown_s: u64,
    /// Hits since the last alert.
    held: u64,
}

/// All enabled rules, the cooldowns and the counters.
pub struct Engine {
    rules: Vec<Box<dyn Rule>>,
    cooldowns: HashMap<String, Cooldown>,
    resolver: Box<dyn ProcessResolver>,
    pub stats: RuleStats,
    hits: Vec<Hit>,
}

const MAX_COOLDOWNS: usize = 100_000;

impl Engine {
    /// The rules `cfg` enables (none when `rules.enabled` is false).
    pub fn new(cfg: &RulesConfig, resolver: Box<dyn ProcessResolver>) -> Engine {
        Engine::with_connections(cfg, resolver, Box::new(connections::ConnTable::default()))
    }

    /// As [`Engine::new`], with HIGH_CONNECTION_COUNT counting active connections with
    /// `table` (`netmon snapshot` knows them all at once).
    pub fn with_connections(
        cfg: &RulesConfig,
        resolver: Box<dyn ProcessResolver>,
        table: Box<dyn connections::ActiveConnections>,
    ) -> Engine {
        let mut rules: Vec<Box<dyn Rule>> = Vec::new();
        if cfg.enabled {
            let cd = cfg.cooldown_s;
            if cfg.suspicious_port.enabled {
                rules.push(Box::new(ports::SuspiciousPort::new(
                    &cfg.suspicious_port,
                    cd,
                )));
            }
            if cfg.high_connection_count.enabled {
                rules.push(Box::new(connections::HighConnectionCount::new(
                    &cfg.high_connection_count,
                    cd,
                    table,
                )));
            }
            if cfg.external_connections.enabled {
                rules.push(Box::new(connections::ExternalConnections::new(
                    &cfg.external_connections,
                    cd,
                )));
            }
            if cfg.unusual_listeners.enabled {
                rules.push(Box::new(listeners::UnusualListeners::new(
                    &cfg.unusual_listeners,
                    cd,
                )));
            }
            if cfg.dns_tunneling.enabled {
                rules.push(Box::new(dns_tunnel::DnsTunneling::new(
                    &cfg.dns_tunneling,
                    cd,
                )));
            }
            if cfg.port_risk.enabled {
                rules.push(Box::new(ports::PortRisk::new(&cfg.port_risk, cd)));
            }
            for c in cfg.custom.iter().filter(|c| c.enabled) {
                rules.push(Box::new(custom::CustomRule::new(c, cd)));
            }
        }
        Engine {
            rules,
            cooldowns: HashMap::new(),
            resolver,
            stats: RuleStats::default(),
            hits: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Names of the rules that run, in the order they run.
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name().to_owned()).collect()
    }

    /// Runs every rule on `ev`; pushes the alerts that pass their cooldown to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<Event>) {
        if matches!(
            ev.body,
            EventBody::Alert(_) | EventBody::Stats(_) | EventBody::Probe(_)
        ) {
            return;
        }
        let mut hits = std::mem::take(&mut self.hits);
        for rule in &mut self.rules {
            rule.check(ev, self.resolver.as_mut(), &mut hits);
        }
        for hit in hits.drain(..) {
            if let Some(alert) = self.cool(ev.ts, hit) {
                out.push(Event {
                    ts: ev.ts,
                    host: ev.host.clone(),
                    body: EventBody::Alert(alert),
                });
            }
        }
        self.hits = hits;
    }

    /// Applies the condition's cooldown: an alert, or a counted hit held back.
    fn cool(&mut self, ts: DateTime<Utc>, hit: Hit) -> Option<Alert> {
        let key = format!("{}:{}", hit.rule, hit.condition);
        if self.cooldowns.len() >= MAX_COOLDOWNS {
            self.cooldowns.retain(|_, c| {
                (ts - c.last_alert).num_seconds() < c.cooldown_s as i64 || c.held > 0
            });
            if self.cooldowns.len() >= MAX_COOLDOWNS {
                self.cooldowns.clear();
            }
        }
        let hits = match self.cooldowns.get_mut(&key) {
            Some(c) if (ts - c.last_alert).num_milliseconds() < (c.cooldown_s as i64) * 1000 => {
                c.held += 1;
                self.stats.suppressed += 1;
                return None;
            }
            Some(c) => {
                let hits = c.held + 1;
                c.held = 0;
                c.last_alert = ts;
                c.cooldown_s = hit.cooldown_s;
                hits
            }
            None => {
                self.cooldowns.insert(
                    key.clone(),
                    Cooldown {
                        last_alert: ts,
                        cooldown_s: hit.cooldown_s,
                        held: 0,
                    },
                );
                1
            }
        };
        self.stats.alerts += 1;
        *self.stats.by_rule.entry(hit.rule.clone()).or_default() += 1;
        Some(Alert {
            rule: hit.rule,
            severity: hit.severity,
            summary: hit.summary,
            recommendation: hit.recommendation,
            process: hit.process,
            flows: hit.flows,
            key,
            hits,
            score: hit.score,
            details: hit.details,
        })
    }
}

/// The parts of a connection event rules look at.
pub struct FlowView<'a> {
    pub kind: &'static str,
    pub conn: &'a Connection,
    /// The other side (null for `listen`).
    pub remote: Option<&'a IpAddr>,
    /// The service's port: destination of an outbound flow, local port of an inbound
    /// one or a listener.
    pub service_port: u16,
}

/// Connection events rules check: connect, accept, udp, listen (not close).
pub fn flow_view(ev: &Event) -> Option<FlowView<'_>> {
    let (kind, conn) = match &ev.body {
        EventBody::Connect(c) => ("connect", c),
        EventBody::Accept(c) => ("accept", c),
        EventBody::Udp(c) => ("udp", c),
        EventBody::Listen(c) => ("listen", c),
        _ => return None,
    };
    let remote = match kind {
        "accept" => conn.src.as_ref().map(|e| &e.ip),
        "listen" => None,
        _ => Some(&conn.dst.ip),
    };
    Some(FlowView {
        kind,
        conn,
        remote,
        service_port: conn.dst.port,
    })
}

/// The sample an alert carries for a connection event.
pub fn sample_of(ev: &Event) -> Option<FlowSample> {
    match &ev.body {
        EventBody::Dns(d) => Some(FlowSample {
            ts: ev.ts,
            kind: "dns".into(),
            proto: d.proto,
            direction: Some(match d.role {
                crate::event::DnsRole::Client => Direction::Outbound,
                crate::event::DnsRole::Server => Direction::Inbound,
            }),
            src: Some(d.src.clone()),
            dst: Endpoint {
                name: Some(d.query.clone()),
                ..d.dst.clone()
            },
        }),
        _ => {
            let c = ev.body.connection()?;
            Some(FlowSample {
                ts: ev.ts,
                kind: ev.body.type_name().into(),
                proto: c.proto,
                direction: c.direction,
                src: c.src.clone(),
                dst: c.dst.clone(),
            })
        }
    }
}

/// `comm[pid]`, or `an unknown process`, for summaries.
pub fn who(p: Option<&ProcessInfo>) -> String {
    match p {
        Some(p) => format!("{}[{}]", p.comm, p.pid),
        None => "an unknown process".into(),
    }
}

pub fn pid_of(p: Option<&ProcessInfo>) -> String {
    p.map_or_else(|| "unknown".into(), |p| p.pid.to_string())
}

/// Keeps the last `MAX_SAMPLES` items.
pub fn push_sample(samples: &mut Vec<FlowSample>, s: FlowSample) {
    if samples.len() >= MAX_SAMPLES {
        samples.remove(0);
    }
    samples.push(s);
}

/// One line of `netmon rules list`.
#[derive(Clone, Debug, Serialize)]
pub struct RuleInfo {
    pub rule: String,
    pub enabled: bool,
    /// Fixed severity, or `by score` for PORT_RISK without an override.
    pub severity: String,
    pub cooldown_s: u64,
    /// The rule's effective parameters.
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The effective rules of a configuration, built-in first, then custom ones.
pub fn describe(cfg: &RulesConfig) -> Vec<RuleInfo> {
    use serde_json::json;
    let on = |enabled: bool| cfg.enabled && enabled;
    let sev = |s: Option<Severity>, d: Severity| s.unwrap_or(d).name().to_owned();
    let cd = |c: Option<u64>| c.unwrap_or(cfg.cooldown_s);
    let mut out = Vec::new();
    let mut push = |rule: &str, enabled, severity, cooldown_s, settings: serde_json::Value| {
        let settings = match settings {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        out.push(RuleInfo {
            rule: rule.into(),
            enabled,
            severity,
            cooldown_s,
            settings,
        });
    };
    let c = &cfg.suspicious_port;
    push(
        "SUSPICIOUS_PORT",
        on(c.enabled),
        sev(c.severity, Severity::High),
        cd(c.cooldown_s),
        json!({"ports": c.ports.iter().chain(&c.extra_ports).map(|p| p.to_string()).collect::<Vec<_>>(), "allow": c.allow}),
    );
    let c = &cfg.high_connection_count;
    push(
        "HIGH_CONNECTION_COUNT",
        on(c.enabled),
        sev(c.severity, Severity::Medium),
        cd(c.cooldown_s),
        json!({"threshold": c.threshold, "allow": c.allow}),
    );
    let c = &cfg.external_connections;
    push(
        "EXTERNAL_CONNECTIONS",
        on(c.enabled),
        sev(c.severity, Severity::Low),
        cd(c.cooldown_s),
        json!({"threshold": c.threshold, "window_s": c.window_s, "internal_cidrs": c.internal_cidrs, "allow": c.allow}),
    );
    let c = &cfg.unusual_listeners;
    push(
        "UNUSUAL_LISTENERS",
        on(c.enabled),
        sev(c.severity, Severity::Medium),
        cd(c.cooldown_s),
        json!({"allowed_ports": c.allowed_ports.iter().chain(&c.extra_allowed_ports).map(|p| p.to_string()).collect::<Vec<_>>(), "allow": c.allow}),
    );
    let c = &cfg.dns_tunneling;
    push(
        "DNS_TUNNELING",
        on(c.enabled),
        sev(c.severity, Severity::High),
        cd(c.cooldown_s),
        json!({"window_s": c.window_s, "domain_labels": c.domain_labels, "query_rate": c.query_rate,
               "unique_subdomains": c.unique_subdomains, "suspicious_names": c.suspicious_names,
               "long_label": c.long_label, "entropy_bits": c.entropy_bits, "txt_null": c.txt_null,
               "min_score": c.min_score, "allow_domains": c.allow_domains, "allow": c.allow}),
    );
    let c = &cfg.port_risk;
    let table: Vec<serde_json::Value> = ports::risk_table(&c.ports)
        .iter()
        .map(|e| json!({"port": e.port, "service": e.service, "score": e.score}))
        .collect();
    push(
        "PORT_RISK",
        on(c.enabled),
        c.severity
            .map_or_else(|| "by score".to_owned(), |s| s.name().to_owned()),
        cd(c.cooldown_s),
        json!({"min_score": c.min_score, "ports": table, "allow": c.allow}),
    );
    for c in &cfg.custom {
        push(
            &c.name,
            on(c.enabled),
            c.severity.name().to_owned(),
            cd(c.cooldown_s),
            json!({"summary": c.summary, "events": c.events, "direction": c.direction, "proto": c.proto,
                   "ports": c.ports, "cidrs": c.cidrs, "process": c.process, "exe": c.exe, "users": c.users}),
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Event builders for the rules' unit tests.
    use chrono::DateTime;

    use crate::event::{
        Connection, Direction, Endpoint, Event, EventBody, Family, ProcessInfo, Proto,
    };

    pub fn proc(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::kernel(pid, pid, comm.into(), 1000, 1000, 1)
    }

    pub fn at(secs: i64) -> DateTime<chrono::Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    pub fn conn(kind: &str, secs: i64, pid: u32, src: (&str, u16), dst: (&str, u16)) -> Event {
        let c = Connection {
            proto: if kind == "udp" {
                Proto::Udp
            } else {
                Proto::Tcp
            },
            family: Family::Ipv4,
            direction: Some(if kind == "accept" || kind == "listen" {
                Direction::Inbound
            } else {
                Direction::Outbound
            }),
            src: (kind != "listen").then(|| Endpoint::new(src.0.parse().unwrap(), src.1)),
            dst: Endpoint::new(dst.0.parse().unwrap(), dst.1),
            process: Some(proc(pid, "app")),
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        };
        let body = match kind {
            "connect" => EventBody::Connect(c),
            "accept" => EventBody::Accept(c),
            "udp" => EventBody::Udp(c),
            "listen" => EventBody::Listen(c),
            "close" => EventBody::Close(crate::event::Close {
                conn: c,
                duration_ms: Some(1.0),
                bytes_sent: None,
                bytes_received: None,
                packets_sent: None,
                packets_received: None,
                reason: None,
            }),
            _ => unreachable!(),
        };
        Event {
            ts: at(secs),
            host: "h".into(),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    fn alerts(engine: &mut Engine, events: &[Event]) -> Vec<Alert> {
        let mut out = Vec::new();
        for e in events {
            engine.on_event(e, &mut out);
        }
        out.into_iter()
            .filter_map(|e| match e.body {
                EventBody::Alert(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cooldown_holds_repeats_and_counts_them() {
        let cfg = RulesConfig {
            cooldown_s: 60,
            ..RulesConfig::default()
        };
        let mut engine = Engine::new(&cfg, Box::new(NoResolver));
        let hit = |s| conn("connect", s, 7, ("127.0.0.1", 40000), ("127.0.0.1", 31337));
        let got = alerts(&mut engine, &[hit(0), hit(10), hit(20), hit(30)]);
        let sp: Vec<_> = got.iter().filter(|a| a.rule == "SUSPICIOUS_PORT").collect();
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].hits, 1);
        let got = alerts(&mut engine, &[hit(61), hit(62)]);
        let sp: Vec<_> = got.iter().filter(|a| a.rule == "SUSPICIOUS_PORT").collect();
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].hits, 4, "three held back plus this one");
        assert!(engine.stats.suppressed >= 4);
    }

    #[test]
    fn master_switch_disables_everything() {
        let cfg = RulesConfig {
            enabled: false,
            ..RulesConfig::default()
        };
        let engine = Engine::new(&cfg, Box::new(NoResolver));
        assert!(engine.is_empty());
    }

    #[test]
    fn describe_lists_every_builtin_rule() {
        let list = describe(&RulesConfig::default());
        let names: Vec<&str> = list.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, config::BUILTIN);
        assert!(list.iter().all(|r| r.enabled));
    }
}
