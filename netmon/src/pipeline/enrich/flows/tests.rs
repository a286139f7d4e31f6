//! Tests of `crate::pipeline::enrich::flows`.

use super::*;
use crate::{
    event::{Connection, Endpoint, Family},
    process::ProcessCache,
};

fn conn(direction: Option<Direction>, src: &str, dst: &str, pid: Option<u32>) -> Connection {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    Connection {
        proto: Proto::Tcp,
        family: Family::Ipv4,
        direction,
        src: Some(Endpoint::new(src.ip(), src.port())),
        dst: Endpoint::new(dst.ip(), dst.port()),
        process: pid.map(|p| ProcessInfo::kernel(p, p, "srv".into(), 0, 0, 0)),
        backend: "tracepoint".into(),
        netns: Some(7),
        failed: false,
        bytes: None,
        existing: false,
    }
}

fn event(body: EventBody) -> Event {
    Event {
        ts: Utc::now(),
        host: "h".into(),
        body,
    }
}

fn close(conn: Connection) -> EventBody {
    EventBody::Close(Close {
        conn,
        duration_ms: None,
        bytes_sent: Some(10),
        bytes_received: Some(20),
        packets_sent: None,
        packets_received: None,
        reason: None,
    })
}

fn tracker() -> Tracker {
    let root = std::env::temp_dir().join("netmon-tracker-no-proc");
    Tracker::with_cache(
        FlowConfig::default(),
        ProcessCache::new(&root, &root.join("passwd")),
    )
}

#[test]
fn a_close_of_a_seeded_inbound_flow_gets_its_process_direction_and_initiator() {
    let mut t = tracker();
    // An SSH session accepted before netmon: local 10.0.0.5:22, remote client.
    let key = FlowKey::new(
        Proto::Tcp,
        7,
        "10.0.0.5:22".parse().unwrap(),
        "10.0.0.9:50000".parse().unwrap(),
    );
    t.flows.open(Open {
        key,
        direction: Some(Direction::Inbound),
        process: Some(Arc::new(ProcessInfo::kernel(
            812,
            812,
            "sshd".into(),
            0,
            0,
            0,
        ))),
        existing: true,
        now_ns: 1,
    });
    // The kernel did not see it begin: no process, no direction, local side first.
    let mut ev = event(close(conn(None, "10.0.0.5:22", "10.0.0.9:50000", None)));
    t.on_event(&mut ev, 2);
    let EventBody::Close(c) = &ev.body else {
        panic!()
    };
    assert_eq!(c.conn.process.as_ref().unwrap().comm, "sshd");
    assert_eq!(c.conn.direction, Some(Direction::Inbound));
    assert_eq!(
        c.conn.src.as_ref().unwrap().port,
        50000,
        "src is the initiator"
    );
    assert_eq!(c.conn.dst.port, 22);
    assert!(c.conn.existing);
    assert_eq!(c.bytes_sent, Some(10));
    assert!(t.flows.is_empty());
}

#[test]
fn connect_opens_and_close_removes_failed_connects_open_nothing() {
    let mut t = tracker();
    let mut c = conn(
        Some(Direction::Outbound),
        "127.0.0.1:40000",
        "127.0.0.1:80",
        Some(5),
    );
    let mut ev = event(EventBody::Connect(c.clone()));
    t.on_event(&mut ev, 1);
    assert_eq!(t.flows.len(), 1);
    c.failed = true;
    c.src.as_mut().unwrap().port = 40001;
    t.on_event(&mut event(EventBody::Connect(c)), 1);
    assert_eq!(t.flows.len(), 1);
    let mut ev = event(close(conn(
        Some(Direction::Outbound),
        "127.0.0.1:40000",
        "127.0.0.1:80",
        Some(5),
    )));
    t.on_event(&mut ev, 2);
    assert!(t.flows.is_empty());
    let EventBody::Close(c) = &ev.body else {
        panic!()
    };
    assert!(!c.conn.existing);
    // The process is gone from the fake /proc: kernel fields kept, reason counted.
    assert_eq!(c.conn.process.as_ref().unwrap().pid, 5);
    assert!(
        t.process_stats()
            .unreadable
            .get("gone")
            .copied()
            .unwrap_or(0)
            >= 1
    );
}

#[test]
fn flows_whose_socket_vanished_without_a_close_are_swept() {
    let mut t = tracker();
    let key = |port: u16, netns: u32| {
        FlowKey::new(
            Proto::Tcp,
            netns,
            SocketAddr::from(([127, 0, 0, 1], port)),
            "127.0.0.1:80".parse().unwrap(),
        )
    };
    let interval = t.flows.config().summary_interval_ns;
    for (port, netns, start) in [(1, 7, 0), (2, 7, 0), (3, 7, interval), (4, 8, 0)] {
        t.flows.open(Open {
            key: key(port, netns),
            direction: Some(Direction::Outbound),
            process: Some(Arc::new(ProcessInfo::kernel(9, 9, "c".into(), 0, 0, 0))),
            existing: false,
            now_ns: start,
        });
    }
    // The dump looked in namespace 7 and found only port 1's socket.
    let seen = TcpSeen {
        seen: [key(1, 7)].into_iter().collect(),
        dumped: [7].into_iter().collect(),
    };
    let closes = t.sweep_missed(seen, interval + 1);
    assert_eq!(closes.len(), 1, "{closes:?}");
    let EventBody::Close(c) = &closes[0].body else {
        panic!()
    };
    assert_eq!(c.conn.src.as_ref().unwrap().port, 2);
    assert_eq!(c.reason.as_deref(), Some("missed"));
    assert_eq!(c.conn.process.as_ref().unwrap().pid, 9);
    // Port 1 (seen), port 3 (too young to judge), port 4 (namespace not dumped) stay.
    assert_eq!(t.flows.len(), 3);
}

#[test]
fn accepts_on_ports_listening_before_netmon_get_the_listener_owner() {
    let mut t = tracker();
    let owner = Arc::new(ProcessInfo::kernel(700, 700, "nginx".into(), 33, 33, 0));
    t.listeners.insert((7, 80), owner);
    let mut ev = event(EventBody::Accept(conn(
        Some(Direction::Inbound),
        "127.0.0.1:40000",
        "127.0.0.1:80",
        None,
    )));
    t.on_event(&mut ev, 1);
    let c = ev.body.connection().unwrap();
    assert_eq!(c.process.as_ref().unwrap().comm, "nginx");
    // Its close, which the kernel cannot attribute either, gets it from the flow.
    let mut ev = event(close(conn(
        Some(Direction::Inbound),
        "127.0.0.1:40000",
        "127.0.0.1:80",
        None,
    )));
    t.on_event(&mut ev, 2);
    let c = ev.body.connection().unwrap();
    assert_eq!(c.process.as_ref().unwrap().pid, 700);
    // A `listen` seen live takes the port over.
    let mut listen = conn(
        Some(Direction::Inbound),
        "0.0.0.0:0",
        "127.0.0.1:80",
        Some(701),
    );
    listen.src = None;
    t.on_event(&mut event(EventBody::Listen(listen)), 3);
    assert_eq!(t.listeners[&(7, 80)].pid, 701);
}

#[test]
fn payload_counters_leave_syn_and_fin_out() {
    let tcp = sockets::TcpCounters {
        bytes_acked: 1001,
        bytes_received: 501,
        data_segs_out: 3,
        data_segs_in: 2,
    };
    let c = tcp_counters(tcp, Some(Direction::Outbound), 1);
    assert_eq!((c.bytes_sent, c.bytes_received), (Some(1000), Some(501)));
    let c = tcp_counters(tcp, Some(Direction::Inbound), 8);
    assert_eq!((c.bytes_sent, c.bytes_received), (Some(1001), Some(500)));
    assert_eq!(c.packets_sent, Some(3));
}

#[test]
fn udp_peer_keys_round_trip() {
    for addr in ["127.0.0.53:53", "[::1]:443"] {
        let a: SocketAddr = addr.parse().unwrap();
        assert_eq!(peer_addr(&udp_peer_key(9, a)), Some(a));
    }
}
