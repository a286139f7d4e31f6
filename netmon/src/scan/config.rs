//! `[scan]` in the configuration file: where the monitor may scan, what, and how
//! often. Off by default: with `allow` empty nothing is ever scanned.
//!
//! ```toml
//! [scan]
//! allow = ["10.0.0.0/24", "fd00::/64"]   # the only networks ever touched
//! allow_public = false                   # public ranges in `allow` need true
//! allow_widest_v4 = 16                   # no `allow` entry wider than a /16 (v6: /48)
//! networks = ["10.0.0.0/24"]             # swept for new hosts (inside `allow`)
//! discovery_interval = "10m"             # sweep of `networks` (and new flow peers)
//! port_scan_interval = "1h"              # port scan of each known live host
//! ping_interval = "1m"                   # liveness check of each known host
//! rate_pps = 100                         # all probes together, per second
//! ports = "top:100"                      # or a port spec: "22,80,443,U:53"
//! ```
//!
//! Durations are a number of seconds or a string with a unit (`ms`, `s`, `m`, `h`, `d`).
//! `ScanConfig::validate` turns the raw values into a checked `MonitorSettings`.
use std::{fmt, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::ports::{self, PortList, PortSpecError};
use crate::event::Proto;

/// The raw `[scan]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Networks the monitor may send probes to. Empty: scanning is off. Each entry at
    /// most as wide as `allow_widest_v4` / `allow_widest_v6`, and private unless
    /// `allow_public`; a cloud metadata address only when listed exactly.
    pub allow: Vec<IpNet>,
    /// Let `allow` hold public (not loopback, private, link-local, ULA) ranges.
    pub allow_public: bool,
    /// The shortest prefix an IPv4 `allow` entry may have (default 16: a /16).
    pub allow_widest_v4: u8,
    /// The shortest prefix an IPv6 `allow` entry may have (default 48).
    pub allow_widest_v6: u8,
    /// Networks swept for new hosts on `discovery_interval`; each inside `allow`.
    pub networks: Vec<IpNet>,
    /// Also discover remote peers seen in flows (when inside `allow`).
    pub flow_peers: bool,
    #[serde(with = "secs")]
    pub discovery_interval: Duration,
    #[serde(with = "secs")]
    pub port_scan_interval: Duration,
    #[serde(with = "secs")]
    pub ping_interval: Duration,
    /// Probes per second, all kinds together.
    pub rate_pps: u32,
    /// `top:N` or a port spec as for `netmon scan -p`.
    pub ports: String,
    /// Wait for one answer.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Consecutive failed liveness checks before `host_down`.
    pub down_after: u32,
    pub service_detection: bool,
    pub reverse_dns: bool,
    /// Where the inventory is kept between runs (read by `netmon hosts`).
    pub state_file: PathBuf,
    /// At most this many hosts are tracked; peers beyond it are ignored and counted.
    pub max_hosts: usize,
}

/// The longest interval `[scan]` accepts (366 days).
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);
/// The longest wait for one answer (as `netmon scan --timeout`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of the counts in `[scan]`.
pub const MAX_RATE_PPS: u64 = 1_000_000;
pub const MAX_DOWN_AFTER: u64 = 1_000;
pub const MAX_HOSTS: u64 = 1 << 20;

/// The default place of the inventory.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/netmon/hosts.json";

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            allow: Vec::new(),
            allow_public: false,
            allow_widest_v4: 16,
            allow_widest_v6: 48,
            networks: Vec::new(),
            flow_peers: true,
            discovery_interval: Duration::from_secs(600),
            port_scan_interval: Duration::from_secs(3600),
            ping_interval: Duration::from_secs(60),
            rate_pps: 100,
            ports: "top:100".into(),
            timeout: Duration::from_secs(1),
            down_after: 2,
            service_detection: true,
            reverse_dns: true,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            max_hosts: 4096,
        }
    }
}

/// What is wrong with a `[scan]` section; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "scan.networks: {net} is outside scan.allow ({allowed}); add it to scan.allow to let netmon scan it"
    )]
    NetworkNotAllowed { net: IpNet, allowed: String },
    #[error("scan.ports: {0}")]
    Ports(#[from] PortSpecError),
    #[error("scan.ports: `{0}`: top:N needs N between 1 and 65535")]
    TopPorts(String),
    #[error("scan.{key}: must be at least {min:?}")]
    TooShort { key: &'static str, min: Duration },
    #[error("scan.{key}: must be at least 1")]
    Zero { key: &'static str },
    #[error("scan.{key}: must be at most {max:?}")]
    TooLong { key: &'static str, max: Duration },
    #[error("scan.{key}: must be at most {max}")]
    TooMany { key: &'static str, max: u64 },
    #[error("scan.networks: {net} is too large to sweep (at most {max} addresses)")]
    NetworkTooLarge { net: IpNet, max: u64 },
    #[error(
        "scan.allow: {net} is wider than /{widest} (scan.allow_widest_v{family}); list narrower networks or raise that limit"
    )]
    AllowTooWide { net: IpNet, widest: u8, family: u8 },
    #[error(
        "scan.allow: {net} holds public addresses; set scan.allow_public = true if netmon may really scan them"
    )]
    AllowPublic { net: IpNet },
    #[error("scan.allow: {net}: {reason}")]
    AllowUnscannable { net: IpNet, reason: &'static str },
    #[error("scan.allow_widest_v{family}: {value} is not a prefix length (0 to {max})")]
    AllowWidest { family: u8, value: u8, max: u8 },
}

/// Cloud instance metadata services (AWS, GCP, Azure, OpenStack; AWS's IPv6 one):
/// never probed unless `scan.allow` lists the address itself (as a /32 or /128), so a
/// link-local or ULA `allow` entry does not quietly include them.
pub const METADATA_ADDRS: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether `ip` is a cloud metadata address (also as IPv4-mapped IPv6).
pub fn is_metadata(ip: &std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    METADATA_ADDRS.contains(&ip)
}

/// Checked settings the monitor runs on.
#[derive(Clone, Debug)]
pub struct MonitorSettings {
    pub raw: ScanConfig,
    pub ports: PortList,
}

impl MonitorSettings {
    /// Whether the monitor may touch `ip`: inside `allow`, never an always-refused
    /// address (also as IPv4-mapped IPv6), a metadata address only when listed exactly.
    pub fn allows(&self, ip: &std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        if super::target::unscannable_reason(&ip).is_some() {
            return false;
        }
        if is_metadata(&ip) {
            return self
                .raw
                .allow
                .iter()
                .any(|n| n.prefix_len() == n.max_prefix_len() && n.addr() == ip);
        }
        self.raw.allow.iter().any(|n| n.contains(&ip))
    }

    pub fn enabled(&self) -> bool {
        !self.raw.allow.is_empty()
    }
}

impl ScanConfig {
    pub fn validate(&self) -> Result<MonitorSettings, ConfigError> {
        let allowed = if self.allow.is_empty() {
            "empty".to_owned()
        } else {
            self.allow
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (family, value, max) in [
            (4, self.allow_widest_v4, 32),
            (6, self.allow_widest_v6, 128),
        ] {
            if value > max {
                return Err(ConfigError::AllowWidest { family, value, max });
            }
        }
        for net in &self.allow {
            check_allow_entry(
                net,
                self.allow_widest_v4,
                self.allow_widest_v6,
                self.allow_public,
            )?;
        }
        for net in &self.networks {
            if !self.allow.iter().any(|a| a.contains(net)) {
                return Err(ConfigError::NetworkNotAllowed { net: *net, allowed });
            }
            let bits = net.max_prefix_len() - net.prefix_len();
            if bits > 16 {
                return Err(ConfigError::NetworkTooLarge {
                    net: *net,
                    max: 1 << 16,
                });
            }
        }
        let min = Duration::from_secs(1);
        for (key, d) in [
            ("discovery_interval", self.discovery_interval),
            ("port_scan_interval", self.port_scan_interval),
            ("ping_interval", self.ping_interval),
        ] {
            if d < min {
                return Err(ConfigError::TooShort { key, min });
            }
            // Bounded so that `Instant + interval` can never overflow (a panic).
            if d > MAX_INTERVAL {
                return Err(ConfigError::TooLong {
                    key,
                    max: MAX_INTERVAL,
                });
            }
        }
        if self.timeout < Duration::from_millis(50) {
            return Err(ConfigError::TooShort {
                key: "timeout",
                min: Duration::from_millis(50),
            });
        }
        if self.timeout > MAX_TIMEOUT {
            return Err(ConfigError::TooLong {
                key: "timeout",
                max: MAX_TIMEOUT,
            });
        }
        if self.rate_pps == 0 {
            return Err(ConfigError::Zero { key: "rate_pps" });
        }
        if self.down_after == 0 {
            return Err(ConfigError::Zero { key: "down_after" });
        }
        for (key, n, max) in [
            ("rate_pps", u64::from(self.rate_pps), MAX_RATE_PPS),
            ("down_after", u64::from(self.down_after), MAX_DOWN_AFTER),
            ("max_hosts", self.max_hosts as u64, MAX_HOSTS),
        ] {
            if n > max {
                return Err(ConfigError::TooMany { key, max });
            }
        }
        let ports = parse_ports_setting(&self.ports)?;
        Ok(MonitorSettings {
            raw: self.clone(),
            ports,
        })
    }
}

/// One `scan.allow` entry: not wider than the limit of its family, not public unless
/// allowed, not made only of addresses nothing may scan.
fn check_allow_entry(
    net: &IpNet,
    widest_v4: u8,
    widest_v6: u8,
    allow_public: bool,
) -> Result<(), ConfigError> {
    let (widest, family) = match net {
        IpNet::V4(_) => (widest_v4, 4),
        IpNet::V6(_) => (widest_v6, 6),
    };
    if net.prefix_len() < widest {
        return Err(ConfigError::AllowTooWide {
            net: *net,
            widest,
            family,
        });
    }
    let (first, last) = (net.network(), net.broadcast());
    if let Some(reason) = super::target::unscannable_reason(&first)
        .filter(|_| super::target::unscannable_reason(&last).is_some())
    {
        return Err(ConfigError::AllowUnscannable { net: *net, reason });
    }
    // The private blocks are CIDR blocks none of which borders another, so a network
    // is wholly private exactly when its first and last addresses are.
    let private = super::target::is_private(&first.to_canonical())
        && super::target::is_private(&last.to_canonical());
    if !private && !allow_public {
        return Err(ConfigError::AllowPublic { net: *net });
    }
    Ok(())
}

/// `top:N` or a port spec.
pub fn parse_ports_setting(s: &str) -> Result<PortList, ConfigError> {
    if let Some(n) = s.trim().strip_prefix("top:") {
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| ConfigError::TopPorts(s.to_owned()))?;
        return Ok(PortList {
            tcp: ports::top(Proto::Tcp, n),
            udp: Vec::new(),
        });
    }
    Ok(ports::parse(s)?)
}

/// Parses `90`, `"90"`, `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    let secs = n * mult;
    // `try_`: a huge value ("99999999999999999999999d") is an error, not a panic.
    Duration::try_from_secs_f64(secs).ok()
}

mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("seconds, or a duration such as \"30s\", \"5m\", \"1h\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(v).map_err(|_| E::custom("not a valid duration"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a duration (try \"30s\", \"5m\", \"1h\")"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        scan: ScanConfig,
    }

    #[test]
    fn defaults_scan_nothing() {
        let c = ScanConfig::default();
        assert!(c.allow.is_empty());
        let s = c.validate().unwrap();
        assert!(!s.enabled());
        assert!(!s.allows(&"10.0.0.1".parse().unwrap()));
        assert_eq!(s.ports.tcp.len(), 100);
    }

    #[test]
    fn toml_section_parses() {
        let f: File = toml::from_str(
            r#"
            [scan]
            allow = ["10.200.0.0/16", "fd00::/64"]
            networks = ["10.200.1.0/24"]
            discovery_interval = "5m"
            port_scan_interval = 3600
            ping_interval = "30s"
            rate_pps = 50
            ports = "22,80,U:53"
            "#,
        )
        .unwrap();
        let s = f.scan.validate().unwrap();
        assert_eq!(s.raw.discovery_interval, Duration::from_secs(300));
        assert_eq!(s.raw.port_scan_interval, Duration::from_secs(3600));
        assert_eq!(s.raw.ping_interval, Duration::from_secs(30));
        assert_eq!(s.ports.tcp, [22, 80]);
        assert_eq!(s.ports.udp, [53]);
        assert!(s.allows(&"10.200.9.9".parse().unwrap()));
        assert!(!s.allows(&"10.201.0.1".parse().unwrap()));
        assert_eq!(s.raw.state_file, PathBuf::from(DEFAULT_STATE_FILE));
    }

    #[test]
    fn bad_sections_are_refused_with_the_key() {
        let c = ScanConfig {
            allow: vec!["10.0.0.0/24".parse().unwrap()],
            networks: vec!["10.0.1.0/24".parse().unwrap()],
            ..ScanConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("10.0.1.0/24") && err.contains("scan.allow"),
            "{err}"
        );
        let c = ScanConfig {
            ports: "22,x".into(),
            ..ScanConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`x`"));
        let c = ScanConfig {
            ping_interval: Duration::from_millis(10),
            ..ScanConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ping_interval")
        );
        assert!(toml::from_str::<File>("[scan]\nping_interval = \"soon\"").is_err());
        assert!(toml::from_str::<File>("[scan]\nallow = [\"10.0.0.0/33\"]").is_err());
        assert!(toml::from_str::<File>("[scan]\nbogus = 1").is_err());
    }

    #[test]
    fn allow_entries_are_bounded_private_and_spare_the_metadata_address() {
        let with = |allow: &[&str], public: bool| ScanConfig {
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            allow_public: public,
            ..ScanConfig::default()
        };
        // Everything, or a wide range: refused whatever allow_public says.
        for wide in ["0.0.0.0/0", "::/0", "10.0.0.0/8", "fd00::/8"] {
            let err = with(&[wide], true).validate().unwrap_err().to_string();
            assert!(err.contains(wide) && err.contains("allow_widest"), "{err}");
        }
        // The limit is configurable.
        let mut c = with(&["10.0.0.0/8"], false);
        c.allow_widest_v4 = 8;
        assert!(c.validate().is_ok());
        c.allow_widest_v4 = 33;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allow_widest_v4")
        );
        // Public ranges need allow_public.
        let err = with(&["203.0.113.0/24"], false)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("203.0.113.0/24") && err.contains("allow_public"),
            "{err}"
        );
        assert!(with(&["203.0.113.0/24"], true).validate().is_ok());
        assert!(with(&["2001:db8::/48"], false).validate().is_err());
        assert!(
            with(&["10.1.0.0/16", "fd00:1::/48", "::1/128"], false)
                .validate()
                .is_ok()
        );
        // Multicast is refused as an entry.
        assert!(with(&["224.0.0.0/24"], true).validate().is_err());
        // The metadata address: not through a link-local range, only listed exactly.
        let s = with(&["169.254.0.0/16", "fd00:ec2::/64"], false)
            .validate()
            .unwrap();
        assert!(s.allows(&"169.254.1.1".parse().unwrap()));
        for md in ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            assert!(!s.allows(&md.parse().unwrap()), "{md}");
        }
        let s = with(&["169.254.169.254/32", "fd00:ec2::254/128"], false)
            .validate()
            .unwrap();
        assert!(s.allows(&"169.254.169.254".parse().unwrap()));
        assert!(s.allows(&"fd00:ec2::254".parse().unwrap()));
        // IPv4-mapped IPv6 is judged as the IPv4 address it is.
        let s = with(&["10.9.0.0/16"], false).validate().unwrap();
        assert!(s.allows(&"::ffff:10.9.0.1".parse().unwrap()));
        assert!(!s.allows(&"::ffff:10.8.0.1".parse().unwrap()));
        let s = with(&["203.0.113.0/24"], true).validate().unwrap();
        assert!(!s.allows(&"::ffff:0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
