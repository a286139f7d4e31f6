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
use tokio::sync::mpsc::error::TryRecvError;

use super::{
    HistoryConfig,
    aggregate::{Aggregator, FlowKey, Totals},
    batch, retention, rows,
};
use crate::event::{Event, EventBody, HistoryStats};

/// Longest time an event waits in memory before it is committed.
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Most events in one transaction (the batch holds them until its commit: 2,048 keep
/// that under a MB, within netmon's memory budget. With 4,096, netmon measured
/// 47.0–47.6 MiB at 100,000 flows, its limit being 47.7; with 2,048, 44.9–45.2. The
/// cost: a commit's per-minute upserts are spread over fewer events).
pub const MAX_BATCH: usize = 2_048;
/// How long the writer waits before trying again a database it could not open.
pub const REOPEN_EVERY: Duration = Duration::from_secs(10);

/// `stats.history`, shared between the writer thread and whoever writes `stats`.
#[derive(Debug, Default)]
pub struct Counters {
    written: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// Every event up to this number of the hub's sequence is in the file, or never
    /// will be (a type not kept, a batch that failed): how far the API can replay.
    settled: AtomicU64,
}

impl Counters {
    /// See `settled`: the API's replay waits for this to pass what it needs.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

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
        events: crate::pipeline::hub::Subscription,
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
    /// Each event with its number in the hub's sequence (`events.seq`).
    batch: Vec<(u64, Arc<Event>)>,
    /// The number of the last event received.
    received: u64,
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
            received: 0,
            batch_started: None,
            aggregator: Aggregator::default(),
            prune: None,
            hosts_json,
        }
    }

    async fn run(mut self, mut events: crate::pipeline::hub::Subscription) {
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
                        self.push(events.seq(), event);
                        loop {
                            if self.batch.len() >= MAX_BATCH {
                                break;
                            }
                            match events.try_recv() {
                                Ok(event) => self.push(events.seq(), event),
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

    fn push(&mut self, seq: u64, event: Arc<Event>) {
        self.received = seq;
        if !stored(&event.body) {
            if self.batch.is_empty() {
                self.settle();
            }
            return;
        }
        self.aggregator.add(&event);
        self.batch_started.get_or_insert_with(Instant::now);
        self.batch.push((seq, event));
    }

    /// Everything received is committed (or dropped): the API may replay up to it.
    fn settle(&self) {
        self.counters
            .settled
            .store(self.received, Ordering::Release);
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
                let mut store = Store::new(conn, &self.config.path);
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
            self.settle();
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
            self.settle();
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
        self.settle();
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

/// The connection and the id caches of the writer, and the checkpointer of its file.
struct Store {
    conn: Connection,
    processes: rows::ProcessCache,
    keys: HashMap<Arc<FlowKey>, i64, foldhash::fast::RandomState>,
    texts: rows::Texts,
    /// The commit's connection events (one `event_batches` row), its buffer reused.
    batch: batch::Batch,
    /// Dropped before `conn` (fields drop in order): stops and joins the thread.
    _checkpointer: Option<Checkpointer>,
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages (4 KiB) after which the writer checkpoints itself, should the
/// checkpointer fall behind: the WAL stays under ~64 MB whatever happens.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// A thread with its own connection that moves the WAL into the database file
/// (`PRAGMA wal_checkpoint(PASSIVE)`) every [`CHECKPOINT_EVERY`], so that neither the
/// copy nor its fsync stalls the writer: a checkpoint on the writer's own commit (SQLite's
/// default, every 1,000 pages) held it for the length of an fsync, during which its
/// queue filled at 100,000 events/s. Passive: it never waits for, nor blocks, the writer
/// or a reader; what it cannot copy yet it copies next time.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &std::path::Path) -> Option<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.busy_timeout(Duration::from_millis(100)).ok()?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("netmon-history-ckpt".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    // Busy (another checkpoint runs) or failing: the writer's own
                    // checkpoint at WRITER_CHECKPOINT_PAGES is the backstop.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .ok()?;
        Some(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ids cached at most (then the caches start over): about 0.7 MB of flow keys, the
/// rest is looked up in the database's unique indexes. (8,192 held 2.5 MB more at
/// 100,000 distinct flows, past netmon's 50 MB budget.)
const MAX_CACHED: usize = 2048;

impl Store {
    fn new(conn: Connection, path: &std::path::Path) -> Store {
        // Checkpoints move to their own thread; the writer's own only past
        // WRITER_CHECKPOINT_PAGES (or all of them, if that thread cannot start).
        let checkpointer = Checkpointer::spawn(path);
        if checkpointer.is_some() {
            let _ = conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES);
        }
        Store {
            conn,
            processes: HashMap::default(),
            keys: HashMap::default(),
            texts: rows::Texts::default(),
            batch: batch::Batch::default(),
            _checkpointer: checkpointer,
        }
    }

    fn write(
        &mut self,
        batch: &[(u64, Arc<Event>)],
        totals: &[(i64, Arc<FlowKey>, Totals)],
    ) -> rusqlite::Result<()> {
        let result = self.write_tx(batch, totals);
        if result.is_err() {
            // Ids handed out inside the rolled-back transaction do not exist, nor
            // does the batch's row.
            self.processes.clear();
            self.keys.clear();
            self.batch = batch::Batch::default();
        }
        result
    }

    fn write_tx(
        &mut self,
        batch: &[(u64, Arc<Event>)],
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
            for (seq, event) in batch {
                rows::insert_event(
                    &tx,
                    &mut insert,
                    &mut self.batch,
                    &mut self.processes,
                    &mut self.texts,
                    *seq,
                    event,
                )?;
            }
            self.batch.insert(&tx)?;
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
mod tests;
