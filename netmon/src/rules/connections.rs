//! `HIGH_CONNECTION_COUNT` (one process holds many active connections) and
//! `EXTERNAL_CONNECTIONS` (one process talks to many unique external addresses within a
//! window: fan-out or scanning).
//!
//! Active connections are counted by an [`ActiveConnections`] implementation: `netmon
//! run` and `replay` use the minimal [`ConnTable`] here, which follows connect/accept/
//! close events itself; `netmon snapshot` passes the sockets it read (`Held` in
//! `cli/snapshot/events.rs`). The flow table (`flow.rs`) could take its place behind the
//! same trait.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use chrono::{DateTime, Utc};
use serde_json::json;

use serde::{Deserialize, Serialize};

use super::{
    matchers::{Allow, Cidr, ProcessResolver, any_cidr},
    rule::{
        Build, Hit, Hits, MAX_SAMPLES, Rule, RuleSection, RuleSpec, check_count, check_window,
        pid_condition, push_sample, sample_of, upgrade_window, who,
    },
};
use crate::{
    config::Span,
    event::{Direction, Endpoint, Event, EventBody, FlowSample, Proto, Severity},
};

pub const HIGH_CONNECTION_COUNT: RuleSpec = RuleSpec {
    name: "HIGH_CONNECTION_COUNT",
    section: "high_connection_count",
    default_severity: Some(Severity::Medium),
    purpose: "a process holding at least {threshold} open TCP connections",
};

pub const EXTERNAL_CONNECTIONS: RuleSpec = RuleSpec {
    name: "EXTERNAL_CONNECTIONS",
    section: "external_connections",
    default_severity: Some(Severity::Low),
    purpose: "a process connected to at least {threshold} unique external addresses",
};

/// Who holds which active connections.
pub trait ActiveConnections {
    /// Follows one event (connect and accept open, close ends).
    fn observe(&mut self, ev: &Event);
    /// Active connections of `pid`.
    fn active(&self, pid: u32) -> usize;
    /// Some of `pid`'s active connections (at most five, most recent last).
    fn samples(&self, pid: u32) -> Vec<FlowSample>;
}

/// A connection as the table keys it: protocol, then each end's address and port
/// (small and cheap to hash: the table sees every connect, accept and close).
type FlowKey = (Proto, IpAddr, u16, IpAddr, u16);

/// One process's active connections.
#[derive(Default)]
struct Held {
    active: usize,
    /// Its latest connections, oldest first (at most `MAX_SAMPLES`).
    recent: VecDeque<FlowSample>,
}

/// Minimal accounting from connect/accept/close events. Bounded: past `MAX_FLOWS`
/// (flows whose close was lost) it starts over rather than grow without end.
#[derive(Default)]
pub struct ConnTable {
    /// The pid of each active connection.
    flows: foldhash::HashMap<FlowKey, u32>,
    per_pid: foldhash::HashMap<u32, Held>,
}

const MAX_FLOWS: usize = 1 << 20;

fn key_of(proto: Proto, src: &Endpoint, dst: &Endpoint) -> FlowKey {
    (proto, src.ip, src.port, dst.ip, dst.port)
}

impl ActiveConnections for ConnTable {
    fn observe(&mut self, ev: &Event) {
        match &ev.body {
            EventBody::Connect(c) | EventBody::Accept(c) if !c.failed => {
                let (Some(p), Some(src)) = (&c.process, &c.src) else {
                    return;
                };
                if self.flows.len() >= MAX_FLOWS {
                    self.flows.clear();
                    self.per_pid.clear();
                }
                let Some(sample) = sample_of(ev) else { return };
                let new = self
                    .flows
                    .insert(key_of(c.proto, src, &c.dst), p.pid)
                    .is_none();
                let held = self.per_pid.entry(p.pid).or_default();
                held.active += usize::from(new);
                if held.recent.len() >= MAX_SAMPLES {
                    held.recent.pop_front();
                }
                held.recent.push_back(sample);
            }
            EventBody::Close(c) => {
                let Some(src) = &c.conn.src else { return };
                // A close whose direction netmon did not see has the local side first;
                // try both orientations.
                let forward = key_of(c.conn.proto, src, &c.conn.dst);
                let backward = key_of(c.conn.proto, &c.conn.dst, src);
                let Some(pid) = self
                    .flows
                    .remove(&forward)
                    .or_else(|| self.flows.remove(&backward))
                else {
                    return;
                };
                if let Some(held) = self.per_pid.get_mut(&pid) {
                    held.active = held.active.saturating_sub(1);
                    if held.active == 0 {
                        self.per_pid.remove(&pid);
                    }
                }
            }
            _ => {}
        }
    }

    fn active(&self, pid: u32) -> usize {
        self.per_pid.get(&pid).map_or(0, |h| h.active)
    }

    fn samples(&self, pid: u32) -> Vec<FlowSample> {
        self.per_pid
            .get(&pid)
            .map(|h| h.recent.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// `[rules.high_connection_count]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HighConnectionCountConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Active connections of one process that fire the rule.
    pub threshold: usize,
    pub allow: Allow,
}

impl Default for HighConnectionCountConfig {
    fn default() -> Self {
        HighConnectionCountConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            threshold: 50,
            allow: Allow::default(),
        }
    }
}

impl RuleSection for HighConnectionCountConfig {
    fn spec(&self) -> &'static RuleSpec {
        &HIGH_CONNECTION_COUNT
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
        json!({"threshold": self.threshold, "allow": self.allow})
    }
    fn validate(&self) -> Result<(), (String, String)> {
        check_count("threshold", self.threshold, 1)
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        let table = ctx
            .connections
            .take()
            .unwrap_or_else(|| Box::new(ConnTable::default()));
        Box::new(HighConnectionCount::new(self, ctx.cooldown_s, table))
    }
}

pub struct HighConnectionCount {
    table: Box<dyn ActiveConnections>,
    threshold: usize,
    allow: Allow,
    severity: Severity,
    cooldown_s: u64,
}

impl HighConnectionCount {
    pub fn new(
        cfg: &HighConnectionCountConfig,
        cooldown_s: u64,
        table: Box<dyn ActiveConnections>,
    ) -> HighConnectionCount {
        HighConnectionCount {
            table,
            threshold: cfg.threshold.max(1),
            allow: cfg.allow.clone(),
            severity: HIGH_CONNECTION_COUNT.severity(cfg.severity),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for HighConnectionCount {
    fn name(&self) -> &str {
        HIGH_CONNECTION_COUNT.name
    }

    fn check(
        &mut self,
        ev: &Event,
        _now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        self.table.observe(ev);
        let c = match &ev.body {
            EventBody::Connect(c) | EventBody::Accept(c) if !c.failed => c,
            _ => return,
        };
        let Some(p) = &c.process else { return };
        let active = self.table.active(p.pid);
        if active < self.threshold {
            return;
        }
        if self.allow.allows(Some(p), None, None, resolver) {
            return;
        }
        // A busy server holds more than the threshold for as long as it is busy: this
        // fires on each of its accepts, nearly all held back by the cooldown. So the
        // cooldown is asked first, and a hit that alerts carries only what the
        // cooldown needs now; `complete` describes it.
        let mut buf = [0; 14];
        let condition = pid_condition(&mut buf, p.pid);
        if hits.held_back(HIGH_CONNECTION_COUNT.name, condition) {
            return;
        }
        hits.push(Hit {
            rule: HIGH_CONNECTION_COUNT.name.into(),
            severity: self.severity,
            condition: condition.to_owned(),
            summary: String::new(),
            recommendation: String::new(),
            process: None,
            flows: Vec::new(),
            score: None,
            details: BTreeMap::new(),
            cooldown_s: self.cooldown_s,
        });
    }

    fn complete(&mut self, ev: &Event, hit: &mut Hit) {
        let (EventBody::Connect(c) | EventBody::Accept(c)) = &ev.body else {
            return;
        };
        let Some(p) = &c.process else { return };
        let active = self.table.active(p.pid);
        hit.details
            .insert("active_connections".into(), json!(active));
        hit.details
            .insert("threshold".into(), json!(self.threshold));
        hit.summary = format!(
            "{} holds {active} active connections (threshold {})",
            who(Some(p)),
            self.threshold
        );
        hit.recommendation = "Check whether this process is a server or proxy that is \
                              expected to hold many connections; otherwise look for a \
                              connection leak, a flood or a scan."
            .into();
        hit.process = Some(p.clone());
        hit.flows = self.table.samples(p.pid);
    }
}

/// Unique external addresses of one process, with when each was last seen.
#[derive(Default)]
struct Fanout {
    last_seen: HashMap<IpAddr, DateTime<Utc>>,
    order: VecDeque<(DateTime<Utc>, IpAddr)>,
    samples: Vec<FlowSample>,
}

/// `[rules.external_connections]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConnectionsConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Unique external addresses of one process within `window` that fire the rule.
    pub threshold: usize,
    pub window: Span,
    /// Deprecated spelling of `window`, in whole seconds (copied there on load).
    #[serde(skip_serializing)]
    pub window_s: Option<u64>,
    /// Addresses that are not external (replaces the built-in private/loopback list).
    pub internal_cidrs: Vec<Cidr>,
    pub allow: Allow,
}

impl Default for ExternalConnectionsConfig {
    fn default() -> Self {
        ExternalConnectionsConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            threshold: 20,
            window: Span::from_secs(60),
            window_s: None,
            internal_cidrs: crate::addr::INTERNAL_BLOCKS
                .iter()
                .map(|c| c.parse().expect("built-in CIDR"))
                .collect(),
            allow: Allow::default(),
        }
    }
}

impl RuleSection for ExternalConnectionsConfig {
    fn spec(&self) -> &'static RuleSpec {
        &EXTERNAL_CONNECTIONS
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
        json!({"threshold": self.threshold, "window": self.window,
               "internal_cidrs": self.internal_cidrs, "allow": self.allow})
    }
    fn validate(&self) -> Result<(), (String, String)> {
        check_count("threshold", self.threshold, 1)?;
        check_window(self.window, self.window_s)
    }
    fn upgrade(&mut self) -> Vec<(String, String)> {
        upgrade_window(self.window_s, &mut self.window)
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        Box::new(ExternalConnections::new(self, ctx.cooldown_s))
    }
}

pub struct ExternalConnections {
    per_pid: HashMap<u32, Fanout>,
    threshold: usize,
    window: chrono::Duration,
    internal: Vec<Cidr>,
    allow: Allow,
    severity: Severity,
    cooldown_s: u64,
}

const MAX_TRACKED_PIDS: usize = 65536;

impl ExternalConnections {
    pub fn new(cfg: &ExternalConnectionsConfig, cooldown_s: u64) -> ExternalConnections {
        ExternalConnections {
            per_pid: HashMap::new(),
            threshold: cfg.threshold.max(1),
            window: cfg.window.as_chrono(),
            internal: cfg.internal_cidrs.clone(),
            allow: cfg.allow.clone(),
            severity: EXTERNAL_CONNECTIONS.severity(cfg.severity),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for ExternalConnections {
    fn name(&self) -> &str {
        EXTERNAL_CONNECTIONS.name
    }

    fn check(
        &mut self,
        ev: &Event,
        now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let c = match &ev.body {
            EventBody::Connect(c) | EventBody::Udp(c)
                if c.direction != Some(Direction::Inbound) =>
            {
                c
            }
            _ => return,
        };
        let Some(p) = &c.process else { return };
        let ip = c.dst.ip.to_canonical();
        if any_cidr(&self.internal, &ip) {
            return;
        }
        if self
            .allow
            .allows(Some(p), Some(&ip), Some(c.dst.port), resolver)
        {
            return;
        }
        if self.per_pid.len() >= MAX_TRACKED_PIDS && !self.per_pid.contains_key(&p.pid) {
            let window = self.window;
            self.per_pid
                .retain(|_, f| f.order.back().is_some_and(|(t, _)| now - *t < window));
            if self.per_pid.len() >= MAX_TRACKED_PIDS {
                self.per_pid.clear();
            }
        }
        let fan = self.per_pid.entry(p.pid).or_default();
        let new_ip = fan.last_seen.insert(ip, now).is_none();
        fan.order.push_back((now, ip));
        if new_ip && let Some(s) = sample_of(ev) {
            push_sample(&mut fan.samples, s);
        }
        // Forget addresses not seen within the window.
        while let Some(&(t, old)) = fan.order.front() {
            if now - t < self.window {
                break;
            }
            fan.order.pop_front();
            if fan.last_seen.get(&old) == Some(&t) {
                fan.last_seen.remove(&old);
            }
        }
        let unique = fan.last_seen.len();
        if unique < self.threshold {
            return;
        }
        let mut buf = [0; 14];
        let condition = pid_condition(&mut buf, p.pid);
        if hits.held_back(EXTERNAL_CONNECTIONS.name, condition) {
            return;
        }
        let mut details = BTreeMap::new();
        details.insert("unique_external_ips".into(), json!(unique));
        details.insert("threshold".into(), json!(self.threshold));
        details.insert("window_s".into(), json!(self.window.num_seconds()));
        hits.push(Hit {
            rule: EXTERNAL_CONNECTIONS.name.into(),
            severity: self.severity,
            condition: condition.to_owned(),
            summary: format!(
                "{} talked to {unique} external addresses within {} s",
                who(Some(p)),
                self.window.num_seconds()
            ),
            recommendation: "Fan-out to many addresses looks like scanning, worm spreading or \
                             beaconing: check the process, its parent and its destinations."
                .into(),
            process: Some(p.clone()),
            flows: fan.samples.clone(),
            score: None,
            details,
            cooldown_s: self.cooldown_s,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{NoResolver, testing::*};

    fn feed(rule: &mut dyn Rule, events: &[Event]) -> Vec<Hit> {
        let mut hits = Vec::new();
        for e in events {
            // As the engine does: check, then complete the new hits (none held back).
            let first = hits.len();
            rule.check(e, e.ts, &mut NoResolver, &mut Hits::new(&mut hits));
            for h in &mut hits[first..] {
                rule.complete(e, h);
            }
        }
        hits
    }

    #[test]
    fn counts_active_connections_and_forgets_closed_ones() {
        let cfg = HighConnectionCountConfig {
            threshold: 5,
            ..Default::default()
        };
        let mut r = HighConnectionCount::new(&cfg, 300, Box::new(ConnTable::default()));
        let open: Vec<Event> = (0..4)
            .map(|i| {
                conn(
                    "connect",
                    i,
                    9,
                    ("127.0.0.1", 40000 + i as u16),
                    ("127.0.0.1", 80),
                )
            })
            .collect();
        assert!(feed(&mut r, &open).is_empty());
        // Close two, open two more: still four.
        let close: Vec<Event> = (0..2)
            .map(|i| {
                conn(
                    "close",
                    10,
                    9,
                    ("127.0.0.1", 40000 + i as u16),
                    ("127.0.0.1", 80),
                )
            })
            .collect();
        assert!(feed(&mut r, &close).is_empty());
        let more: Vec<Event> = (10..12)
            .map(|i| {
                conn(
                    "connect",
                    i,
                    9,
                    ("127.0.0.1", 40000 + i as u16),
                    ("127.0.0.1", 80),
                )
            })
            .collect();
        assert!(feed(&mut r, &more).is_empty());
        let fifth = conn("connect", 20, 9, ("127.0.0.1", 41000), ("127.0.0.1", 80));
        let h = feed(&mut r, &[fifth]);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].details["active_connections"], 5);
        assert_eq!(h[0].flows.len(), 5);
        // Another process is counted apart.
        let other = conn("connect", 21, 10, ("127.0.0.1", 42000), ("127.0.0.1", 80));
        assert!(feed(&mut r, &[other]).is_empty());
    }

    #[test]
    fn fans_out_to_external_addresses_only() {
        let cfg = ExternalConnectionsConfig {
            threshold: 3,
            window: Span::from_secs(10),
            ..Default::default()
        };
        let mut r = ExternalConnections::new(&cfg, 300);
        let to = |s, ip| conn("connect", s, 5, ("10.0.0.1", 40000), (ip, 443));
        // Private and loopback addresses are internal.
        assert!(
            feed(
                &mut r,
                &[to(0, "10.1.1.1"), to(0, "127.0.0.2"), to(0, "192.168.1.1")]
            )
            .is_empty()
        );
        assert!(
            feed(
                &mut r,
                &[to(0, "1.1.1.1"), to(1, "1.1.1.1"), to(2, "8.8.8.8")]
            )
            .is_empty()
        );
        // The first address has left the window by t=11.
        assert!(feed(&mut r, &[to(11, "9.9.9.9")]).is_empty());
        let h = feed(&mut r, &[to(11, "4.4.4.4")]);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].details["unique_external_ips"], 3);
    }
}
