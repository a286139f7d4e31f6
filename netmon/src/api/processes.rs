//! `GET /api/v1/processes`: the live flow table folded per process (pid, name,
//! executable, user): open connections, bytes sent and received so far, and the
//! distinct remote peers, biggest first. Pure folding of `flow` events; the table is
//! asked of the event loop like `/api/v1/flows`.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

use crate::event::{Connection, Direction, Event, EventBody};

/// Peers listed per process (the count is exact beyond it).
pub const PEERS_LISTED: usize = 20;

/// One process's share of the flow table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessRow {
    /// Null for flows the kernel could not attribute.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub user: Option<String>,
    pub connections: u64,
    pub tcp: u64,
    pub udp: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Distinct remote addresses.
    pub peers: usize,
    /// The first [`PEERS_LISTED`] of them, in address order.
    pub peer_ips: Vec<IpAddr>,
}

fn remote(c: &Connection) -> IpAddr {
    match (c.direction, &c.src) {
        (Some(Direction::Inbound), Some(s)) => s.ip,
        _ => c.dst.ip,
    }
}

/// Folds `flow` events per process, most bytes first, then most connections.
pub fn fold(flows: &[Arc<Event>], process: Option<&str>) -> Vec<ProcessRow> {
    let mut by: HashMap<Option<u32>, (ProcessRow, BTreeSet<IpAddr>)> = HashMap::new();
    for ev in flows {
        let EventBody::Flow(f) = &ev.body else {
            continue;
        };
        let p = f.conn.process.as_ref();
        if let Some(want) = process {
            let Some(p) = p else { continue };
            let exe = p.detail.exe.as_deref();
            let exe_name = exe.and_then(|e| e.rsplit('/').next());
            if p.comm != want && exe != Some(want) && exe_name != Some(want) {
                continue;
            }
        }
        let (row, peers) = by.entry(p.map(|p| p.pid)).or_insert_with(|| {
            (
                ProcessRow {
                    pid: p.map(|p| p.pid),
                    comm: p.map(|p| p.comm.to_string()),
                    exe: p.and_then(|p| p.detail.exe.clone()),
                    user: p.and_then(|p| p.detail.user.clone()),
                    connections: 0,
                    tcp: 0,
                    udp: 0,
                    bytes_sent: 0,
                    bytes_received: 0,
                    peers: 0,
                    peer_ips: Vec::new(),
                },
                BTreeSet::new(),
            )
        });
        row.connections += 1;
        match f.conn.proto {
            crate::event::Proto::Tcp => row.tcp += 1,
            crate::event::Proto::Udp => row.udp += 1,
        }
        row.bytes_sent += f.bytes_sent.unwrap_or(0);
        row.bytes_received += f.bytes_received.unwrap_or(0);
        peers.insert(remote(&f.conn));
    }
    let mut rows: Vec<ProcessRow> = by
        .into_values()
        .map(|(mut row, peers)| {
            row.peers = peers.len();
            row.peer_ips = peers.into_iter().take(PEERS_LISTED).collect();
            row
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.bytes_sent + b.bytes_received, b.connections, a.pid).cmp(&(
            a.bytes_sent + a.bytes_received,
            a.connections,
            b.pid,
        ))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(pid: u32, comm: &str, remote: &str, sent: u64, proto: &str) -> Arc<Event> {
        let line = format!(
            r#"{{"ts":"2026-12-02T12:00:00Z","host":"h","type":"flow","proto":"{proto}","family":"ipv4","direction":"outbound","src":{{"ip":"10.0.0.1","port":40000}},"dst":{{"ip":"{remote}","port":443}},"process":{{"pid":{pid},"tid":{pid},"comm":"{comm}","uid":0,"gid":0,"cgroup_id":1,"exe":"/usr/bin/{comm}"}},"backend":"tracepoint","state":"established","start":"2026-12-02T11:59:00Z","duration_ms":60000.0,"bytes_sent":{sent},"bytes_received":10}}"#
        );
        Arc::new(serde_json::from_str(&line).unwrap())
    }

    #[test]
    fn flows_fold_per_process_biggest_first_with_distinct_peers() {
        let flows = vec![
            flow(10, "curl", "10.0.0.9", 100, "tcp"),
            flow(20, "nginx", "10.0.0.8", 5000, "tcp"),
            flow(10, "curl", "10.0.0.9", 100, "udp"),
            flow(10, "curl", "10.0.0.7", 100, "tcp"),
        ];
        let rows = fold(&flows, None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].comm.as_deref(), Some("nginx"));
        let curl = &rows[1];
        assert_eq!((curl.connections, curl.tcp, curl.udp), (3, 2, 1));
        assert_eq!((curl.bytes_sent, curl.bytes_received), (300, 30));
        assert_eq!(curl.peers, 2);
        assert_eq!(
            curl.peer_ips,
            ["10.0.0.7", "10.0.0.9"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        let only = fold(&flows, Some("/usr/bin/nginx"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].pid, Some(20));
        assert!(fold(&flows, Some("sshd")).is_empty());
    }
}
