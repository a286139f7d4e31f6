//! The fan-out hub: the one place every event of `netmon run` passes through, whatever
//! made it (the kernel, netmon's own closes and summaries, DNS, the rules, the scanner).
//! [`Hub::emit`] counts it in `stats.events` and hands one shared copy (`Arc<Event>`) to
//! every consumer.
//!
//! Each consumer has its own bounded `tokio::sync::mpsc` queue. A consumer subscribed
//! with [`Hub::subscribe`] is never waited for: when its queue is full the event is
//! dropped for that consumer only and counted (`stats.consumers.<name>.dropped`), so
//! a slow history writer or API client can never slow the kernel reader down. The
//! sink, which must see every event (nothing dropped silently), subscribes with
//! [`Hub::subscribe_lossless`]: `emit` waits for room in its queue, so a stalled
//! output backs up into the ring buffer, where the kernel counts what it cannot hand
//! over (`stats.lost`), exactly as when the sink was written inline.
//!
//! Owns no I/O: consumers run elsewhere (a tokio task, or a std thread with
//! `blocking_recv`).
use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::event::{ConsumerStats, Event, EventBody};

/// A consumer's queue as the hub sees it.
struct Consumer {
    name: &'static str,
    tx: mpsc::Sender<Arc<Event>>,
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

/// Counts and fans out events; owned by the event loop (no locks).
#[derive(Default)]
pub struct Hub {
    /// Events emitted per type (`stats.events`), `stats` lines left out.
    counts: BTreeMap<&'static str, u64>,
    consumers: Vec<Consumer>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A new consumer named `name` (its key in `stats.consumers`), with a queue of
    /// `capacity` events. It gets every event emitted from now on, unless its queue
    /// is full: then that event is dropped for it alone and counted. Read the
    /// receiver from a tokio task (`recv().await`) or a std thread (`blocking_recv`);
    /// dropping it unsubscribes (what follows is counted as dropped).
    ///
    /// This is the signature other stages build on (the history writer):
    /// `Hub::subscribe(&mut self, name: &'static str, capacity: usize) ->
    /// tokio::sync::mpsc::Receiver<Arc<Event>>`.
    pub fn subscribe(&mut self, name: &'static str, capacity: usize) -> mpsc::Receiver<Arc<Event>> {
        self.add(name, capacity, false)
    }

    /// A consumer that must get every event (the sink): [`Hub::emit`] waits while its
    /// queue is full. Only for consumers whose stall should stall the pipeline.
    pub fn subscribe_lossless(
        &mut self,
        name: &'static str,
        capacity: usize,
    ) -> mpsc::Receiver<Arc<Event>> {
        self.add(name, capacity, true)
    }

    fn add(
        &mut self,
        name: &'static str,
        capacity: usize,
        lossless: bool,
    ) -> mpsc::Receiver<Arc<Event>> {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        self.consumers.push(Consumer {
            name,
            tx,
            capacity,
            lossless,
            dropped: 0,
            closed: false,
        });
        rx
    }

    /// Counts `event` and hands it to every consumer. Never waits for a lossy
    /// consumer; waits for room in a lossless one's queue. Fails only when a lossless
    /// consumer stopped (the caller ends the run and asks it why).
    pub async fn emit(&mut self, event: Event) -> Result<(), ConsumerGone> {
        if !matches!(event.body, EventBody::Stats(_)) {
            *self.counts.entry(event.body.type_name()).or_default() += 1;
        }
        let event = Arc::new(event);
        for c in &mut self.consumers {
            if c.closed {
                c.dropped += 1;
                continue;
            }
            if c.lossless {
                if c.tx.send(event.clone()).await.is_err() {
                    c.closed = true;
                    return Err(ConsumerGone(c.name));
                }
                continue;
            }
            match c.tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => c.dropped += 1,
                Err(TrySendError::Closed(_)) => {
                    c.closed = true;
                    c.dropped += 1;
                }
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
                    c.capacity.saturating_sub(c.tx.capacity())
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
    /// is in theirs.
    pub fn close(&mut self) {
        self.consumers.clear();
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
            assert_eq!(hub.consumer_stats()["gone"].dropped, 1);
            drop(hub.subscribe_lossless("sink", 8));
            let err = hub.emit(probe_like(1)).await.unwrap_err();
            assert_eq!(err.0, "sink");
        });
    }
}
