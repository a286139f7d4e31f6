//! Read-only SQL answering `crate::query`'s questions from the history. Flows come
//! from the per-hour totals for the whole hours of the window and the per-minute
//! totals for its ragged ends, so a day is ~24 rows per flow key whatever the event
//! count. Every value from the user is a bound parameter, never SQL text.
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use rusqlite::{Connection, functions::FunctionFlags, types::Value};

use crate::query::{
    AlertRow, DnsNameRow, EventRow, FlowRow, HostRow, PortRow, Question, Source, Window,
};

/// `netmon_in_net(ip_text, net_text)`: the address is in the network;
/// `netmon_basename(path)`: the last component of a path.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("netmon_in_net", 2, flags, |ctx| {
        let ip: Option<String> = ctx.get(0)?;
        let net: String = ctx.get(1)?;
        let Ok(net) = net.parse::<IpNet>() else {
            return Ok(false);
        };
        Ok(ip
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| net.contains(&ip) || mapped(ip).is_some_and(|v4| net.contains(&v4))))
    })?;
    conn.create_scalar_function("netmon_basename", 1, flags, |ctx| {
        let path: Option<String> = ctx.get(0)?;
        Ok(path.map(|p| {
            let p = p.strip_suffix(" (deleted)").unwrap_or(&p);
            p.rsplit('/').next().unwrap_or("").to_owned()
        }))
    })
}

/// An IPv4-mapped IPv6 address's IPv4 form (dual-stack sockets report those).
fn mapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

/// The history, read-only.
pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &std::path::Path) -> Result<Store, super::Error> {
        Ok(Store {
            conn: super::open_reader(path)?,
        })
    }

    /// For tests and tools that already hold a connection (functions registered here).
    pub fn from_connection(conn: Connection) -> rusqlite::Result<Store> {
        register_functions(&conn)?;
        Ok(Store { conn })
    }
}

/// A WHERE clause built from parts, with its parameters.
#[derive(Default)]
struct Where {
    parts: Vec<String>,
    params: Vec<Value>,
}

impl Where {
    fn push(&mut self, sql: &str, values: impl IntoIterator<Item = Value>) {
        // Each `?` becomes the number of its value in the whole statement.
        let mut values = values.into_iter();
        let mut out = String::with_capacity(sql.len() + 8);
        let mut pieces = sql.split('?');
        out.push_str(pieces.next().unwrap_or(""));
        for piece in pieces {
            self.params
                .push(values.next().expect("a value for every `?`"));
            out.push_str(&format!("?{}", self.params.len()));
            out.push_str(piece);
        }
        self.parts.push(out);
    }

    fn sql(&self) -> String {
        if self.parts.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.parts.join(" AND "))
        }
    }

    fn next(&self) -> usize {
        self.params.len() + 1
    }
}

fn ns(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Process, host and port filters over the given columns.
fn common(w: &mut Where, q: &Question, comm: &str, exe: &str, ips: [&str; 2], ports: [&str; 2]) {
    let f = &q.filter;
    if let Some(p) = &f.process {
        w.push(
            &format!("({comm} = ? OR {exe} = ? OR netmon_basename({exe}) = ?)"),
            [text(p), text(p), text(p)],
        );
    }
    if let Some(net) = &f.host {
        let n = net.to_string();
        w.push(
            &format!(
                "(netmon_in_net({}, ?) OR netmon_in_net({}, ?))",
                ips[0], ips[1]
            ),
            [text(&n), text(&n)],
        );
    }
    if let Some(port) = f.port {
        w.push(
            &format!("({} = ? OR {} = ?)", ports[0], ports[1]),
            [Value::Integer(port.into()), Value::Integer(port.into())],
        );
    }
}

fn time(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

fn secs(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or_default()
}

fn json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn u(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn limit(q: &Question) -> i64 {
    q.filter.limit.min(i64::MAX as usize) as i64
}

/// A window as the roll-ups read it, in seconds: `[lo, hi)` whole minutes, of which the
/// whole hours `[h_lo, h_hi)` come from `flow_hour` and the rest from `flow_minute`.
fn roll_up_bounds(window: &Window) -> (i64, i64, i64, i64) {
    let lo = window
        .since
        .map_or(i64::MIN / 2, |t| t.timestamp().div_euclid(60) * 60);
    let hi = window.until.map_or(i64::MAX / 2, |t| {
        let s = t.timestamp();
        // A minute that began before `until` is in the window.
        if t.timestamp_subsec_nanos() > 0 || s % 60 != 0 {
            s.div_euclid(60) * 60 + 60
        } else {
            s
        }
    });
    let mut h_lo = lo.div_euclid(3600) * 3600;
    if h_lo < lo {
        h_lo += 3600;
    }
    let mut h_hi = hi.div_euclid(3600) * 3600;
    if h_hi <= h_lo {
        h_lo = hi;
        h_hi = hi;
    }
    (lo, h_lo, h_hi, hi)
}

/// The conditions on `e` (joined to `processes p`) every events question shares: the
/// window from `since_ns` (Unix nanoseconds) to the question's `until`, then the
/// process, host and port filters. `e` is the view `events` (`batched`: its batches'
/// bounds are bounded too, so only the batches in the window are read) or the table
/// `event_rows`.
fn events_in(w: &mut Where, q: &Question, since_ns: Option<i64>, batched: bool) {
    if let Some(t) = since_ns {
        w.push("e.ts >= ?", [Value::Integer(t)]);
        if batched {
            w.push("e.batch_last_ts >= ?", [Value::Integer(t)]);
        }
    }
    if let Some(t) = q.window.until {
        w.push("e.ts < ?", [Value::Integer(ns(t))]);
        if batched {
            w.push("e.batch_first_ts < ?", [Value::Integer(ns(t))]);
        }
    }
    common(
        w,
        q,
        "p.comm",
        "p.exe",
        ["e.src_ip", "e.dst_ip"],
        ["e.src_port", "e.dst_port"],
    );
}

impl Source for Store {
    type Error = rusqlite::Error;

    /// The newest `limit` events of the window: read back from the newest event in
    /// windows that grow (a minute, then 8 times longer each time) until they hold
    /// `limit` or reach `since`, so a short answer reads only the latest batches.
    fn events(&self, q: &Question) -> rusqlite::Result<Vec<EventRow>> {
        let (oldest, newest): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT min(lo), max(hi) FROM (SELECT min(ts) AS lo, max(ts) AS hi FROM event_rows UNION ALL SELECT min(first_ts), max(last_ts) FROM event_batches)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(Vec::new());
        };
        let floor = q.window.since.map_or(oldest, ns).max(oldest);
        let top = q.window.until.map_or(newest, |u| ns(u).min(newest));
        let mut span: i64 = 60_000_000_000;
        loop {
            let lo = top.saturating_sub(span);
            let rows = events_since(self, q, lo.max(floor))?;
            if rows.len() >= limit(q) as usize || lo <= floor {
                return Ok(rows);
            }
            span = span.saturating_mul(8);
        }
    }

    fn connections_over_time(
        &self,
        window: &Window,
        bucket_secs: i64,
    ) -> rusqlite::Result<Vec<(DateTime<Utc>, u64)>> {
        let b = bucket_secs.max(60);
        let (lo, mut h_lo, mut h_hi, hi) = roll_up_bounds(window);
        if b % 3600 != 0 {
            // Buckets inside an hour: the per-minute totals alone, as a question of
            // one bucket's flows would read them.
            (h_lo, h_hi) = (hi, hi);
        }
        let mut stmt = self.conn.prepare(
            "WITH parts AS (
                SELECT connections, minute AS t
                FROM flow_minute WHERE (minute >= ?1 AND minute < ?2) OR (minute >= ?3 AND minute < ?4)
                UNION ALL
                SELECT connections, hour AS t
                FROM flow_hour WHERE hour >= ?2 AND hour < ?3
             )
             SELECT (t / ?5) * ?5 AS bucket, sum(connections) FROM parts GROUP BY bucket ORDER BY bucket",
        )?;
        stmt.query_map(rusqlite::params![lo, h_lo, h_hi, hi, b], |r| {
            Ok((secs(r.get(0)?), u(r.get(1)?).unwrap_or(0)))
        })?
        .collect()
    }

    fn flows(&self, q: &Question) -> rusqlite::Result<Vec<FlowRow>> {
        // [lo, hi) in seconds; whole hours [h_lo, h_hi) come from flow_hour.
        let (lo, h_lo, h_hi, hi) = roll_up_bounds(&q.window);
        let mut w = Where::default();
        w.push("1", []);
        common(
            &mut w,
            q,
            "k.comm",
            "k.exe",
            ["k.local_ip", "k.remote_ip"],
            ["k.local_port", "k.remote_port"],
        );
        let n = w.next();
        let sql = format!(
            "WITH parts AS (
                SELECT key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received, minute AS t
                FROM flow_minute WHERE (minute >= ?{n} AND minute < ?{h_lo_p}) OR (minute >= ?{h_hi_p} AND minute < ?{hi_p})
                UNION ALL
                SELECT key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received, hour AS t
                FROM flow_hour WHERE hour >= ?{h_lo_p} AND hour < ?{h_hi_p}
             )
             SELECT k.comm, k.exe, k.user, k.proto, k.direction, k.local_ip, k.local_port, k.remote_ip, k.remote_port, k.remote_name,
                    sum(parts.connections), sum(parts.bytes_sent), sum(parts.bytes_received), sum(parts.packets_sent), sum(parts.packets_received),
                    min(parts.t), max(parts.t)
             FROM parts JOIN flow_keys k ON k.id = parts.key_id
             {where_}
             GROUP BY parts.key_id
             ORDER BY sum(parts.bytes_sent) + sum(parts.bytes_received) DESC, sum(parts.connections) DESC, k.id
             LIMIT ?{limit_p}",
            h_lo_p = n + 1,
            h_hi_p = n + 2,
            hi_p = n + 3,
            limit_p = n + 4,
            where_ = w.sql(),
        );
        let mut params = w.params;
        params.extend([lo, h_lo, h_hi, hi, limit(q)].map(Value::Integer));
        let mut stmt = self.conn.prepare(&sql)?;
        stmt.query_map(rusqlite::params_from_iter(params), |r| {
            Ok(FlowRow {
                comm: r.get(0)?,
                exe: r.get(1)?,
                user: r.get(2)?,
                proto: r.get(3)?,
                direction: r.get(4)?,
                local_ip: r.get(5)?,
                local_port: r.get(6)?,
                remote_ip: r.get(7)?,
                remote_port: r.get(8)?,
                remote_name: r.get(9)?,
                connections: u(r.get(10)?).unwrap_or(0),
                bytes_sent: u(r.get(11)?).unwrap_or(0),
                bytes_received: u(r.get(12)?).unwrap_or(0),
                packets_sent: u(r.get(13)?).unwrap_or(0),
                packets_received: u(r.get(14)?).unwrap_or(0),
                first: secs(r.get(15)?),
                last: secs(r.get(16)?),
            })
        })?
        .collect()
    }

    fn dns_names(&self, q: &Question) -> rusqlite::Result<Vec<DnsNameRow>> {
        let mut w = Where::default();
        w.push("e.type = ?", [text("dns")]);
        w.push("e.remote_name IS NOT NULL", []);
        events_in(&mut w, q, q.window.since.map(ns), false);
        // DNS events are rows of `event_rows`, never batched: one pass over its
        // (type, ts) index; only the counts leave SQLite.
        let sql = format!(
            "SELECT e.remote_name, count(*) AS n, group_concat(DISTINCT p.comm) FROM event_rows e LEFT JOIN processes p ON p.id = e.process_id {} GROUP BY e.remote_name ORDER BY n DESC, e.remote_name LIMIT ?{}",
            w.sql(),
            w.next()
        );
        let mut params = w.params;
        params.push(Value::Integer(limit(q)));
        let mut stmt = self.conn.prepare(&sql)?;
        stmt.query_map(rusqlite::params_from_iter(params), |r| {
            let comms: Option<String> = r.get(2)?;
            let mut processes: Vec<String> = comms
                .map(|c| c.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            processes.sort();
            Ok(DnsNameRow {
                name: r.get(0)?,
                queries: u(r.get(1)?).unwrap_or(0),
                processes,
            })
        })?
        .collect()
    }

    fn alerts(&self, q: &Question) -> rusqlite::Result<Vec<AlertRow>> {
        let mut w = Where::default();
        if let Some(t) = q.window.since {
            w.push("a.ts >= ?", [Value::Integer(ns(t))]);
        }
        if let Some(t) = q.window.until {
            w.push("a.ts < ?", [Value::Integer(ns(t))]);
        }
        if !q.filter.types.is_empty() {
            let marks = vec!["?"; q.filter.types.len()].join(", ");
            w.push(
                &format!("a.rule IN ({marks})"),
                q.filter.types.iter().map(|t| text(t)),
            );
        }
        // Host and port: the flows the alert carries (in its JSON).
        let mut f = q.clone();
        f.filter.host = None;
        f.filter.port = None;
        common(&mut w, &f, "p.comm", "p.exe", ["", ""], ["", ""]);
        if let Some(net) = &q.filter.host {
            w.push(
                "EXISTS (SELECT 1 FROM json_each(a.detail, '$.flows') j WHERE netmon_in_net(j.value ->> '$.dst.ip', ?) OR netmon_in_net(j.value ->> '$.src.ip', ?))",
                [text(&net.to_string()), text(&net.to_string())],
            );
        }
        if let Some(port) = q.filter.port {
            w.push(
                "EXISTS (SELECT 1 FROM json_each(a.detail, '$.flows') j WHERE j.value ->> '$.dst.port' = ? OR j.value ->> '$.src.port' = ?)",
                [Value::Integer(port.into()), Value::Integer(port.into())],
            );
        }
        let sql = format!(
            "SELECT a.ts, a.rule, a.severity, a.summary, a.key, a.hits, p.pid, p.comm, nullif(p.exe, ''), a.detail FROM alerts a LEFT JOIN processes p ON p.id = a.process_id {} ORDER BY a.ts DESC, a.id DESC LIMIT ?{}",
            w.sql(),
            w.next()
        );
        let mut params = w.params;
        params.push(Value::Integer(limit(q)));
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows: Vec<AlertRow> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok(AlertRow {
                    ts: time(r.get(0)?),
                    rule: r.get(1)?,
                    severity: r.get(2)?,
                    summary: r.get(3)?,
                    key: r.get(4)?,
                    hits: u(r.get(5)?).unwrap_or(0),
                    pid: r.get(6)?,
                    comm: r.get(7)?,
                    exe: r.get(8)?,
                    detail: json(r.get(9)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn hosts(&self, q: &Question) -> rusqlite::Result<Vec<HostRow>> {
        let mut w = Where::default();
        if let Some(t) = q.window.since {
            w.push("h.last_change >= ?", [Value::Integer(t.timestamp())]);
        }
        if let Some(t) = q.window.until {
            w.push("h.last_change < ?", [Value::Integer(t.timestamp())]);
        }
        if let Some(net) = &q.filter.host {
            w.push("netmon_in_net(h.ip, ?)", [text(&net.to_string())]);
        }
        if let Some(port) = q.filter.port {
            w.push(
                "EXISTS (SELECT 1 FROM ports p WHERE p.ip = h.ip AND p.port = ?)",
                [Value::Integer(port.into())],
            );
        }
        let sql = format!(
            "SELECT h.ip, h.state, h.mac, h.name, h.first_seen, h.last_seen, h.last_change FROM hosts h {} ORDER BY h.ip LIMIT ?{}",
            w.sql(),
            w.next()
        );
        let mut params = w.params;
        params.push(Value::Integer(limit(q)));
        let mut stmt = self.conn.prepare(&sql)?;
        let mut hosts: Vec<HostRow> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok(HostRow {
                    ip: r.get(0)?,
                    state: r.get(1)?,
                    mac: r.get(2)?,
                    name: r.get(3)?,
                    first_seen: secs(r.get(4)?),
                    last_seen: r.get::<_, Option<i64>>(5)?.map(secs),
                    last_change: secs(r.get(6)?),
                    ports: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut ports = self.conn.prepare_cached(
            "SELECT proto, port, state, service, version FROM ports WHERE ip = ?1 ORDER BY proto DESC, port",
        )?;
        for h in &mut hosts {
            h.ports = ports
                .query_map([&h.ip], |r| {
                    Ok(PortRow {
                        proto: r.get(0)?,
                        port: r.get(1)?,
                        state: r.get(2)?,
                        service: r.get(3)?,
                        version: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        Ok(hosts)
    }
}

/// [`Source::events`] in the window from `since_ns` to the question's `until`.
fn events_since(store: &Store, q: &Question, since_ns: i64) -> rusqlite::Result<Vec<EventRow>> {
    let mut w = Where::default();
    if !q.filter.types.is_empty() {
        let marks = vec!["?"; q.filter.types.len()].join(", ");
        w.push(
            &format!("e.type IN ({marks})"),
            q.filter.types.iter().map(|t| text(t)),
        );
    }
    events_in(&mut w, q, Some(since_ns), true);
    let sql = format!(
        "SELECT e.ts, e.type, p.pid, p.comm, nullif(p.exe, ''), nullif(p.user, ''), p.uid, nullif(p.cmdline, ''), e.proto, e.direction, e.src_ip, e.src_port, e.dst_ip, e.dst_port, e.remote_name, e.bytes_sent, e.bytes_received, e.packets_sent, e.packets_received, e.duration_ms, e.detail FROM events e LEFT JOIN processes p ON p.id = e.process_id {} ORDER BY e.ts DESC, e.id DESC LIMIT ?{}",
        w.sql(),
        w.next()
    );
    let mut params = w.params;
    params.push(Value::Integer(limit(q)));
    let mut stmt = store.conn.prepare(&sql)?;
    let mut rows: Vec<EventRow> = stmt
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok(EventRow {
                ts: time(r.get(0)?),
                kind: r.get(1)?,
                pid: r.get(2)?,
                comm: r.get(3)?,
                exe: r.get(4)?,
                user: r.get(5)?,
                uid: r.get(6)?,
                cmdline: r.get(7)?,
                proto: r.get(8)?,
                direction: r.get(9)?,
                src_ip: r.get(10)?,
                src_port: r.get(11)?,
                dst_ip: r.get(12)?,
                dst_port: r.get(13)?,
                remote_name: r.get(14)?,
                bytes_sent: u(r.get(15)?),
                bytes_received: u(r.get(16)?),
                packets_sent: u(r.get(17)?),
                packets_received: u(r.get(18)?),
                duration_ms: r.get(19)?,
                detail: json(r.get(20)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(rows)
}

#[cfg(test)]
mod tests;
