//! Per-minute flow totals from the event stream: `connect`, `accept` and `udp` count a
//! connection; `flow` and `close` add the bytes and packets since the flow's previous
//! report. Pure: the writer takes the totals at every commit.
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
    net::IpAddr,
    sync::Arc,
};

use crate::event::{Connection as Conn, Direction, Event, EventBody, Proto};

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
    /// None: the event did not say (stored as '').
    pub local_ip: Option<IpAddr>,
    pub local_port: u16,
    pub remote_ip: Option<IpAddr>,
    pub remote_port: u16,
    pub remote_name: String,
}

impl FlowKey {
    pub fn of(c: &Conn) -> FlowKey {
        KeyView::of(c).to_key()
    }
}

/// The user of a flow key: the name, else the uid (as text in the key).
#[derive(Clone, Copy, Hash)]
enum User<'a> {
    Name(&'a str),
    Uid(u32),
    Unknown,
}

/// A [`FlowKey`] borrowed from an event: hashed and compared without allocating, so
/// the aggregator builds a key only for the first event of each (minute, key).
#[derive(Hash)]
struct KeyView<'a> {
    comm: &'a str,
    exe: &'a str,
    user: User<'a>,
    proto: &'static str,
    direction: &'static str,
    local_ip: Option<IpAddr>,
    local_port: u16,
    remote_ip: Option<IpAddr>,
    remote_port: u16,
    remote_name: &'a str,
}

impl<'a> KeyView<'a> {
    fn of(c: &'a Conn) -> KeyView<'a> {
        let (comm, exe, user) = match &c.process {
            Some(p) => (
                p.comm.as_str(),
                p.detail.exe.as_deref().unwrap_or(""),
                match &p.detail.user {
                    Some(u) => User::Name(u),
                    None => User::Uid(p.uid),
                },
            ),
            None => ("", "", User::Unknown),
        };
        let src = c.src.as_ref();
        let (local_ip, local_port, remote_ip, remote_port, name) = match c.direction {
            Some(Direction::Inbound) => (
                Some(c.dst.ip),
                c.dst.port,
                src.map(|s| s.ip),
                0,
                src.and_then(|s| s.name.as_deref()),
            ),
            Some(Direction::Outbound) => (
                src.map(|s| s.ip),
                0,
                Some(c.dst.ip),
                c.dst.port,
                c.dst.name.as_deref(),
            ),
            None => (
                src.map(|s| s.ip),
                src.map_or(0, |s| s.port),
                Some(c.dst.ip),
                c.dst.port,
                c.dst.name.as_deref(),
            ),
        };
        KeyView {
            comm,
            exe,
            user,
            proto: proto_name(c.proto),
            direction: direction_name(c.direction).unwrap_or(""),
            local_ip,
            local_port,
            remote_ip,
            remote_port,
            remote_name: name.unwrap_or(""),
        }
    }

    fn user(&self) -> String {
        match self.user {
            User::Name(n) => n.to_owned(),
            User::Uid(u) => u.to_string(),
            User::Unknown => String::new(),
        }
    }

    fn is(&self, k: &FlowKey) -> bool {
        self.local_port == k.local_port
            && self.remote_port == k.remote_port
            && self.local_ip == k.local_ip
            && self.remote_ip == k.remote_ip
            && self.proto == k.proto
            && self.direction == k.direction
            && self.comm == k.comm
            && self.exe == k.exe
            && self.remote_name == k.remote_name
            && match self.user {
                User::Name(n) => n == k.user,
                // The uid's digits on the stack: `user()` would allocate per event.
                User::Uid(u) => {
                    use std::io::Write as _;
                    let mut digits = [0u8; 10];
                    let mut rest = &mut digits[..];
                    let _ = write!(rest, "{u}");
                    let len = 10 - rest.len();
                    digits[..len] == *k.user.as_bytes()
                }
                User::Unknown => k.user.is_empty(),
            }
    }

    fn to_key(&self) -> FlowKey {
        FlowKey {
            comm: self.comm.to_owned(),
            exe: self.exe.to_owned(),
            user: self.user(),
            proto: self.proto,
            direction: self.direction,
            local_ip: self.local_ip,
            local_port: self.local_port,
            remote_ip: self.remote_ip,
            remote_port: self.remote_port,
            remote_name: self.remote_name.to_owned(),
        }
    }
}

pub fn direction_name(d: Option<Direction>) -> Option<&'static str> {
    d.map(|d| match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    })
}

pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
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

impl Totals {
    fn add(&mut self, d: &Totals) {
        self.connections += d.connections;
        self.bytes_sent += d.bytes_sent;
        self.bytes_received += d.bytes_received;
        self.packets_sent += d.packets_sent;
        self.packets_received += d.packets_received;
    }
}

/// A flow's identity: the direction too, since on loopback both ends of one
/// connection are local sockets with the same addresses.
type FlowId = (
    Proto,
    Option<Direction>,
    Option<(IpAddr, u16)>,
    (IpAddr, u16),
);

/// Flows followed at most; beyond it the oldest knowledge is dropped (a flow's later
/// `flow` or `close` then counts its bytes from zero on a freshly keyed row).
const MAX_FLOWS: usize = 1_000_000;

/// Turns events into per-minute totals.
///
/// Memory: nothing is kept for a flow until its first `flow` summary (a flow whose
/// first counters come with its close needs no memory of it), and then only its
/// counters under a hash of its identity, 40-odd bytes: 100,000 long-lived flows cost
/// about 5 MB, where keeping each flow's row key cost about 40 MB and broke netmon's
/// 50 MB budget (tests/tests/flows.rs). Every event of a flow carries the same
/// connection (the flow table's), so each one's row key is computed from the event.
///
/// Speed: the totals of a batch are found by a hash of the key borrowed from the event
/// (and checked against the key, so a collision only costs a second list), so an event
/// of a key already seen in the batch allocates nothing.
#[derive(Default)]
pub struct Aggregator {
    /// Counters last reported, per flow that has had a summary: hash of [`FlowId`] →
    /// bytes sent, received, packets sent, received.
    reported: HashMap<u64, [u64; 4]>,
    hasher: foldhash::fast::RandomState,
    /// (minute, hash of the key) → the key and its totals.
    pending: HashMap<(i64, u64), (Arc<FlowKey>, Totals)>,
    /// Keys whose hash another key of the same minute already holds in `pending`.
    collided: Vec<(i64, Arc<FlowKey>, Totals)>,
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
                let id = self.hasher.hash_one(id);
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
        let view = KeyView::of(c);
        let hash = self.hasher.hash_one(&view);
        match self.pending.entry((minute, hash)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((Arc::new(view.to_key()), delta));
            }
            std::collections::hash_map::Entry::Occupied(mut e) if view.is(&e.get().0) => {
                e.get_mut().1.add(&delta);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                match self
                    .collided
                    .iter_mut()
                    .find(|(m, k, _)| *m == minute && view.is(k))
                {
                    Some((_, _, t)) => t.add(&delta),
                    None => self.collided.push((minute, Arc::new(view.to_key()), delta)),
                }
            }
        }
    }

    /// The totals gathered since the last call.
    pub fn take(&mut self) -> Vec<(i64, Arc<FlowKey>, Totals)> {
        let mut out: Vec<_> = self
            .pending
            .drain()
            .map(|((minute, _), (key, t))| (minute, key, t))
            .collect();
        out.append(&mut self.collided);
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::event::{Close, Endpoint, Family, ProcessInfo};
    use chrono::{DateTime, Utc};

    pub(in crate::history) fn conn(dir: Direction, sport: u16, dport: u16) -> Conn {
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

    pub(in crate::history) fn at(s: i64, body: EventBody) -> Event {
        Event {
            ts: DateTime::<Utc>::from_timestamp(s, 0).unwrap(),
            host: "h".into(),
            body,
        }
    }

    pub(in crate::history) fn close(c: Conn, sent: u64, recv: u64) -> EventBody {
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
    fn events_of_a_key_seen_before_add_to_its_totals_without_a_second_entry() {
        let mut a = Aggregator::default();
        let named = |dir, sport| {
            let mut c = conn(dir, sport, 8080);
            if let Some(p) = c.process.as_mut() {
                Arc::make_mut(&mut p.detail).user = Some("www-data".into());
                Arc::make_mut(&mut p.detail).exe = Some("/usr/sbin/nginx".into());
            }
            c
        };
        for sport in 0..5_000 {
            a.add(&at(
                60,
                EventBody::Connect(named(Direction::Outbound, sport)),
            ));
            a.add(&at(60, EventBody::Accept(named(Direction::Inbound, sport))));
            a.add(&at(
                61,
                EventBody::Connect(conn(Direction::Outbound, sport, 8080)),
            ));
        }
        assert_eq!((a.pending.len(), a.collided.len()), (3, 0));
        let rows = a.take();
        assert!(rows.iter().all(|r| r.2.connections == 5_000), "{rows:?}");
    }

    #[test]
    fn inbound_flows_keep_the_service_port() {
        let k = FlowKey::of(&conn(Direction::Inbound, 51000, 22));
        assert_eq!((k.local_port, k.remote_port), (22, 0));
        assert_eq!(k.remote_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(k.user, "0");
    }
}
