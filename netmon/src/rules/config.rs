//! `[rules]` of the configuration file: one table per built-in rule, plus custom rules.
//! Every table rejects unknown keys; defaults are the documented ones (`docs/config.md`).
use serde::{Deserialize, Serialize};

use super::{
    matchers::{Allow, Cidr, PortRange},
    ports::{DEFAULT_SUSPICIOUS_PORTS, RiskEntry},
};
use crate::event::{Direction, Proto, Severity};

/// Names of the built-in rules, in the order `netmon rules list` shows them.
pub const BUILTIN: [&str; 6] = [
    "SUSPICIOUS_PORT",
    "HIGH_CONNECTION_COUNT",
    "EXTERNAL_CONNECTIONS",
    "UNUSUAL_LISTENERS",
    "DNS_TUNNELING",
    "PORT_RISK",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Master switch: no rule runs when false.
    pub enabled: bool,
    /// Seconds during which the same condition does not alert again (per-rule override:
    /// `cooldown_s` in the rule's table).
    pub cooldown_s: u64,
    pub suspicious_port: SuspiciousPortConfig,
    pub high_connection_count: HighConnectionCountConfig,
    pub external_connections: ExternalConnectionsConfig,
    pub unusual_listeners: UnusualListenersConfig,
    pub dns_tunneling: DnsTunnelingConfig,
    pub port_risk: PortRiskConfig,
    /// `[[rules.custom]]`.
    pub custom: Vec<CustomRuleConfig>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            enabled: true,
            cooldown_s: 300,
            suspicious_port: Default::default(),
            high_connection_count: Default::default(),
            external_connections: Default::default(),
            unusual_listeners: Default::default(),
            dns_tunneling: Default::default(),
            port_risk: Default::default(),
            custom: Vec::new(),
        }
    }
}

impl RulesConfig {
    /// Checks what serde cannot: returns the dotted key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen: Vec<&str> = Vec::new();
        for (i, c) in self.custom.iter().enumerate() {
            let key = format!("rules.custom[{i}].name");
            if c.name.is_empty() || c.name.len() > 64 {
                return Err((key, "expected a name of 1 to 64 characters".into()));
            }
            if BUILTIN.contains(&c.name.as_str()) {
                return Err((
                    key,
                    format!("`{}` is a built-in rule: expected another name", c.name),
                ));
            }
            if seen.contains(&c.name.as_str()) {
                return Err((
                    key,
                    format!("a custom rule named `{}` already exists", c.name),
                ));
            }
            seen.push(&c.name);
        }
        for (i, e) in self.port_risk.ports.iter().enumerate() {
            if e.score > 10 {
                return Err((
                    format!("rules.port_risk.ports[{i}].score"),
                    format!("{} is out of range: expected 0 to 10", e.score),
                ));
            }
        }
        let t = &self.dns_tunneling;
        if t.domain_labels == 0 {
            return Err((
                "rules.dns_tunneling.domain_labels".into(),
                "expected at least 1".into(),
            ));
        }
        for (key, v) in [
            (
                "rules.external_connections.window_s",
                self.external_connections.window_s,
            ),
            ("rules.dns_tunneling.window_s", t.window_s),
        ] {
            if v == 0 {
                return Err((key.into(), "expected at least 1 second".into()));
            }
        }
        Ok(())
    }
}

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

/// `[rules.external_connections]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConnectionsConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    /// Unique external addresses of one process within `window_s` that fire the rule.
    pub threshold: usize,
    pub window_s: u64,
    /// Addresses that are not external (replaces the built-in private/loopback list).
    pub internal_cidrs: Vec<Cidr>,
    pub allow: Allow,
}

/// Loopback, private, link-local, CGNAT, multicast and unspecified blocks.
pub const DEFAULT_INTERNAL_CIDRS: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "0.0.0.0/32",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

impl Default for ExternalConnectionsConfig {
    fn default() -> Self {
        ExternalConnectionsConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            threshold: 20,
            window_s: 60,
            internal_cidrs: DEFAULT_INTERNAL_CIDRS
                .iter()
                .map(|c| c.parse().expect("built-in CIDR"))
                .collect(),
            allow: Allow::default(),
        }
    }
}

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

/// `[rules.dns_tunneling]`: per registered domain, within `window_s`, each indicator
/// adds to a score; the rule fires when the score reaches `min_score`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsTunnelingConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    pub window_s: u64,
    /// Labels that make the registered domain (2: `example.com`).
    pub domain_labels: usize,
    /// Queries to one domain in the window (+1).
    pub query_rate: usize,
    /// Distinct names under one domain in the window (+1).
    pub unique_subdomains: usize,
    /// Queries with a long or high-entropy subdomain in the window (+2).
    pub suspicious_names: usize,
    /// A label at least this long makes a name suspicious.
    pub long_label: usize,
    /// Shannon entropy (bits per character) of a subdomain of 24+ characters that makes
    /// a name suspicious.
    pub entropy_bits: f64,
    /// TXT and NULL queries to one domain in the window (+2).
    pub txt_null: usize,
    /// Score that fires the rule.
    pub min_score: u32,
    /// Domains never checked (and their subdomains).
    pub allow_domains: Vec<String>,
    pub allow: Allow,
}

impl Default for DnsTunnelingConfig {
    fn default() -> Self {
        DnsTunnelingConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            window_s: 60,
            domain_labels: 2,
            query_rate: 200,
            unique_subdomains: 100,
            suspicious_names: 20,
            long_label: 40,
            entropy_bits: 4.0,
            txt_null: 50,
            min_score: 3,
            allow_domains: Vec::new(),
            allow: Allow::default(),
        }
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
