//! `SUSPICIOUS_PORT` (a flow to or from a known-bad port) and `PORT_RISK` (a flow to, or
//! a listener on, a service with a known risk, scored 0 to 10).
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    matchers::{Allow, PortRange, ProcessResolver, any_port},
    rule::{Build, Hit, Hits, Rule, RuleSection, RuleSpec, flow_view, pid_of, sample_of, who},
};
use crate::event::{Event, Severity};

pub const SUSPICIOUS_PORT: RuleSpec = RuleSpec {
    name: "SUSPICIOUS_PORT",
    section: "suspicious_port",
    default_severity: Some(Severity::High),
    purpose: "a listener on, or a connection to or from, a known-bad port ({ports})",
};

pub const PORT_RISK: RuleSpec = RuleSpec {
    name: "PORT_RISK",
    section: "port_risk",
    // Each hit's severity follows the service's score (`severity_of_score`).
    default_severity: None,
    purpose: "a listener on, or a connection to, a risky service (risk score {min_score} or more)",
};

/// Ports known from backdoors, RATs and anonymity networks, with why.
pub const DEFAULT_SUSPICIOUS_PORTS: &[(u16, &str)] = &[
    (4444, "Metasploit default handler"),
    (5555, "common RAT / Android debug bridge"),
    (6666, "IRC / backdoor"),
    (6667, "IRC / botnet C2"),
    (31337, "classic backdoor (Back Orifice)"),
    (12345, "NetBus"),
    (9001, "Tor relay"),
    (9050, "Tor SOCKS proxy"),
    (9150, "Tor Browser SOCKS proxy"),
];

/// `[rules.suspicious_port]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuspiciousPortConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Replaces the built-in list.
    pub ports: Vec<PortRange>,
    /// Added to `ports`.
    pub extra_ports: Vec<PortRange>,
    pub allow: Allow,
}

impl Default for SuspiciousPortConfig {
    fn default() -> Self {
        SuspiciousPortConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            ports: DEFAULT_SUSPICIOUS_PORTS
                .iter()
                .map(|(p, _)| PortRange::one(*p))
                .collect(),
            extra_ports: Vec::new(),
            allow: Allow::default(),
        }
    }
}

impl RuleSection for SuspiciousPortConfig {
    fn spec(&self) -> &'static RuleSpec {
        &SUSPICIOUS_PORT
    }
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn severity(&self) -> Option<Severity> {
        self.severity
    }
    fn cooldown_s(&self) -> Option<u64> {
        self.cooldown_s
    }
    fn settings(&self) -> serde_json::Value {
        let ports: Vec<String> = self
            .ports
            .iter()
            .chain(&self.extra_ports)
            .map(|p| p.to_string())
            .collect();
        json!({"ports": ports, "allow": self.allow})
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        Box::new(SuspiciousPort::new(self, ctx.cooldown_s))
    }
}

pub struct SuspiciousPort {
    ports: Vec<PortRange>,
    allow: Allow,
    severity: Severity,
    cooldown_s: u64,
}

impl SuspiciousPort {
    pub fn new(cfg: &SuspiciousPortConfig, cooldown_s: u64) -> SuspiciousPort {
        SuspiciousPort {
            ports: cfg.ports.iter().chain(&cfg.extra_ports).copied().collect(),
            allow: cfg.allow.clone(),
            severity: SUSPICIOUS_PORT.severity(cfg.severity),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

fn port_note(port: u16) -> Option<&'static str> {
    DEFAULT_SUSPICIOUS_PORTS
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, why)| *why)
}

impl Rule for SuspiciousPort {
    fn name(&self) -> &str {
        SUSPICIOUS_PORT.name
    }

    fn check(
        &mut self,
        ev: &Event,
        _now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let Some(f) = flow_view(ev) else { return };
        let mut port = f.service_port;
        if !any_port(&self.ports, port) {
            // A process sending UDP *from* a bad port runs a service on it.
            match (&f.kind, &f.conn.src) {
                (&"udp", Some(src)) if any_port(&self.ports, src.port) => port = src.port,
                _ => return,
            }
        }
        let process = f.conn.process.as_ref();
        if self.allow.allows(process, f.remote, Some(port), resolver) {
            return;
        }
        let what = match f.kind {
            "listen" => format!("listens on port {port}"),
            "accept" => format!("accepted a connection on port {port}"),
            _ => format!("connected to port {port} on {}", f.conn.dst.ip),
        };
        let note = port_note(port).map_or(String::new(), |n| format!(" ({n})"));
        let mut details = BTreeMap::new();
        details.insert("port".into(), json!(port));
        hits.push(Hit {
            rule: SUSPICIOUS_PORT.name.into(),
            severity: self.severity,
            condition: format!("pid={} port={port} type={}", pid_of(process), f.kind),
            summary: format!("{} {what}, a port known from malware{note}", who(process)),
            recommendation: "Check what this process is and why it uses this port; if it is not \
                             expected, isolate the host and look for persistence."
                .into(),
            process: process.cloned(),
            flows: sample_of(ev).into_iter().collect(),
            score: None,
            details,
            cooldown_s: self.cooldown_s,
        });
    }
}

/// One line of the port risk model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskEntry {
    pub port: u16,
    pub service: String,
    /// 0 (harmless) to 10 (should never be exposed).
    pub score: u32,
    /// Why it is risky (shown in alerts).
    #[serde(default)]
    pub why: Option<String>,
}

/// The built-in risk model: service, score, and why.
const DEFAULT_RISK: &[(u16, u16, &str, u32, &str)] = &[
    (21, 21, "ftp", 6, "cleartext credentials"),
    (23, 23, "telnet", 9, "cleartext remote shell"),
    (69, 69, "tftp", 6, "unauthenticated file transfer"),
    (111, 111, "rpcbind", 5, "exposes RPC services"),
    (135, 135, "msrpc", 7, "Windows RPC, a lateral movement path"),
    (137, 139, "netbios", 7, "legacy Windows file sharing"),
    (161, 161, "snmp", 6, "community strings often default"),
    (445, 445, "smb", 8, "file sharing, wormable vulnerabilities"),
    (
        512,
        514,
        "rsh/rlogin/rexec",
        9,
        "unauthenticated remote shell",
    ),
    (873, 873, "rsync", 5, "often without authentication"),
    (1433, 1433, "mssql", 6, "database exposed"),
    (2049, 2049, "nfs", 6, "file system exposed"),
    (
        2375,
        2375,
        "docker-api",
        10,
        "unauthenticated root on the host",
    ),
    (2379, 2380, "etcd", 7, "cluster secrets"),
    (3306, 3306, "mysql", 5, "database exposed"),
    (3389, 3389, "rdp", 7, "remote desktop, brute-forced"),
    (4369, 4369, "epmd", 5, "Erlang cluster port mapper"),
    (5900, 5903, "vnc", 7, "remote desktop, weak passwords"),
    (5984, 5984, "couchdb", 6, "database exposed"),
    (6000, 6000, "x11", 7, "display and keyboard capture"),
    (6379, 6379, "redis", 7, "no authentication by default"),
    (8086, 8086, "influxdb", 5, "database exposed"),
    (
        9200,
        9200,
        "elasticsearch",
        6,
        "no authentication by default",
    ),
    (10250, 10250, "kubelet", 7, "node command execution"),
    (
        11211,
        11211,
        "memcached",
        7,
        "no authentication, amplification",
    ),
    (27017, 27017, "mongodb", 6, "no authentication by default"),
];

/// The built-in table with the configured entries applied (a configured port replaces
/// the built-in entry for it).
pub fn risk_table(extra: &[RiskEntry]) -> Vec<RiskEntry> {
    let mut table: Vec<RiskEntry> = DEFAULT_RISK
        .iter()
        .flat_map(|&(first, last, service, score, why)| {
            (first..=last).map(move |port| RiskEntry {
                port,
                service: service.into(),
                score,
                why: Some(why.into()),
            })
        })
        .collect();
    for e in extra {
        table.retain(|t| t.port != e.port);
        table.push(e.clone());
    }
    table.sort_by_key(|e| e.port);
    table
}

/// Severity from a risk score: 8+ high, 6+ medium, else low.
pub fn severity_of_score(score: u32) -> Severity {
    match score {
        8.. => Severity::High,
        6..=7 => Severity::Medium,
        _ => Severity::Low,
    }
}

/// `[rules.port_risk]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortRiskConfig {
    pub enabled: bool,
    /// When set, every PORT_RISK alert has this severity instead of one from its score.
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Services scoring below this do not alert.
    pub min_score: u32,
    /// `[[rules.port_risk.ports]]`: added to, or replacing entries of, the built-in table.
    pub ports: Vec<RiskEntry>,
    pub allow: Allow,
}

impl Default for PortRiskConfig {
    fn default() -> Self {
        PortRiskConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            min_score: 5,
            ports: Vec::new(),
            allow: Allow::default(),
        }
    }
}

impl RuleSection for PortRiskConfig {
    fn spec(&self) -> &'static RuleSpec {
        &PORT_RISK
    }
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn severity(&self) -> Option<Severity> {
        self.severity
    }
    fn cooldown_s(&self) -> Option<u64> {
        self.cooldown_s
    }
    fn settings(&self) -> serde_json::Value {
        let table: Vec<serde_json::Value> = risk_table(&self.ports)
            .iter()
            .map(|e| json!({"port": e.port, "service": e.service, "score": e.score}))
            .collect();
        json!({"min_score": self.min_score, "ports": table, "allow": self.allow})
    }
    fn validate(&self) -> Result<(), (String, String)> {
        for (i, e) in self.ports.iter().enumerate() {
            if e.score > 10 {
                return Err((
                    format!("ports[{i}].score"),
                    format!("{} is out of range: expected 0 to 10", e.score),
                ));
            }
        }
        Ok(())
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        Box::new(PortRisk::new(self, ctx.cooldown_s))
    }
}

pub struct PortRisk {
    table: BTreeMap<u16, RiskEntry>,
    min_score: u32,
    severity: Option<Severity>,
    allow: Allow,
    cooldown_s: u64,
}

impl PortRisk {
    pub fn new(cfg: &PortRiskConfig, cooldown_s: u64) -> PortRisk {
        PortRisk {
            table: risk_table(&cfg.ports)
                .into_iter()
                .map(|e| (e.port, e))
                .collect(),
            min_score: cfg.min_score,
            severity: cfg.severity,
            allow: cfg.allow.clone(),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for PortRisk {
    fn name(&self) -> &str {
        PORT_RISK.name
    }

    fn check(
        &mut self,
        ev: &Event,
        _now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let Some(f) = flow_view(ev) else { return };
        if f.kind == "udp" && f.conn.dst.port == 0 {
            return;
        }
        let port = f.service_port;
        let Some(entry) = self.table.get(&port) else {
            return;
        };
        if entry.score < self.min_score {
            return;
        }
        let process = f.conn.process.as_ref();
        if self.allow.allows(process, f.remote, Some(port), resolver) {
            return;
        }
        // A busy client of a risky service fires on each connection, nearly all held
        // back by the cooldown: `complete` describes only the hits that alert.
        hits.push(Hit {
            rule: PORT_RISK.name.into(),
            severity: self
                .severity
                .unwrap_or_else(|| severity_of_score(entry.score)),
            condition: format!("pid={} port={port} type={}", pid_of(process), f.kind),
            summary: String::new(),
            recommendation: String::new(),
            process: None,
            flows: Vec::new(),
            score: Some(entry.score),
            details: BTreeMap::new(),
            cooldown_s: self.cooldown_s,
        });
    }

    fn complete(&mut self, ev: &Event, hit: &mut Hit) {
        let Some(f) = flow_view(ev) else { return };
        let port = f.service_port;
        let Some(entry) = self.table.get(&port) else {
            return;
        };
        let process = f.conn.process.as_ref();
        let what = match f.kind {
            "listen" => format!("listens on {} (port {port})", entry.service),
            "accept" => format!(
                "accepted a {} connection (port {port}) from {}",
                entry.service,
                f.remote.map_or("?".into(), |r| r.to_string())
            ),
            _ => format!(
                "connected to {} (port {port}) on {}",
                entry.service, f.conn.dst.ip
            ),
        };
        let why = entry.why.as_deref().unwrap_or("a risky service");
        hit.details.insert("port".into(), json!(port));
        hit.details.insert("service".into(), json!(entry.service));
        hit.summary = format!("{} {what}: risk {}/10, {why}", who(process), entry.score);
        hit.recommendation = format!(
            "Make sure {} is meant to be used here; restrict it to trusted networks, \
             require authentication, or use an encrypted alternative.",
            entry.service
        );
        hit.process = process.cloned();
        hit.flows = sample_of(ev).into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{NoResolver, matchers::Cidr, testing::*};

    /// As the engine does: check, then complete each hit (none held back here).
    fn run(rule: &mut dyn Rule, ev: &Event) -> Vec<Hit> {
        let mut hits = Vec::new();
        rule.check(ev, ev.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        for h in &mut hits {
            rule.complete(ev, h);
        }
        hits
    }

    #[test]
    fn suspicious_ports_fire_on_connect_accept_and_listen() {
        let mut r = SuspiciousPort::new(&SuspiciousPortConfig::default(), 300);
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 31337));
        let h = run(&mut r, &c);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].severity, Severity::High);
        assert!(h[0].summary.contains("31337"), "{}", h[0].summary);
        let a = conn("accept", 0, 2, ("127.0.0.1", 40000), ("127.0.0.1", 4444));
        assert_eq!(run(&mut r, &a).len(), 1);
        let l = conn("listen", 0, 2, ("0.0.0.0", 0), ("0.0.0.0", 9050));
        assert_eq!(run(&mut r, &l).len(), 1);
        // An ephemeral source port never counts for TCP.
        let c = conn("connect", 0, 1, ("127.0.0.1", 31337), ("127.0.0.1", 80));
        assert!(run(&mut r, &c).is_empty());
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 443));
        assert!(run(&mut r, &c).is_empty());
    }

    #[test]
    fn allowlists_and_extra_ports() {
        let cfg = SuspiciousPortConfig {
            extra_ports: vec!["7000-7010".parse().unwrap()],
            allow: Allow {
                cidrs: vec!["10.0.0.0/8".parse::<Cidr>().unwrap()],
                process: vec!["tor".into()],
                ..Allow::default()
            },
            ..SuspiciousPortConfig::default()
        };
        let mut r = SuspiciousPort::new(&cfg, 300);
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 7005));
        assert_eq!(run(&mut r, &c).len(), 1);
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("10.1.1.1", 4444));
        assert!(run(&mut r, &c).is_empty());
        let mut c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 9050));
        if let crate::event::EventBody::Connect(x) = &mut c.body {
            x.process.as_mut().unwrap().comm = "tor".into();
        }
        assert!(run(&mut r, &c).is_empty());
    }

    #[test]
    fn port_risk_scores_services() {
        let mut r = PortRisk::new(&PortRiskConfig::default(), 300);
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 23));
        let h = run(&mut r, &c);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].score, Some(9));
        assert_eq!(h[0].severity, Severity::High);
        let l = conn("listen", 0, 1, ("0.0.0.0", 0), ("0.0.0.0", 6379));
        let h = run(&mut r, &l);
        assert_eq!((h[0].score, h[0].severity), (Some(7), Severity::Medium));
        // Below min_score (postgres is not in the table at all; mysql scores 5).
        let cfg = PortRiskConfig {
            min_score: 6,
            ..PortRiskConfig::default()
        };
        let mut r = PortRisk::new(&cfg, 300);
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 3306));
        assert!(run(&mut r, &c).is_empty());
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 443));
        assert!(run(&mut r, &c).is_empty());
    }

    #[test]
    fn configured_risk_entries_replace_builtin_ones() {
        let t = risk_table(&[RiskEntry {
            port: 6379,
            service: "redis-tls".into(),
            score: 2,
            why: None,
        }]);
        let e = t.iter().find(|e| e.port == 6379).unwrap();
        assert_eq!((e.service.as_str(), e.score), ("redis-tls", 2));
        assert_eq!(t.iter().filter(|e| e.port == 6379).count(), 1);
    }
}
