//! The typed questions every face asks: events, flows, alerts and hosts in a time
//! window, with filters, and the rows that answer them. `netmon history`, and later
//! the API, the TUI and the report, only translate flags or requests into a
//! [`Question`] and render the rows; the SQL lives in `history/query.rs` (and a live
//! source may answer the same questions).
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A half-open time window `[since, until)`; an open end is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// What the rows must match; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// A process name (`comm`), an executable's file name, or an executable's path.
    pub process: Option<String>,
    /// An address or network either end of the flow is in (hosts: the host's address).
    pub host: Option<IpNet>,
    /// A port either end uses (hosts: a port the host has).
    pub port: Option<u16>,
    /// Event types (`connect`, `dns`, …); for alerts, rule names. Empty: all.
    pub types: Vec<String>,
    /// Most rows returned (the newest, or for flows the biggest).
    pub limit: usize,
}

/// The default of [`Filter::limit`].
pub const DEFAULT_LIMIT: usize = 1000;

/// One question.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub window: Window,
    pub filter: Filter,
}

/// A raw event as the history keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub ts: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub cmdline: Option<String>,
    pub proto: Option<String>,
    pub direction: Option<String>,
    pub src_ip: Option<String>,
    pub src_port: Option<u16>,
    pub dst_ip: Option<String>,
    pub dst_port: Option<u16>,
    /// The remote DNS name (the query, for `dns`).
    pub remote_name: Option<String>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub packets_sent: Option<u64>,
    pub packets_received: Option<u64>,
    pub duration_ms: Option<f64>,
    /// What the columns do not hold (a `dns` answer list, an alert's text, …).
    pub detail: Option<serde_json::Value>,
}

/// Totals of one flow key over the window (see `history/writer.rs`'s `FlowKey`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub comm: String,
    pub exe: String,
    pub user: String,
    pub proto: String,
    pub direction: String,
    pub local_ip: String,
    /// 0 for outbound flows (the ephemeral port is not kept).
    pub local_port: u16,
    pub remote_ip: String,
    /// 0 for inbound flows.
    pub remote_port: u16,
    pub remote_name: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Start of the first and last minute (or hour) with traffic in the window.
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub ts: DateTime<Utc>,
    pub rule: String,
    pub severity: String,
    pub summary: String,
    pub key: String,
    pub hits: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub ip: String,
    pub state: String,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_change: DateTime<Utc>,
    pub ports: Vec<PortRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRow {
    pub proto: String,
    pub port: u16,
    pub state: String,
    pub service: Option<String>,
    pub version: Option<String>,
}

/// One DNS name asked in a window: how often, and by which processes (`comm`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsNameRow {
    pub name: String,
    pub queries: u64,
    pub processes: Vec<String>,
}

/// Connections begun in one minute (`/api/v1/history/timeline`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// The minute's start.
    pub t: DateTime<Utc>,
    pub connections: u64,
}

/// Whoever answers the questions: the history (`history::query::Store`), later live state.
pub trait Source {
    type Error: std::error::Error + Send + Sync + 'static;
    fn events(&self, q: &Question) -> Result<Vec<EventRow>, Self::Error>;
    fn flows(&self, q: &Question) -> Result<Vec<FlowRow>, Self::Error>;
    fn alerts(&self, q: &Question) -> Result<Vec<AlertRow>, Self::Error>;
    /// Hosts whose last change is in the window.
    fn hosts(&self, q: &Question) -> Result<Vec<HostRow>, Self::Error>;
    /// The DNS names asked in the window, most asked first (`limit` names), counted
    /// where the events are: a day's DNS events are never all loaded.
    fn dns_names(&self, q: &Question) -> Result<Vec<DnsNameRow>, Self::Error>;
    /// Connections per bucket of `bucket_secs` (aligned on multiples of it since the
    /// epoch) in the window, oldest first; buckets without any are left out. One
    /// question for a whole chart, answered from the flow roll-ups.
    fn connections_over_time(
        &self,
        window: &Window,
        bucket_secs: i64,
    ) -> Result<Vec<(DateTime<Utc>, u64)>, Self::Error>;
}

/// Parses a point in time: a span back from `now` (`90s`, `15m`, `1h`, `7d`), an RFC
/// 3339 time (`2026-12-01T10:00:00Z`), the same without seconds (`2026-12-01T10:00Z`),
/// or a date (`2026-12-01`, midnight UTC). Times without an offset are UTC.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit()) && !s.contains(['-', ':']) {
        let span = crate::history::Span::parse(s)?;
        let back = chrono::Duration::from_std(span.0).map_err(|e| e.to_string())?;
        return Ok(now - back);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bare = s.trim_end_matches(['Z', 'z']);
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(bare, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(bare, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!(
        "`{s}` is not a time: expected a span back from now (`1h`, `7d`) or a UTC time (`2026-12-01T10:00Z`)"
    ))
}

/// Parses `--host`: an address (`10.0.0.1`, a /32 or /128) or a network (`10.0.0.0/8`).
pub fn parse_host(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("`{s}` is neither an address nor a network like `10.0.0.0/8`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_spans_and_utc_times() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |s| parse_time(s, now).unwrap().to_rfc3339();
        assert_eq!(t("1h"), "2026-12-02T11:00:00+00:00");
        assert_eq!(t("2d"), "2026-11-30T12:00:00+00:00");
        assert_eq!(t("2026-12-01T10:00Z"), "2026-12-01T10:00:00+00:00");
        assert_eq!(t("2026-12-01T10:00:30Z"), "2026-12-01T10:00:30+00:00");
        assert_eq!(t("2026-12-01T10:00:00+02:00"), "2026-12-01T08:00:00+00:00");
        assert_eq!(t("2026-12-01"), "2026-12-01T00:00:00+00:00");
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("5", now).is_err());
    }

    #[test]
    fn hosts_are_addresses_or_networks() {
        assert_eq!(parse_host("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_host("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_host("::1").unwrap().to_string(), "::1/128");
        assert!(parse_host("example.com").is_err());
    }
}
