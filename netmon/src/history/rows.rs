//! The history's rows: how each event becomes an entry of `events` (a connection
//! event an array in the JSON of an `event_batches` row, `batch.rs`; any other a row of
//! `event_rows`) and what `alerts`, `hosts` and `ports` keep of it, with its process
//! stored once in `processes`, and how a flow key gets its id. Called by the writer
//! inside its batch transaction.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use rusqlite::{Statement, Transaction, params};

use super::{
    aggregate::{FlowKey, direction_name, proto_name},
    batch::{Batch, BatchedEvent, ConnDetail, batched},
};
use crate::event::{Connection as Conn, Event, EventBody, ProcessInfo};

/// The statement [`insert_event`] runs for a row of `event_rows`, prepared once per
/// batch by the writer.
pub(super) const INSERT_EVENT: &str = "INSERT INTO event_rows (ts, type, process_id, proto, direction, src_ip, src_port, dst_ip, dst_port, remote_name, bytes_sent, bytes_received, packets_sent, packets_received, duration_ms, detail, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

/// A DNS event's `detail`: all but its type and process (the process is in
/// `processes`), borrowed, so nothing is copied to write it.
#[derive(serde::Serialize)]
struct DnsDetail<'a> {
    proto: crate::event::Proto,
    family: crate::event::Family,
    role: crate::event::DnsRole,
    src: &'a crate::event::Endpoint,
    dst: &'a crate::event::Endpoint,
    id: u16,
    query: &'a str,
    qtype: &'a str,
    rcode: &'a Option<String>,
    answers: &'a [crate::event::DnsAnswer],
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl<'a> DnsDetail<'a> {
    fn of(d: &'a crate::event::Dns) -> DnsDetail<'a> {
        DnsDetail {
            proto: d.proto,
            family: d.family,
            role: d.role,
            src: &d.src,
            dst: &d.dst,
            id: d.id,
            query: &d.query,
            qtype: &d.qtype,
            rcode: &d.rcode,
            answers: &d.answers,
            latency_ms: d.latency_ms,
            truncated: d.truncated,
        }
    }
}

pub(super) fn key_id(tx: &Transaction<'_>, k: &FlowKey) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO flow_keys (comm, exe, user, proto, direction, local_ip, local_port, remote_ip, remote_port, remote_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO UPDATE SET comm = excluded.comm RETURNING id",
    )?
    .query_row(
        params![
            k.comm,
            k.exe,
            k.user,
            k.proto,
            k.direction,
            k.local_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            k.local_port,
            k.remote_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            k.remote_port,
            k.remote_name
        ],
        |r| r.get(0),
    )
}

/// The `processes` id of each (pid, uid) seen lately, with the name and detail it was
/// stored with: a hit is checked without allocating (a pid that changed its name or
/// exec'd misses, and its new row replaces the entry).
pub(super) type ProcessCache = HashMap<
    (u32, u32),
    (crate::event::Name, Arc<crate::event::ProcessDetail>, i64),
    foldhash::fast::RandomState,
>;

fn process_id(
    tx: &Transaction<'_>,
    cache: &mut ProcessCache,
    p: &ProcessInfo,
) -> rusqlite::Result<i64> {
    let key = (p.pid, p.uid);
    if let Some((comm, detail, id)) = cache.get(&key)
        && *comm == p.comm
        && (Arc::ptr_eq(detail, &p.detail) || **detail == *p.detail)
    {
        return Ok(*id);
    }
    let d = &*p.detail;
    let container = d
        .container
        .as_ref()
        .and_then(|c| c.id.clone())
        .unwrap_or_default();
    let id = tx
        .prepare_cached(
            "INSERT INTO processes (pid, comm, exe, cmdline, uid, user, container) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO UPDATE SET pid = excluded.pid RETURNING id",
        )?
        .query_row(
            params![
                p.pid,
                p.comm.as_str(),
                d.exe.as_deref().unwrap_or(""),
                d.cmdline.as_deref().unwrap_or(""),
                p.uid,
                d.user.as_deref().unwrap_or(""),
                container
            ],
            |r| r.get(0),
        )?;
    cache.insert(key, (p.comm.clone(), p.detail.clone(), id));
    Ok(id)
}

fn ns(event: &Event) -> i64 {
    event.ts.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// The event's JSON without its `process` (kept in `processes`) nor what the columns hold.
fn detail_json(body: &EventBody) -> Option<String> {
    let mut v = serde_json::to_value(body).ok()?;
    let obj = v.as_object_mut()?;
    for k in ["type", "process"] {
        obj.remove(k);
    }
    Some(v.to_string())
}

/// Buffers the writer reuses for the addresses of every row, so that writing one does
/// not allocate.
#[derive(Default)]
pub(super) struct Texts {
    src: Text,
    dst: Text,
}

#[derive(Default)]
struct Text(String);

impl Text {
    fn of(&mut self, ip: IpAddr) -> &str {
        use std::fmt::Write as _;
        self.0.clear();
        let _ = write!(self.0, "{ip}");
        &self.0
    }
}

#[derive(Default)]
struct Row<'a> {
    process: Option<&'a ProcessInfo>,
    proto: Option<&'static str>,
    direction: Option<&'static str>,
    src: Option<(IpAddr, u16)>,
    dst: Option<(IpAddr, u16)>,
    remote_name: Option<&'a str>,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    packets_sent: Option<u64>,
    packets_received: Option<u64>,
    duration_ms: Option<f64>,
    detail: Option<String>,
    /// A connection event's `detail` (those are batched).
    conn: ConnDetail<'a>,
}

fn conn_row<'a>(c: &'a Conn) -> Row<'a> {
    Row {
        process: c.process.as_ref(),
        proto: Some(proto_name(c.proto)),
        direction: direction_name(c.direction),
        src: c.src.as_ref().map(|e| (e.ip, e.port)),
        dst: Some((c.dst.ip, c.dst.port)),
        remote_name: c
            .dst
            .name
            .as_deref()
            .or_else(|| c.src.as_ref().and_then(|s| s.name.as_deref())),
        conn: ConnDetail::of(c),
        ..Row::default()
    }
}

/// Keeps `event` (number `seq` in the hub's sequence): a connection event in `batch`,
/// any other as a row of `event_rows` with `insert` ([`INSERT_EVENT`]); nothing for
/// types the history does not keep. Stores its process, and what other tables keep of
/// it (alerts, the scanner's hosts and ports).
pub(super) fn insert_event(
    tx: &Transaction<'_>,
    insert: &mut Statement<'_>,
    batch: &mut Batch,
    procs: &mut ProcessCache,
    text: &mut Texts,
    seq: u64,
    event: &Event,
) -> rusqlite::Result<()> {
    let ts = ns(event);
    let row = match &event.body {
        EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Listen(c) => conn_row(c),
        EventBody::Udp(c) => Row {
            bytes_sent: c.bytes,
            ..conn_row(c)
        },
        EventBody::Close(c) => Row {
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            packets_sent: c.packets_sent,
            packets_received: c.packets_received,
            duration_ms: c.duration_ms,
            ..Row {
                conn: ConnDetail {
                    reason: c.reason.as_deref(),
                    ..ConnDetail::of(&c.conn)
                },
                ..conn_row(&c.conn)
            }
        },
        EventBody::Flow(f) => Row {
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            packets_sent: f.packets_sent,
            packets_received: f.packets_received,
            duration_ms: Some(f.duration_ms),
            ..Row {
                conn: ConnDetail {
                    state: Some(&f.state),
                    start: Some(f.start.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
                    ..ConnDetail::of(&f.conn)
                },
                ..conn_row(&f.conn)
            }
        },
        EventBody::Dns(d) => Row {
            process: d.process.as_ref(),
            proto: Some(proto_name(d.proto)),
            src: Some((d.src.ip, d.src.port)),
            dst: Some((d.dst.ip, d.dst.port)),
            remote_name: Some(d.query.as_str()),
            duration_ms: d.latency_ms,
            detail: serde_json::to_string(&DnsDetail::of(d)).ok(),
            ..Row::default()
        },
        EventBody::Alert(a) => Row {
            process: a.process.as_ref(),
            detail: detail_json(&event.body),
            ..Row::default()
        },
        EventBody::Exec(x) => Row {
            process: Some(&x.process),
            detail: detail_json(&event.body),
            ..Row::default()
        },
        EventBody::HostUp(h) | EventBody::HostDown(h) => {
            upsert_host(tx, event, h)?;
            Row {
                dst: Some((h.addr, 0)),
                remote_name: h.name.as_deref(),
                detail: detail_json(&event.body),
                ..Row::default()
            }
        }
        EventBody::PortOpened(p) | EventBody::PortClosed(p) => {
            let state = if matches!(event.body, EventBody::PortOpened(_)) {
                "open"
            } else {
                "closed"
            };
            upsert_port(
                tx,
                ts,
                p.addr,
                proto_name(p.proto),
                p.port,
                state,
                &p.service,
                &p.version,
            )?;
            Row {
                proto: Some(proto_name(p.proto)),
                dst: Some((p.addr, p.port)),
                detail: detail_json(&event.body),
                ..Row::default()
            }
        }
        EventBody::ServiceChanged(s) => {
            upsert_port(
                tx,
                ts,
                s.addr,
                proto_name(s.proto),
                s.port,
                "open",
                &s.service,
                &s.version,
            )?;
            Row {
                proto: Some(proto_name(s.proto)),
                dst: Some((s.addr, s.port)),
                detail: detail_json(&event.body),
                ..Row::default()
            }
        }
        EventBody::Stats(_)
        | EventBody::Probe(_)
        | EventBody::Host(_)
        | EventBody::Port(_)
        | EventBody::Log(_) => {
            return Ok(());
        }
    };
    let process_id = match row.process {
        Some(p) => Some(process_id(tx, procs, p)?),
        None => None,
    };
    let seq = (seq > 0).then_some(seq.min(i64::MAX as u64) as i64);
    if batched(&event.body) {
        if batch.ends_before(ts) {
            batch.insert(tx)?;
        }
        batch.push(&BatchedEvent {
            ts,
            kind: event.body.type_name(),
            seq,
            process_id,
            proto: row.proto,
            direction: row.direction,
            src: row.src,
            dst: row.dst,
            remote_name: row.remote_name,
            bytes_sent: row.bytes_sent,
            bytes_received: row.bytes_received,
            packets_sent: row.packets_sent,
            packets_received: row.packets_received,
            duration_ms: row.duration_ms,
            detail: &row.conn,
        });
        return Ok(());
    }
    let src_ip = row.src.map(|s| text.src.of(s.0));
    let dst_ip = row.dst.map(|d| text.dst.of(d.0));
    insert.execute(params![
        ts,
        event.body.type_name(),
        process_id,
        row.proto,
        row.direction,
        src_ip,
        row.src.map(|s| s.1),
        dst_ip,
        row.dst.map(|d| d.1),
        row.remote_name,
        row.bytes_sent.map(|b| b as i64),
        row.bytes_received.map(|b| b as i64),
        row.packets_sent.map(|b| b as i64),
        row.packets_received.map(|b| b as i64),
        row.duration_ms,
        row.detail,
        seq,
    ])?;
    if let EventBody::Alert(a) = &event.body {
        tx.prepare_cached(
            "INSERT INTO alerts (ts, rule, severity, summary, key, hits, process_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            ts,
            a.rule,
            a.severity.name(),
            a.summary,
            a.key,
            a.hits as i64,
            process_id,
            row.detail.as_deref().unwrap_or("{}"),
        ])?;
    }
    Ok(())
}

fn upsert_host(
    tx: &Transaction<'_>,
    event: &Event,
    h: &crate::event::scan::HostChange,
) -> rusqlite::Result<()> {
    let ts = ns(event) / 1_000_000_000;
    let up = matches!(event.body, EventBody::HostUp(_));
    tx.prepare_cached(
        "INSERT INTO hosts (ip, state, mac, name, first_seen, last_seen, last_change) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5) ON CONFLICT (ip) DO UPDATE SET state = excluded.state, mac = coalesce(excluded.mac, mac), name = coalesce(excluded.name, name), last_seen = coalesce(excluded.last_seen, last_seen), last_change = excluded.last_change",
    )?
    .execute(params![
        h.addr.to_string(),
        if up { "up" } else { "down" },
        h.mac,
        h.name,
        ts,
        up.then_some(ts),
    ])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn upsert_port(
    tx: &Transaction<'_>,
    ts_ns: i64,
    ip: IpAddr,
    proto: &str,
    port: u16,
    state: &str,
    service: &Option<String>,
    version: &Option<String>,
) -> rusqlite::Result<()> {
    let ts = ts_ns / 1_000_000_000;
    tx.prepare_cached(
        "INSERT INTO ports (ip, proto, port, state, service, version, first_seen, last_change) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (ip, proto, port) DO UPDATE SET state = excluded.state, service = coalesce(excluded.service, service), version = coalesce(excluded.version, version), last_change = excluded.last_change",
    )?
    .execute(params![ip.to_string(), proto, port, state, service, version, ts])?;
    Ok(())
}
