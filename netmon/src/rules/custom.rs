//! Custom rules from `[[rules.custom]]`: every condition given must hold (direction,
//! protocol, service ports, remote CIDRs, process name/exe/user); a match alerts with
//! the configured severity and summary.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use serde::{Deserialize, Serialize};

use super::{
    matchers::{Cidr, PortRange, ProcessResolver, any_cidr, any_port, process_matches},
    rule::{Hit, Hits, Rule, flow_view, pid_of, sample_of, who},
};
use crate::event::{Direction, Event, Proto, Severity};

/// What `netmon snapshot` says a custom rule looks for (see `RuleSpec::purpose`).
pub const PURPOSE: &str = "custom rule: {summary}";

/// Which events a custom rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Connect,
    Accept,
    Udp,
    Listen,
}

/// `[[rules.custom]]`: every condition given must hold (empty lists match anything).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRuleConfig {
    pub name: String,
    pub severity: Severity,
    pub summary: String,
    #[serde(default)]
    pub recommendation: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub cooldown_s: Option<u64>,
    /// Event types (default: connect, accept, udp, listen).
    #[serde(default)]
    pub events: Vec<EventKind>,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub proto: Option<Proto>,
    /// The service port: destination of outbound flows, local port of inbound ones.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// The remote address (for `listen`, the local one).
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// Process names (comm).
    #[serde(default)]
    pub process: Vec<String>,
    /// Executable paths.
    #[serde(default)]
    pub exe: Vec<String>,
    /// User names or numeric uids.
    #[serde(default)]
    pub users: Vec<String>,
}

fn yes() -> bool {
    true
}

pub struct CustomRule {
    cfg: CustomRuleConfig,
    cooldown_s: u64,
}

impl CustomRule {
    pub fn new(cfg: &CustomRuleConfig, cooldown_s: u64) -> CustomRule {
        CustomRule {
            cfg: cfg.clone(),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for CustomRule {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn check(
        &mut self,
        ev: &Event,
        _now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let Some(f) = flow_view(ev) else { return };
        let c = &self.cfg;
        let kind = match f.kind {
            "connect" => EventKind::Connect,
            "accept" => EventKind::Accept,
            "udp" => EventKind::Udp,
            _ => EventKind::Listen,
        };
        if !c.events.is_empty() && !c.events.contains(&kind) {
            return;
        }
        if c.direction.is_some() && f.conn.direction != c.direction {
            return;
        }
        if c.proto.is_some_and(|p| p != f.conn.proto) {
            return;
        }
        if !c.ports.is_empty() && !any_port(&c.ports, f.service_port) {
            return;
        }
        if !c.cidrs.is_empty() {
            let ip = f.remote.copied().unwrap_or(f.conn.dst.ip);
            if !any_cidr(&c.cidrs, &ip) {
                return;
            }
        }
        let process = f.conn.process.as_ref();
        if !c.process.is_empty() && !process_matches(process, &c.process, &[], &[], resolver) {
            return;
        }
        if !c.exe.is_empty() && !process_matches(process, &[], &c.exe, &[], resolver) {
            return;
        }
        if !c.users.is_empty() && !process_matches(process, &[], &[], &c.users, resolver) {
            return;
        }
        let remote = f.remote.map_or_else(|| "-".into(), |r| r.to_string());
        let mut details = BTreeMap::new();
        details.insert("port".into(), json!(f.service_port));
        hits.push(Hit {
            rule: c.name.clone().into(),
            severity: c.severity,
            condition: format!(
                "pid={} remote={remote} port={} type={}",
                pid_of(process),
                f.service_port,
                f.kind
            ),
            summary: format!(
                "{} ({} {} port {})",
                c.summary,
                who(process),
                f.kind,
                f.service_port
            ),
            recommendation: c
                .recommendation
                .clone()
                .unwrap_or_else(|| "Matched a custom rule of this host's configuration.".into()),
            process: process.cloned(),
            flows: sample_of(ev).into_iter().collect(),
            score: None,
            details,
            cooldown_s: self.cooldown_s,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Direction, Proto, Severity},
        rules::{NoResolver, ProcessResolver, testing::*},
    };

    fn rule() -> CustomRuleConfig {
        CustomRuleConfig {
            name: "NO_TELNET".into(),
            severity: Severity::Critical,
            summary: "telnet".into(),
            recommendation: None,
            enabled: true,
            cooldown_s: None,
            events: vec![],
            direction: Some(Direction::Outbound),
            proto: Some(Proto::Tcp),
            ports: vec!["20-23".parse().unwrap()],
            cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            process: vec![],
            exe: vec![],
            users: vec![],
        }
    }

    struct Table;
    impl ProcessResolver for Table {
        fn exe(&mut self, _pid: u32) -> Option<String> {
            Some("/usr/bin/telnet".into())
        }
        fn user(&mut self, _uid: u32) -> Option<String> {
            Some("alice".into())
        }
    }

    #[test]
    fn every_condition_must_hold() {
        let mut r = CustomRule::new(&rule(), 300);
        let mut hits = Vec::new();
        let ok = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 23));
        r.check(&ok, ok.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].severity, Severity::Critical);
        for bad in [
            conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 24)),
            conn("connect", 0, 1, ("127.0.0.1", 40000), ("10.0.0.1", 23)),
            conn("accept", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 23)),
            conn("udp", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 23)),
        ] {
            let mut hits = Vec::new();
            r.check(&bad, bad.ts, &mut NoResolver, &mut Hits::new(&mut hits));
            assert!(hits.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn matches_exe_and_user_through_the_resolver() {
        let mut cfg = rule();
        cfg.exe = vec!["/usr/bin/telnet".into()];
        cfg.users = vec!["alice".into()];
        let mut r = CustomRule::new(&cfg, 300);
        let ev = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 23));
        let mut hits = Vec::new();
        r.check(&ev, ev.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert!(hits.is_empty());
        r.check(&ev, ev.ts, &mut Table, &mut Hits::new(&mut hits));
        assert_eq!(hits.len(), 1);
        // Numeric uids match without a resolver.
        let mut cfg = rule();
        cfg.users = vec!["1000".into()];
        let mut r = CustomRule::new(&cfg, 300);
        r.check(&ev, ev.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert_eq!(hits.len(), 2);
    }
}
