//! What happens to events between the decoder and the sink: DNS packets become `dns`
//! events, flows gain the name their process resolved (`dst.name`), and the rules turn
//! events into alerts. Pure (no aya, no I/O of its own); `netmon run` feeds it kernel
//! records, `netmon replay` feeds it recorded events, and both get the same alerts.
use chrono::{DateTime, Utc};

use crate::{
    clock::BootClock,
    config::Config,
    decode::DecodeError,
    dns::{self, NameCache, Tracker},
    event::{DnsStats, Event, EventBody, RuleStats},
    rules::{Engine, ProcessResolver},
};

pub struct Analyzer {
    tracker: Tracker,
    names: NameCache,
    engine: Engine,
    dns_seen: bool,
    scratch: Vec<crate::event::Dns>,
    alerts: Vec<Event>,
}

impl Analyzer {
    pub fn new(config: &Config, resolver: Box<dyn ProcessResolver>) -> Analyzer {
        Analyzer {
            tracker: Tracker::new(),
            names: NameCache::default(),
            engine: Engine::new(&config.rules, resolver),
            dns_seen: false,
            scratch: Vec::new(),
            alerts: Vec::new(),
        }
    }

    /// A `kind::DNS` record from the kernel: appends the `dns` events it completes,
    /// and their alerts, to `out`. A record that cannot be decoded is an error (the
    /// caller counts it); a DNS message that does not parse is counted in [`dns_stats`].
    ///
    /// [`dns_stats`]: Analyzer::dns_stats
    pub fn dns_record(
        &mut self,
        bytes: &[u8],
        clock: &BootClock,
        host: &str,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let packet = dns::decode_packet(bytes, clock)?;
        self.dns_seen = true;
        let mut done = std::mem::take(&mut self.scratch);
        self.tracker.on_packet(&packet, &mut done);
        self.emit_dns(&mut done, packet.ts, host, out);
        self.scratch = done;
        Ok(())
    }

    /// Reports queries that waited too long for a response.
    pub fn tick(&mut self, now: DateTime<Utc>, host: &str, out: &mut Vec<Event>) {
        let mut done = std::mem::take(&mut self.scratch);
        self.tracker.expire(now, &mut done);
        self.emit_dns(&mut done, now, host, out);
        self.scratch = done;
    }

    fn emit_dns(
        &mut self,
        done: &mut Vec<crate::event::Dns>,
        ts: DateTime<Utc>,
        host: &str,
        out: &mut Vec<Event>,
    ) {
        for d in done.drain(..) {
            let event = Event {
                ts,
                host: host.to_owned(),
                body: EventBody::Dns(d),
            };
            self.event(event, out);
        }
    }

    /// Any other event: adds `dst.name`, appends it to `out`, then its alerts.
    pub fn event(&mut self, mut event: Event, out: &mut Vec<Event>) {
        match &mut event.body {
            EventBody::Dns(d) => self.names.learn(event.ts, d),
            EventBody::Connect(c) | EventBody::Udp(c) => {
                if c.dst.name.is_none()
                    && let Some(p) = &c.process
                    && let Some(name) = self.names.lookup(event.ts, p.pid, &c.dst.ip)
                {
                    c.dst.name = Some(name.to_owned());
                }
            }
            _ => {}
        }
        let mut alerts = std::mem::take(&mut self.alerts);
        self.engine.on_event(&event, &mut alerts);
        out.push(event);
        out.append(&mut alerts);
        self.alerts = alerts;
    }

    /// Runs only the rules on `event` (replay of a stream that already has `dns` events
    /// and names): alerts go to `out`, the event itself does not.
    pub fn alerts_only(&mut self, event: &Event, out: &mut Vec<Event>) {
        if let EventBody::Dns(d) = &event.body {
            self.names.learn(event.ts, d);
        }
        self.engine.on_event(event, out);
    }

    pub fn dns_stats(&self) -> Option<DnsStats> {
        self.dns_seen.then(|| self.tracker.stats.clone())
    }

    pub fn rule_stats(&self) -> Option<RuleStats> {
        (!self.engine.is_empty()).then(|| self.engine.stats.clone())
    }
}
