//! `UNUSUAL_LISTENERS`: a process listens on a port outside the allowed set
//! (well-known service ports plus configured ones).
use std::collections::BTreeMap;

use serde_json::json;

use super::{
    Hit, ProcessResolver, Rule,
    config::UnusualListenersConfig,
    matchers::{Allow, PortRange, any_port},
    pid_of, sample_of, who,
};
use crate::event::{Event, EventBody, Severity};

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
            severity: cfg.severity.unwrap_or(Severity::Medium),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }
}

impl Rule for UnusualListeners {
    fn name(&self) -> &str {
        "UNUSUAL_LISTENERS"
    }

    fn check(&mut self, ev: &Event, resolver: &mut dyn ProcessResolver, hits: &mut Vec<Hit>) {
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
            rule: self.name().into(),
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
        r.check(&ok, &mut NoResolver, &mut hits);
        assert!(hits.is_empty());
        let odd = conn("listen", 0, 1, ("0.0.0.0", 0), ("0.0.0.0", 48123));
        r.check(&odd, &mut NoResolver, &mut hits);
        assert_eq!(hits.len(), 1);
        // Connections are not listeners.
        let c = conn("connect", 0, 1, ("127.0.0.1", 40000), ("127.0.0.1", 48123));
        r.check(&c, &mut NoResolver, &mut hits);
        assert_eq!(hits.len(), 1);
    }
}
