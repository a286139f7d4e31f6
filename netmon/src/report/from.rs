//! Pure conversions into a report's [`Data`]: from a `netmon snapshot` report (the
//! current sockets), and from the rows of the history's typed questions
//! (`crate::query`). No I/O: `cli/report.rs` asks, these translate.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{AlertItem, Bucket, Connection, Data, DnsName, Listener};
use crate::{
    cli::snapshot::{Report as Snapshot, SocketEntry},
    event::{Alert, ProcessInfo},
    query::{AlertRow, DnsNameRow, FlowRow, HostRow, PortRow},
    scan::{HostState, PortState, inventory::Inventory},
};

fn who(ps: &[ProcessInfo]) -> String {
    ps.iter()
        .map(|p| format!("{} ({})", p.comm, p.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An alert's severity, rule and the ports of the flows it names.
struct PortAlert {
    severity: String,
    label: String,
    ports: Vec<u16>,
}

fn rank(sev: &str) -> usize {
    super::SEVERITIES
        .iter()
        .position(|s| *s == sev)
        .map_or(0, |i| super::SEVERITIES.len() - i)
}

/// The most severe alert about `port`, as `high: SUSPICIOUS_PORT`.
fn risk(port: u16, alerts: &[PortAlert]) -> String {
    alerts
        .iter()
        .filter(|a| a.ports.contains(&port))
        .max_by_key(|a| rank(&a.severity))
        .map(|a| format!("{}: {}", a.severity, a.label))
        .unwrap_or_default()
}

fn alert_ports(a: &Alert) -> PortAlert {
    let mut ports: Vec<u16> = a
        .flows
        .iter()
        .flat_map(|f| [Some(f.dst.port), f.src.as_ref().map(|s| s.port)])
        .flatten()
        .collect();
    if let Some(p) = a.details.get("port").and_then(|v| v.as_u64()) {
        ports.push(p as u16);
    }
    PortAlert {
        severity: a.severity.name().into(),
        label: match a.score {
            Some(s) => format!("{} (score {s})", a.rule),
            None => a.rule.clone(),
        },
        ports,
    }
}

fn connection(s: &SocketEntry) -> Connection {
    let p = s.processes.first();
    let remote = s.remote.as_ref();
    Connection {
        proto: format!("{:?}", s.proto).to_lowercase(),
        state: s.state.clone(),
        local_ip: s.local.ip.to_canonical().to_string(),
        local_port: s.local.port,
        remote_ip: remote.map_or(String::new(), |r| r.ip.to_canonical().to_string()),
        remote_port: remote.map_or(0, |r| r.port),
        remote_name: remote.and_then(|r| r.name.clone()).unwrap_or_default(),
        comm: p.map_or(String::new(), |p| p.comm.to_string()),
        pid: p.map(|p| p.pid),
        exe: p.and_then(|p| p.detail.exe.clone()).unwrap_or_default(),
        user: p
            .map(|p| p.detail.user.clone().unwrap_or_else(|| p.uid.to_string()))
            .unwrap_or_else(|| s.uid.to_string()),
        connections: 1,
        ..Connection::default()
    }
}

/// A report of the current sockets (`snap.sockets` must be filled: `show_all`).
pub fn snapshot(snap: &Snapshot, inventory: Option<&Inventory>) -> Data {
    let port_alerts: Vec<PortAlert> = snap.alerts.iter().map(alert_ports).collect();
    let mut d = Data {
        host: snap.host.clone(),
        generated: snap.ts,
        source: "current sockets".into(),
        ..Data::default()
    };
    for s in snap.sockets.iter().flatten() {
        if s.remote.is_some() && s.state != "listen" {
            d.connections.push(connection(s));
        }
    }
    // Read without script, the table is by process, then remote end.
    d.connections.sort_by(|a, b| {
        (&a.comm, &a.remote_ip, a.remote_port, a.local_port).cmp(&(
            &b.comm,
            &b.remote_ip,
            b.remote_port,
            b.local_port,
        ))
    });
    d.listeners = snap
        .listening
        .iter()
        .map(|s| Listener {
            proto: format!("{:?}", s.proto).to_lowercase(),
            ip: s.local.ip.to_canonical().to_string(),
            port: s.local.port,
            processes: who(&s.processes),
            risk: risk(s.local.port, &port_alerts),
        })
        .collect();
    d.alerts = snap
        .alerts
        .iter()
        .map(|a| AlertItem {
            ts: a.flows.last().map(|f| f.ts),
            rule: a.rule.clone(),
            severity: a.severity.name().into(),
            summary: a.summary.clone(),
            recommendation: a.recommendation.clone(),
            process: a
                .process
                .as_ref()
                .map_or(String::new(), |p| format!("{} ({})", p.comm, p.pid)),
            hits: a.hits,
        })
        .collect();
    if let Some(inv) = inventory {
        d.hosts = hosts(inv);
    }
    if !snap.unreadable.sock_diag.is_empty() {
        d.notes.push(format!(
            "Sockets missing (sock_diag failed): {}",
            snap.unreadable.sock_diag.join("; ")
        ));
    }
    let fd: u64 = snap.unreadable.proc_fd.values().sum();
    if fd > 0 {
        d.notes.push(format!(
            "{fd} processes' descriptors could not be read (run as root to see every socket's process)"
        ));
    }
    d
}

/// The scanner's inventory file as the history's host rows.
pub fn hosts(inv: &Inventory) -> Vec<HostRow> {
    inv.hosts()
        .map(|h| HostRow {
            ip: h.addr.to_string(),
            state: if h.state == HostState::Up {
                "up"
            } else {
                "down"
            }
            .into(),
            mac: h.mac.clone(),
            name: h.name.clone(),
            first_seen: h.first_seen,
            last_seen: h.last_seen,
            last_change: h.last_change,
            ports: h
                .ports
                .values()
                .map(|p| PortRow {
                    proto: format!("{:?}", p.proto).to_lowercase(),
                    port: p.port,
                    state: if p.state == PortState::Open {
                        "open"
                    } else {
                        "closed"
                    }
                    .into(),
                    service: p.service.clone(),
                    version: p.version.clone(),
                })
                .collect(),
        })
        .collect()
}

/// What the history answered for a window.
pub struct HistoryRows {
    pub flows: Vec<FlowRow>,
    pub alerts: Vec<AlertRow>,
    pub hosts: Vec<HostRow>,
    /// The most asked names (`Source::dns_names`), most asked first.
    pub dns: Vec<DnsNameRow>,
    pub timeline: Vec<Bucket>,
}

fn row_ports(a: &AlertRow) -> PortAlert {
    let mut ports = Vec::new();
    let detail = a.detail.as_ref();
    for f in detail
        .and_then(|d| d.get("flows"))
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
    {
        for end in ["src", "dst"] {
            if let Some(p) = f
                .get(end)
                .and_then(|e| e.get("port"))
                .and_then(|p| p.as_u64())
            {
                ports.push(p as u16);
            }
        }
    }
    let score = detail.and_then(|d| d.get("score")).and_then(|s| s.as_u64());
    PortAlert {
        severity: a.severity.clone(),
        label: match score {
            Some(s) => format!("{} (score {s})", a.rule),
            None => a.rule.clone(),
        },
        ports,
    }
}

pub fn history(
    host: String,
    generated: DateTime<Utc>,
    source: String,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    rows: HistoryRows,
) -> Data {
    let port_alerts: Vec<PortAlert> = rows.alerts.iter().map(row_ports).collect();
    let mut listeners: BTreeMap<(String, String, u16), BTreeSet<String>> = BTreeMap::new();
    let connections = rows
        .flows
        .iter()
        .map(|f| {
            if f.direction == "inbound" && f.local_port != 0 {
                let e = listeners
                    .entry((f.proto.clone(), f.local_ip.clone(), f.local_port))
                    .or_default();
                if !f.comm.is_empty() {
                    e.insert(f.comm.clone());
                }
            }
            Connection {
                proto: f.proto.clone(),
                state: f.direction.clone(),
                local_ip: f.local_ip.clone(),
                local_port: f.local_port,
                remote_ip: f.remote_ip.clone(),
                remote_port: f.remote_port,
                remote_name: f.remote_name.clone(),
                comm: f.comm.clone(),
                pid: None,
                exe: f.exe.clone(),
                user: f.user.clone(),
                connections: f.connections,
                bytes_sent: f.bytes_sent,
                bytes_received: f.bytes_received,
                first: Some(f.first),
                last: Some(f.last),
                geo: Default::default(),
            }
        })
        .collect();
    let mut dns: Vec<DnsName> = rows
        .dns
        .into_iter()
        .map(|d| DnsName {
            name: d.name,
            queries: d.queries,
            processes: d.processes.join(", "),
        })
        .collect();
    dns.sort_by(|a, b| b.queries.cmp(&a.queries).then_with(|| a.name.cmp(&b.name)));
    dns.truncate(50);
    let mut alerts: Vec<AlertItem> = rows
        .alerts
        .iter()
        .map(|a| AlertItem {
            ts: Some(a.ts),
            rule: a.rule.clone(),
            severity: a.severity.clone(),
            summary: a.summary.clone(),
            recommendation: a
                .detail
                .as_ref()
                .and_then(|d| d.get("recommendation"))
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_owned(),
            process: match (&a.comm, a.pid) {
                (Some(c), Some(p)) => format!("{c} ({p})"),
                (Some(c), None) => c.clone(),
                _ => String::new(),
            },
            hits: a.hits,
        })
        .collect();
    // Most severe first, newest first within a severity.
    alerts.sort_by(|a, b| {
        rank(&b.severity)
            .cmp(&rank(&a.severity))
            .then(b.ts.cmp(&a.ts))
    });
    Data {
        host,
        generated,
        source,
        since,
        until,
        connections,
        alerts,
        listeners: listeners
            .into_iter()
            .map(|((proto, ip, port), p)| Listener {
                risk: risk(port, &port_alerts),
                proto,
                ip,
                port,
                processes: p.into_iter().collect::<Vec<_>>().join(", "),
            })
            .collect(),
        hosts: rows.hosts,
        dns,
        timeline: rows.timeline,
        databases: Vec::new(),
        notes: Vec::new(),
    }
}
