//! The scanner's open ports and each scanned host's port risk score, for
//! `netmon_scan_open_ports` and `netmon_scan_host_risk_score{host}`.
//!
//! A host's score is the sum of the risk scores (0 to 10, `[rules.port_risk]`'s table:
//! the same one the `PORT_RISK` rule uses, by port number) of its open ports; ports
//! outside the table score 0. The [`DEFAULT_HOSTS`] highest-scoring hosts get their own
//! `host` label (the scanned address); the scores of the rest are summed under
//! `host="~other"`, so the series stay bounded and the sum over every series is the
//! whole inventory's risk. Seeded from the scanner's state file at start, then kept
//! by the `port`, `port_opened` and `port_closed` events. Pure state.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use prometheus::{IntGaugeVec, Opts, core::Desc, proto::MetricFamily};

use super::top::OTHER;
use crate::{
    event::Proto,
    rules::ports::{RiskEntry, risk_table},
    scan::{PortState, inventory::Inventory},
};

/// Hosts with their own `host` label.
pub const DEFAULT_HOSTS: usize = 20;
/// Most open ports remembered (a bound on memory, not on series).
pub const MAX_OPEN_PORTS: usize = 65_536;

pub struct HostRisk {
    scores: HashMap<u16, u32>,
    hosts: HashMap<IpAddr, HashSet<(u16, Proto)>>,
    open: usize,
    limit: usize,
}

impl HostRisk {
    /// Scores from the built-in table with `extra` (`[[rules.port_risk.ports]]`) applied.
    pub fn new(extra: &[RiskEntry], limit: usize) -> HostRisk {
        HostRisk {
            scores: risk_table(extra)
                .into_iter()
                .map(|e| (e.port, e.score))
                .collect(),
            hosts: HashMap::new(),
            open: 0,
            limit,
        }
    }

    /// Every port the inventory holds as open.
    pub fn seed(&mut self, inventory: &Inventory) {
        for h in inventory.hosts.values() {
            for p in h.ports.values() {
                if p.state == PortState::Open {
                    self.open(h.addr, p.port, p.proto);
                }
            }
        }
    }

    pub fn open(&mut self, addr: IpAddr, port: u16, proto: Proto) {
        if self.open >= MAX_OPEN_PORTS {
            return;
        }
        if self.hosts.entry(addr).or_default().insert((port, proto)) {
            self.open += 1;
        }
    }

    pub fn close(&mut self, addr: IpAddr, port: u16, proto: Proto) {
        let Some(ports) = self.hosts.get_mut(&addr) else {
            return;
        };
        if ports.remove(&(port, proto)) {
            self.open -= 1;
        }
        if ports.is_empty() {
            self.hosts.remove(&addr);
        }
    }

    /// Open ports in the inventory.
    pub fn open_ports(&self) -> usize {
        self.open
    }

    /// The top hosts by score (highest first, then by address) and the sum of the
    /// rest's. Hosts that score 0 never get a label.
    pub fn series(&self) -> (Vec<(IpAddr, u64)>, u64) {
        let mut scored: Vec<(IpAddr, u64)> = self
            .hosts
            .iter()
            .map(|(addr, ports)| {
                let score = ports
                    .iter()
                    .map(|(port, _)| u64::from(self.scores.get(port).copied().unwrap_or(0)))
                    .sum();
                (*addr, score)
            })
            .filter(|(_, s)| *s > 0)
            .collect();
        scored.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = scored.split_off(scored.len().min(self.limit));
        (scored, rest.iter().map(|(_, s)| s).sum())
    }
}

/// Renders [`HostRisk`] as `netmon_scan_host_risk_score{host}` at scrape time.
pub struct Collector {
    state: Arc<Mutex<HostRisk>>,
    score: IntGaugeVec,
    render: Mutex<()>,
}

impl Collector {
    pub fn new(state: Arc<Mutex<HostRisk>>) -> Collector {
        Collector {
            state,
            score: IntGaugeVec::new(
                Opts::new(
                    "netmon_scan_host_risk_score",
                    "Sum of the port risk scores (0 to 10 each, [rules.port_risk]) of a scanned host's open ports, for the highest-scoring hosts; the rest summed under host=\"~other\".",
                ),
                &["host"],
            )
            .expect("valid family"),
            render: Mutex::new(()),
        }
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.score.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        self.score.reset();
        let (top, other) = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .series();
        for (addr, score) in top {
            self.score
                .with_label_values(&[&addr.to_string()])
                .set(score.min(i64::MAX as u64) as i64);
        }
        self.score
            .with_label_values(&[OTHER])
            .set(other.min(i64::MAX as u64) as i64);
        self.score.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 9, 0, n])
    }

    #[test]
    fn hosts_are_ranked_by_the_sum_of_their_ports_scores_and_the_rest_summed() {
        let mut r = HostRisk::new(&[], 2);
        // docker-api 10 + redis 7.
        r.open(ip(1), 2375, Proto::Tcp);
        r.open(ip(1), 6379, Proto::Tcp);
        // telnet: the score the table gives it.
        let telnet = u64::from(risk_table(&[]).iter().find(|e| e.port == 23).unwrap().score);
        r.open(ip(2), 23, Proto::Tcp);
        r.open(ip(3), 3306, Proto::Tcp); // mysql 5
        r.open(ip(4), 3306, Proto::Tcp); // mysql 5
        r.open(ip(5), 44_444, Proto::Tcp); // not in the table: 0, no label
        let (top, other) = r.series();
        assert_eq!(top, vec![(ip(1), 17), (ip(2), telnet)]);
        assert_eq!(other, 10);
        assert_eq!(r.open_ports(), 6);
        r.close(ip(1), 2375, Proto::Tcp);
        r.close(ip(1), 2375, Proto::Tcp);
        assert_eq!(r.open_ports(), 5);
        assert_eq!(r.series().0[0], (ip(2), telnet));
    }

    #[test]
    fn configured_scores_replace_the_builtin_ones() {
        let mut r = HostRisk::new(
            &[RiskEntry {
                port: 8443,
                service: "admin".into(),
                score: 9,
                why: None,
            }],
            20,
        );
        r.open(ip(1), 8443, Proto::Tcp);
        r.open(ip(1), 8443, Proto::Tcp);
        assert_eq!(r.series(), (vec![(ip(1), 9)], 0));
    }

    #[test]
    fn the_collector_renders_top_hosts_and_other() {
        let state = Arc::new(Mutex::new(HostRisk::new(&[], 1)));
        state.lock().unwrap().open(ip(1), 2375, Proto::Tcp);
        state.lock().unwrap().open(ip(2), 3306, Proto::Tcp);
        let reg = prometheus::Registry::new();
        reg.register(Box::new(Collector::new(state))).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&reg.gather())
            .unwrap();
        assert!(text.contains("netmon_scan_host_risk_score{host=\"10.9.0.1\"} 10"));
        assert!(text.contains("netmon_scan_host_risk_score{host=\"~other\"} 5"));
    }
}
