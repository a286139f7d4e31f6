//! The history's rows: how each event becomes an entry of `events` (a connection
//! event an object in the commit's JSON array of `event_batches`, any other a row of
//! `event_rows`) and what `alerts`, `hosts` and `ports` keep of it, with its process
//! stored once in `processes`, and how a flow key gets its id. Called by the writer
//! inside its batch transaction.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use rusqlite::{Statement, Transaction, params};

use super::aggregate::{FlowKey, direction_name, proto_name};
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
    (String, Arc<crate::event::ProcessDetail>, i64),
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
                p.comm,
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

/// What columns do not hold of a connection event, only what is set: an object of
/// the batch's JSON (`events.detail`), written straight from the event.
#[derive(serde::Serialize, Default)]
struct ConnDetail<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    failed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    existing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
}

impl<'a> ConnDetail<'a> {
    fn of(c: &Conn) -> ConnDetail<'a> {
        ConnDetail {
            failed: c.failed,
            existing: c.existing,
            ..ConnDetail::default()
        }
    }

    fn is_empty(&self) -> bool {
        !self.failed
            && !self.existing
            && self.reason.is_none()
            && self.state.is_none()
            && self.start.is_none()
    }
}

/// Whether an event of this type is kept in `event_batches` (the types a busy server
/// makes by the thousand per second) rather than as a row of `event_rows`.
pub fn batched(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::Connect(_)
            | EventBody::Accept(_)
            | EventBody::Udp(_)
            | EventBody::Listen(_)
            | EventBody::Close(_)
            | EventBody::Flow(_)
    )
}

/// One event of `event_batches`: a JSON array of the columns of `events` in the order
/// of [`BATCH_COLUMNS`] (`null` for what it lacks; `detail` an object). Positional, so
/// an event is about 110 bytes of JSON, not 200 with the names.
struct BatchedEvent<'a> {
    ts: i64,
    kind: &'a str,
    seq: Option<i64>,
    process_id: Option<i64>,
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
    detail: &'a ConnDetail<'a>,
}

/// The position of each column in a batched event (migration 0004's view reads them
/// by these numbers).
pub const BATCH_COLUMNS: [&str; 17] = [
    "ts",
    "type",
    "seq",
    "process_id",
    "proto",
    "direction",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "remote_name",
    "bytes_sent",
    "bytes_received",
    "packets_sent",
    "packets_received",
    "duration_ms",
    "detail",
];

impl serde::Serialize for BatchedEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let n = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        let mut t = s.serialize_tuple(BATCH_COLUMNS.len())?;
        t.serialize_element(&self.ts)?;
        t.serialize_element(self.kind)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(&self.process_id)?;
        t.serialize_element(&self.proto)?;
        t.serialize_element(&self.direction)?;
        t.serialize_element(&self.src.map(|s| s.0))?;
        t.serialize_element(&self.src.map(|s| s.1))?;
        t.serialize_element(&self.dst.map(|d| d.0))?;
        t.serialize_element(&self.dst.map(|d| d.1))?;
        t.serialize_element(&self.remote_name)?;
        t.serialize_element(&n(self.bytes_sent))?;
        t.serialize_element(&n(self.bytes_received))?;
        t.serialize_element(&n(self.packets_sent))?;
        t.serialize_element(&n(self.packets_received))?;
        t.serialize_element(&self.duration_ms)?;
        t.serialize_element(&(!self.detail.is_empty()).then_some(self.detail))?;
        t.end()
    }
}

/// Connection events of one commit and one minute (at most [`MAX_BATCH_BYTES`] of
/// them), as the JSON array of one `event_batches` row (a row per minute, so that
/// retention, which drops whole rows, drops events within a minute of their time); the
/// writer keeps one and reuses its buffer.
#[derive(Default)]
pub(super) struct Batch {
    json: Vec<u8>,
    count: i64,
    first_ts: i64,
    last_ts: i64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
}

impl Batch {
    fn push(&mut self, event: &BatchedEvent<'_>) {
        if self.count == 0 {
            self.json.clear();
            self.json.reserve(MAX_BATCH_BYTES + 1024);
            self.json.push(b'[');
            self.first_ts = event.ts;
            self.last_ts = event.ts;
            self.first_seq = event.seq;
            self.last_seq = event.seq;
        } else {
            self.json.push(b',');
            self.first_ts = self.first_ts.min(event.ts);
            self.last_ts = self.last_ts.max(event.ts);
            self.first_seq = self
                .first_seq
                .min(event.seq)
                .or(self.first_seq)
                .or(event.seq);
            self.last_seq = self.last_seq.max(event.seq);
        }
        // Writing to a Vec cannot fail, and every field serializes.
        let _ = serde_json::to_writer(&mut self.json, event);
        self.count += 1;
    }

    /// Inserts the batch's row (nothing if it is empty) and empties it.
    pub(super) fn insert(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        self.json.push(b']');
        let events = std::str::from_utf8(&self.json).unwrap_or("[]");
        tx.prepare_cached(
            "INSERT INTO event_batches (first_ts, last_ts, first_seq, last_seq, count, events) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            self.first_ts,
            self.last_ts,
            self.first_seq,
            self.last_seq,
            self.count,
            events
        ])?;
        self.count = 0;
        Ok(())
    }
}

const MINUTE_NS: i64 = 60_000_000_000;

/// JSON after which a batch's row is written and a new one begun (about 500 events):
/// the buffer, and SQLite's copies of it while it writes the row, stay small enough to
/// be reused from the heap. (A whole commit's 4,096 events in one row, ~0.5 MB copied
/// three times, cost netmon a MiB of its 50 MB at 100,000 flows.)
const MAX_BATCH_BYTES: usize = 64 * 1024;

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
        if batch.count > 0
            && (ts.div_euclid(MINUTE_NS) != batch.first_ts.div_euclid(MINUTE_NS)
                || batch.json.len() >= MAX_BATCH_BYTES)
        {
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
