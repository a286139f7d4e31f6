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
//! Events travel in batches: [`Hub::emit`] only appends the event to one pending batch,
//! and [`Hub::flush`] (the event loop calls it after every step) hands that batch to
//! every consumer at once: one `Arc` of the whole batch per consumer, one channel send.
//! So the event loop's cost per event does not grow with the number of consumers, and a
//! consumer thread is woken once per batch instead of once per event (that wake-up, a
//! futex call on both sides, and the event's shared count bouncing between cores were
//! most of what a consumer cost the loop: `benches/metrics.rs`). A batch is also
//! handed over as soon as it holds [`BATCH`] events, so a long step never piles events
//! up. [`Subscription`] gives the events back one at a time.
//!
//! Every emitted event gets the next number of the run's sequence ([`Hub::numbered_after`]:
//! it goes on from the history's newest, so numbers never repeat across runs that
//! share a history). A consumer reads it with [`Subscription::seq`]: the API's SSE
//! `id` and the history's `events.seq` are this number, which is how a stream resumes
//! from the history. A gap in what a consumer sees is what the hub dropped for it.
//!
//! Owns no I/O: consumers run elsewhere (a tokio task, or a std thread with
//! `blocking_recv`).
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc::{
    self,
    error::{TryRecvError, TrySendError},
};

use crate::event::{ConsumerStats, Event, EventBody};

/// The most events the pending batch holds before it is handed over.
pub const BATCH: usize = 1024;

/// Consecutive events and the sequence number of the first.
#[derive(Default)]
struct Run {
    first: u64,
    events: Vec<Arc<Event>>,
}

/// A batch as consumers receive it: shared by all of them, or a consumer's own shorter
/// copy when its queue had room for only part of it.
type Batch = Arc<Run>;

/// A consumer's queue as the hub sees it.
struct Consumer {
    name: &'static str,
    tx: mpsc::Sender<Batch>,
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

/// One consumer's end of the hub: the events in the order they were emitted, one at a
/// time (they arrive in batches). Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Batch>,
    batch: Batch,
    /// The next event of `batch` to give out.
    next: usize,
    /// The sequence number of the event given out last.
    last: u64,
    queued: Arc<AtomicUsize>,
}

impl Subscription {
    /// `last`: the number of the event before the first this subscription gets.
    fn new(rx: mpsc::Receiver<Batch>, queued: Arc<AtomicUsize>, last: u64) -> Subscription {
        Subscription {
            rx,
            batch: Arc::default(),
            next: 0,
            last,
            queued,
        }
    }

    /// The run's sequence number of the event returned last (before any: the number
    /// of the event emitted just before the subscription started).
    pub fn seq(&self) -> u64 {
        self.last
    }

    /// The next event; `None` once the hub closed and everything was taken.
    /// Cancel-safe (usable in `tokio::select!`): nothing is lost when the future is
    /// dropped before it completes.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.recv_ref().await.map(Arc::clone)
    }

    /// [`Subscription::recv`] for a std thread.
    pub fn blocking_recv(&mut self) -> Option<Arc<Event>> {
        self.blocking_recv_ref().map(Arc::clone)
    }

    /// The next event if one is there now.
    pub fn try_recv(&mut self) -> Result<Arc<Event>, TryRecvError> {
        self.try_recv_ref().map(Arc::clone)
    }

    /// [`Subscription::recv`], lent rather than shared: for a consumer that only
    /// reads each event (the sink, the metrics). Taking a share is an atomic add and,
    /// later, a subtract on the event's count, which every consumer's core would
    /// otherwise pull back and forth for every event.
    pub async fn recv_ref(&mut self) -> Option<&Arc<Event>> {
        while !self.has_next() {
            let batch = self.rx.recv().await?;
            self.take(batch);
        }
        Some(self.advance())
    }

    /// [`Subscription::recv_ref`] for a std thread.
    pub fn blocking_recv_ref(&mut self) -> Option<&Arc<Event>> {
        while !self.has_next() {
            let batch = self.rx.blocking_recv()?;
            self.take(batch);
        }
        Some(self.advance())
    }

    /// [`Subscription::try_recv`], lent (see [`Subscription::recv_ref`]).
    pub fn try_recv_ref(&mut self) -> Result<&Arc<Event>, TryRecvError> {
        while !self.has_next() {
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
        Ok(self.advance())
    }

    fn has_next(&self) -> bool {
        self.next < self.batch.events.len()
    }

    /// The next event of the batch; [`Subscription::has_next`] must be true.
    fn advance(&mut self) -> &Arc<Event> {
        self.last = self.batch.first + self.next as u64;
        self.next += 1;
        &self.batch.events[self.next - 1]
    }

    fn take(&mut self, batch: Batch) {
        self.queued.fetch_sub(batch.events.len(), Ordering::AcqRel);
        self.batch = batch;
        self.next = 0;
    }
}

/// A subscription fed one event at a time without a hub, for tests and benchmarks of
/// a consumer: `capacity` events at most in flight. Events are numbered from 1 in
/// the order they are sent (a refused one keeps its number: a gap, as in a hub).
pub fn direct(capacity: usize) -> (Feeder, Subscription) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Feeder {
            tx,
            queued: queued.clone(),
            seq: AtomicU64::new(0),
        },
        Subscription::new(rx, queued, 0),
    )
}

/// The sending end of [`direct`]; dropping it ends the subscription's stream.
pub struct Feeder {
    tx: mpsc::Sender<Batch>,
    queued: Arc<AtomicUsize>,
    seq: AtomicU64,
}

impl Feeder {
    fn one(&self, event: Arc<Event>) -> Batch {
        let first = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        Arc::new(Run {
            first,
            events: vec![event],
        })
    }

    /// Sends `event`, waiting for room; gives it back if the subscription is gone.
    pub fn blocking_send(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.blocking_send(self.one(event)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0.events[0].clone()
        })
    }

    /// Sends `event` if there is room now; gives it back otherwise.
    pub fn try_send(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(self.one(event)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.into_inner().events[0].clone()
        })
    }
}

/// Counts and fans out events; owned by the event loop (no locks).
#[derive(Default)]
pub struct Hub {
    /// Events emitted per type (`stats.events`), `stats` lines left out. A short
    /// list, not a map: a few types make nearly every event, and finding one by
    /// its name's address beats comparing names down a tree.
    counts: Vec<(&'static str, u64)>,
    /// Emitted since the last hand-over.
    pending: Vec<Arc<Event>>,
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
            queued: queued.clone(),
            capacity,
            lossless,
            dropped: 0,
            closed: false,
        });
        // (Subscribe between steps: events pending now would reach this consumer too.)
        Subscription::new(rx, queued, self.seq)
    }

    /// Counts `event` and adds it to the pending batch; a full batch is handed over at
    /// once (waiting for a lossless consumer's room). Fails only when a lossless
    /// consumer stopped (the caller ends the run and asks it why).
    pub async fn emit(&mut self, event: Event) -> Result<(), ConsumerGone> {
        self.emit_shared(Arc::new(event)).await
    }

    /// [`Hub::emit`] of an event already in its `Arc` (the kernel's events are put in
    /// one when decoded, so they move as a pointer through the stages).
    pub async fn emit_shared(&mut self, event: Arc<Event>) -> Result<(), ConsumerGone> {
        if !matches!(event.body, EventBody::Stats(_)) {
            self.count(event.body.type_name());
        }
        self.seq += 1;
        self.pending.push(event);
        if self.pending.len() >= BATCH {
            self.flush().await?;
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

    /// Hands the pending batch to every consumer: what was emitted reaches them.
    pub async fn flush(&mut self) -> Result<(), ConsumerGone> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let events = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        let batch: Batch = Arc::new(Run {
            first: self.seq + 1 - events.len() as u64,
            events,
        });
        for c in &mut self.consumers {
            c.hand_over(&batch).await?;
        }
        Ok(())
    }

    fn count(&mut self, name: &'static str) {
        let found = self
            .counts
            .iter_mut()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name);
        match found {
            Some((_, n)) => *n += 1,
            None => self.counts.push((name, 1)),
        }
    }

    /// `stats.events`: every type emitted so far, plus `always` listed with 0.
    pub fn event_counts(&self, always: &[&str]) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = always.iter().map(|k| (k.to_string(), 0)).collect();
        for (k, v) in &self.counts {
            out.insert(k.to_string(), *v);
        }
        out
    }

    /// `stats.consumers` (`queued` counts what is pending too).
    pub fn consumer_stats(&self) -> BTreeMap<String, ConsumerStats> {
        self.consumers
            .iter()
            .map(|c| {
                let queued = if c.closed {
                    0
                } else {
                    c.queued.load(Ordering::Acquire) + self.pending.len()
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
    /// Hands `batch` over: a lossless consumer is waited for; a lossy one gets what
    /// fits in its queue (its own copy of the oldest events when not all fit), and the
    /// rest is dropped and counted.
    async fn hand_over(&mut self, batch: &Batch) -> Result<(), ConsumerGone> {
        let n = batch.events.len();
        if self.closed {
            self.dropped += n as u64;
            return Ok(());
        }
        if self.lossless {
            self.queued.fetch_add(n, Ordering::AcqRel);
            if self.tx.send(batch.clone()).await.is_err() {
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
        let mine = if n <= room {
            batch.clone()
        } else {
            self.dropped += (n - room) as u64;
            if room == 0 {
                return Ok(());
            }
            // A copy, so a nearly full queue never holds whole batches for a few events.
            // The dropped ones are the newest: what is kept still starts at `first`.
            Arc::new(Run {
                first: batch.first,
                events: batch.events[..room].to_vec(),
            })
        };
        let len = mine.events.len();
        self.queued.fetch_add(len, Ordering::AcqRel);
        match self.tx.try_send(mine) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Cannot happen (as many batches as events fit); counted all the same.
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.dropped += len as u64;
            }
            Err(TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.closed = true;
                self.dropped += len as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
