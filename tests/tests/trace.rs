//! `netmon run` end to end: real sockets in a private network namespace, a real netmon,
//! its JSON read back with serde and checked against the event contract.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use netmon::event::{Direction, EventBody, Family, Proto};
use netmon_tests::{
    NetNs, Netmon, Peer, bpf_ids_held_by, bpf_link_exists, bpf_prog_exists, conn_events, gettid,
    process_comm, require_root, thread_comm,
};

const WAIT: Duration = Duration::from_secs(20);

/// A TCP exchange between this thread (client) and a `netmon-testpeer` server, checked
/// on both sides: connect, accept, listen and both closes, with processes and bytes.
fn tcp_round_trip(listen: &str, connect_ip: &str, family: Family) {
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let server = Peer::spawn(&["tcp-server", listen, "100000"]);
    let port: u16 = server.port();
    let dst: SocketAddr = SocketAddr::new(connect_ip.parse().unwrap(), port);

    let mut conn = TcpStream::connect(dst).unwrap();
    let local = conn.local_addr().unwrap();
    conn.write_all(&[b'c'; 3000]).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    drop(conn);
    assert_eq!(got.len(), 100000);
    assert_eq!(server.line(), "received 3000");
    let server_pid = server.pid();
    server.wait();

    let me = std::process::id();
    let closes = |n: &mut Netmon| {
        n.wait_for(WAIT, |e| {
            let EventBody::Close(c) = &e.body else {
                return false;
            };
            c.conn.dst.port == port && c.conn.direction == Some(Direction::Inbound)
        })
        .and_then(|_| {
            n.wait_for(WAIT, |e| {
                let EventBody::Close(c) = &e.body else {
                    return false;
                };
                c.conn.dst.port == port && c.conn.direction == Some(Direction::Outbound)
            })
        })
    };
    assert!(
        closes(&mut netmon).is_some(),
        "no close events: {:#?}",
        netmon.seen
    );
    let (status, events) = netmon.stop();
    assert!(status.success(), "netmon exited with {status}");

    let listens: Vec<_> = conn_events(&events, "listen", ns.inode)
        .filter(|c| c.dst.port == port)
        .collect();
    assert_eq!(listens.len(), 1, "{events:#?}");
    let l = listens[0];
    assert_eq!(l.process.as_ref().unwrap().pid, server_pid);
    assert_eq!(l.process.as_ref().unwrap().comm, "netmon-testpeer");
    assert!(l.src.is_none());

    let connects: Vec<_> = conn_events(&events, "connect", ns.inode)
        .filter(|c| c.dst.port == port)
        .collect();
    assert_eq!(connects.len(), 1, "{events:#?}");
    let c = connects[0];
    assert_eq!(c.proto, Proto::Tcp);
    assert_eq!(c.family, family);
    assert_eq!(c.direction, Some(Direction::Outbound));
    assert_eq!(c.src.as_ref().unwrap().port, local.port());
    assert_eq!(c.src.as_ref().unwrap().ip, local.ip().to_canonical());
    assert_eq!(c.dst.ip, dst.ip());
    let p = c.process.as_ref().unwrap();
    assert_eq!((p.pid, p.tid), (me, gettid()));
    // The process's name, and the acting thread's when it has another (libtest runs
    // each test on a thread named after it).
    assert_eq!(p.comm, process_comm());
    let thread = thread_comm();
    assert_eq!(
        p.thread.as_deref(),
        (thread != p.comm).then_some(thread.as_str())
    );
    assert!(!c.failed);

    let accepts: Vec<_> = conn_events(&events, "accept", ns.inode)
        .filter(|c| c.dst.port == port)
        .collect();
    assert_eq!(accepts.len(), 1, "{events:#?}");
    let a = accepts[0];
    assert_eq!(a.direction, Some(Direction::Inbound));
    assert_eq!(
        a.src.as_ref().unwrap().port,
        local.port(),
        "accept's src is the remote client"
    );
    assert_eq!(
        a.process.as_ref().unwrap().pid,
        server_pid,
        "accept belongs to the listener's owner"
    );
    assert_eq!(a.process.as_ref().unwrap().comm, "netmon-testpeer");

    for e in &events {
        let EventBody::Close(close) = &e.body else {
            continue;
        };
        if close.conn.dst.port != port || close.conn.netns != Some(ns.inode) {
            continue;
        }
        let pid = close.conn.process.as_ref().unwrap().pid;
        let expect = match close.conn.direction {
            Some(Direction::Outbound) => (me, 3000, 100000),
            Some(Direction::Inbound) => (server_pid, 100000, 3000),
            None => panic!("close without direction: {close:?}"),
        };
        assert_eq!(
            (pid, close.bytes_sent, close.bytes_received),
            (expect.0, Some(expect.1), Some(expect.2))
        );
        assert!(close.duration_ms.unwrap() > 0.0);
        assert_eq!(close.conn.src.as_ref().unwrap().port, local.port());
    }
}

#[test]
fn tcp_ipv4_connect_accept_close() {
    require_root!();
    tcp_round_trip("127.0.0.1:0", "127.0.0.1", Family::Ipv4);
}

#[test]
fn tcp_ipv6_connect_accept_close() {
    require_root!();
    tcp_round_trip("[::1]:0", "::1", Family::Ipv6);
}

#[test]
fn tcp_v4_mapped_is_reported_as_ipv4() {
    require_root!();
    // A dual-stack IPv6 listener reached over IPv4: the kernel sees ::ffff:127.0.0.1.
    tcp_round_trip("[::]:0", "127.0.0.1", Family::Ipv4);
}

#[test]
fn failed_connect_is_reported() {
    require_root!();
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    // Nothing listens on port 1 in a fresh namespace: the kernel answers with a RST.
    let err = TcpStream::connect("127.0.0.1:1").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let ev = netmon.wait_for(WAIT, |e| {
        matches!(&e.body, EventBody::Connect(c) if c.dst.port == 1 && c.netns == Some(ns.inode))
    });
    let ev = ev.expect("no connect event for the refused connection");
    let c = ev.body.connection().unwrap();
    assert!(c.failed);
    assert_eq!(c.process.as_ref().unwrap().pid, std::process::id());
}

/// UDP: one event per process and peer however many datagrams, with the real source port.
fn udp_peer(to: &str, family: Family) {
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let sink = UdpSocket::bind(to).unwrap();
    let target = sink.local_addr().unwrap();
    let sender = Peer::spawn(&["udp-send", &target.to_string(), "25", "100"]);
    let local = sender.local_port();
    let pid = sender.pid();
    assert!(sender.wait().success());
    let first = netmon.wait_for(
        WAIT,
        |e| matches!(&e.body, EventBody::Udp(c) if c.dst.port == target.port()),
    );
    let first = first.expect("no udp event");
    netmon.collect_for(Duration::from_millis(500));
    let (status, events) = netmon.stop();
    assert!(status.success());
    let udp: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Udp(c) if c.dst.port == target.port() => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        udp.len(),
        1,
        "25 datagrams to one peer must make one event: {udp:#?}"
    );
    let c = first.body.connection().unwrap();
    assert_eq!(c.proto, Proto::Udp);
    assert_eq!(c.family, family);
    assert_eq!(c.dst.ip, target.ip());
    assert_eq!(c.src.as_ref().unwrap().port, local);
    assert_eq!(
        c.bytes,
        Some(108),
        "first datagram: 8-byte UDP header + 100 bytes"
    );
    let p = c.process.as_ref().unwrap();
    assert_eq!((p.pid, p.comm.as_str()), (pid, "netmon-testpeer"));
}

#[test]
fn udp_ipv4_one_event_per_peer() {
    require_root!();
    udp_peer("127.0.0.1:0", Family::Ipv4);
}

#[test]
fn udp_ipv6_one_event_per_peer() {
    require_root!();
    udp_peer("[::1]:0", Family::Ipv6);
}

#[test]
fn stats_lines_count_events_and_losses() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "10"]);
    let port: u16 = server.port();
    let client = Peer::spawn(&["tcp-client", &format!("127.0.0.1:{port}"), "10"]);
    assert!(client.wait().success());
    let stats = netmon.wait_for(WAIT, |e| {
        matches!(&e.body, EventBody::Stats(s) if s.events.get("connect").copied().unwrap_or(0) >= 1)
    });
    let stats = stats.expect("no stats line counting the connection");
    let EventBody::Stats(s) = &stats.body else {
        unreachable!()
    };
    assert_eq!(s.lost, 0);
    assert_eq!(s.malformed, 0);
    for kind in ["connect", "accept", "udp", "listen", "close"] {
        assert!(s.events.contains_key(kind), "stats lacks {kind}: {s:?}");
    }
    // Runs the kernel skipped are counted where it counts them (5.12+).
    if kernel_version() >= (5, 12) {
        assert!(s.skipped_runs.is_some(), "stats lacks skipped_runs: {s:?}");
        assert_eq!(
            s.skipped_runs,
            Some(s.skipped_runs_by_program.values().sum::<u64>())
        );
    } else {
        assert_eq!(s.skipped_runs, None);
    }
}

/// The hub's guarantee: a consumer that never reads loses only its own events, each
/// one counted (`stats.consumers.stalled`), while the sink still writes every event and
/// `stats.events` counts every line written, whatever made it.
#[test]
fn a_stalled_consumer_loses_only_its_own_events_and_the_sink_gets_every_one() {
    require_root!();
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1", "--test-stalled-consumer", "8"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    const CONNECTIONS: usize = 40;
    for _ in 0..CONNECTIONS {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (a, _) = listener.accept().unwrap();
        drop(c);
        drop(a);
    }
    let closes = |e: &netmon::event::Event| matches!(&e.body, EventBody::Stats(s) if s.events.get("close").copied().unwrap_or(0) >= 2 * CONNECTIONS as u64);
    assert!(
        netmon.wait_for(WAIT, closes).is_some(),
        "the closes were not counted"
    );
    let (status, events) = netmon.stop();
    assert!(status.success(), "netmon exited with {status}");
    let last = events.last().expect("no events");
    let EventBody::Stats(s) = &last.body else {
        panic!("the last line is not stats: {last:?}")
    };
    assert!(s.r#final);
    let before = &events[..events.len() - 1];
    // The sink missed nothing: every type is counted as often as it was written.
    let mut written = std::collections::BTreeMap::<String, u64>::new();
    for e in before
        .iter()
        .filter(|e| !matches!(e.body, EventBody::Stats(_)))
    {
        *written.entry(e.body.type_name().to_owned()).or_default() += 1;
    }
    for (kind, n) in &written {
        assert_eq!(s.events.get(kind), Some(n), "{kind}: {s:?}");
    }
    for (kind, n) in &s.events {
        assert_eq!(written.get(kind).copied().unwrap_or(0), *n, "{kind}: {s:?}");
    }
    assert!(conn_events(&events, "connect", ns.inode).count() >= CONNECTIONS);
    assert_eq!(s.consumers["sink"].dropped, 0, "{s:?}");
    // The stalled consumer holds its first 8 events and missed all the others.
    let stalled = &s.consumers["stalled"];
    assert_eq!(stalled.queued, 8, "{s:?}");
    assert_eq!(stalled.dropped, before.len() as u64 - 8, "{s:?}");
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn sigterm_detaches_everything_and_writes_final_stats() {
    require_root!();
    let _ns = NetNs::new();
    let netmon = Netmon::start(&[]);
    let (progs, links) = bpf_ids_held_by(netmon.pid());
    assert!(!progs.is_empty(), "netmon holds no BPF programs?");
    assert!(progs.iter().all(|&id| bpf_prog_exists(id)));
    let (status, events) = netmon.stop();
    assert!(status.success(), "exit status {status}");
    let last = events.last().expect("no output");
    assert!(
        matches!(&last.body, EventBody::Stats(s) if s.r#final),
        "last line: {last:?}"
    );
    // Give the kernel a moment to free programs whose last reference just closed.
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<u32> = progs
        .iter()
        .copied()
        .filter(|&id| bpf_prog_exists(id))
        .collect();
    assert!(
        left.is_empty(),
        "programs still loaded after exit: {left:?}"
    );
    let left: Vec<u32> = links
        .iter()
        .copied()
        .filter(|&id| bpf_link_exists(id))
        .collect();
    assert!(left.is_empty(), "links still attached after exit: {left:?}");
}

/// `netmon run` with the backend under test, stdout and stderr piped, read by nobody yet
/// (for tests of how it treats its reader).
fn spawn_piped_netmon() -> std::process::Child {
    std::process::Command::new(netmon_tests::netmon_bin())
        .args(["run", "--no-history", "--backend", &netmon_tests::backend()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A reader that stops reading must not keep netmon from stopping: after SIGTERM it
/// waits while output still goes out, then ends (exit 1, a line on stderr) and the
/// kernel detaches everything.
#[test]
fn sigterm_stops_netmon_whose_reader_stalled() {
    use std::io::BufRead;
    require_root!();
    let _ns = NetNs::new();
    let mut child = spawn_piped_netmon();
    // Read the probe line, then never read again.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut probe = String::new();
    stdout.read_line(&mut probe).unwrap();
    assert!(probe.contains("\"type\":\"probe\""), "{probe}");
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let (progs, links) = bpf_ids_held_by(child.id());
    // Far more output than the pipe and netmon's buffer hold: 600 connections, four
    // events or more each.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for _ in 0..600 {
        let c = TcpStream::connect(addr).unwrap();
        let (a, _) = listener.accept().unwrap();
        drop((c, a));
    }
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "netmon did not stop within 20 s of SIGTERM while its reader stalled"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status}");
    let err = stderr.join().unwrap();
    assert!(
        err.contains("stopping without the final stats"),
        "stderr: {err}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        progs.iter().all(|&id| !bpf_prog_exists(id)),
        "programs left"
    );
    assert!(links.iter().all(|&id| !bpf_link_exists(id)), "links left");
    drop(stdout);
}

#[test]
fn json_lines_follow_the_contract() {
    require_root!();
    let _ns = NetNs::new();
    let out = std::env::temp_dir().join(format!("netmon-contract-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let out_s = out.to_string_lossy().into_owned();
    // --output appends to a file; the harness still needs stdout, so run a second
    // netmon writing to the file and read that back raw.
    let mut child = std::process::Command::new(netmon_tests::netmon_bin())
        .args([
            "run",
            "--no-history",
            "--backend",
            &netmon_tests::backend(),
            "--output",
            &out_s,
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&out)
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe line in {out_s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "1"]);
    let port: u16 = server.port();
    assert!(
        Peer::spawn(&["tcp-client", &format!("127.0.0.1:{port}"), "1"])
            .wait()
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut types = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let ts = v["ts"].as_str().expect("ts");
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-21T14:45:00.123456789Z".len(),
            "ts {ts}"
        );
        assert!(v["host"].as_str().is_some_and(|h| !h.is_empty()));
        let t = v["type"].as_str().expect("type").to_owned();
        if matches!(t.as_str(), "connect" | "accept" | "close" | "udp") {
            for key in ["proto", "family", "direction", "src", "dst", "process"] {
                assert!(v.get(key).is_some(), "{t} lacks {key}: {line}");
            }
        }
        if t == "close" {
            for key in ["duration_ms", "bytes_sent", "bytes_received"] {
                assert!(v.get(key).is_some(), "close lacks {key}: {line}");
            }
        }
        // Every line is a complete event in the typed model too.
        let _: netmon::event::Event = serde_json::from_str(line).unwrap();
        types.insert(t);
    }
    for t in ["probe", "listen", "connect", "accept", "close", "stats"] {
        assert!(types.contains(t), "no {t} line in {text}");
    }
}

#[test]
fn closed_stdout_ends_netmon_quietly() {
    require_root!();
    let _ns = NetNs::new();
    let mut child = spawn_piped_netmon();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // the shipper died
    // Make an event so netmon has something to write.
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let _ = TcpStream::connect("127.0.0.1:1");
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "netmon kept running with no reader"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The programs wake netmon only when the ring buffer fills up (batched wake-ups), and
/// netmon drains it on a timer (`--max-latency-ms`, 50 by default): a lone connection
/// on an otherwise idle host must still appear within that bound, not wait for the
/// ring to fill (it never would).
#[test]
fn a_lone_connection_appears_within_the_latency_bound() {
    require_root!();
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut latencies = Vec::new();
    for _ in 0..5 {
        // Quiet before each connection, so nothing else fills the ring meanwhile.
        netmon.collect_for(Duration::from_millis(200));
        let start = std::time::Instant::now();
        let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = conn.local_addr().unwrap().port();
        let seen = netmon.wait_for(WAIT, |e| {
            e.body.type_name() == "connect"
                && e.body.connection().is_some_and(|c| {
                    c.netns == Some(ns.inode)
                        && c.dst.port == port
                        && c.src.as_ref().is_some_and(|s| s.port == local)
                })
        });
        let latency = start.elapsed();
        assert!(seen.is_some(), "the connect never appeared");
        latencies.push(latency);
        drop(conn);
        let _ = listener.accept();
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // 50 ms of timer, plus scheduling slack on a loaded two-core machine.
    assert!(
        median <= Duration::from_millis(50 + 150),
        "median delivery latency {median:?} (all: {latencies:?})"
    );
    let (status, _) = netmon.stop();
    assert!(status.success());
}
