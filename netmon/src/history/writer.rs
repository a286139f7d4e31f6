//! The history's one writer: a thread that owns the read-write connection, is fed by a
//! hub subscription, and commits what arrived in ONE transaction per batch
//! (statements prepared once per batch) at least every [`COMMIT_EVERY`], so a `kill -9` loses
//! at most that much. Between batches it prunes old rows in small chunks
//! (`retention.rs`), so pruning never stalls writing.
//!
//! It never stops monitoring: a database that cannot be opened or written (read-only,
//! disk full, locked) costs a warning on stderr, `stats.history.errors` and the
//! events of the failed batches (`stats.history.dropped`); it retries opening every
//! [`REOPEN_EVERY`]. A damaged file is moved aside and a new one started.
//!
//! The event→row mapping is `rows.rs`, the flow totals `aggregate.rs`.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::{
    HistoryConfig,
    aggregate::{Aggregator, FlowKey, Totals},
    retention, rows,
};
use crate::event::{Event, EventBody, HistoryStats};

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

/// Event types the history keeps (not `stats`, `probe`, `netmon scan`'s reports, nor
/// `log`: the eBPF programs' diagnostics are about netmon, not the host).
pub fn stored(body: &EventBody) -> bool {
    !matches!(
        body,
        EventBody::Stats(_)
            | EventBody::Probe(_)
            | EventBody::Host(_)
            | EventBody::Port(_)
            | EventBody::Log(_)
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
        {
            // Prepared once per batch: looking a statement up in the cache by its text
            // for every event cost a tenth of the writer's time. (Many rows per
            // `INSERT` measured no faster.)
            let mut insert = tx.prepare_cached(rows::INSERT_EVENT)?;
            for event in batch {
                rows::insert_event(&tx, &mut insert, &mut self.processes, event)?;
            }
            let mut minute = tx.prepare_cached(UPSERT_MINUTE)?;
            let mut hour = tx.prepare_cached(UPSERT_HOUR)?;
            for (bucket, key, t) in totals {
                let key_id = match self.keys.get(key) {
                    Some(id) => *id,
                    None => {
                        let id = rows::key_id(&tx, key)?;
                        self.keys.insert(key.clone(), id);
                        id
                    }
                };
                for (statement, bucket) in [
                    (&mut minute, *bucket),
                    (&mut hour, bucket.div_euclid(3600) * 3600),
                ] {
                    statement.execute(params![
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
        }
        tx.commit()
    }
}

const UPSERT_MINUTE: &str = "INSERT INTO flow_minute (minute, key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (minute, key_id) DO UPDATE SET connections = connections + excluded.connections, bytes_sent = bytes_sent + excluded.bytes_sent, bytes_received = bytes_received + excluded.bytes_received, packets_sent = packets_sent + excluded.packets_sent, packets_received = packets_received + excluded.packets_received";
const UPSERT_HOUR: &str = "INSERT INTO flow_hour (hour, key_id, connections, bytes_sent, bytes_received, packets_sent, packets_received) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (hour, key_id) DO UPDATE SET connections = connections + excluded.connections, bytes_sent = bytes_sent + excluded.bytes_sent, bytes_received = bytes_received + excluded.bytes_received, packets_sent = packets_sent + excluded.packets_sent, packets_received = packets_received + excluded.packets_received";

#[cfg(test)]
mod tests {
    use super::super::aggregate::tests::{at, close, conn};
    use super::*;
    use crate::event::{Direction, Endpoint, Family, ProcessInfo, Proto};
    use chrono::{DateTime, Utc};

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
