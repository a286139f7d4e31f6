//! Tests of `crate::flow`.

use super::*;

#[test]
fn sizes_the_comments_state() {
    use std::mem::size_of;
    assert_eq!(size_of::<FlowKey>(), 44);
    assert_eq!(size_of::<Packed>(), 32);
    assert_eq!(size_of::<Counters>(), 64);
    assert!(
        size_of::<Option<Flow>>() <= 104,
        "{}",
        size_of::<Option<Flow>>()
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proc_(pid: u32, comm: &str) -> ProcessInfo {
    ProcessInfo::kernel(pid, pid, comm.into(), 1000, 1000, 1)
}

fn tcp(local: &str, remote: &str) -> FlowKey {
    FlowKey::new(Proto::Tcp, 7, addr(local), addr(remote))
}

fn udp(local: &str, remote: &str) -> FlowKey {
    FlowKey::new(Proto::Udp, 7, addr(local), addr(remote))
}

fn open(key: FlowKey, pid: u32, now_s: u64) -> Open {
    Open {
        key,
        direction: Some(Direction::Outbound),
        process: Some(Arc::new(proc_(pid, "curl"))),
        existing: false,
        now_ns: now_s * NS_PER_S,
    }
}

fn table(cap: usize) -> FlowTable {
    FlowTable::new(FlowConfig {
        cap,
        ..FlowConfig::default()
    })
}

fn conn(direction: Option<Direction>, src: &str, dst: &str) -> Connection {
    let src = addr(src);
    let dst = addr(dst);
    Connection {
        proto: Proto::Tcp,
        family: Family::of(&dst.ip()),
        direction,
        src: Some(Endpoint::new(src.ip(), src.port())),
        dst: Endpoint::new(dst.ip(), dst.port()),
        process: None,
        backend: "tracepoint".into(),
        netns: Some(7),
        failed: false,
        bytes: None,
        existing: false,
    }
}

#[test]
fn the_two_sockets_of_a_loopback_connection_are_two_flows_that_meet_their_closes() {
    // Client 127.0.0.1:40000 -> server 127.0.0.1:80, seen from both sockets.
    let connect = conn(Some(Direction::Outbound), "127.0.0.1:40000", "127.0.0.1:80");
    let accept = conn(Some(Direction::Inbound), "127.0.0.1:40000", "127.0.0.1:80");
    let kc = FlowKey::of_connection(&connect).unwrap();
    let ka = FlowKey::of_connection(&accept).unwrap();
    assert_ne!(kc, ka);
    assert_eq!(kc.local(), addr("127.0.0.1:40000"));
    assert_eq!(ka.local(), addr("127.0.0.1:80"));
    // Closes from the kernel carry the same src/dst/direction as the opening event.
    let close_client = conn(Some(Direction::Outbound), "127.0.0.1:40000", "127.0.0.1:80");
    let close_server = conn(Some(Direction::Inbound), "127.0.0.1:40000", "127.0.0.1:80");
    assert_eq!(FlowKey::of_connection(&close_client), Some(kc));
    assert_eq!(FlowKey::of_connection(&close_server), Some(ka));
    // A close of a flow netmon did not see begin has the local side first.
    let unknown = conn(None, "127.0.0.1:80", "127.0.0.1:40000");
    assert_eq!(FlowKey::of_connection(&unknown), Some(ka));
    // Other namespaces, other flows.
    let mut elsewhere = connect.clone();
    elsewhere.netns = Some(8);
    assert_ne!(FlowKey::of_connection(&elsewhere), Some(kc));
}

#[test]
fn ipv4_and_ipv6_keys_round_trip() {
    let k = FlowKey::new(Proto::Tcp, 0, addr("10.0.0.1:1"), addr("[2001:db8::1]:443"));
    assert_eq!(k.local(), addr("10.0.0.1:1"));
    assert_eq!(k.remote(), addr("[2001:db8::1]:443"));
    assert_eq!(std::mem::size_of::<FlowKey>(), 44);
}

#[test]
fn listen_has_no_flow() {
    let mut listen = conn(Some(Direction::Inbound), "0.0.0.0:0", "0.0.0.0:80");
    listen.src = None;
    assert_eq!(FlowKey::of_connection(&listen), None);
}

#[test]
fn open_then_close_returns_the_flow_with_its_process() {
    let mut t = table(10);
    let k = tcp("127.0.0.1:40000", "127.0.0.1:80");
    assert!(t.open(open(k, 42, 1)).new);
    assert_eq!(t.len(), 1);
    let f = t.close(&k).unwrap();
    assert_eq!(f.process.unwrap().pid, 42);
    assert_eq!(f.start_ns, NS_PER_S);
    assert!(t.is_empty());
    assert!(t.close(&k).is_none());
    let s = t.stats();
    assert_eq!((s.opened, s.closed, s.active), (1, 1, 0));
}

#[test]
fn a_kernel_report_replaces_a_seeded_tcp_flow() {
    let mut t = table(10);
    let k = tcp("127.0.0.1:40000", "127.0.0.1:80");
    let mut seed = open(k, 42, 1);
    seed.existing = true;
    seed.direction = None;
    t.open(seed);
    let o = t.open(open(k, 43, 2));
    assert!(!o.new);
    let f = t.get(&k).unwrap();
    assert!(!f.existing);
    assert_eq!(f.process.as_ref().unwrap().pid, 43);
    assert_eq!(f.direction, Some(Direction::Outbound));
    assert_eq!(f.start_ns, 2 * NS_PER_S);
    assert_eq!(t.stats().existing, 1);
}

#[test]
fn udp_flows_expire_after_the_idle_timeout_unless_datagrams_keep_coming() {
    let mut t = FlowTable::new(FlowConfig {
        udp_idle_ns: 60 * NS_PER_S,
        ..FlowConfig::default()
    });
    let quiet = udp("127.0.0.1:5000", "127.0.0.53:53");
    let busy = udp("127.0.0.1:5001", "127.0.0.1:443");
    let tcp_flow = tcp("127.0.0.1:40000", "127.0.0.1:80");
    t.open(open(quiet, 10, 0));
    t.open(open(busy, 11, 0));
    t.open(open(tcp_flow, 12, 0));
    // The busy peer sends at 50 s: 3 datagrams of 100 payload bytes each.
    assert!(t.observe_udp(11, addr("127.0.0.1:443"), 50 * NS_PER_S, 3, 324));
    assert!(!t.observe_udp(99, addr("127.0.0.1:443"), 50 * NS_PER_S, 1, 9));
    assert!(t.expire_udp(59 * NS_PER_S, 100).is_empty());
    let ended = t.expire_udp(60 * NS_PER_S, 100);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].key, quiet);
    assert!(t.get(&busy).is_some());
    let ended = t.expire_udp(110 * NS_PER_S, 100);
    assert_eq!(ended.len(), 1);
    let c = ended[0].counters();
    assert_eq!((c.packets_sent, c.bytes_sent), (Some(3), Some(300)));
    // TCP flows never expire, however idle.
    assert!(t.expire_udp(10_000 * NS_PER_S, 100).is_empty());
    assert!(t.get(&tcp_flow).is_some());
    let s = t.stats();
    assert_eq!((s.udp_expired, s.closed, s.active), (2, 2, 1));
    // The peer index is gone with the flow.
    assert!(!t.observe_udp(11, addr("127.0.0.1:443"), 200 * NS_PER_S, 4, 400));
}

#[test]
fn expiry_comes_in_batches_oldest_first() {
    let mut t = table(100);
    for i in 0..10u16 {
        t.open(open(
            udp(&format!("127.0.0.1:{}", 5000 + i), "127.0.0.53:53"),
            10 + i as u32,
            i as u64,
        ));
    }
    let first = t.expire_udp(1000 * NS_PER_S, 4);
    let ports: Vec<u16> = first.iter().map(|f| f.key.local_port).collect();
    assert_eq!(ports, vec![5000, 5001, 5002, 5003]);
    assert_eq!(t.expire_udp(1000 * NS_PER_S, 4).len(), 4);
    assert_eq!(t.expire_udp(1000 * NS_PER_S, 4).len(), 2);
    assert!(t.expire_udp(1000 * NS_PER_S, 4).is_empty());
    assert_eq!(t.stats().udp_expired, 10);
}

#[test]
fn a_peer_whose_datagram_is_reported_late_expires_after_the_flows_ahead_never_early() {
    let mut t = table(10);
    let late = udp("127.0.0.1:5000", "127.0.0.53:53");
    let quiet = udp("127.0.0.1:5001", "127.0.0.1:443");
    t.open(open(late, 10, 0));
    t.open(open(quiet, 11, 100));
    // Polled after `quiet` was seen: `late` sent its last datagram at 90 s.
    assert!(t.observe_udp(10, addr("127.0.0.53:53"), 90 * NS_PER_S, 2, 18));
    assert!(t.expire_udp(149 * NS_PER_S, 100).is_empty());
    // Due at 150 s, behind `quiet` (due at 160 s) in netmon's order: it waits.
    assert!(t.expire_udp(150 * NS_PER_S, 100).is_empty());
    let ended: Vec<FlowKey> = t
        .expire_udp(160 * NS_PER_S, 100)
        .iter()
        .map(|f| f.key)
        .collect();
    assert_eq!(ended, [quiet, late]);
}

#[test]
fn a_udp_peer_reported_again_is_the_same_flow() {
    let mut t = table(10);
    let k = udp("127.0.0.1:5000", "127.0.0.53:53");
    t.open(open(k, 10, 0));
    let o = t.open(open(k, 10, 30));
    assert!(!o.new);
    assert_eq!(t.len(), 1);
    let f = t.get(&k).unwrap();
    assert_eq!((f.start_ns, f.last_active_ns), (0, 30 * NS_PER_S));
}

#[test]
fn the_cap_evicts_the_flow_idle_longest_and_counts_it() {
    let mut t = table(3);
    let a = tcp("127.0.0.1:1", "127.0.0.1:80");
    let b = udp("127.0.0.1:2", "127.0.0.1:53");
    let c = tcp("127.0.0.1:3", "127.0.0.1:80");
    t.open(open(a, 1, 1));
    t.open(open(b, 2, 2));
    t.open(open(c, 3, 3));
    // `a` moves (bytes at 10 s), so `b` is now idle the longest.
    let moved = Counters {
        bytes_sent: Some(5),
        ..Counters::default()
    };
    assert!(t.set_counters(&a, moved, FlowState::Established, 10 * NS_PER_S));
    let d = tcp("127.0.0.1:4", "127.0.0.1:80");
    let o = t.open(open(d, 4, 11));
    assert_eq!(o.evicted.map(|f| f.key), Some(b));
    // Counters that did not move are not activity: `c` (3 s) goes before `a` (10 s).
    assert!(t.set_counters(&a, moved, FlowState::Established, 12 * NS_PER_S));
    let e = tcp("127.0.0.1:5", "127.0.0.1:80");
    assert_eq!(t.open(open(e, 5, 13)).evicted.map(|f| f.key), Some(c));
    let f = tcp("127.0.0.1:6", "127.0.0.1:80");
    assert_eq!(t.open(open(f, 6, 14)).evicted.map(|f| f.key), Some(a));
    assert_eq!(t.len(), 3);
    let s = t.stats();
    assert_eq!((s.evicted, s.opened, s.active, s.cap), (3, 6, 3, 3));
    // An evicted flow's close finds nothing; its UDP counters match nothing.
    assert!(t.close(&b).is_none());
    assert!(!t.observe_udp(2, addr("127.0.0.1:53"), 20 * NS_PER_S, 1, 9));
}

#[test]
fn slots_are_reused_after_close() {
    let mut t = table(2);
    for i in 0..100u16 {
        let k = tcp(&format!("127.0.0.1:{}", 1000 + i), "127.0.0.1:80");
        t.open(open(k, 1, i as u64));
        t.close(&k).unwrap();
    }
    assert!(t.slots.len() <= 1);
    assert_eq!(t.stats().evicted, 0);
}

#[test]
fn summaries_cover_flows_older_than_the_interval() {
    let mut t = FlowTable::new(FlowConfig {
        summary_interval_ns: 60 * NS_PER_S,
        ..FlowConfig::default()
    });
    let old = tcp("127.0.0.1:1", "127.0.0.1:80");
    let young = tcp("127.0.0.1:2", "127.0.0.1:80");
    t.open(open(old, 1, 0));
    t.open(open(young, 1, 30));
    let due: Vec<FlowKey> = t.long_lived(60 * NS_PER_S).map(|f| f.key).collect();
    assert_eq!(due, vec![old]);
    assert_eq!(t.long_lived(90 * NS_PER_S).count(), 2);
}

#[test]
fn a_flow_renders_with_the_initiator_as_src() {
    let mut t = table(4);
    let k = tcp("127.0.0.1:80", "127.0.0.1:40000");
    let mut o = open(k, 9, 0);
    o.direction = Some(Direction::Inbound);
    o.existing = true;
    t.open(o);
    let c = t.get(&k).unwrap().connection("tracepoint");
    assert_eq!(c.src.unwrap().port, 40000);
    assert_eq!(c.dst.port, 80);
    assert!(c.existing);
    assert_eq!(c.netns, Some(7));
    assert_eq!(c.process.unwrap().comm, "curl");
    assert!(
        std::mem::size_of::<Flow>() <= 144,
        "{}",
        std::mem::size_of::<Flow>()
    );
}

/// The two indexes hold slot numbers and hash the slot's flow again when they grow:
/// through growth, removals and slot reuse, every flow stays found by its key and its
/// UDP peer, and a removed one by neither.
#[test]
fn the_indexes_find_every_flow_through_growth_removal_and_reuse() {
    let mut t = table(100_000);
    let key = |i: u32| {
        let proto = if i.is_multiple_of(3) {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        let remote = SocketAddr::new([10, 0, (i >> 8) as u8, i as u8].into(), 53);
        FlowKey::new(proto, 7, addr("10.1.0.1:40000"), remote)
    };
    let pid = |i: u32| 100 + i % 7;
    for i in 0..20_000 {
        assert!(t.open(open(key(i), pid(i), 1)).new);
    }
    for i in (0..20_000).step_by(2) {
        assert!(t.close(&key(i)).is_some());
    }
    for i in 20_000..30_000 {
        assert!(t.open(open(key(i), pid(i), 2)).new);
    }
    assert_eq!(t.len(), 20_000);
    for i in 0..30_000u32 {
        let live = i >= 20_000 || !i.is_multiple_of(2);
        assert_eq!(t.get(&key(i)).is_some(), live, "flow {i}");
        let remote = key(i).remote();
        let udp = key(i).proto == Proto::Udp;
        assert_eq!(
            t.observe_udp(pid(i), remote, 3 * NS_PER_S, 1, 9),
            live && udp,
            "peer {i}"
        );
    }
}

/// A UDP flow whose process changes is found under the new process only; of two flows
/// of one process to one peer, the newest answers for the pair.
#[test]
fn a_udp_peer_follows_its_flows_process_and_the_newest_flow_of_a_pair() {
    let mut t = table(100);
    let remote = addr("10.0.0.9:53");
    let a = udp("10.1.0.1:40000", "10.0.0.9:53");
    t.open(open(a, 100, 1));
    t.open(open(a, 200, 2));
    assert!(!t.observe_udp(100, remote, 3 * NS_PER_S, 1, 9));
    assert!(t.observe_udp(200, remote, 3 * NS_PER_S, 1, 9));
    let b = udp("10.1.0.1:40001", "10.0.0.9:53");
    t.open(open(b, 200, 4));
    assert!(t.observe_udp(200, remote, 5 * NS_PER_S, 2, 18));
    assert_eq!(t.get(&b).unwrap().counters().packets_sent, Some(2));
    assert_eq!(t.get(&a).unwrap().counters().packets_sent, Some(1));
    // Closing the older flow leaves the pair with the newest.
    t.close(&a);
    assert!(t.observe_udp(200, remote, 6 * NS_PER_S, 3, 27));
    assert_eq!(t.get(&b).unwrap().counters().packets_sent, Some(3));
}
