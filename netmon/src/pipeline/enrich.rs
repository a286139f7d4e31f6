//! The enrichment stage: what the kernel's records become before the rules see them.
//! Exec, fork and exit records keep the process table (an exec may become an
//! `exec` event); a DNS packet completes `dns` events and
//! teaches the name cache which addresses each process resolved; every other event
//! goes through the flow table and the process-context cache (`enrich/flows.rs`) and
//! gains the name its process resolved for its peer (`dst.name`).
//!
//! Owns the flow tracker, the DNS transaction tracker and the name cache; shares the
//! run's one process-context cache with the rules (`process::Processes`). Pure but for
//! the `/proc`, sock_diag and `UDP_PEERS` reads of `flows`.
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    dns::{self, NameCache},
    event::{Dns, DnsStats, Event, EventBody},
    process,
};

pub mod flows;

/// One ring-buffer record, decoded by the reader.
pub enum Record {
    /// A process exited (`sched_process_exit`).
    Exit(u32),
    /// A process exec'd (`sched_process_exec`).
    Exec(process::Exec),
    /// A new process (`sched_process_fork`).
    Fork(process::Fork),
    /// A DNS packet, which may complete a transaction.
    Dns(dns::Packet),
    /// Any other event (connect, accept, udp, listen, close), already in the `Arc`
    /// the hub hands out: from here on it moves as a pointer (enrichment changes it
    /// in place, while it is the only owner).
    Event(Arc<Event>),
}

pub struct Enricher {
    /// Flows and process context.
    pub flows: flows::Tracker,
    transactions: dns::Tracker,
    names: NameCache,
    dns_seen: bool,
    host: std::sync::Arc<str>,
    scratch: Vec<Dns>,
}

impl Enricher {
    pub fn new(flows: flows::Tracker, host: std::sync::Arc<str>) -> Enricher {
        Enricher {
            flows,
            transactions: dns::Tracker::new(),
            names: NameCache::default(),
            dns_seen: false,
            host,
            scratch: Vec::new(),
        }
    }

    /// Enriches one record; appends the events it makes (none, one, or the `dns`
    /// events a packet completes) to `out`, in stream order.
    pub fn record(&mut self, record: Record, now_ns: u64, out: &mut Vec<Arc<Event>>) {
        match record {
            Record::Exit(pid) => self.flows.process_exited(pid, now_ns),
            Record::Exec(x) => {
                if let Some(event) = self.flows.process_exec(x, &self.host) {
                    out.push(Arc::new(event));
                }
            }
            Record::Fork(f) => self.flows.process_fork(f),
            Record::Dns(packet) => {
                self.dns_seen = true;
                let mut done = std::mem::take(&mut self.scratch);
                self.transactions.on_packet(&packet, &mut done);
                self.dns_events(&mut done, packet.ts, out);
                self.scratch = done;
            }
            Record::Event(mut shared) => {
                // The reader's `Arc` has no other owner yet: no copy is made.
                let event = Arc::make_mut(&mut shared);
                self.flows.on_event(event, now_ns);
                self.name(event);
                out.push(shared);
            }
        }
    }

    /// Queries that waited too long for a response: their `dns` events.
    pub fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<Arc<Event>>) {
        let mut done = std::mem::take(&mut self.scratch);
        self.transactions.expire(now, &mut done);
        self.dns_events(&mut done, now, out);
        self.scratch = done;
    }

    fn dns_events(&mut self, done: &mut Vec<Dns>, ts: DateTime<Utc>, out: &mut Vec<Arc<Event>>) {
        for mut d in done.drain(..) {
            if let Some(p) = d.process.as_mut() {
                self.flows.enrich_process(p);
            }
            self.names.learn(ts, &d);
            out.push(Arc::new(Event {
                ts,
                host: self.host.clone(),
                body: EventBody::Dns(d),
            }));
        }
    }

    /// `dst.name` of a connect or UDP flow: what its process resolved to that address.
    fn name(&self, event: &mut Event) {
        if let EventBody::Connect(c) | EventBody::Udp(c) = &mut event.body
            && c.dst.name.is_none()
            && let Some(p) = &c.process
            && let Some(name) = self.names.lookup(event.ts, p.pid, &c.dst.ip)
        {
            c.dst.name = Some(name.to_owned());
        }
    }

    /// `stats.dns`, once a DNS packet was seen.
    pub fn dns_stats(&self) -> Option<DnsStats> {
        self.dns_seen.then(|| self.transactions.stats.clone())
    }
}
