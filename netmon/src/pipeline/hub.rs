//! The fan-out hub: the one place every event of `netmon run` passes through, whatever
//! made it (the kernel, netmon's own closes and summaries, DNS, the rules, the scanner).
//! [`Hub::emit`] counts it in `stats.events` and hands one shared copy (`Arc<Event>`) to
//! every consumer.
//!
//! Each consumer has its own bounded queue, counted in events. A consumer subscribed
//! with [`Hub::subscribe`] is never waited for: when its queue is full the event is
//! dropped for that consumer only and counted (`stats.consumers.<name>.dropped`), so
//! a slow history writer or API client can never slow the kernel reader down. The
//! sink, which must see every event (nothing dropped silently), subscribes with
//! [`Hub::subscribe_lossless`]: the hub waits for room in its queue, so a stalled
//! output backs up into the ring buffer, where the kernel counts what it cannot hand
//! over (`stats.lost`), exactly as when the sink was written inline.
//!
//! Events travel in batches: [`Hub::emit`] only appends to each consumer's pending
//! batch, and [`Hub::flush`] (the event loop calls it after every step) hands each
//! batch over in one channel send. A consumer thread is woken once per batch instead
//! of once per event: that wake-up (a futex call on both sides) was most of what a
//! consumer cost the event loop (`benches/metrics.rs`). A batch is also handed over
//! as soon as it holds [`BATCH`] events, so a long step never piles events up.
//! [`Subscription`] gives the events back one at a time.
//!
//! Every emitted event gets the next number of the run's sequence ([`Hub::numbered_after`]:
//! it goes on from the history's newest, so numbers never repeat across runs that
//! share a history). A consumer reads it with [`Subscription::seq`]: the API's SSE
//! `id` and the history's `events.seq` are this number, which is how a stream resumes
//! from the history (`api/replay.rs`). A gap in what a consumer sees is what the hub
//! dropped for it.
//!
//! Owns no I/O: consumers run elsewhere (a tokio task, or a std thread with
//! `blocking_recv`).
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc::{
    self,
    error::{TryRecvError, TrySendError},
};

use crate::event::{ConsumerStats, Event, EventBody};

/// The most events a consumer's pending batch holds before it is handed over.
pub const BATCH: usize = 256;

/// A consumer's queue as the hub sees it.
struct Consumer {
    name: &'static str,
    tx: mpsc::Sender<Batch>,
    /// Emitted since the last flush, not yet handed over.
    pending: Vec<Arc<Event>>,
    /// The sequence number of `pending[0]` (pending events are consecutive).
    pending_first: u64,
    /// Events handed over and not yet taken by the consumer (shared with it).
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Waited for instead of dropped for (the sink).
    lossless: bool,
    dropped: u64,
    /// Its receiver is gone (the consumer stopped): everything after is dropped.
    closed: bool,
}

/// A lossless consumer stopped taking events (the sink ended, e.g. on a write error):
/// the pipeline cannot keep its guarantee and must stop. The consumer says why.
#[derive(Debug, thiserror::Error)]
#[error("the `{0}` consumer stopped")]
pub struct ConsumerGone(pub &'static str);

/// Consecutive events and the sequence number of the first.
type Batch = (u64, Vec<Arc<Event>>);

/// One consumer's end of the hub: the events in the order they were emitted, one at a
/// time (they arrive in batches). Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Batch>,
    batch: std::vec::IntoIter<Arc<Event>>,
    /// The sequence number of the next event of `batch`.
    next_seq: u64,
    queued: Arc<AtomicUsize>,
}

impl Subscription {
    /// The next event; `None` once the hub closed and everything was taken.
    /// Cancel-safe (usable in `tokio::select!`): nothing is lost when the future is
    /// dropped before it completes.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(e) = self.batch.next() {
                self.next_seq += 1;
                return Some(e);
            }
            let batch = self.rx.recv().await?;
            self.take(batch);
        }
    }

    /// [`Subscription::recv`] for a std thread.
    pub fn blocking_recv(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(e) = self.batch.next() {
                self.next_seq += 1;
                return Some(e);
            }
            let batch = self.rx.blocking_recv()?;
            self.take(batch);
        }
    }

    /// The next event if one is there now.
    pub fn try_recv(&mut self) -> Result<Arc<Event>, TryRecvError> {
        loop {
            if let Some(e) = self.batch.next() {
                self.next_seq += 1;
                return Ok(e);
            }
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
    }

    /// The run's sequence number of the event returned last (0: none yet).
    pub fn seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    fn take(&mut self, (first, batch): Batch) {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.batch = batch.into_iter();
        self.next_seq = first;
    }
}

/// A subscription fed one event at a time without a hub, for tests and benchmarks of
/// a consumer: `capacity` events at most in flight. Events are numbered from 1 in
/// the order they are sent (a refused one keeps its number: a gap, as in a hub).
pub fn direct(capacity: usize) -> (Feeder, Subscription) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let sub = Subscription {
        rx,
        batch: Vec::new().into_iter(),
        next_seq: 1,
        queued: queued.clone(),
    };
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    (Feeder { tx, queued, seq }, sub)
}

/// The sending end of [`direct`]; dropping it ends the subscription's stream.
pub struct Feeder {
    tx: mpsc::Sender<Batch>,
    queued: Arc<AtomicUsize>,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Feeder {
    fn number(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Sends `event`, waiting for room; gives it back if the subscription is gone.
    pub fn blocking_send(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx
            .blocking_send((self.number(), vec![event]))
            .map_err(|e| {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                e.0.1.into_iter().next().expect("one event")
            })
    }

    /// Sends `event` if there is room now; gives it back otherwise.
    pub fn try_send(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send((self.number(), vec![event])).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.into_inner().1.into_iter().next().expect("one event")
        })
    }
}

/// Counts and fans out events; owned by the event loop (no locks).
#[derive(Default)]
pub struct Hub {
    /// Events emitted per type (`stats.events`), `stats` lines left out.
    counts: BTreeMap<&'static str, u64>,
    consumers: Vec<Consumer>,
    /// The sequence number of the last event emitted.
    seq: u64,
}

impl Hub {
    /// Numbers events from 1.
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Numbers events from `last + 1` (`last`: the history's newest, so that a run
    /// goes on where the one before stopped).
    pub fn numbered_after(last: u64) -> Hub {
        Hub {
            seq: last,
            ..Hub::default()
        }
    }

    /// A new consumer named `name` (its key in `stats.consumers`), with a queue of
    /// `capacity` events. It gets every event emitted from now on, unless its queue
    /// is full: then that event is dropped for it alone and counted. Read the
    /// subscription from a tokio task (`recv().await`) or a std thread
    /// (`blocking_recv`); dropping it unsubscribes (what follows is counted as dropped).
    pub fn subscribe(&mut self, name: &'static str, capacity: usize) -> Subscription {
        self.add(name, capacity, false)
    }

    /// A consumer that must get every event (the sink): the hub waits while its
    /// queue is full. Only for consumers whose stall should stall the pipeline.
    pub fn subscribe_lossless(&mut self, name: &'static str, capacity: usize) -> Subscription {
        self.add(name, capacity, true)
    }

    fn add(&mut self, name: &'static str, capacity: usize, lossless: bool) -> Subscription {
        let capacity = capacity.max(1);
        // A lossy queue is bounded by `queued` (in events), so as many batches as
        // events always fit; a lossless one is bounded by the channel itself, in
        // batches of at most BATCH events.
        let batches = if lossless {
            capacity.div_ceil(BATCH)
        } else {
            capacity
        };
        let (tx, rx) = mpsc::channel(batches);
        let queued = Arc::new(AtomicUsize::new(0));
        self.consumers.push(Consumer {
            name,
            tx,
            pending: Vec::new(),
            pending_first: 0,
            queued: queued.clone(),
            capacity,
            lossless,
            dropped: 0,
            closed: false,
        });
        Subscription {
            rx,
            batch: Vec::new().into_iter(),
            next_seq: self.seq + 1,
            queued,
        }
    }

    /// Counts `event` and adds it to every consumer's pending batch; a full batch is
    /// handed over at once (waiting for a lossless consumer's room). Fails only when
    /// a lossless consumer stopped (the caller ends the run and asks it why).
    pub async fn emit(&mut self, event: Event) -> Result<(), ConsumerGone> {
        if !matches!(event.body, EventBody::Stats(_)) {
            *self.counts.entry(event.body.type_name()).or_default() += 1;
        }
        let event = Arc::new(event);
        self.seq += 1;
        for c in &mut self.consumers {
            if c.closed {
                c.dropped += 1;
                continue;
            }
            if c.pending.is_empty() {
                c.pending_first = self.seq;
            }
            c.pending.push(event.clone());
            if c.pending.len() >= BATCH {
                c.hand_over().await?;
            }
        }
        Ok(())
    }

    /// Emits each event in order.
    pub async fn emit_all(
        &mut self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<(), ConsumerGone> {
        for e in events {
            self.emit(e).await?;
        }
        Ok(())
    }

    /// Hands every pending batch over: what was emitted reaches the consumers.
    pub async fn flush(&mut self) -> Result<(), ConsumerGone> {
        for c in &mut self.consumers {
            c.hand_over().await?;
        }
        Ok(())
    }

    /// `stats.events`: every type emitted so far, plus `always` listed with 0.
    pub fn event_counts(&self, always: &[&str]) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = always.iter().map(|k| (k.to_string(), 0)).collect();
        for (k, v) in &self.counts {
            out.insert(k.to_string(), *v);
        }
        out
    }

    /// `stats.consumers`.
    pub fn consumer_stats(&self) -> BTreeMap<String, ConsumerStats> {
        self.consumers
            .iter()
            .map(|c| {
                let queued = if c.closed {
                    0
                } else {
                    c.queued.load(Ordering::Acquire) + c.pending.len()
                };
                let stats = ConsumerStats {
                    queued: queued as u64,
                    dropped: c.dropped,
                };
                (c.name.to_owned(), stats)
            })
            .collect()
    }

    /// Closes every queue: consumers see the end of the stream once they took what
    /// is in theirs. Call [`Hub::flush`] first, or what is pending is not delivered.
    pub fn close(&mut self) {
        self.consumers.clear();
    }
}

impl Consumer {
    /// Hands the pending batch over: a lossless consumer is waited for; a lossy one
    /// gets what fits in its queue, and the rest (the newest) is dropped and counted.
    async fn hand_over(&mut self) -> Result<(), ConsumerGone> {
        if self.pending.is_empty() || self.closed {
            return Ok(());
        }
        let mut batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        if self.lossless {
            let n = batch.len();
            self.queued.fetch_add(n, Ordering::AcqRel);
            if self.tx.send((self.pending_first, batch)).await.is_err() {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.closed = true;
                self.dropped += n as u64;
                return Err(ConsumerGone(self.name));
            }
            return Ok(());
        }
        let room = self
            .capacity
            .saturating_sub(self.queued.load(Ordering::Acquire));
        if batch.len() > room {
            self.dropped += (batch.len() - room) as u64;
            batch.truncate(room);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        // The dropped ones are the newest: what is kept still starts at pending_first.
        match self.tx.try_send((self.pending_first, batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Cannot happen (as many batches as events fit); counted all the same.
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.dropped += n as u64;
            }
            Err(TrySendError::Closed(_)) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.closed = true;
                self.dropped += n as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn event(body: EventBody) -> Event {
        Event {
            ts: Utc::now(),
            host: "h".into(),
            body,
        }
    }

    fn probe_like(i: u64) -> Event {
        use crate::event::{Connection, Endpoint, Family, Proto};
        event(EventBody::Listen(Connection {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            direction: None,
            src: None,
            dst: Endpoint::new([127, 0, 0, 1].into(), i as u16),
            process: None,
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        }))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_stalled_consumer_loses_only_its_own_events_and_they_are_counted() {
        run(async {
            let mut hub = Hub::new();
            let mut sink = hub.subscribe_lossless("sink", 4);
            let _stalled = hub.subscribe("stalled", 3);
            let mut fast = hub.subscribe("fast", 100);
            // The sink is drained by a thread of its own, as in `netmon run`.
            let reader = std::thread::spawn(move || {
                let mut n = 0u64;
                while sink.blocking_recv().is_some() {
                    n += 1;
                }
                n
            });
            for i in 0..50 {
                hub.emit(probe_like(i)).await.unwrap();
            }
            hub.flush().await.unwrap();
            let stats = hub.consumer_stats();
            assert_eq!(
                stats["stalled"],
                ConsumerStats {
                    queued: 3,
                    dropped: 47
                }
            );
            assert_eq!(stats["fast"].dropped, 0);
            assert_eq!(stats["sink"].dropped, 0);
            assert_eq!(hub.event_counts(&[])["listen"], 50);
            let mut got = 0;
            while fast.try_recv().is_ok() {
                got += 1;
            }
            assert_eq!(got, 50);
            hub.close();
            assert_eq!(reader.join().unwrap(), 50, "the sink got every event");
        });
    }

    #[test]
    fn counts_every_type_but_stats_and_lists_the_always_types() {
        run(async {
            let mut hub = Hub::new();
            hub.emit(event(EventBody::Stats(Default::default())))
                .await
                .unwrap();
            hub.emit(probe_like(0)).await.unwrap();
            let counts = hub.event_counts(&["connect"]);
            assert_eq!(counts.get("connect"), Some(&0));
            assert_eq!(counts.get("listen"), Some(&1));
            assert_eq!(counts.get("stats"), None);
        });
    }

    #[test]
    fn a_lossless_consumer_that_stopped_stops_the_pipeline_a_lossy_one_does_not() {
        run(async {
            let mut hub = Hub::new();
            drop(hub.subscribe("gone", 8));
            hub.emit(probe_like(0)).await.unwrap();
            hub.flush().await.unwrap();
            assert_eq!(hub.consumer_stats()["gone"].dropped, 1);
            drop(hub.subscribe_lossless("sink", 8));
            hub.emit(probe_like(1)).await.unwrap();
            let err = hub.flush().await.unwrap_err();
            assert_eq!(err.0, "sink");
        });
    }

    #[test]
    fn nothing_reaches_a_consumer_before_the_flush_and_everything_after_in_order() {
        run(async {
            let mut hub = Hub::new();
            let mut rx = hub.subscribe("c", 10_000);
            for i in 0..10 {
                hub.emit(probe_like(i)).await.unwrap();
            }
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
            assert_eq!(
                hub.consumer_stats()["c"].queued,
                10,
                "pending counts as queued"
            );
            hub.flush().await.unwrap();
            // A full batch is handed over without waiting for the flush.
            for i in 10..(10 + BATCH as u64) {
                hub.emit(probe_like(i)).await.unwrap();
            }
            let mut ports = Vec::new();
            while let Ok(e) = rx.try_recv() {
                ports.push(e.body.connection().unwrap().dst.port);
            }
            assert_eq!(ports, (0..(10 + BATCH as u16)).collect::<Vec<_>>());
            assert_eq!(hub.consumer_stats()["c"].queued, 0);
            hub.close();
            assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        });
    }

    #[test]
    fn a_lossy_queue_keeps_the_oldest_events_that_fit_and_counts_the_rest() {
        run(async {
            let mut hub = Hub::new();
            let mut rx = hub.subscribe("c", 5);
            for i in 0..3 {
                hub.emit(probe_like(i)).await.unwrap();
            }
            hub.flush().await.unwrap();
            for i in 3..7 {
                hub.emit(probe_like(i)).await.unwrap();
            }
            hub.flush().await.unwrap();
            assert_eq!(
                hub.consumer_stats()["c"],
                ConsumerStats {
                    queued: 5,
                    dropped: 2
                }
            );
            let mut ports = Vec::new();
            while let Ok(e) = rx.try_recv() {
                ports.push(e.body.connection().unwrap().dst.port);
            }
            assert_eq!(ports, vec![0, 1, 2, 3, 4]);
            // Taken events free their room.
            hub.emit(probe_like(9)).await.unwrap();
            hub.flush().await.unwrap();
            assert_eq!(
                rx.try_recv().unwrap().body.connection().unwrap().dst.port,
                9
            );
            assert_eq!(hub.consumer_stats()["c"].dropped, 2);
        });
    }

    #[test]
    fn events_are_numbered_on_from_the_start_and_a_drop_leaves_a_gap() {
        run(async {
            let mut hub = Hub::numbered_after(100);
            let mut rx = hub.subscribe("c", 3);
            assert_eq!(rx.seq(), 100, "before any event: the one before the first");
            for i in 0..5 {
                hub.emit(probe_like(i)).await.unwrap();
            }
            // 101 to 103 fit; 104 and 105 are dropped for this consumer.
            hub.flush().await.unwrap();
            let mut seqs = Vec::new();
            while rx.try_recv().is_ok() {
                seqs.push(rx.seq());
            }
            assert_eq!(seqs, [101, 102, 103]);
            hub.emit(probe_like(9)).await.unwrap();
            hub.flush().await.unwrap();
            assert_eq!(
                rx.try_recv().unwrap().body.connection().unwrap().dst.port,
                9
            );
            assert_eq!(rx.seq(), 106);
        });
    }

    #[test]
    fn a_stalled_lossless_consumer_makes_the_hub_wait_and_loses_nothing() {
        run(async {
            let mut hub = Hub::new();
            let mut sink = hub.subscribe_lossless("sink", 2 * BATCH);
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let reader = std::thread::spawn(move || {
                go_rx.recv().unwrap();
                let mut n = 0u64;
                while sink.blocking_recv().is_some() {
                    n += 1;
                }
                n
            });
            let total = 10 * BATCH as u64;
            // Released only after the hub had to wait for room.
            let releaser = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                go_tx.send(()).unwrap();
            });
            for i in 0..total {
                hub.emit(probe_like(i)).await.unwrap();
            }
            hub.flush().await.unwrap();
            hub.close();
            releaser.join().unwrap();
            assert_eq!(reader.join().unwrap(), total);
        });
    }
}
