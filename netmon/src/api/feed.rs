//! The API's copy of the event stream: one pump task takes every event of its hub
//! subscription, numbers it (the SSE `id`: the hub's number, which the history keeps
//! too; increasing, with a gap where the hub dropped events for the API) and keeps the
//! newest in a bounded ring, from which every SSE client reads at its own pace and
//! resumes. An event is serialised (the same JSON object as the JSON Lines output) once,
//! when a client first needs it: with no client watching, the API costs an event a push
//! (serialising every event up front was a quarter of `netmon run`'s CPU on a busy web
//! server). Also keeps
//! the small recent buffers the other endpoints answer from: the last `stats` line,
//! recent alerts and inventory changes (`logs`).
//!
//! A client never holds anything up: the pump only locks the ring long enough to
//! push; a client that fell more than the ring behind is told how many it missed.
use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::event::{Event, EventBody};

/// What the filters look at in an event.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    /// Process name and pid, when the event has a process.
    pub comm: Option<Box<str>>,
    pub pid: Option<u32>,
    /// Addresses and ports the event is about (either end of a connection, or the
    /// scanned host).
    pub ips: [Option<IpAddr>; 2],
    pub ports: [Option<u16>; 2],
}

impl Keys {
    pub fn of(ev: &Event) -> Keys {
        let mut k = Keys::default();
        let process = match &ev.body {
            EventBody::Alert(a) => a.process.as_ref(),
            b => b.connection().and_then(|c| c.process.as_ref()),
        };
        if let Some(p) = process {
            k.comm = Some(p.comm.as_str().into());
            k.pid = Some(p.pid);
        }
        if let Some(c) = ev.body.connection() {
            k.ips = [c.src.as_ref().map(|e| e.ip), Some(c.dst.ip)];
            k.ports = [c.src.as_ref().map(|e| e.port), Some(c.dst.port)];
        }
        match &ev.body {
            EventBody::HostUp(h) | EventBody::HostDown(h) => k.ips[0] = Some(h.addr),
            EventBody::PortOpened(p) | EventBody::PortClosed(p) => {
                k.ips[0] = Some(p.addr);
                k.ports[0] = Some(p.port);
            }
            EventBody::ServiceChanged(s) => {
                k.ips[0] = Some(s.addr);
                k.ports[0] = Some(s.port);
            }
            EventBody::Host(h) => k.ips[0] = Some(h.addr),
            EventBody::Port(p) => {
                k.ips[0] = Some(p.addr);
                k.ports[0] = Some(p.port);
            }
            _ => {}
        }
        k
    }
}

/// One numbered event, with what the filters look at.
pub struct Item {
    pub id: u64,
    pub kind: &'static str,
    pub ts: chrono::DateTime<chrono::Utc>,
    event: Arc<Event>,
    json: std::sync::OnceLock<Arc<str>>,
    keys: std::sync::OnceLock<Keys>,
}

impl Item {
    pub fn new(id: u64, event: Arc<Event>) -> Item {
        Item {
            id,
            kind: event.body.type_name(),
            ts: event.ts,
            event,
            json: std::sync::OnceLock::new(),
            keys: std::sync::OnceLock::new(),
        }
    }

    /// The event's JSON object, made by the first reader that needs it.
    pub fn json(&self) -> &Arc<str> {
        self.json.get_or_init(|| {
            // The sink's writer: serde_json's bytes, without serde for the hot types.
            let mut line = Vec::with_capacity(512);
            crate::output::json::write_event(&mut line, &self.event);
            String::from_utf8(line)
                .unwrap_or_else(|_| "{}".into())
                .into()
        })
    }

    /// What the filters look at, found by the first filter that asks.
    pub fn keys(&self) -> &Keys {
        self.keys.get_or_init(|| Keys::of(&self.event))
    }

    /// An inventory change or an alert: what `/api/v1/logs` lists.
    pub fn is_log(&self) -> bool {
        matches!(
            self.kind,
            "host_up" | "host_down" | "port_opened" | "port_closed" | "service_changed" | "alert"
        )
    }
}

/// A shared handle to one kept item. The pump keeps each batch of items in one
/// allocation, and the ring, the logs and the clients hold handles into it: an `Arc` per
/// item was an allocation and a free per event, most of what the API cost with nobody
/// watching besides freeing the events themselves. A batch is freed when its last
/// handle goes (at most one batch beyond the ring's capacity).
#[derive(Clone)]
pub struct ItemRef {
    batch: Arc<Vec<Item>>,
    index: usize,
}

impl ItemRef {
    /// Handles to each of `items`, in order, sharing one allocation.
    pub fn batch(items: Vec<Item>) -> impl Iterator<Item = ItemRef> {
        let batch = Arc::new(items);
        (0..batch.len()).map(move |index| ItemRef {
            batch: batch.clone(),
            index,
        })
    }

    /// A handle to one item alone.
    pub fn one(item: Item) -> ItemRef {
        ItemRef {
            batch: Arc::new(vec![item]),
            index: 0,
        }
    }
}

impl std::ops::Deref for ItemRef {
    type Target = Item;
    fn deref(&self) -> &Item {
        &self.batch[self.index]
    }
}

/// A bounded FIFO of items, in increasing order of their numbers.
pub struct Ring {
    items: VecDeque<ItemRef>,
    cap: usize,
}

/// What a reader gets from [`Ring::read_from`].
#[derive(Debug, PartialEq, Eq)]
pub struct Missed(pub u64);

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            items: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, item: ItemRef) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// The id the next pushed item gets.
    pub fn next_id(&self) -> u64 {
        self.items.back().map_or(1, |i| i.id + 1)
    }

    /// The id of the oldest item kept.
    pub fn first_id(&self) -> Option<u64> {
        self.items.front().map(|i| i.id)
    }

    /// Up to `max` items from id `from` on, into `out`; how many the reader missed
    /// because they left the ring already. (Gaps between the items are the reader's
    /// to see.)
    pub fn read_from(&self, from: u64, max: usize, out: &mut Vec<ItemRef>) -> Missed {
        let Some(first) = self.first_id() else {
            return Missed(0);
        };
        let missed = first.saturating_sub(from);
        let start = self.items.partition_point(|i| i.id < from);
        out.extend(self.items.range(start..).take(max).cloned());
        Missed(missed)
    }

    /// Where a stream that starts at time `t` begins in the ring: `Some(id)` of the
    /// first item at or after `t` when the ring holds an older one (so nothing at or
    /// after `t` is missing before it); `None` when `t` is older than the ring (or
    /// the ring is empty): the start is further back, or not kept.
    pub fn first_at(&self, t: chrono::DateTime<chrono::Utc>) -> Option<u64> {
        if self.items.front()?.ts >= t {
            return None;
        }
        let start = self.items.partition_point(|i| i.ts < t);
        Some(self.items.get(start).map_or(self.next_id(), |i| i.id))
    }

    /// Items from the newest back, for the recent buffers.
    pub fn iter_rev(&self) -> impl Iterator<Item = &ItemRef> {
        self.items.iter().rev()
    }
}

/// Everything the pump keeps, shared with the handlers.
pub struct Feed {
    pub events: Mutex<Ring>,
    /// Alerts and inventory changes, a longer memory than the event ring.
    pub logs: Mutex<Ring>,
    /// The newest `stats` line.
    pub stats: Mutex<Option<Arc<str>>>,
    /// The id of the newest event (before any: the hub's number of the last event
    /// before the API subscribed); clients wait on it.
    pub latest: watch::Receiver<u64>,
    /// The agent's host name (the `host` of its events), for events rebuilt from the
    /// history.
    pub host: std::sync::OnceLock<String>,
}

/// Sizes of the buffers.
pub const LOGS_KEPT: usize = 1000;

/// The pump: serialises and keeps every event until the hub closes; `last` is the
/// number of the event before the first it will get.
pub fn start(capacity: usize, last: u64) -> (Arc<Feed>, Pump) {
    let (tx, rx) = watch::channel(last);
    let feed = Arc::new(Feed {
        events: Mutex::new(Ring::new(capacity)),
        logs: Mutex::new(Ring::new(LOGS_KEPT)),
        stats: Mutex::new(None),
        latest: rx,
        host: std::sync::OnceLock::new(),
    });
    (feed.clone(), Pump { feed, latest: tx })
}

pub struct Pump {
    feed: Arc<Feed>,
    latest: watch::Sender<u64>,
}

impl Pump {
    /// Keeps `ev`, number `id` (increasing).
    pub fn push(&mut self, id: u64, ev: Arc<Event>) {
        self.push_all(std::iter::once((id, ev)));
    }

    /// Keeps every `(id, event)` of `events` (ids increasing): the ring is locked and
    /// waiting clients woken once for all of them, not once per event (per event, the
    /// lock and the wake-up were most of what the API cost with nobody watching).
    pub fn push_all(&mut self, events: impl IntoIterator<Item = (u64, Arc<Event>)>) {
        let items: Vec<Item> = events
            .into_iter()
            .map(|(id, ev)| Item::new(id, ev))
            .collect();
        let Some(last) = items.last().map(|i| i.id) else {
            return;
        };
        let items: Vec<ItemRef> = ItemRef::batch(items).collect();
        if self.feed.host.get().is_none() {
            let _ = self.feed.host.set(items[0].event.host.to_string());
        }
        if let Some(stats) = items.iter().rev().find(|i| i.kind == "stats") {
            *lock(&self.feed.stats) = Some(stats.json().clone());
        }
        if items.iter().any(|i| i.is_log()) {
            let mut logs = lock(&self.feed.logs);
            for item in items.iter().filter(|i| i.is_log()) {
                logs.push(item.clone());
            }
        }
        {
            let mut ring = lock(&self.feed.events);
            for item in items {
                ring.push(item);
            }
        }
        self.latest.send_replace(last);
    }

    /// Until the hub closes the subscription (netmon stops). Takes what has arrived
    /// (up to [`PUMP_BATCH`] events) before keeping it.
    pub async fn run(mut self, mut events: crate::pipeline::hub::Subscription) {
        let mut pending = Vec::with_capacity(PUMP_BATCH);
        while let Some(ev) = events.recv().await {
            pending.push((events.seq(), ev));
            while pending.len() < PUMP_BATCH {
                match events.try_recv() {
                    Ok(ev) => pending.push((events.seq(), ev)),
                    Err(_) => break,
                }
            }
            self.push_all(pending.drain(..));
        }
    }
}

/// The most events the pump keeps at once.
const PUMP_BATCH: usize = 1024;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_event() -> Event {
        Event {
            ts: chrono::Utc::now(),
            host: "h".into(),
            body: EventBody::HostUp(crate::event::scan::HostChange {
                addr: "10.0.0.7".parse().unwrap(),
                mac: None,
                name: None,
                reason: "icmp".into(),
                last_seen: None,
            }),
        }
    }

    #[test]
    fn a_time_is_found_in_the_ring_only_when_the_ring_reaches_back_to_it() {
        let (feed, mut pump) = start(3, 0);
        let t0: chrono::DateTime<chrono::Utc> = "2026-12-07T10:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        for id in 1..=5 {
            let ev = Event {
                ts: at(id as i64 * 10),
                ..stats_event()
            };
            pump.push(id, Arc::new(ev));
        }
        // Ids 3, 4, 5 at +30 s, +40 s, +50 s are kept.
        let ring = lock(&feed.events);
        assert_eq!(ring.first_at(at(35)), Some(4));
        assert_eq!(ring.first_at(at(40)), Some(4));
        assert_eq!(ring.first_at(at(31)), Some(4));
        // After the newest: the next event.
        assert_eq!(ring.first_at(at(60)), Some(6));
        // At or before the oldest kept: older events may exist elsewhere.
        assert_eq!(ring.first_at(at(30)), None);
        assert_eq!(ring.first_at(at(5)), None);
        assert_eq!(Ring::new(3).first_at(at(5)), None);
    }

    #[test]
    fn ring_reads_resume_and_counts_what_fell_out() {
        let (feed, mut pump) = start(3, 0);
        let ev = stats_event();
        for id in 1..=5 {
            pump.push(id, Arc::new(ev.clone()));
        }
        let ring = lock(&feed.events);
        assert_eq!(ring.next_id(), 6);
        let mut out = Vec::new();
        // Ids 3, 4, 5 are kept; asking from 1 misses 1 and 2.
        assert_eq!(ring.read_from(1, 10, &mut out), Missed(2));
        assert_eq!(out.iter().map(|i| i.id).collect::<Vec<_>>(), [3, 4, 5]);
        out.clear();
        assert_eq!(ring.read_from(5, 10, &mut out), Missed(0));
        assert_eq!(out.len(), 1);
        out.clear();
        assert_eq!(ring.read_from(6, 10, &mut out), Missed(0));
        assert!(out.is_empty());
        assert_eq!(*feed.latest.borrow(), 5);
        assert_eq!(feed.host.get().map(String::as_str), Some("h"));
    }

    #[test]
    fn a_ring_with_gaps_reads_from_the_next_kept_id() {
        let (feed, mut pump) = start(10, 100);
        assert_eq!(*feed.latest.borrow(), 100);
        let ev = stats_event();
        for id in [101, 102, 105, 106] {
            pump.push(id, Arc::new(ev.clone()));
        }
        let ring = lock(&feed.events);
        let mut out = Vec::new();
        assert_eq!(ring.read_from(103, 10, &mut out), Missed(0));
        assert_eq!(out.iter().map(|i| i.id).collect::<Vec<_>>(), [105, 106]);
        out.clear();
        assert_eq!(ring.read_from(99, 1, &mut out), Missed(2));
        assert_eq!(out.iter().map(|i| i.id).collect::<Vec<_>>(), [101]);
    }

    #[test]
    fn item_json_is_the_json_lines_object() {
        let ev = stats_event();
        let item = Item::new(1, Arc::new(ev.clone()));
        let back: Event = serde_json::from_str(item.json()).unwrap();
        assert_eq!(back, ev);
    }
}
