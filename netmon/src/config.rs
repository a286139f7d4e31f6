//! The configuration file: TOML, given with `--config FILE` or read from
//! [`DEFAULT_PATH`] when that exists. See `docs/config.md`.
//!
//! The top level is a set of independent sections, each owned by the module that uses
//! it (`[rules]` by `rules`, `[dns]` by `dns`); a new feature adds its section here as
//! one field. Every section rejects unknown keys, and every error names the file, the
//! line, the key and what was expected, so a typo never silently disables a rule.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::rules::RulesConfig;

mod span;
pub use span::Span;

/// Read when no `--config` is given and the file exists.
pub const DEFAULT_PATH: &str = "/etc/netmon/netmon.toml";

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[rules]`: detection rules, thresholds, allowlists, custom rules.
    pub rules: RulesConfig,
    /// `[dns]`: DNS capture.
    pub dns: DnsConfig,
    /// `[scan]`: the active scanner's monitor (see `scan/config.rs`).
    pub scan: crate::scan::config::ScanConfig,
    /// `[history]`: the embedded history (see `history.rs`, docs/history.md).
    pub history: crate::history::HistoryConfig,
    /// `[geoip]`: offline geolocation and ASN databases (see `geoip.rs`, docs/report.md).
    pub geoip: crate::geoip::GeoipConfig,
    /// `[events]`: event types beyond the default stream.
    pub events: EventsConfig,
    /// `[metrics]`: optional label sets of the Prometheus metrics (see `metrics.rs`).
    pub metrics: crate::metrics::MetricsConfig,
}

/// `[events]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Write an `exec` event for every program a process execs (off by default: one
    /// line per exec is a lot on a busy host). Also `netmon run --events exec`.
    pub exec: bool,
}

/// `[dns]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Capture DNS at all (the `dns` capability).
    pub enabled: bool,
    /// Ports carrying DNS besides 53 (e.g. a local resolver on 5353).
    pub ports: Vec<u16>,
    /// DNS packets per second the kernel copies per process at most (0: no limit), so
    /// a flood to port 53 cannot fill the ring buffer and push out other events; the
    /// excess is counted in `stats.dns.rate_limited`.
    pub rate_limit: u32,
    /// Packets a process may send at once beyond `rate_limit`.
    pub rate_burst: u32,
}

/// The most `rate_limit` and `rate_burst` may be.
const DNS_RATE_MAX: u32 = 1_000_000;

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            ports: Vec::new(),
            rate_limit: 500,
            rate_burst: 1000,
        }
    }
}

impl DnsConfig {
    /// Every port netmon treats as DNS: 53 first, then the configured ones.
    pub fn all_ports(&self) -> Vec<u16> {
        let mut ports = vec![53];
        for p in &self.ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        ports
    }

    /// The kernel's per-process DNS bound.
    pub fn rate(&self) -> crate::probe::DnsRate {
        crate::probe::DnsRate {
            per_second: self.rate_limit,
            burst: self.rate_burst.max(1),
        }
    }
}

/// A configuration error: where, which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the error is not about a place in the file (unreadable).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the key (`rules.suspicious_port.ports[2]`); empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a configuration text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with_warnings(text, file).map(|(config, _)| config)
}

/// As [`parse`], also returning a warning (file, line, key, what to write instead) for
/// each deprecated key it accepted.
pub fn parse_with_warnings(
    text: &str,
    file: &Path,
) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| located(text, file, String::new(), &e))?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        located(text, file, key, e.inner())
    })?;
    let at = |(key, message): (String, String)| {
        let (line, column) = find_key(text, &key);
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key,
            message,
        }
    };
    let warnings = config.rules.upgrade().into_iter().map(at).collect();
    config.validate().map_err(at)?;
    Ok((config, warnings))
}

/// Reads and parses `path`; prints a warning line on stderr for each deprecated key.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let (config, warnings) = parse_with_warnings(&text, path)?;
    for w in warnings {
        crate::eline!("netmon: warning: {w}");
    }
    Ok(config)
}

/// The configuration in effect: `explicit` if given, else [`DEFAULT_PATH`] if it
/// exists, else the built-in defaults. Returns the file used, if any.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    if let Some(path) = explicit {
        return Ok((load_file(path)?, Some(path.to_owned())));
    }
    let default = Path::new(DEFAULT_PATH);
    if default.exists() {
        return Ok((load_file(default)?, Some(default.to_owned())));
    }
    Ok((Config::default(), None))
}

impl Config {
    /// Checks what types alone cannot: returns the dotted key and the problem.
    fn validate(&self) -> Result<(), (String, String)> {
        self.rules.validate()?;
        // `[scan]` is checked here too, so a bad section fails with its file and line
        // (in `netmon rules check` as well) before anything is attached.
        if let Err(e) = self.scan.validate() {
            let text = e.to_string();
            return Err(match text.split_once(": ") {
                Some((key, why)) if key.starts_with("scan.") => (key.to_owned(), why.to_owned()),
                _ => ("scan".to_owned(), text),
            });
        }
        self.history.validate()?;
        self.metrics.validate()?;
        for (i, p) in self.dns.ports.iter().enumerate() {
            if *p == 0 {
                return Err((format!("dns.ports[{i}]"), "port 0 is not a port".into()));
            }
        }
        if self.dns.rate_limit > DNS_RATE_MAX {
            return Err((
                "dns.rate_limit".into(),
                format!("at most {DNS_RATE_MAX} packets per second (0: no limit)"),
            ));
        }
        if self.dns.rate_burst == 0 || self.dns.rate_burst > DNS_RATE_MAX {
            return Err((
                "dns.rate_burst".into(),
                format!("between 1 and {DNS_RATE_MAX} packets"),
            ));
        }
        Ok(())
    }
}

fn located(text: &str, file: &Path, key: String, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => find_key(text, &key),
    };
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        key,
        message: e.message().trim_end().to_owned(),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

/// Best-effort line of a dotted key for errors found after parsing: the first line
/// that assigns its last plain component (or opens its table).
fn find_key(text: &str, key: &str) -> (Option<usize>, Option<usize>) {
    let last = key
        .rsplit('.')
        .find(|part| !part.is_empty() && !part.starts_with('['))
        .unwrap_or("")
        .split('[')
        .next()
        .unwrap_or("");
    if last.is_empty() {
        return (None, None);
    }
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let assigns = t
            .strip_prefix(last)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if assigns || t.trim_start_matches('[').starts_with(key) {
            return (Some(i + 1), Some(line.len() - t.len() + 1));
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("netmon.toml")).unwrap_err()
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.dns.all_ports(), vec![53]);
    }

    #[test]
    fn unknown_keys_name_file_line_key_and_expected() {
        let e = err("[rules]\ncooldown_s = 10\n\n[rules.suspicious_port]\nportz = [1]\n");
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key, "rules.suspicious_port.portz");
        assert!(e.message.contains("unknown field `portz`"), "{e}");
        assert!(e.message.contains("expected one of"), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("netmon.toml:5:"), "{shown}");
        let e = err("[bogus]\nx = 1\n");
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        // Each section rejects its own unknown keys.
        let e = err("[scan]\nbogus = 1\n");
        assert_eq!(e.key, "scan.bogus");
    }

    #[test]
    fn wrong_types_and_values_say_what_is_expected() {
        let e = err("[rules.high_connection_count]\nthreshold = \"many\"\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key, "rules.high_connection_count.threshold");
        assert!(e.message.contains("expected"), "{e}");
        let e = err("[rules.external_connections]\ninternal_cidrs = [\"10.0.0.0/8\", \"bogus\"]\n");
        assert_eq!(e.line, Some(2));
        assert!(
            e.key
                .starts_with("rules.external_connections.internal_cidrs"),
            "{e}"
        );
        assert!(e.message.contains("expected e.g. `10.0.0.0/8`"), "{e}");
        let e = err("[rules.suspicious_port]\nports = [\"9-1\"]\n");
        assert!(e.message.contains("lower port"), "{e}");
        let e = err("[rules.suspicious_port]\nseverity = \"dire\"\n");
        assert!(e.message.contains("expected one of"), "{e}");
        let e = err("[dns]\nports = [70000]\n");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn the_dns_rate_is_bounded_and_reaches_the_loader() {
        let c = parse("", Path::new("x")).unwrap();
        assert_eq!(
            c.dns.rate(),
            crate::probe::DnsRate {
                per_second: 500,
                burst: 1000
            }
        );
        let c = parse("[dns]\nrate_limit = 0\nrate_burst = 5\n", Path::new("x")).unwrap();
        assert_eq!(c.dns.rate().per_second, 0);
        let e = err("[dns]\nrate_limit = 2000000\n");
        assert_eq!((e.key.as_str(), e.line), ("dns.rate_limit", Some(2)));
        let e = err("[dns]\nports = [5353]\nrate_burst = 0\n");
        assert_eq!((e.key.as_str(), e.line), ("dns.rate_burst", Some(3)));
        assert!(e.message.contains("between 1 and"), "{e}");
        let e = err("[dns]\nrate_limit = -1\n");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("[rules\n");
        assert_eq!(e.line, Some(1));
        assert!(e.key.is_empty());
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            r#"
[rules]
cooldown_s = 60
[rules.suspicious_port]
extra_ports = [7777, "40000-40010"]
allow = { process = ["tor"], cidrs = ["10.0.0.0/8"] }
[rules.high_connection_count]
threshold = 10
severity = "high"
[rules.unusual_listeners]
enabled = false
[rules.port_risk]
min_score = 3
[[rules.port_risk.ports]]
port = 8081
service = "admin"
score = 9
[[rules.custom]]
name = "NO_TELNET"
severity = "critical"
summary = "telnet out"
proto = "tcp"
direction = "outbound"
ports = [23]
[dns]
ports = [5353]
[scan]
allow = ["10.0.0.0/24"]
"#,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.rules.cooldown_s, 60);
        assert_eq!(c.rules.high_connection_count.threshold, 10);
        assert!(!c.rules.unusual_listeners.enabled);
        assert_eq!(c.rules.custom.len(), 1);
        assert_eq!(c.dns.all_ports(), vec![53, 5353]);
    }

    #[test]
    fn a_scan_network_outside_allow_names_its_key_and_line() {
        let e = err("[scan]\nallow = [\"10.0.0.0/24\"]\nnetworks = [\"10.0.1.0/24\"]\n");
        assert_eq!(e.key, "scan.networks");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("outside scan.allow"), "{e}");
        let e = err("[scan]\nallow = [\"10.0.0.0/24\"]\nports = \"70000\"\n");
        assert_eq!(e.key, "scan.ports");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn windows_are_durations_and_window_s_is_deprecated() {
        let c = parse(
            "[rules.external_connections]\nwindow = \"2m\"\n[rules.dns_tunneling]\nwindow = 30\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.rules.external_connections.window, Span::from_secs(120));
        assert_eq!(c.rules.dns_tunneling.window, Span::from_secs(30));
        let text = "[rules]\ncooldown_s = 10\n[rules.dns_tunneling]\nwindow_s = 90\n";
        let (c, warnings) = parse_with_warnings(text, Path::new("netmon.toml")).unwrap();
        assert_eq!(c.rules.dns_tunneling.window, Span::from_secs(90));
        assert_eq!(warnings.len(), 1);
        let w = warnings[0].to_string();
        assert_eq!(
            w,
            "netmon.toml:4:1: key `rules.dns_tunneling.window_s`: `window_s` is deprecated \
             and will be removed: write `window = \"90s\"`"
        );
        // Shown as the current spelling.
        let shown = toml::to_string(&c.rules.dns_tunneling).unwrap();
        assert!(shown.contains("window = \"90s\""), "{shown}");
        assert!(!shown.contains("window_s"), "{shown}");
        let e = err("[rules.external_connections]\nwindow = \"0s\"\n");
        assert_eq!(e.key, "rules.external_connections.window");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("at least 1 second"), "{e}");
        let e = err("[rules]\n[rules.dns_tunneling]\nwindow_s = 0\n");
        assert_eq!(e.key, "rules.dns_tunneling.window_s");
        assert_eq!(e.line, Some(3));
        let e = err("[rules.dns_tunneling]\nwindow = \"soon\"\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not a duration"), "{e}");
        let e = err("[rules.dns_tunneling]\nwindow = \"99999999999999999999999999d\"\n");
        assert!(e.message.contains("not a duration"), "{e}");
    }

    #[test]
    fn history_section_parses_and_names_bad_keys() {
        let c = parse(
            "[history]\npath = \"/tmp/h.db\"\nraw_retention = \"2d\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.history.raw_retention, crate::history::Span::days(2));
        assert_eq!(c.history.path, PathBuf::from("/tmp/h.db"));
        let e = err("[history]\nraw_retention = \"7x\"\n");
        assert_eq!(e.key, "history.raw_retention");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unknown unit"), "{e}");
        let e = err("[history]\nminute_retention = \"0s\"\n");
        assert_eq!(e.key, "history.minute_retention");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn custom_rules_need_unique_names() {
        let e = err(
            "[[rules.custom]]\nname = \"SUSPICIOUS_PORT\"\nseverity = \"low\"\nsummary = \"x\"\n",
        );
        assert!(e.key.starts_with("rules.custom[0].name"), "{e}");
        assert_eq!(e.line, Some(2));
    }
}
