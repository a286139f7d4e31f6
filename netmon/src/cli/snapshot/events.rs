//! Turns the sockets of a snapshot into the events the live stream would have carried
//! for them, so `netmon snapshot` runs the very rules `netmon run` runs. Pure: sockets
//! and an owner lookup in, events out; no I/O.
//!
//! - a TCP listener is a `listen` (`dst` the local address);
//! - a TCP connection still open (established, connecting or closing; not TIME_WAIT or
//!   CLOSE, which are over, nor SYN_RECV, not accepted yet) is an `accept` when its
//!   local address is one a listener of the same network namespace listens on
//!   (`src` the peer, `dst` the local side), else a `connect` (`src` local, `dst` peer);
//! - a connected UDP socket is a `udp` from the local side to its peer. Unconnected UDP
//!   sockets have no peer and give no event.
//!
//! Each event has the socket's first owning process, `ts` the report's time, `existing`
//! set (netmon did not see the flow begin) and `backend` `sock_diag`.
//!
//! [`Held`] gives HIGH_CONNECTION_COUNT the connections each process holds, counted
//! over the whole snapshot.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use chrono::{DateTime, Utc};

use crate::{
    event::{Connection, Direction, Endpoint, Event, EventBody, FlowSample, ProcessInfo, Proto},
    rules::{connections::ActiveConnections, push_sample, sample_of},
    sockets::{SocketInfo, TCP_LISTEN},
};

/// What `backend` says on events made from a snapshot.
pub const BACKEND: &str = "sock_diag";

/// TCP states of a connection that is still open: ESTABLISHED, SYN_SENT, FIN_WAIT1/2,
/// CLOSE_WAIT, LAST_ACK, CLOSING.
const OPEN_TCP_STATES: [u8; 7] = [1, 2, 4, 5, 8, 9, 11];

/// The events of `sockets`: every `listen` first, then the connections, each in the
/// order of `sockets`. `owners_of` gives the processes holding a socket inode.
pub fn socket_events(
    sockets: &[SocketInfo],
    owners_of: &dyn Fn(u32) -> Vec<ProcessInfo>,
    ts: DateTime<Utc>,
    host: &str,
) -> Vec<Event> {
    let listeners: HashSet<(Option<u32>, IpAddr, u16)> = sockets
        .iter()
        .filter(|s| s.proto == Proto::Tcp && s.state == TCP_LISTEN)
        .map(|s| (s.netns, s.local.ip().to_canonical(), s.local.port()))
        .collect();
    let accepted = |s: &SocketInfo| {
        let port = s.local.port();
        let ip = s.local.ip().to_canonical();
        listeners.contains(&(s.netns, ip, port))
            || listeners.contains(&(s.netns, IpAddr::from([0u8; 4]), port))
            || listeners.contains(&(s.netns, IpAddr::from([0u16; 8]), port))
    };
    let process = |s: &SocketInfo| {
        if s.inode == 0 {
            None
        } else {
            owners_of(s.inode).into_iter().next()
        }
    };
    let event = |body| Event {
        ts,
        host: host.into(),
        body,
    };
    let conn = |s: &SocketInfo, direction, src: Option<SocketAddr>, dst: SocketAddr| Connection {
        proto: s.proto,
        family: s.family,
        direction: Some(direction),
        src: src.map(|a| Endpoint::new(a.ip(), a.port())),
        dst: Endpoint::new(dst.ip(), dst.port()),
        process: process(s),
        backend: BACKEND.into(),
        netns: s.netns,
        failed: false,
        bytes: None,
        existing: true,
    };
    let mut out: Vec<Event> = sockets
        .iter()
        .filter(|s| s.proto == Proto::Tcp && s.state == TCP_LISTEN)
        .map(|s| {
            event(EventBody::Listen(conn(
                s,
                Direction::Inbound,
                None,
                s.local,
            )))
        })
        .collect();
    for s in sockets {
        let body = match s.proto {
            Proto::Tcp if !OPEN_TCP_STATES.contains(&s.state) => continue,
            Proto::Tcp if accepted(s) => {
                EventBody::Accept(conn(s, Direction::Inbound, Some(s.remote), s.local))
            }
            Proto::Tcp => EventBody::Connect(conn(s, Direction::Outbound, Some(s.local), s.remote)),
            Proto::Udp if s.remote.port() == 0 => continue,
            Proto::Udp => EventBody::Udp(conn(s, Direction::Outbound, Some(s.local), s.remote)),
        };
        out.push(event(body));
    }
    out
}

/// The TCP connections each process holds in a snapshot (`connect` and `accept`
/// events with a process), counted before any rule runs. A live stream counts them one
/// event at a time and HIGH_CONNECTION_COUNT fires when the count reaches its
/// threshold; a snapshot knows the whole count, so the alert says how many there are.
#[derive(Default)]
pub struct Held {
    per_pid: HashMap<u32, (usize, Vec<FlowSample>)>,
}

impl Held {
    pub fn of(events: &[Event]) -> Held {
        let mut held = Held::default();
        for ev in events {
            let (EventBody::Connect(c) | EventBody::Accept(c)) = &ev.body else {
                continue;
            };
            let (Some(p), Some(_), Some(sample)) = (&c.process, &c.src, sample_of(ev)) else {
                continue;
            };
            let (n, samples) = held.per_pid.entry(p.pid).or_default();
            *n += 1;
            push_sample(samples, sample);
        }
        held
    }
}

impl ActiveConnections for Held {
    /// Everything was counted up front.
    fn observe(&mut self, _: &Event) {}

    fn active(&self, pid: u32) -> usize {
        self.per_pid.get(&pid).map_or(0, |(n, _)| *n)
    }

    fn samples(&self, pid: u32) -> Vec<FlowSample> {
        self.per_pid
            .get(&pid)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sock;
    use super::*;
    use crate::event::Family;

    fn owners(inode: u32) -> Vec<ProcessInfo> {
        match inode {
            0 => vec![],
            i => vec![
                ProcessInfo::kernel(i * 100, i * 100, format!("p{i}").into(), 0, 0, 0),
                ProcessInfo::kernel(i * 100 + 1, i * 100 + 1, "second".into(), 0, 0, 0),
            ],
        }
    }

    fn events(sockets: &[SocketInfo]) -> Vec<Event> {
        socket_events(sockets, &owners, DateTime::UNIX_EPOCH, "h")
    }

    fn summary(e: &Event) -> (String, Option<String>, String, Option<u32>) {
        let c = e.body.connection().unwrap();
        (
            e.body.type_name().to_owned(),
            c.src
                .as_ref()
                .map(|s| SocketAddr::new(s.ip, s.port).to_string()),
            SocketAddr::new(c.dst.ip, c.dst.port).to_string(),
            c.process.as_ref().map(|p| p.pid),
        )
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn listeners_decide_the_direction_of_tcp_connections() {
        let got: Vec<_> = events(&[
            // A client connected to a local server: both ends are here.
            sock(Proto::Tcp, 1, "127.0.0.1:40000", "127.0.0.1:31337", 1),
            sock(Proto::Tcp, 1, "127.0.0.1:31337", "127.0.0.1:40000", 2),
            sock(Proto::Tcp, TCP_LISTEN, "0.0.0.0:31337", "0.0.0.0:0", 3),
            // A listener on one address does not make another address's port inbound.
            sock(Proto::Tcp, TCP_LISTEN, "127.0.0.2:8080", "0.0.0.0:0", 4),
            sock(Proto::Tcp, 1, "127.0.0.1:8080", "10.0.0.9:443", 5),
            // A dual-stack listener accepts IPv4 as v4-mapped addresses.
            sock(Proto::Tcp, TCP_LISTEN, "[::]:22", "[::]:0", 6),
            sock(
                Proto::Tcp,
                1,
                "[::ffff:10.0.0.5]:22",
                "[::ffff:10.0.0.7]:5000",
                7,
            ),
        ])
        .iter()
        .map(summary)
        .collect();
        assert_eq!(
            got,
            vec![
                (s("listen"), None, s("0.0.0.0:31337"), Some(300)),
                (s("listen"), None, s("127.0.0.2:8080"), Some(400)),
                (s("listen"), None, s("[::]:22"), Some(600)),
                (
                    s("connect"),
                    Some(s("127.0.0.1:40000")),
                    s("127.0.0.1:31337"),
                    Some(100)
                ),
                (
                    s("accept"),
                    Some(s("127.0.0.1:40000")),
                    s("127.0.0.1:31337"),
                    Some(200)
                ),
                (
                    s("connect"),
                    Some(s("127.0.0.1:8080")),
                    s("10.0.0.9:443"),
                    Some(500)
                ),
                (
                    s("accept"),
                    Some(s("[::ffff:10.0.0.7]:5000")),
                    s("[::ffff:10.0.0.5]:22"),
                    Some(700)
                ),
            ]
        );
        let evs = events(&[sock(Proto::Tcp, 1, "127.0.0.1:40000", "127.0.0.1:443", 1)]);
        let c = evs[0].body.connection().unwrap();
        assert_eq!(c.direction, Some(Direction::Outbound));
        assert!(c.existing && !c.failed);
        assert_eq!(c.backend, BACKEND);
        assert_eq!(evs[0].ts, DateTime::UNIX_EPOCH);
    }

    #[test]
    fn listeners_count_only_in_their_own_network_namespace() {
        let mut l = sock(Proto::Tcp, TCP_LISTEN, "0.0.0.0:80", "0.0.0.0:0", 1);
        l.netns = Some(1);
        let mut c = sock(Proto::Tcp, 1, "127.0.0.1:80", "127.0.0.1:9999", 2);
        c.netns = Some(2);
        let got = events(&[l, c]);
        assert_eq!(got[1].body.type_name(), "connect");
        assert_eq!(got[1].body.connection().unwrap().netns, Some(2));
    }

    #[test]
    fn finished_and_half_open_tcp_sockets_are_skipped() {
        let got = events(&[
            sock(Proto::Tcp, 6, "127.0.0.1:40000", "127.0.0.1:31337", 0), // time_wait
            sock(Proto::Tcp, 7, "127.0.0.1:40001", "127.0.0.1:31337", 1), // close
            sock(Proto::Tcp, 3, "127.0.0.1:31337", "127.0.0.1:40002", 0), // syn_recv
            sock(Proto::Tcp, 2, "127.0.0.1:40003", "127.0.0.1:4444", 2),  // syn_sent
            sock(Proto::Tcp, 8, "127.0.0.1:40004", "127.0.0.1:4444", 3),  // close_wait
        ]);
        let kinds: Vec<_> = got.iter().map(summary).collect();
        assert_eq!(
            kinds,
            vec![
                (
                    s("connect"),
                    Some(s("127.0.0.1:40003")),
                    s("127.0.0.1:4444"),
                    Some(200)
                ),
                (
                    s("connect"),
                    Some(s("127.0.0.1:40004")),
                    s("127.0.0.1:4444"),
                    Some(300)
                ),
            ]
        );
    }

    #[test]
    fn connected_udp_is_an_outbound_udp_event_and_unconnected_udp_is_none() {
        let got = events(&[
            sock(
                Proto::Udp,
                1,
                "[2001:db8::5]:5000",
                "[2606:4700::1111]:53",
                1,
            ),
            sock(Proto::Udp, 7, "127.0.0.53:53", "0.0.0.0:0", 2),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            summary(&got[0]),
            (
                s("udp"),
                Some(s("[2001:db8::5]:5000")),
                s("[2606:4700::1111]:53"),
                Some(100)
            )
        );
        let c = got[0].body.connection().unwrap();
        assert_eq!((c.proto, c.family), (Proto::Udp, Family::Ipv6));
        assert_eq!(c.direction, Some(Direction::Outbound));
    }

    #[test]
    fn held_counts_every_connection_of_a_process_at_once() {
        let mut sockets = vec![sock(
            Proto::Tcp,
            TCP_LISTEN,
            "127.0.0.1:8080",
            "0.0.0.0:0",
            9,
        )];
        for i in 0..7 {
            // inode 1: one client process; inode 2: the server that accepted them.
            sockets.push(sock(
                Proto::Tcp,
                1,
                &format!("127.0.0.1:{}", 40000 + i),
                "127.0.0.1:8080",
                1,
            ));
            sockets.push(sock(
                Proto::Tcp,
                1,
                "127.0.0.1:8080",
                &format!("127.0.0.1:{}", 40000 + i),
                2,
            ));
        }
        sockets.push(sock(Proto::Udp, 1, "127.0.0.1:5000", "127.0.0.1:53", 1));
        let held = Held::of(&events(&sockets));
        assert_eq!(
            (held.active(100), held.active(200), held.active(900)),
            (7, 7, 0)
        );
        let samples = held.samples(100);
        assert_eq!(samples.len(), crate::rules::MAX_SAMPLES);
        assert!(samples.iter().all(|s| s.kind == "connect"));
        assert_eq!(samples.last().unwrap().src.as_ref().unwrap().port, 40006);
        assert!(held.samples(200).iter().all(|s| s.kind == "accept"));
    }

    #[test]
    fn sockets_without_a_readable_owner_have_no_process() {
        let got = socket_events(
            &[sock(Proto::Tcp, 1, "127.0.0.1:40000", "127.0.0.1:80", 9)],
            &|_| Vec::new(),
            DateTime::UNIX_EPOCH,
            "h",
        );
        assert!(got[0].body.connection().unwrap().process.is_none());
    }
}
