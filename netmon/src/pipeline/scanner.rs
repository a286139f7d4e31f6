//! The scanner as a stage of `netmon run`, when `[scan]` allows a network: a hub
//! consumer hands the remote peer of each flow event to the scanner task (once per
//! peer), and the task's change events (`host_up`, `port_opened`, …) come back to the
//! event loop, which emits them like any other. Both run beside the loop on its
//! thread; the scanner only awaits sockets and timers, so the ring buffer is served
//! between its steps.
use std::{collections::HashSet, net::IpAddr};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::hub::Hub;
use crate::{
    event::{Direction, Event, EventBody},
    scan::monitor::{Monitor, MonitorCounters},
};

/// Peers remembered as handed over before the set is cleared.
const MAX_SENT_PEERS: usize = 65_536;
/// The feed's queue in the hub: flows waiting to be looked at.
const FEED_QUEUE: usize = 4096;

pub struct Scanner {
    task: JoinHandle<()>,
    feed: JoinHandle<()>,
    /// `None` once the task stopped on its own.
    changes: Option<mpsc::Receiver<Event>>,
    counters: watch::Receiver<MonitorCounters>,
}

impl Scanner {
    /// Starts the scanner task and subscribes its feed to `hub`. Needs a tokio runtime.
    pub fn start(monitor: Monitor, hub: &mut Hub) -> Scanner {
        let (peers, peers_rx) = mpsc::channel(4096);
        let (changes_tx, changes) = mpsc::channel(1024);
        let (counters_tx, counters) = watch::channel(MonitorCounters::default());
        let task = tokio::spawn(monitor.run(peers_rx, changes_tx, counters_tx));
        let feed = tokio::spawn(feed(hub.subscribe("scanner", FEED_QUEUE), peers));
        Scanner {
            task,
            feed,
            changes: Some(changes),
            counters,
        }
    }

    /// The scanner's next change event; never ready once it stopped. Says so (once)
    /// when it stops on its own (it only does when it panics).
    pub async fn next_change(&mut self) -> Option<Event> {
        let Some(rx) = &mut self.changes else {
            return std::future::pending().await;
        };
        let change = rx.recv().await;
        if change.is_none() {
            eprintln!("netmon: warning: the scanner stopped; flows are still monitored");
            self.changes = None;
        }
        change
    }

    /// `stats.scan`.
    pub fn counters(&self) -> MonitorCounters {
        self.counters.borrow().clone()
    }

    /// Stops the task; the change events it had made and not yet handed over. Its
    /// counters stay readable (for the final `stats`).
    pub fn stop(&mut self) -> Vec<Event> {
        self.task.abort();
        self.feed.abort();
        let mut left = Vec::new();
        if let Some(rx) = &mut self.changes {
            while let Ok(event) = rx.try_recv() {
                left.push(event);
            }
        }
        self.changes = None;
        left
    }
}

/// Hands each flow's remote address to the scanner, once. Never blocks the scanner's
/// queue: when it is full, the peer is offered again with its next flow.
async fn feed(mut events: crate::pipeline::hub::Subscription, peers: mpsc::Sender<IpAddr>) {
    let mut sent = HashSet::new();
    while let Some(event) = events.recv().await {
        let Some(ip) = remote_address(&event) else {
            continue;
        };
        if sent.contains(&ip) {
            continue;
        }
        if sent.len() >= MAX_SENT_PEERS {
            sent.clear();
        }
        if peers.try_send(ip).is_ok() {
            sent.insert(ip);
        }
    }
}

/// The remote end of a flow event: the peer this machine talked to.
fn remote_address(event: &Event) -> Option<IpAddr> {
    match &event.body {
        EventBody::Connect(c) | EventBody::Udp(c) => Some(c.dst.ip),
        EventBody::Accept(c) => c.src.as_ref().map(|s| s.ip),
        EventBody::Flow(f) => Some(if f.conn.direction == Some(Direction::Inbound) {
            f.conn.src.as_ref()?.ip
        } else {
            f.conn.dst.ip
        }),
        _ => None,
    }
}
