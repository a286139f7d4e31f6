//! The history's one writer: a thread that owns the read-write connection, is fed by a
//! hub subscription, and commits what arrived in ONE transaction per batch
//! (`prepare_cached` statements) at least every [`COMMIT_EVERY`], so a `kill -9` loses
//! at most that much. Between batches it prunes old rows in small chunks
//! (`retention.rs`), so pruning never stalls writing.
//!
//! It never stops monitoring: a database that cannot be opened or written (read-only,
//! disk full, locked) costs a warning on stderr, `stats.history.errors` and the
//! events of the failed batches (`stats.history.dropped`); it retries opening every
//! [`REOPEN_EVERY`]. A damaged file is moved aside and a new one started.
//!
//! Over 600 lines (about half of it tests): the loop, the event→row mapping and the
//! flow aggregator are still one file; the next split is `history/rows.rs` (the
//! mapping) and `history/aggregate.rs` (`Aggregator`, `FlowKey`).
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::{HistoryConfig, retention};
use crate::event::{Connection as Conn, Direction, Event, EventBody, HistoryStats, ProcessInfo};

/// Longest time an event waits in memory before it is committed.
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Most events in one transaction.
pub const MAX_BATCH: usize = 4_096;
/// How long the writer waits before trying again a database it could not open.
pub const REOPEN_EVERY: Duration = Duration::from_secs(10);

/// `stats.history`, shared between the writer thread and whoever writes `stats`.
#[derive(Debug, Default)]
pub struct Counters {
    written: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> HistoryStats {
        HistoryStats {
            written: self.written.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The running writer thread.
pub struct Writer {
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer on `events`. It ends, after committing what it has, when every
    /// sender of `events` is gone; [`Writer::finish`] waits for that. `hosts_json`: the
    /// scanner's old state file, imported once when the database is first opened.
    pub fn spawn(
        config: HistoryConfig,
        events: mpsc::Receiver<Arc<Event>>,
        hosts_json: Option<PathBuf>,
    ) -> std::io::Result<Writer> {
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("netmon-history".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime with a timer starts");
                rt.block_on(WriterLoop::new(config, c, hosts_json).run(events));
            })?;
        Ok(Writer {
            thread: Some(thread),
            counters,
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Waits until the writer committed everything it was sent (drop the senders first).
    pub fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct WriterLoop {
    config: HistoryConfig,
    counters: Arc<Counters>,
    store: Option<Store>,
    next_open: Instant,
    /// The last warning printed, so a failing disk warns once, not per batch.
    last_warning: Option<String>,
    batch: Vec<Arc<Event>>,
    batch_started: Option<Instant>,
    aggregator: Aggregator,
    next_prune: Instant,
    prune: Option<retention::Pruner>,
    /// The scanner's old state file, until it has been looked at.
    hosts_json: Option<PathBuf>,
}

impl WriterLoop {
    fn new(
        config: HistoryConfig,
        counters: Arc<Counters>,
        hosts_json: Option<PathBuf>,
    ) -> WriterLoop {
        let now = Instant::now();
        WriterLoop {
            next_prune: now,
            config,
            counters,
            store: None,
            next_open: now,
            last_warning: None,
            batch: Vec::with_capacity(1024),
            batch_started: None,
            aggregator: Aggregator::default(),
            prune: None,
            hosts_json,
        }
    }

    async fn run(mut self, mut events: mpsc::Receiver<Arc<Event>>) {
        self.open();
        loop {
            let deadline = match (self.batch_started, &self.prune) {
                (Some(t), _) => t + COMMIT_EVERY,
                (None, Some(_)) => Instant::now(),
                (None, None) => self.next_prune.min(if self.store.is_none() {
                    self.next_open
                } else {
                    self.next_prune
                }),
            };
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        self.push(event);
                        loop {
                            if self.batch.len() >= MAX_BATCH {
                                break;
                            }
                            match events.try_recv() {
                                Ok(event) => self.push(event),
                                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                            }
                        }
                        if self.batch.len() >= MAX_BATCH
                            || self.batch_started.is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
                        {
                            self.commit();
                            self.maintain();
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.commit();
                    self.maintain();
                }
            }
        }
        self.commit();
    }

    fn push(&mut self, event: Arc<Event>) {
        if !stored(&event.body) {
            return;
        }
        self.aggregator.add(&event);
        self.batch_started.get_or_insert_with(Instant::now);
        self.batch.push(event);
    }

    fn open(&mut self) {
        self.next_open = Instant::now() + REOPEN_EVERY;
        match super::open_writer(&self.config.path) {
            Ok((conn, warning)) => {
                if let Some(w) = warning {
                    self.warn(w.to_string());
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                if self.last_warning.take().is_some() {
                    eprintln!(
                        "netmon: history: writing to {} again",
                        self.config.path.display()
                    );
                }
                let mut store = Store::new(conn);
                if let Some(path) = self.hosts_json.take() {
                    match super::import::hosts_json(&mut store.conn, &path) {
                        Ok(Some(n)) => eprintln!(
                            "netmon: history: imported {n} hosts from {} (once; the file is left as it is)",
                            path.display()
                        ),
                        Ok(None) => {}
                        Err(e) => {
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            self.warn(format!("cannot import the scanner's hosts: {e}"));
                        }
                    }
                }
                self.store = Some(store);
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.warn(format!(
                    "{e}; events are not kept (monitoring goes on, retrying every {}s)",
                    REOPEN_EVERY.as_secs()
                ));
            }
        }
    }

    fn warn(&mut self, message: String) {
        if self.last_warning.as_deref() != Some(message.as_str()) {
            eprintln!("netmon: warning: history: {message}");
            self.last_warning = Some(message);
        }
    }

    /// Commits the batch in one transaction; a failure drops it (counted), never the
    /// monitoring.
    fn commit(&mut self) {
        self.batch_started = None;
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let totals = self.aggregator.take();
        if self.store.is_none() && Instant::now() >= self.next_open {
            self.open();
        }
        let Some(store) = &mut self.store else {
            self.counters.dropped.fetch_add(n, Ordering::Relaxed);
            self.batch.clear();
            return;
        };
        match store.write(&self.batch, &totals) {
            Ok(()) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                if self.last_warning.take().is_some() {
                    eprintln!("netmon: history: writing again");
                }
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                if super::is_damage(&e) {
                    self.store = None;
                    match super::move_aside(&self.config.path) {
                        Ok(moved) => self.warn(format!(
                            "{} is damaged ({e}); moved it aside to {} and starting a new one",
                            self.config.path.display(),
                            moved.display()
                        )),
                        Err(io) => self.warn(format!(
                            "{} is damaged ({e}) and cannot be moved aside ({io}); events are not kept",
                            self.config.path.display()
                        )),
                    }
                    self.open();
                } else {
                    self.warn(format!(
                        "cannot write to {}: {e}; these events are not kept (monitoring goes on)",
                        self.config.path.display()
                    ));
                }
            }
        }
        self.batch.clear();
    }

    /// Background upkeep between batches: one bounded pruning step at a time.
    fn maintain(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        let now = Instant::now();
        if self.prune.is_none() && now >= self.next_prune {
            self.next_prune = now + self.config.prune_interval.0;
            self.prune = Some(retention::Pruner::new(&self.config, chrono::Utc::now()));
        }
        if let Some(p) = &mut self.prune {
            match p.step(&store.conn) {
                Ok(true) => {}
                Ok(false) => self.prune = None,
                Err(e) => {
                    self.prune = None;
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.warn(format!("cannot prune old rows: {e}"));
                }
            }
        }
    }
}

/// Event types the history keeps (not `stats`, `probe` nor `netmon scan`'s reports).
pub fn stored(body: &EventBody) -> bool {
    !matches!(
        body,
        EventBody::Stats(_) | EventBody::Probe(_) | EventBody::Host(_) | EventBody::Port(_)
    )
}

/// The connection and the id caches of the writer.
struct Store {
    conn: Connection,
    processes: HashMap<(u32, String, u32), (Arc<crate::event::ProcessDetail>, i64)>,
    keys: HashMap<Arc<FlowKey>, i64>,
}

/// Ids cached at most (then the caches start over): a few MB, the rest is looked up
/// in the database's unique indexes.
const MAX_CACHED: usize = 8192;

impl Store {
    fn new(conn: Connection) -> Store {
        Store {
            conn,
            processes: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    fn write(
        &mut self,
        batch: &[Arc<Event>],
        totals: &[(i64, Arc<FlowKey>, Totals)],
    ) -> rusqlite::Result<()> {
        let result = self.write_tx(batch, totals);
        if result.is_err() {
            // Ids handed out inside the rolled-back transaction do not exist.
            self.processes.clear();
            self.keys.clear();
        }
        result
    }

    fn write_tx(
        &mut self,
        batch: &[Arc<Event>],
        totals: &[(i64, Arc<FlowKey>, Totals)],
    ) -> rusqlite::Result<()> {
        if self.processes.len() > MAX_CACHED {
            self.processes.clear();
        }
        if self.keys.len() > MAX_CACHED {
            self.keys.clear();
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for event in batch {
            insert_event(&tx, &mut self.processes, event)?;
        }
        for (minute, key, t) in totals {
            let key_id = match self.keys.get(key) {
                Some(id) => *id,
                None => {
                    let id = key_id(&tx, key)?;
                    self.keys.insert(key.clone(), id);
                    id
                }
            };
            for (sql, bucket) in [
                (UPSERT_MINUTE, *minute),
                (UPSERT_HOUR, minute.div_euclid(3600) * 3600),
            ] {
                tx.prepare_cached(sql)?.execute(params![
                    bucket,
                    key_id,
                    t.connections as i64,
                    t.bytes_sent as i64,
                    t.bytes_received as i64,
                    t.packets_sent as i64,
                    t.packets_received as i64,
                ])?;
            }
        }
        tx.commit()
    }
}

const UPSERT_MINUTE: &str = "INSERT INTO flow_minute (minute, key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (minute, key_id) DO UPDATE SET connections = connections + excluded.connections, bytes_sent = bytes_sent + excluded.bytes_sent, bytes_received = bytes_received + excluded.bytes_received, packets_sent = packets_sent + excluded.packets_sent, packets_received = packets_received + excluded.packets_received";
const UPSERT_HOUR: &str = "INSERT INTO flow_hour (hour, key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (hour, key_id) DO UPDATE SET connections = connections + excluded.connections, bytes_sent = bytes_sent + excluded.bytes_sent, bytes_received = bytes_received + excluded.bytes_received, packets_sent = packets_sent + excluded.packets_sent, packets_received = packets_received + excluded.packets_received";

fn key_id(tx: &Transaction<'_>, k: &FlowKey) -> rusqlite::Result<i64> {
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
            k.local_ip,
            k.local_port,
            k.remote_ip,
            k.remote_port,
            k.remote_name
        ],
        |r| r.get(0),
    )
}

type ProcessCache = HashMap<(u32, String, u32), (Arc<crate::event::ProcessDetail>, i64)>;

fn process_id(
    tx: &Transaction<'_>,
    cache: &mut ProcessCache,
    p: &ProcessInfo,
) -> rusqlite::Result<i64> {
    let key = (p.pid, p.comm.clone(), p.uid);
    if let Some((detail, id)) = cache.get(&key)
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
    cache.insert(key, (p.detail.clone(), id));
    Ok(id)
}

fn direction_name(d: Option<Direction>) -> Option<&'static str> {
    d.map(|d| match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    })
}

fn proto_name(p: crate::event::Proto) -> &'static str {
    match p {
        crate::event::Proto::Tcp => "tcp",
        crate::event::Proto::Udp => "udp",
    }
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

/// What columns do not hold of a connection event: only flags that are set.
fn conn_extras(c: &Conn, extra: &[(&str, serde_json::Value)]) -> Option<String> {
    let mut m = serde_json::Map::new();
    if c.failed {
        m.insert("failed".into(), true.into());
    }
    if c.existing {
        m.insert("existing".into(), true.into());
    }
    for (k, v) in extra {
        if !v.is_null() {
            m.insert((*k).into(), v.clone());
        }
    }
    (!m.is_empty()).then(|| serde_json::Value::Object(m).to_string())
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
        ..Row::default()
    }
}

fn insert_event(
    tx: &Transaction<'_>,
    procs: &mut ProcessCache,
    event: &Event,
) -> rusqlite::Result<()> {
    let ts = ns(event);
    let row = match &event.body {
        EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Listen(c) => Row {
            detail: conn_extras(c, &[]),
            ..conn_row(c)
        },
        EventBody::Udp(c) => Row {
            bytes_sent: c.bytes,
            detail: conn_extras(c, &[]),
            ..conn_row(c)
        },
        EventBody::Close(c) => Row {
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            packets_sent: c.packets_sent,
            packets_received: c.packets_received,
            duration_ms: c.duration_ms,
            detail: conn_extras(&c.conn, &[("reason", c.reason.clone().into())]),
            ..conn_row(&c.conn)
        },
        EventBody::Flow(f) => Row {
            bytes_sent: f.bytes_sent,
            bytes_received: f.bytes_received,
            packets_sent: f.packets_sent,
            packets_received: f.packets_received,
            duration_ms: Some(f.duration_ms),
            detail: conn_extras(
                &f.conn,
                &[
                    ("state", f.state.clone().into()),
                    (
                        "start",
                        f.start
                            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                            .into(),
                    ),
                ],
            ),
            ..conn_row(&f.conn)
        },
        EventBody::Dns(d) => Row {
            process: d.process.as_ref(),
            proto: Some(proto_name(d.proto)),
            src: Some((d.src.ip, d.src.port)),
            dst: Some((d.dst.ip, d.dst.port)),
            remote_name: Some(d.query.as_str()),
            duration_ms: d.latency_ms,
            detail: detail_json(&event.body),
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
        EventBody::Stats(_) | EventBody::Probe(_) | EventBody::Host(_) | EventBody::Port(_) => {
            return Ok(());
        }
    };
    let process_id = match row.process {
        Some(p) => Some(process_id(tx, procs, p)?),
        None => None,
    };
    tx.prepare_cached(
        "INSERT INTO events (ts, type, process_id, proto, direction, src_ip, src_port, dst_ip, dst_port, remote_name, bytes_sent, bytes_received, packets_sent, packets_received, duration_ms, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        ts,
        event.body.type_name(),
        process_id,
        row.proto,
        row.direction,
        row.src.map(|s| s.0.to_string()),
        row.src.map(|s| s.1),
        row.dst.map(|d| d.0.to_string()),
        row.dst.map(|d| d.1),
        row.remote_name,
        row.bytes_sent.map(|b| b as i64),
        row.bytes_received.map(|b| b as i64),
        row.packets_sent.map(|b| b as i64),
        row.packets_received.map(|b| b as i64),
        row.duration_ms,
        row.detail,
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

/// What one per-minute (and per-hour) flow row is about. The ephemeral side's port is
/// 0: the local port of an outbound flow, the remote port of an inbound one, so one
/// row sums every connection of a process to one service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub comm: String,
    pub exe: String,
    pub user: String,
    pub proto: &'static str,
    pub direction: &'static str,
    pub local_ip: String,
    pub local_port: u16,
    pub remote_ip: String,
    pub remote_port: u16,
    pub remote_name: String,
}

impl FlowKey {
    pub fn of(c: &Conn) -> FlowKey {
        let (comm, exe, user) = match &c.process {
            Some(p) => (
                p.comm.clone(),
                p.detail.exe.clone().unwrap_or_default(),
                p.detail.user.clone().unwrap_or_else(|| p.uid.to_string()),
            ),
            None => Default::default(),
        };
        let src = c.src.as_ref();
        let (local_ip, local_port, remote_ip, remote_port, name) = match c.direction {
            Some(Direction::Inbound) => (
                c.dst.ip.to_string(),
                c.dst.port,
                src.map(|s| s.ip.to_string()).unwrap_or_default(),
                0,
                src.and_then(|s| s.name.clone()),
            ),
            Some(Direction::Outbound) => (
                src.map(|s| s.ip.to_string()).unwrap_or_default(),
                0,
                c.dst.ip.to_string(),
                c.dst.port,
                c.dst.name.clone(),
            ),
            None => (
                src.map(|s| s.ip.to_string()).unwrap_or_default(),
                src.map_or(0, |s| s.port),
                c.dst.ip.to_string(),
                c.dst.port,
                c.dst.name.clone(),
            ),
        };
        FlowKey {
            comm,
            exe,
            user,
            proto: proto_name(c.proto),
            direction: direction_name(c.direction).unwrap_or(""),
            local_ip,
            local_port,
            remote_ip,
            remote_port,
            remote_name: name.unwrap_or_default(),
        }
    }
}

/// Connections begun and payload each way (sent: by this host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

/// A flow's identity: the direction too, since on loopback both ends of one
/// connection are local sockets with the same addresses.
type FlowId = (
    crate::event::Proto,
    Option<Direction>,
    Option<(IpAddr, u16)>,
    (IpAddr, u16),
);

/// Flows followed at most; beyond it the oldest knowledge is dropped (a flow's later
/// `flow` or `close` then counts its bytes from zero on a freshly keyed row).
const MAX_FLOWS: usize = 1_000_000;

/// Turns events into per-minute totals: `connect`, `accept` and `udp` count a
/// connection; `flow` and `close` add the bytes and packets since the flow's previous
/// report (their counters are cumulative). Pure: the writer takes the totals at
/// every commit.
///
/// Memory: nothing is kept for a flow until its first `flow` summary (a flow whose
/// first counters come with its close needs no memory of it), and then only its
/// counters under a hash of its identity, 40-odd bytes: 100,000 long-lived flows cost
/// about 5 MB, where keeping each flow's row key cost about 40 MB and broke netmon's
/// 50 MB budget (tests/tests/flows.rs). Every event of a flow carries the same
/// connection (the flow table's), so each one's row key is computed from the event.
#[derive(Default)]
pub struct Aggregator {
    /// Counters last reported, per flow that has had a summary: hash of [`FlowId`] →
    /// bytes sent, received, packets sent, received.
    reported: HashMap<u64, [u64; 4]>,
    hasher: std::hash::RandomState,
    pending: HashMap<(i64, Arc<FlowKey>), Totals>,
}

impl Aggregator {
    pub fn add(&mut self, event: &Event) {
        let minute = event.ts.timestamp().div_euclid(60) * 60;
        let (c, counters, ends) = match &event.body {
            EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Udp(c) => (c, None, false),
            EventBody::Flow(f) => (
                &f.conn,
                Some([
                    f.bytes_sent,
                    f.bytes_received,
                    f.packets_sent,
                    f.packets_received,
                ]),
                false,
            ),
            EventBody::Close(f) => (
                &f.conn,
                Some([
                    f.bytes_sent,
                    f.bytes_received,
                    f.packets_sent,
                    f.packets_received,
                ]),
                true,
            ),
            _ => return,
        };
        let mut delta = Totals::default();
        match counters {
            None => delta.connections = 1,
            Some(now) => {
                let id: FlowId = (
                    c.proto,
                    c.direction,
                    c.src.as_ref().map(|s| (s.ip, s.port)),
                    (c.dst.ip, c.dst.port),
                );
                let id = std::hash::BuildHasher::hash_one(&self.hasher, id);
                let mut last = if ends {
                    self.reported.remove(&id).unwrap_or_default()
                } else {
                    self.reported.get(&id).copied().unwrap_or_default()
                };
                let mut step = |i: usize| {
                    let now = now[i].unwrap_or(last[i]);
                    let d = now.saturating_sub(last[i]);
                    last[i] = now.max(last[i]);
                    d
                };
                delta.bytes_sent = step(0);
                delta.bytes_received = step(1);
                delta.packets_sent = step(2);
                delta.packets_received = step(3);
                if !ends {
                    if self.reported.len() >= MAX_FLOWS && !self.reported.contains_key(&id) {
                        self.reported.clear();
                    }
                    self.reported.insert(id, last);
                }
            }
        }
        let key = Arc::new(FlowKey::of(c));
        let t = self.pending.entry((minute, key)).or_default();
        t.connections += delta.connections;
        t.bytes_sent += delta.bytes_sent;
        t.bytes_received += delta.bytes_received;
        t.packets_sent += delta.packets_sent;
        t.packets_received += delta.packets_received;
    }

    /// The totals gathered since the last call.
    pub fn take(&mut self) -> Vec<(i64, Arc<FlowKey>, Totals)> {
        self.pending
            .drain()
            .map(|((minute, key), t)| (minute, key, t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Close, Endpoint, Family, Proto};
    use chrono::{DateTime, Utc};

    fn conn(dir: Direction, sport: u16, dport: u16) -> Conn {
        Conn {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            direction: Some(dir),
            src: Some(Endpoint::new("10.0.0.1".parse().unwrap(), sport)),
            dst: Endpoint::new("10.0.0.2".parse().unwrap(), dport),
            process: Some(ProcessInfo::kernel(7, 7, "curl".into(), 0, 0, 1)),
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        }
    }

    fn at(s: i64, body: EventBody) -> Event {
        Event {
            ts: DateTime::<Utc>::from_timestamp(s, 0).unwrap(),
            host: "h".into(),
            body,
        }
    }

    fn close(c: Conn, sent: u64, recv: u64) -> EventBody {
        EventBody::Close(Close {
            conn: c,
            duration_ms: Some(1.0),
            bytes_sent: Some(sent),
            bytes_received: Some(recv),
            packets_sent: None,
            packets_received: None,
            reason: None,
        })
    }

    #[test]
    fn flows_sum_per_minute_without_counting_twice() {
        let mut a = Aggregator::default();
        for sport in [40000, 40001] {
            a.add(&at(
                60,
                EventBody::Connect(conn(Direction::Outbound, sport, 443)),
            ));
        }
        a.add(&at(
            70,
            EventBody::Flow(crate::event::FlowSummary {
                conn: conn(Direction::Outbound, 40000, 443),
                state: "established".into(),
                start: DateTime::<Utc>::from_timestamp(60, 0).unwrap(),
                duration_ms: 10_000.0,
                bytes_sent: Some(100),
                bytes_received: Some(1000),
                packets_sent: None,
                packets_received: None,
            }),
        ));
        a.add(&at(
            130,
            close(conn(Direction::Outbound, 40000, 443), 150, 1500),
        ));
        a.add(&at(130, close(conn(Direction::Outbound, 40001, 443), 5, 7)));
        let mut rows = a.take();
        rows.sort_by_key(|r| r.0);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].0, 60);
        assert_eq!(
            rows[0].2,
            Totals {
                connections: 2,
                bytes_sent: 100,
                bytes_received: 1000,
                ..Totals::default()
            }
        );
        assert_eq!(rows[1].0, 120);
        assert_eq!(rows[1].2.bytes_sent, 55);
        assert_eq!(rows[1].2.bytes_received, 507);
        // The ephemeral port is not part of the key: one row for both connections.
        assert_eq!(rows[0].1.local_port, 0);
        assert_eq!(rows[0].1.remote_port, 443);
        assert!(a.take().is_empty());
    }

    #[test]
    fn both_ends_of_a_loopback_connection_are_two_flows() {
        // On loopback the client's and the server's socket share the addresses.
        let mut a = Aggregator::default();
        let out = conn(Direction::Outbound, 40000, 8080);
        let inb = conn(Direction::Inbound, 40000, 8080);
        a.add(&at(60, EventBody::Connect(out.clone())));
        a.add(&at(60, EventBody::Accept(inb.clone())));
        a.add(&at(61, close(inb, 2000, 1000)));
        a.add(&at(61, close(out, 1000, 2000)));
        let rows = a.take();
        let find = |d: &str| rows.iter().find(|r| r.1.direction == d).unwrap().2;
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (find("outbound").connections, find("outbound").bytes_sent),
            (1, 1000)
        );
        assert_eq!(
            (find("inbound").connections, find("inbound").bytes_sent),
            (1, 2000)
        );
    }

    #[test]
    fn inbound_flows_keep_the_service_port() {
        let k = FlowKey::of(&conn(Direction::Inbound, 51000, 22));
        assert_eq!((k.local_port, k.remote_port), (22, 0));
        assert_eq!(k.remote_ip, "10.0.0.1");
        assert_eq!(k.user, "0");
    }

    fn dns_event(s: i64) -> EventBody {
        EventBody::Dns(crate::event::Dns {
            proto: Proto::Udp,
            family: Family::Ipv4,
            role: crate::event::DnsRole::Client,
            src: Endpoint::new("10.0.0.1".parse().unwrap(), 5353),
            dst: Endpoint::new("10.0.0.53".parse().unwrap(), 53),
            id: 7,
            query: format!("host{s}.example\u{1b}"),
            qtype: "A".into(),
            rcode: Some("NOERROR".into()),
            answers: Vec::new(),
            latency_ms: Some(1.0),
            process: Some(ProcessInfo::kernel(9, 9, "dig".into(), 1000, 1000, 1)),
            truncated: false,
        })
    }

    fn write_all(path: &std::path::Path, events: Vec<Event>) -> HistoryStats {
        let config = HistoryConfig {
            path: path.to_owned(),
            ..HistoryConfig::default()
        };
        let (tx, rx) = mpsc::channel(events.len() + 1);
        let writer = Writer::spawn(config, rx, None).unwrap();
        let counters = writer.counters();
        for e in events {
            tx.try_send(Arc::new(e)).unwrap();
        }
        drop(tx);
        writer.finish();
        counters.snapshot()
    }

    #[test]
    fn what_the_writer_commits_the_queries_answer() {
        use crate::query::{Filter, Question, Source, Window};
        let dir =
            std::env::temp_dir().join(format!("netmon-history-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let now = Utc::now().timestamp() / 3600 * 3600 - 7200;
        let mut events = Vec::new();
        for i in 0..100 {
            let sport = 40000 + i as u16;
            events.push(at(
                now + i,
                EventBody::Connect(conn(Direction::Outbound, sport, 443)),
            ));
            events.push(at(
                now + i,
                close(conn(Direction::Outbound, sport, 443), 10, 20),
            ));
        }
        events.push(at(
            now + 3700,
            EventBody::Accept(conn(Direction::Inbound, 50000, 22)),
        ));
        events.push(at(
            now + 3701,
            close(conn(Direction::Inbound, 50000, 22), 3, 4),
        ));
        events.push(at(now + 5, dns_event(5)));
        let stats = write_all(&path, events);
        assert_eq!(stats.written, 203, "{stats:?}");
        assert_eq!((stats.errors, stats.dropped), (0, 0));
        let store = super::super::query::Store::open(&path).unwrap();
        let q = |since: i64, until: i64, filter: Filter| Question {
            window: Window {
                since: DateTime::from_timestamp(since, 0),
                until: DateTime::from_timestamp(until, 0),
            },
            filter: Filter {
                limit: if filter.limit == 0 {
                    1000
                } else {
                    filter.limit
                },
                ..filter
            },
        };
        // A window of whole hours (flow_hour) and one with ragged ends (flow_minute)
        // give the same totals.
        for (since, until) in [
            (now - 3600, now + 7200),
            (now + 30, now + 3720),
            (now, now + 60),
        ] {
            let flows = store.flows(&q(since, until, Filter::default())).unwrap();
            let out: Vec<_> = flows.iter().filter(|f| f.direction == "outbound").collect();
            let first = (since.max(now)..(now + 100).min(until)).count() as u64;
            if first > 0 {
                assert_eq!(out.len(), 1, "{since}..{until}: {flows:?}");
                assert_eq!(out[0].remote_port, 443);
                assert_eq!(out[0].comm, "curl");
            }
        }
        let all = store
            .flows(&q(now - 3600, now + 7200, Filter::default()))
            .unwrap();
        let out = all.iter().find(|f| f.direction == "outbound").unwrap();
        assert_eq!(
            (out.connections, out.bytes_sent, out.bytes_received),
            (100, 1000, 2000)
        );
        let inb = all.iter().find(|f| f.direction == "inbound").unwrap();
        assert_eq!(
            (inb.local_port, inb.connections, inb.bytes_received),
            (22, 1, 4)
        );
        // The ragged window counts only its own minutes.
        let part = store
            .flows(&q(now + 3660, now + 7200, Filter::default()))
            .unwrap();
        assert_eq!(part.len(), 1);
        assert_eq!(part[0].direction, "inbound");
        // Filters: port, host, process, type.
        let by_port = store
            .flows(&q(
                now - 3600,
                now + 7200,
                Filter {
                    port: Some(22),
                    ..Filter::default()
                },
            ))
            .unwrap();
        assert_eq!(by_port.len(), 1);
        let events = store
            .events(&q(
                now - 10,
                now + 7200,
                Filter {
                    types: vec!["close".into()],
                    host: Some("10.0.0.0/24".parse().unwrap()),
                    ..Filter::default()
                },
            ))
            .unwrap();
        assert_eq!(events.len(), 101);
        assert!(
            events.windows(2).all(|w| w[0].ts <= w[1].ts),
            "oldest first"
        );
        let dig = store
            .events(&q(
                now - 10,
                now + 7200,
                Filter {
                    process: Some("dig".into()),
                    ..Filter::default()
                },
            ))
            .unwrap();
        assert_eq!(dig.len(), 1);
        assert_eq!(dig[0].kind, "dns");
        assert_eq!(dig[0].remote_name.as_deref(), Some("host5.example\u{1b}"));
        assert_eq!(dig[0].detail.as_ref().unwrap()["qtype"], "A");
        let none = store
            .events(&q(
                now - 10,
                now + 7200,
                Filter {
                    host: Some("192.168.0.0/16".parse().unwrap()),
                    ..Filter::default()
                },
            ))
            .unwrap();
        assert!(none.is_empty());
        let newest = store
            .events(&q(
                now - 10,
                now + 7200,
                Filter {
                    limit: 3,
                    ..Filter::default()
                },
            ))
            .unwrap();
        assert_eq!(newest.len(), 3);
        assert_eq!(newest[2].kind, "close");
        assert_eq!(newest[2].dst_port, Some(22));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_prunes_each_table_by_its_own_period() {
        let dir = std::env::temp_dir().join(format!("netmon-history-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let now = Utc::now().timestamp();
        let day = 86_400;
        let mut events = Vec::new();
        for age_days in [1, 10, 40, 400] {
            let t = now - age_days * day;
            events.push(at(
                t,
                EventBody::Connect(conn(Direction::Outbound, 40000, 443)),
            ));
            events.push(at(t, close(conn(Direction::Outbound, 40000, 443), 1, 1)));
        }
        write_all(&path, events);
        let (conn, _) = super::super::open_writer(&path).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            (count("events"), count("flow_minute"), count("flow_hour")),
            (8, 4, 4)
        );
        retention::Pruner::new(&HistoryConfig::default(), Utc::now())
            .run(&conn)
            .unwrap();
        // raw 7 d keeps 1 day; per-minute 30 d keeps 1 and 10 days; hourly 365 d keeps all but 400.
        assert_eq!(
            (count("events"), count("flow_minute"), count("flow_hour")),
            (2, 2, 3)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
