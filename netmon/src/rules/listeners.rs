//! `UNUSUAL_LISTENERS`: a process listens on a port outside the allowed set
//! (well-known service ports plus configured ones).
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use serde::{Deserialize, Serialize};

use super::{
    matchers::{Allow, PortRange, ProcessResolver, any_port},
    rule::{Build, Hit, Hits, Rule, RuleSection, RuleSpec, pid_of, sample_of, who},
};
use crate::event::{Event, EventBody, Severity};

pub const UNUSUAL_LISTENERS: RuleSpec = RuleSpec {
    name: "UNUSUAL_LISTENERS",
    section: "unusual_listeners",
    default_severity: Some(Severity::Medium),
    purpose: "a TCP listener on a port outside the allowed service ports",
};

/// `[rules.unusual_listeners]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnusualListenersConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Ports a listener may use without an alert (replaces the built-in list).
    pub allowed_ports: Vec<PortRange>,
    /// Added to `allowed_ports`.
    pub extra_allowed_ports: Vec<PortRange>,
    pub allow: Allow,
}

/// Well-known service ports.
pub const DEFAULT_ALLOWED_LISTEN_PORTS: &[u16] = &[
    22, 25, 53, 67, 68, 80, 110, 123, 143, 443, 465, 587, 631, 853, 993, 995, 1883, 3000, 3306,
    5000, 5353, 5432, 5672, 6379, 8000, 8080, 8443, 8883, 9000, 9090, 9100, 9200, 9300, 11211,
    27017,
];

impl Default for UnusualListenersConfig {
    fn default() -> Self {
        UnusualListenersConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            allowed_ports: DEFAULT_ALLOWED_LISTEN_PORTS
                .iter()
                .map(|p| PortRange::one(*p))
                .collect(),
            extra_allowed_ports: Vec::new(),
            allow: Allow::default(),
        }
    }
}

impl RuleSection for UnusualListenersConfig {
    fn spec(&self) -> &'static RuleSpec {
        &UNUSUAL_LISTENERS
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
            .allowed_ports
            .iter()
            .chain(&self.extra_allowed_ports)
            .map(|p| p.to_string())
            .collect();
        json!({"allowed_ports": ports, "allow": self.allow})
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        Box::new(UnusualListeners::new(self, ctx.cooldown_s))
    }
}

pub struct UnusualListeners {
    allowed: Vec<PortRange>,
    allow: Allow,
    severity: Severity,
    cooldown_s: u64,
}

impl UnusualListeners {
    pub fn new(cfg: &UnusualListenersConfig, cooldown_s: u64) -> UnusualListeners {
        UnusualListeners {
            allowed: cfg
                .allowed_ports
                .iter()
                .chain(&cfg.extra_allowed_ports)
                .copied()
                .collect(),
            allow: cfg.allow.clone(),
            severity: UNUSUAL_LISTENERS.severity(cfg.severity),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for UnusualListeners {
    fn name(&self) -> &str {
        UNUSUAL_LISTENERS.name
    }

    fn check(
        &mut self,
        ev: &Event,
        _now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let EventBody::Listen(c) = &ev.body else {
            return;
        };
        let port = c.dst.port;
        if any_port(&self.allowed, port) {
            return;
        }
        let process = c.process.as_ref();
        if self
            .allow
            .allows(process, Some(&c.dst.ip), Some(port), resolver)
        {
            return;
        }
        let mut details = BTreeMap::new();
        details.insert("port".into(), json!(port));
        details.insert("address".into(), json!(c.dst.ip));
        hits.push(Hit {
            rule: UNUSUAL_LISTENERS.name.into(),
            severity: self.severity,
            condition: format!("pid={} port={port}", pid_of(process)),
            summary: format!(
                "{} listens on {}:{port}, which is not an allowed service port",
                who(process),
                c.dst.ip
            ),
            recommendation: "If this service is expected, add its port to \
                             rules.unusual_listeners.extra_allowed_ports or its process to \
                             rules.unusual_listeners.allow; otherwise find out what opened it."
                .into(),
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
    use crate::rules::{NoResolver, testing::*};

    #[test]
    fn fires_on_ports_outside_the_allowed_set() {
        let mut r = UnusualListeners::new(&UnusualListenersConfig::default(), 300);
        let mut hits = Vec::new();
        let ok = conn("listen", 0, 1, ("0.0.0.0", 0), ("0.0.0.0", 443));
        r.check(&ok, ok.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert!(hits.is_empty());
        let odd = conn("listen", 0, 1, ("0.0.0.0", 0), ("0.0.0.0", 48123));
        r.check(&odd, odd.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert_eq!(hits.len(), 1);
        // Connections are not listeners.
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 48123));
        r.check(&c, c.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        assert_eq!(hits.len(), 1);
    }
}
