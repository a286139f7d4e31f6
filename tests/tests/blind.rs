//! Issue 18 item 2, "being blinded without a count": an unprivileged user (the
//! `netmon-blind` workloads run as nobody) churns or fills each of netmon's kernel
//! maps, and `stats.kernel_maps` must say so; closed sockets must leave
//! `SOCKET_OWNERS`; IPv4 and IPv6 listeners on one port keep their owners; and a flood
//! of DNS to port 53 must not starve another process's connection events (the excess
//! counted in `stats.dns.rate_limited`).
//!
//! Root only; each test in its own network namespace. Written for the tracepoint
//! backend (cgroup hooks, `inet_sock_set_state`), which every kernel has; the map
//! logic is shared by every backend.
use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
    process::Stdio,
    thread,
    time::Duration,
};

use netmon::event::{Connection, Event, EventBody, Family, KernelMapStats, Stats};
use netmon_tests::{NetNs, Netmon, Peer, blind_bin, require_root};

fn blind(args: &[&str]) -> Peer {
    Peer::spawn_program(&blind_bin(), args, Stdio::piped())
}

/// Sockets one workload process holds at most (the hard file limit here is 20,000).
const PER_PROCESS: usize = 15_000;

/// `total` of something spread over workload processes of at most `per` each: each
/// runs `args(n)` and prints `<word> n`; returns them (still running) once all did.
fn blind_many(
    total: usize,
    per: usize,
    word: &str,
    args: impl Fn(&str) -> Vec<String>,
) -> Vec<Peer> {
    let mut peers = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(per);
        let a = args(&n.to_string());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let p = blind(&a);
        assert_eq!(p.count(word), n as u64, "{a:?}");
        peers.push(p);
        left -= n;
    }
    peers
}

fn stats(e: &Event) -> Option<&Stats> {
    match &e.body {
        EventBody::Stats(s) => Some(s),
        _ => None,
    }
}

fn map<'a>(e: &'a Event, name: &str) -> Option<&'a KernelMapStats> {
    stats(e).and_then(|s| s.kernel_maps.get(name))
}

/// The first `stats` line (within 60 s) whose counters of map `name` satisfy `pred`;
/// fails with the last counters seen.
fn wait_map(
    netmon: &mut Netmon,
    name: &str,
    what: &str,
    pred: impl Fn(&KernelMapStats) -> bool,
) -> KernelMapStats {
    match netmon.wait_for(Duration::from_secs(60), |e| map(e, name).is_some_and(&pred)) {
        Some(e) => map(&e, name).unwrap().clone(),
        None => {
            let last = netmon.seen.iter().rev().find_map(|e| map(e, name));
            panic!("stats.kernel_maps.{name} never showed {what}; last: {last:?}")
        }
    }
}

/// Widens this namespace's ephemeral ports (1024-65535), keeping 40000-40100 for
/// listeners.
fn wide_port_range() {
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535").unwrap();
    std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "40000-40100").unwrap();
}

/// Runs the calling thread (and the processes it starts from now on) on CPU 0 only.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn conn(e: &Event) -> Option<&Connection> {
    match &e.body {
        EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Udp(c) => Some(c),
        _ => None,
    }
}

#[test]
fn socket_owners_leave_with_their_sockets_and_a_flood_of_open_ones_is_counted() {
    require_root!();
    let _ns = NetNs::new();
    wide_port_range();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap().to_string();

    // 80,000 sockets, one after the other, each closed at once: more than the map
    // holds, yet nothing is evicted, because a released socket's owner leaves.
    let churn = blind(&["udp-sockets", &to, "80000", "close"]);
    assert_eq!(churn.count("sent"), 80_000);
    let s = wait_map(&mut netmon, "socket_owners", "80,000 removals", |m| {
        m.removed >= 80_000
    });
    assert!(s.inserted >= 80_000, "{s:?}");
    assert_eq!(
        s.evicted, 0,
        "closed sockets' owners were not removed: {s:?}"
    );
    assert_eq!(s.capacity, 65_536);

    // A victim's connected socket, then 70,000 sockets held open: its owner is pushed
    // out; its next datagram still makes a `udp` event, without its process, counted.
    // On one CPU, as in the CONNECTING test: the LRU evicts a CPU's newest entries
    // only once that CPU needs room.
    pin_to_cpu0();
    let mut victim = blind(&["udp-victim", "127.0.0.1:9"]);
    let victim_port = victim.local_port();
    let hold = blind_many(70_000, PER_PROCESS, "sent", |n| {
        vec!["udp-sockets".into(), to.clone(), n.into(), "hold".into()]
    });
    let s = wait_map(&mut netmon, "socket_owners", "evictions", |m| {
        m.evicted >= 4_000
    });
    assert!(s.evicted <= 70_000, "{s:?}");
    victim
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"send\n")
        .unwrap();
    assert_eq!(victim.count("sent"), 1);
    let udp = netmon
        .wait_for(Duration::from_secs(20), |e| {
            matches!(&e.body, EventBody::Udp(c)
                if c.src.as_ref().is_some_and(|s| s.port == victim_port) && c.dst.port == 9)
        })
        .expect("the victim's datagram was not reported");
    assert!(
        conn(&udp).unwrap().process.is_none(),
        "the victim's owner should have been evicted: {udp:?}"
    );
    wait_map(&mut netmon, "socket_owners", "a miss", |m| m.missed >= 1);
    drop(hold);
}

#[test]
fn connecting_churn_is_counted_and_a_connect_that_lost_its_entry_is_still_reported() {
    require_root!();
    let _ns = NetNs::new();
    wide_port_range();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    // The victim and the flood on one CPU: the LRU keeps each CPU's newest entries on
    // a list of that CPU's, evicted only once that CPU needs room.
    pin_to_cpu0();
    // A listener with a backlog of 0 that does not accept: after one connection fills
    // its queue, SYNs are dropped and connects wait in SYN_SENT.
    let mut stall = blind(&["syn-stall", "127.0.0.1:0"]);
    let port = stall.port();
    let to = format!("127.0.0.1:{port}");
    let _first = TcpStream::connect(&to).unwrap();
    let victim = Peer::spawn(&["tcp-client", &to, "0"]);
    thread::sleep(Duration::from_millis(300));
    let flood = blind_many(20_000, PER_PROCESS, "open", |n| {
        vec!["connect-flood".into(), to.clone(), n.into()]
    });
    let s = wait_map(&mut netmon, "connecting", "evictions", |m| {
        m.evicted >= 3_000
    });
    assert_eq!(s.capacity, 16_384);
    // The listener accepts now: the victim's next SYN gets through, but its entry
    // is long gone.
    stall
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"accept\n")
        .unwrap();
    let local = victim.local_port();
    let connect = netmon
        .wait_for(Duration::from_secs(30), |e| {
            matches!(&e.body, EventBody::Connect(c)
                if c.src.as_ref().is_some_and(|s| s.port == local) && c.dst.port == port)
        })
        .expect("the victim's connect vanished");
    assert!(
        conn(&connect).unwrap().process.is_none(),
        "the victim's CONNECTING entry should have been evicted: {connect:?}"
    );
    wait_map(&mut netmon, "connecting", "a miss", |m| m.missed >= 1);
    drop(flood);
    stall.release();
}

#[test]
fn ipv4_and_ipv6_listeners_on_one_port_keep_their_owners() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    let v4 = Peer::spawn(&["tcp-server", "127.0.0.1:0", "0"]);
    let port = v4.port();
    let v6 = Peer::spawn(&["tcp-server", &format!("[::1]:{port}"), "0"]);
    assert_eq!(v6.port(), port);
    for to in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        Peer::spawn(&["tcp-client", &to, "0"]).wait();
    }
    for (family, owner) in [(Family::Ipv4, v4.pid()), (Family::Ipv6, v6.pid())] {
        let accept = netmon
            .wait_for(Duration::from_secs(20), |e| {
                matches!(&e.body, EventBody::Accept(c) if c.dst.port == port && c.family == family)
            })
            .unwrap_or_else(|| panic!("no {family:?} accept"));
        let pid = conn(&accept).unwrap().process.as_ref().map(|p| p.pid);
        assert_eq!(pid, Some(owner), "{family:?} accept: {accept:?}");
    }
    let s = wait_map(&mut netmon, "listeners", "both listeners", |m| {
        m.inserted >= 2
    });
    assert_eq!((s.insert_failed, s.evicted), (0, 0), "{s:?}");
}

#[test]
fn a_full_listener_table_is_counted() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    // 8,300 listening ports: 108 more than LISTENERS holds.
    let mut many = blind(&["listen-many", "127.0.0.1:0", "30000", "8300"]);
    assert_eq!(many.count("listening"), 8_300);
    let s = wait_map(&mut netmon, "listeners", "refused inserts", |m| {
        m.insert_failed >= 108
    });
    assert_eq!(s.capacity, 8_192);
    // The last port found no room: its connection comes without an owner, counted.
    let _c = TcpStream::connect(("127.0.0.1", 30000 + 8299)).unwrap();
    wait_map(&mut netmon, "listeners", "a miss", |m| m.missed >= 1);
    many.release();
}

#[test]
fn a_full_udp_peer_table_is_counted() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    // 70,000 peers from one process (127.1.x.y, port 9): more than UDP_PEERS holds.
    let peers = blind(&["udp-peers", "127.1", "70000", "9"]);
    assert_eq!(peers.count("sent"), 70_000);
    let s = wait_map(&mut netmon, "udp_peers", "evictions", |m| {
        m.evicted >= 4_000
    });
    assert_eq!(s.capacity, 65_536);
    assert!(s.inserted >= 70_000, "{s:?}");
}

#[test]
fn a_full_tcp_flow_table_is_counted() {
    require_root!();
    let _ns = NetNs::new();
    wide_port_range();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    // 66,000 loopback connections held open: each is two flows (the connect and the
    // accept), 132,000 in all, more than TCP_FLOWS' 131,072.
    // Each process holds both ends of its connections, on ports of its own.
    let port = std::cell::Cell::new(40_000);
    let hold = blind_many(66_000, PER_PROCESS / 2, "open", |n| {
        port.set(port.get() + 1);
        vec![
            "tcp-hold".into(),
            "127.0.0.1,127.0.0.2".into(),
            port.get().to_string(),
            n.into(),
        ]
    });
    let s = wait_map(&mut netmon, "tcp_flows", "evictions", |m| m.evicted >= 500);
    assert_eq!(s.capacity, 131_072);
    assert!(s.inserted >= 131_072, "{s:?}");
    drop(hold);
}

#[test]
fn a_churn_of_dns_senders_is_counted_in_the_rate_table() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    // 8,400 processes, each sending one DNS query: more than DNS_RATE's 8,192.
    let forks = blind(&["dns-forks", "127.0.0.1:53", "8400"]);
    assert_eq!(forks.count("forked"), 8_400);
    let s = wait_map(&mut netmon, "dns_rate", "evictions", |m| m.evicted >= 150);
    assert_eq!(s.capacity, 8_192);
}

#[test]
fn a_dns_flood_is_rate_bounded_and_connections_of_others_all_arrive() {
    require_root!();
    let _ns = NetNs::new();
    // A ring of 256 KiB (400 DNS events): a reader that falls behind for a few ms
    // under the flood loses events, as a busier host would with the default ring.
    let netmon = Netmon::start(&["--stats-interval", "1", "--ring-buffer-kib", "256"]);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in server.incoming() {
            drop(c);
        }
    });
    const SECONDS: u64 = 4;
    // Two flooding processes (one per core here), each within its own budget.
    let floods = [0, 1].map(|_| blind(&["dns-flood", "127.0.0.1:53", &SECONDS.to_string()]));
    thread::sleep(Duration::from_millis(500));
    let conns = blind(&["connects", &format!("127.0.0.1:{port}"), "300"]);
    assert_eq!(conns.count("connected"), 300);
    let sent: u64 = floods.iter().map(|f| f.count("sent")).sum();
    let connector = conns.pid();
    thread::sleep(Duration::from_secs(2));
    let (status, events) = netmon.stop();
    assert!(status.success(), "{status:?}");
    let connects = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Connect(c) if c.dst.port == port => c.process.as_ref().map(|p| p.pid),
            _ => None,
        })
        .filter(|pid| *pid == connector)
        .count();
    let last = events
        .iter()
        .rev()
        .find_map(stats)
        .expect("a final stats line");
    assert_eq!(
        connects, 300,
        "connection events were lost under the DNS flood: lost {:?}",
        last.lost_by_type
    );
    assert_eq!(last.lost_by_type.get("connect").copied().unwrap_or(0), 0);
    // The defaults: 500 packets/s per process after a burst of 1,000.
    let allowed = 2 * (1_000 + 500 * (SECONDS + 1));
    let dns = last.dns.clone().expect("stats.dns");
    assert!(
        sent > 5 * allowed,
        "the flood was too slow to test anything: {sent} queries"
    );
    assert!(
        dns.rate_limited >= sent - allowed,
        "{sent} queries sent, at most {allowed} let through, yet only {} held back: {dns:?}",
        dns.rate_limited
    );
    let s = last.kernel_maps.get("dns_rate").expect("dns_rate counters");
    assert!(s.inserted >= 1, "{s:?}");
}
