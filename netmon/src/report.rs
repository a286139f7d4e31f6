//! `netmon report`'s document: plain data in ([`Data`], gathered by `cli/report.rs`
//! from the current sockets or from the history's typed questions), a document out:
//! one self-contained HTML page (`report/html.rs`) or a CSV table (`report/csv.rs`).
//! Pure: no I/O, no SQL, no clock. The aggregations every section shares (top
//! processes, top remote hosts, alerts by severity) are computed here once.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    geoip::{DatabaseInfo, Geo, GeoIp},
    query::HostRow,
};

pub mod csv;
pub mod from;
pub mod html;

/// Everything a report shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Data {
    pub host: String,
    pub generated: DateTime<Utc>,
    /// `current sockets`, or `history FILE`.
    pub source: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub connections: Vec<Connection>,
    pub alerts: Vec<AlertItem>,
    pub listeners: Vec<Listener>,
    /// The scanner's host inventory.
    pub hosts: Vec<HostRow>,
    pub dns: Vec<DnsName>,
    /// Connections per period, oldest first (empty for a snapshot).
    pub timeline: Vec<Bucket>,
    /// The geolocation databases used (empty: none).
    pub databases: Vec<DatabaseInfo>,
    /// What the report lacks and why (a database that did not open, …).
    pub notes: Vec<String>,
}

/// One connection (a socket of a snapshot, or a flow key's totals over the window).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Connection {
    pub proto: String,
    /// The TCP state (snapshot) or the direction (history).
    pub state: String,
    pub local_ip: String,
    pub local_port: u16,
    pub remote_ip: String,
    pub remote_port: u16,
    pub remote_name: String,
    pub comm: String,
    pub pid: Option<u32>,
    pub exe: String,
    pub user: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub geo: Geo,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertItem {
    pub ts: Option<DateTime<Utc>>,
    pub rule: String,
    pub severity: String,
    pub summary: String,
    pub recommendation: String,
    /// `comm (pid)`, or empty.
    pub process: String,
    pub hits: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Listener {
    pub proto: String,
    pub ip: String,
    pub port: u16,
    /// `comm (pid)` of every process holding it, comma-separated.
    pub processes: String,
    /// The most severe alert about this port (`high: SUSPICIOUS_PORT`), or empty.
    pub risk: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DnsName {
    pub name: String,
    pub queries: u64,
    pub processes: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub connections: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopProcess {
    pub comm: String,
    pub connections: u64,
    pub bytes: u64,
    pub remotes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopHost {
    pub ip: String,
    pub name: String,
    pub geo: Geo,
    pub connections: u64,
    pub bytes: u64,
    pub processes: String,
}

/// The severities, most severe first, as alerts name them.
pub const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

impl Data {
    /// Adds `geo` to every connection's remote end (private ones marked, not looked up).
    pub fn enrich(&mut self, geo: &GeoIp) {
        for c in &mut self.connections {
            if let Ok(ip) = c.remote_ip.parse() {
                c.geo = geo.lookup(ip);
            }
        }
        self.databases = geo.databases().to_vec();
    }

    /// Alerts per severity, most severe first, every severity listed.
    pub fn alerts_by_severity(&self) -> Vec<(&'static str, usize)> {
        SEVERITIES
            .iter()
            .map(|s| (*s, self.alerts.iter().filter(|a| a.severity == *s).count()))
            .collect()
    }

    /// Processes by connection count (then bytes), at most `n`.
    pub fn top_processes(&self, n: usize) -> Vec<TopProcess> {
        let mut m: HashMap<&str, (u64, u64, BTreeSet<&str>)> = HashMap::new();
        for c in &self.connections {
            let name = if c.comm.is_empty() { "?" } else { &c.comm };
            let e = m.entry(name).or_default();
            e.0 += c.connections.max(1);
            e.1 += c.bytes_sent + c.bytes_received;
            if !c.remote_ip.is_empty() {
                e.2.insert(&c.remote_ip);
            }
        }
        let mut v: Vec<TopProcess> = m
            .into_iter()
            .map(|(comm, (connections, bytes, r))| TopProcess {
                comm: comm.to_owned(),
                connections,
                bytes,
                remotes: r.len(),
            })
            .collect();
        v.sort_by(|a, b| {
            (b.connections, b.bytes)
                .cmp(&(a.connections, a.bytes))
                .then_with(|| a.comm.cmp(&b.comm))
        });
        v.truncate(n);
        v
    }

    /// Remote addresses by connection count (then bytes), at most `n`.
    pub fn top_hosts(&self, n: usize) -> Vec<TopHost> {
        // Per address: connections, bytes, a name, its geo, the processes.
        type Sum<'a> = (u64, u64, &'a str, &'a Geo, BTreeSet<&'a str>);
        let mut m: BTreeMap<&str, Sum> = BTreeMap::new();
        for c in &self.connections {
            if c.remote_ip.is_empty() {
                continue;
            }
            let e = m
                .entry(&c.remote_ip)
                .or_insert((0, 0, "", &c.geo, BTreeSet::new()));
            e.0 += c.connections.max(1);
            e.1 += c.bytes_sent + c.bytes_received;
            if e.2.is_empty() {
                e.2 = &c.remote_name;
            }
            if !c.comm.is_empty() {
                e.4.insert(&c.comm);
            }
        }
        let mut v: Vec<TopHost> = m
            .into_iter()
            .map(|(ip, (connections, bytes, name, geo, p))| TopHost {
                ip: ip.to_owned(),
                name: name.to_owned(),
                geo: geo.clone(),
                connections,
                bytes,
                processes: p.into_iter().collect::<Vec<_>>().join(", "),
            })
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse((b.connections, b.bytes)));
        v.truncate(n);
        v
    }

    /// The period as one line (`2026-12-01 10:00 – 2026-12-02 10:00 UTC`, or the
    /// snapshot's time).
    pub fn period(&self) -> String {
        let f = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
        match (self.since, self.until) {
            (None, None) => format!("{} UTC (a snapshot)", f(self.generated)),
            (s, u) => format!(
                "{} – {} UTC",
                s.map_or("the beginning".to_owned(), f),
                f(u.unwrap_or(self.generated))
            ),
        }
    }
}

/// `1.5 MB`-style sizes.
pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `s` with control characters (but `\n` when `keep_newlines`) shown as `\xNN`:
/// hostile names never reach a terminal, a spreadsheet or a browser as controls.
pub fn visible(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !s.chars().any(bad) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report with hostile strings everywhere a user-controlled string goes.
    pub fn sample() -> Data {
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let conn = |comm: &str, ip: &str, port, n| Connection {
            proto: "tcp".into(),
            state: "outbound".into(),
            local_ip: "10.0.0.2".into(),
            local_port: 0,
            remote_ip: ip.into(),
            remote_port: port,
            remote_name: "evil\"<b>.example".into(),
            comm: comm.into(),
            pid: Some(42),
            exe: "/usr/bin/x".into(),
            user: "root".into(),
            connections: n,
            bytes_sent: 1500,
            bytes_received: 10,
            first: Some(t),
            last: Some(t),
            geo: Geo {
                scope: "public".into(),
                country: Some("JP".into()),
                asn: Some(64500),
                as_org: Some("AS <i>Org</i>".into()),
                city: None,
            },
        };
        Data {
            host: "host<script>alert(1)</script>".into(),
            generated: t,
            source: "history /tmp/x.db".into(),
            since: Some(t - chrono::Duration::hours(24)),
            until: Some(t),
            connections: vec![
                conn("<script>alert(1)</script>", "203.0.113.7", 443, 3),
                conn("=cmd|' /C calc'!A0", "203.0.113.8", 80, 1),
                conn("a,b \"q\"\nline\u{7}", "203.0.113.7", 443, 2),
            ],
            alerts: vec![AlertItem {
                ts: Some(t),
                rule: "SUSPICIOUS_PORT".into(),
                severity: "high".into(),
                summary: "nc listens on 4444 <img src=x onerror=alert(1)>".into(),
                recommendation: "Check it & stop it".into(),
                process: "nc (7)".into(),
                hits: 1,
            }],
            listeners: vec![Listener {
                proto: "tcp".into(),
                ip: "0.0.0.0".into(),
                port: 4444,
                processes: "nc (7)".into(),
                risk: "high: SUSPICIOUS_PORT".into(),
            }],
            hosts: vec![],
            dns: vec![DnsName {
                name: "x.<svg onload=alert(1)>.example".into(),
                queries: 9,
                processes: "dig".into(),
            }],
            timeline: (0..24)
                .map(|h| Bucket {
                    start: t - chrono::Duration::hours(24 - h),
                    connections: (h as u64 * 7) % 11,
                })
                .collect(),
            databases: vec![],
            notes: vec!["geoip: <bad> path".into()],
        }
    }

    #[test]
    fn aggregates_top_processes_and_hosts() {
        let d = sample();
        let p = d.top_processes(10);
        assert_eq!(p[0].comm, "<script>alert(1)</script>");
        assert_eq!(p[0].connections, 3);
        let h = d.top_hosts(10);
        assert_eq!(h[0].ip, "203.0.113.7");
        assert_eq!(h[0].connections, 5);
        assert_eq!(h[0].geo.country.as_deref(), Some("JP"));
        assert_eq!(d.alerts_by_severity()[1], ("high", 1));
        assert_eq!(bytes(1500), "1.5 kB");
        assert_eq!(bytes(999), "999 B");
    }
}
