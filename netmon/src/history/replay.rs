//! Events read back by their number in the hub's sequence (`events.seq`), for the
//! API's streams that resume from further back than the API's memory
//! (`api/replay.rs`). Rebuilds each row into the JSON Lines object it was written
//! from, as far as the row holds it: what the history does not keep is filled in
//! (`backend` is `"history"`, a process's `tid` is its pid and `gid`/`cgroup_id` 0,
//! no `netns`), see docs/api.md. Read-only; knows nothing of HTTP.
use std::{net::IpAddr, path::Path};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::{Map, Value, json};

use crate::event::{Event, EventBody};

/// The `backend` of a connection event rebuilt from the history.
pub const BACKEND: &str = "history";

/// The newest sequence number stored in the history at `path`; 0 when there is no
/// history yet (or it cannot be read: a new run then numbers from 1).
pub fn last_seq(path: &Path) -> u64 {
    let Ok(conn) = super::open_reader(path) else {
        return 0;
    };
    // On the partial indexes `events_seq` and `event_batches_last_seq`: no scan,
    // however long the history.
    conn.query_row(
        "SELECT max(n) FROM (SELECT max(seq) AS n FROM event_rows WHERE seq IS NOT NULL UNION ALL SELECT max(last_seq) FROM event_batches WHERE last_seq IS NOT NULL)",
        [],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()
    .ok()
    .flatten()
    .flatten()
    .map_or(0, |n| n.max(0) as u64)
}

/// The smallest sequence number the history holds (`None`: none at all).
pub fn first_seq(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    conn.query_row(
        "SELECT min(n) FROM (SELECT min(seq) AS n FROM event_rows WHERE seq IS NOT NULL UNION ALL SELECT min(first_seq) FROM event_batches WHERE first_seq IS NOT NULL)",
        [],
        |r| r.get::<_, Option<i64>>(0),
    )
    .map(|n| n.map(|n| n.max(0) as u64))
}

/// The number of the first numbered event at or after `ts_ns` (Unix nanoseconds);
/// `None` when the history holds none that late. Looks in `[ts_ns, ts_ns + span)`,
/// the span growing from a minute, so only the batches of that window are read.
pub fn first_seq_at(conn: &Connection, ts_ns: i64) -> rusqlite::Result<Option<u64>> {
    let newest: Option<i64> = conn.query_row(
        "SELECT max(t) FROM (SELECT max(ts) AS t FROM event_rows UNION ALL SELECT max(last_ts) FROM event_batches)",
        [],
        |r| r.get(0),
    )?;
    let Some(newest) = newest.filter(|n| *n >= ts_ns) else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM events WHERE batch_last_ts >= ?1 AND batch_first_ts < ?2 AND ts >= ?1 AND ts < ?2 AND seq IS NOT NULL ORDER BY ts, seq LIMIT 1",
    )?;
    let mut span: i64 = 60_000_000_000;
    loop {
        let end = ts_ns.saturating_add(span);
        if let Some(n) = stmt
            .query_row([ts_ns, end], |r| r.get::<_, i64>(0))
            .optional()?
        {
            return Ok(Some(n.max(0) as u64));
        }
        if end > newest {
            return Ok(None);
        }
        span = span.saturating_mul(8);
    }
}

/// Up to `limit` events numbered `from..before`, in order, each with its number;
/// `host` is the `host` of the rebuilt events (this agent's). A row that cannot be
/// rebuilt (written by a netmon that knew other types) is left out.
pub fn events(
    conn: &Connection,
    from: u64,
    before: u64,
    limit: usize,
    host: &str,
) -> rusqlite::Result<Vec<(u64, Event)>> {
    // Numbers are unique, so `limit` events lie in a range of at least `limit`
    // numbers: read ranges that grow from there (numbers of types not kept leave
    // holes) until `limit` are found or `before` is reached, each reading only the
    // batches it overlaps.
    let mut out = Vec::new();
    let mut lo = from;
    let mut span = (limit as u64).max(1024);
    while lo < before && out.len() < limit {
        let hi = lo.saturating_add(span).min(before);
        let want = limit - out.len();
        let (read, last) = events_in(conn, lo, hi, want, host, &mut out)?;
        lo = match last {
            // The range holds more than were read: on from the last one.
            Some(seq) if read == want => seq + 1,
            _ => {
                span = span.saturating_mul(4);
                hi
            }
        };
    }
    Ok(out)
}

/// Up to `limit` rows numbered `from..before`, in order, their events pushed on `out`:
/// how many rows were read and the number of the last.
fn events_in(
    conn: &Connection,
    from: u64,
    before: u64,
    limit: usize,
    host: &str,
    out: &mut Vec<(u64, Event)>,
) -> rusqlite::Result<(usize, Option<u64>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.seq, e.ts, e.type, p.pid, p.comm, nullif(p.exe, ''), nullif(p.cmdline, ''), p.uid, nullif(p.user, ''), nullif(p.container, ''), e.proto, e.direction, e.src_ip, e.src_port, e.dst_ip, e.dst_port, e.remote_name, e.bytes_sent, e.bytes_received, e.packets_sent, e.packets_received, e.duration_ms, e.detail FROM events e LEFT JOIN processes p ON p.id = e.process_id WHERE e.batch_last_seq >= ?1 AND e.batch_first_seq < ?2 AND e.seq >= ?1 AND e.seq < ?2 ORDER BY e.seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            from.min(i64::MAX as u64) as i64,
            before.min(i64::MAX as u64) as i64,
            limit as i64
        ],
        |r| {
            Ok(Row {
                seq: r.get::<_, i64>(0)? as u64,
                ts: r.get(1)?,
                kind: r.get(2)?,
                pid: r.get(3)?,
                comm: r.get(4)?,
                exe: r.get(5)?,
                cmdline: r.get(6)?,
                uid: r.get(7)?,
                user: r.get(8)?,
                container: r.get(9)?,
                proto: r.get(10)?,
                direction: r.get(11)?,
                src_ip: r.get(12)?,
                src_port: r.get(13)?,
                dst_ip: r.get(14)?,
                dst_port: r.get(15)?,
                remote_name: r.get(16)?,
                bytes_sent: r.get(17)?,
                bytes_received: r.get(18)?,
                packets_sent: r.get(19)?,
                packets_received: r.get(20)?,
                duration_ms: r.get(21)?,
                detail: r.get(22)?,
            })
        },
    )?;
    let (mut read, mut last) = (0, None);
    for row in rows {
        let row = row?;
        read += 1;
        last = Some(row.seq);
        if let Some(ev) = row.event(host) {
            out.push((row.seq, ev));
        }
    }
    Ok((read, last))
}

/// One `events` row with its process, as stored.
#[derive(Debug, Default)]
struct Row {
    seq: u64,
    ts: i64,
    kind: String,
    pid: Option<u32>,
    comm: Option<String>,
    exe: Option<String>,
    cmdline: Option<String>,
    uid: Option<u32>,
    user: Option<String>,
    container: Option<String>,
    proto: Option<String>,
    direction: Option<String>,
    src_ip: Option<String>,
    src_port: Option<u16>,
    dst_ip: Option<String>,
    dst_port: Option<u16>,
    remote_name: Option<String>,
    bytes_sent: Option<i64>,
    bytes_received: Option<i64>,
    packets_sent: Option<i64>,
    packets_received: Option<i64>,
    duration_ms: Option<f64>,
    detail: Option<String>,
}

impl Row {
    fn process(&self) -> Value {
        let (Some(pid), Some(comm)) = (self.pid, &self.comm) else {
            return Value::Null;
        };
        json!({
            "pid": pid,
            "tid": pid,
            "comm": comm,
            "uid": self.uid.unwrap_or(0),
            "gid": 0,
            "cgroup_id": 0,
            "exe": self.exe,
            "cmdline": self.cmdline,
            "user": self.user,
            "container": self.container.as_ref().map(|id| json!({"id": id, "runtime": null})),
        })
    }

    /// The connection part of a connection event: columns, then the flags kept in
    /// `detail`.
    fn connection(&self, obj: &mut Map<String, Value>) -> Option<()> {
        let dst_ip: IpAddr = self.dst_ip.as_deref()?.parse().ok()?;
        let inbound = self.direction.as_deref() == Some("inbound");
        let mut dst = json!({"ip": dst_ip, "port": self.dst_port.unwrap_or(0)});
        let mut src = match (&self.src_ip, self.src_port) {
            (Some(ip), Some(port)) => Some(json!({"ip": ip.parse::<IpAddr>().ok()?, "port": port})),
            _ => None,
        };
        // The remote end's name: the destination's, or the source's when inbound.
        if let Some(name) = &self.remote_name {
            match (&mut src, inbound) {
                (Some(s), true) => s["name"] = name.as_str().into(),
                _ => dst["name"] = name.as_str().into(),
            }
        }
        obj.insert("proto".into(), self.proto.as_deref()?.into());
        let family = if dst_ip.is_ipv4() { "ipv4" } else { "ipv6" };
        obj.insert("family".into(), family.into());
        obj.insert("direction".into(), self.direction.clone().into());
        if let Some(s) = src {
            obj.insert("src".into(), s);
        }
        obj.insert("dst".into(), dst);
        obj.insert("backend".into(), BACKEND.into());
        Some(())
    }

    fn numbers(&self, obj: &mut Map<String, Value>) {
        for (k, v) in [
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
            ("packets_sent", self.packets_sent),
            ("packets_received", self.packets_received),
        ] {
            obj.insert(k.into(), v.map(|n| n.max(0)).into());
        }
        obj.insert("duration_ms".into(), self.duration_ms.into());
    }

    /// The event this row was written from; `None` when it cannot be rebuilt.
    fn event(&self, host: &str) -> Option<Event> {
        let detail: Map<String, Value> = match &self.detail {
            Some(d) => serde_json::from_str(d).ok()?,
            None => Map::new(),
        };
        let mut obj = Map::new();
        obj.insert("type".into(), self.kind.as_str().into());
        match self.kind.as_str() {
            "connect" | "accept" | "listen" | "udp" | "close" | "flow" => {
                self.connection(&mut obj)?;
                obj.insert("process".into(), self.process());
                match self.kind.as_str() {
                    "udp" => {
                        obj.insert("bytes".into(), self.bytes_sent.into());
                    }
                    "close" | "flow" => self.numbers(&mut obj),
                    _ => {}
                }
                // failed, existing, reason, state, start.
                obj.extend(detail);
            }
            _ => {
                // `detail` is the whole event but its type and process.
                obj.extend(detail);
                let p = self.process();
                if !p.is_null() {
                    obj.insert("process".into(), p);
                }
            }
        }
        let body: EventBody = serde_json::from_value(Value::Object(obj)).ok()?;
        Some(Event {
            ts: chrono::DateTime::from_timestamp_nanos(self.ts),
            host: host.into(),
            body,
        })
    }
}

#[cfg(test)]
mod tests;
