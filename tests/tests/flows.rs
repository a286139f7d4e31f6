//! Flows, existing sockets, process context and `netmon snapshot`, against the real
//! system: sockets in the test's own network namespace, a real netmon, and `ss` from
//! iproute2 as the reference.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use netmon::{
    cli::snapshot::Report,
    event::{Direction, Event, EventBody, Proto},
};
use netmon_tests::{NetNs, Netmon, Peer, Scratch, netmon_bin, require_root};

const WAIT: Duration = Duration::from_secs(20);

/// Inside `cargo xtask integration-test vm` (the kernel command line's `netmon_kernel`
/// reaches init's environment): a TCG-emulated CPU, a busybox userland.
fn in_test_vm() -> bool {
    std::env::var_os("netmon_kernel").is_some()
}

/// Skips (returns from) the calling test inside the test VMs, with the reason.
macro_rules! skip_in_vm {
    ($why:literal) => {
        if in_test_vm() {
            eprintln!(concat!("skipped in the test VM: ", $why));
            return;
        }
    };
}

/// What `user` must say for uid 0: `root` where `/etc/passwd` names it (the VMs have
/// no passwd file, so null there).
fn root_name() -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some("0"))
        .and_then(|l| l.split(':').next())
        .map(str::to_owned)
}

fn have_ss() -> bool {
    Command::new("ss")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `netmon snapshot ARGS` from this thread (so in its network namespace).
fn snapshot(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(netmon_bin())
        .arg("snapshot")
        .args(args)
        .output()
        .expect("run netmon snapshot");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One socket as compared: protocol, local, remote (None for listeners / unconnected),
/// state in `ss` spelling.
type SockKey = (String, SocketAddr, Option<SocketAddr>);

/// `ss -tuanp`, parsed: socket → (state, pids).
fn ss_sockets() -> BTreeMap<SockKey, (String, BTreeSet<u32>)> {
    let out = Command::new("ss").arg("-tuanp").output().expect("run ss");
    assert!(out.status.success(), "ss failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = BTreeMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 {
            continue;
        }
        let local = ss_addr(cols[4]).unwrap_or_else(|| panic!("local in {line}"));
        let remote = ss_addr(cols[5]).filter(|a| a.port() != 0);
        let pids: BTreeSet<u32> = line
            .split("pid=")
            .skip(1)
            .map(|s| {
                s.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        map.insert(
            (cols[0].to_owned(), local, remote),
            (cols[1].to_owned(), pids),
        );
    }
    map
}

/// `127.0.0.1:80`, `[::1]:80`, `[::ffff:127.0.0.1]:80`, `0.0.0.0:*`, `*:80`, `127.0.0.53%lo:53`.
fn ss_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.rsplit_once(':')?;
    let port: u16 = if port == "*" { 0 } else { port.parse().ok()? };
    let addr = addr.split('%').next()?;
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if addr == "*" {
        "::".parse().unwrap()
    } else {
        addr.parse().ok()?
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

fn ss_state(state: &str) -> String {
    match state {
        "established" => "ESTAB".into(),
        "unconn" => "UNCONN".into(),
        other => other
            .to_uppercase()
            .replace('_', "-")
            .replace("WAIT1", "WAIT-1")
            .replace("WAIT2", "WAIT-2"),
    }
}

/// Snapshot sockets in the same shape as [`ss_sockets`].
fn snapshot_sockets(report: &Report) -> BTreeMap<SockKey, (String, BTreeSet<u32>)> {
    let mut map = BTreeMap::new();
    for s in report.sockets.as_ref().expect("--show-all lists sockets") {
        let proto = match s.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let local = SocketAddr::new(s.local.ip, s.local.port);
        let remote = s
            .remote
            .as_ref()
            .map(|r| SocketAddr::new(r.ip, r.port))
            .filter(|a| a.port() != 0);
        let pids = s.processes.iter().map(|p| p.pid).collect();
        map.insert(
            (proto.to_owned(), local, remote),
            (ss_state(&s.state), pids),
        );
    }
    map
}

#[test]
fn snapshot_matches_ss_socket_for_socket_and_process_for_process() {
    require_root!();
    let _ns = NetNs::new();
    // TCP listeners on IPv4, IPv6 and dual-stack; established pairs over both.
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = TcpListener::bind("[::1]:0").unwrap();
    let l46 = TcpListener::bind("[::]:0").unwrap();
    let c4 = TcpStream::connect(l4.local_addr().unwrap()).unwrap();
    let (a4, _) = l4.accept().unwrap();
    let c6 = TcpStream::connect(l6.local_addr().unwrap()).unwrap();
    let (a6, _) = l6.accept().unwrap();
    let c46 = TcpStream::connect(("127.0.0.1", l46.local_addr().unwrap().port())).unwrap();
    let (a46, _) = l46.accept().unwrap();
    // UDP: unconnected on both families, and a connected socket.
    let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let u6 = UdpSocket::bind("[::1]:0").unwrap();
    let uc = UdpSocket::bind("127.0.0.1:0").unwrap();
    uc.connect(u4.local_addr().unwrap()).unwrap();
    // A listener and an accepted connection held by another process.
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "0"]);
    let port: u16 = server.port();
    let cp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let the peer accept

    let (status, stdout, stderr) = snapshot(&["--format", "json", "--show-all"]);
    assert!(status.success(), "exit {status}: {stderr}");
    let report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let ours = snapshot_sockets(&report);
    if have_ss() {
        let reference = ss_sockets();
        assert_eq!(ours, reference, "netmon snapshot and ss -tuanp disagree");
    } else {
        eprintln!("ss (iproute2) not installed: comparing with what this test opened only");
    }
    // And the content is what this test opened: 3 + 1 listeners, 4 pairs, 3 UDP.
    assert_eq!(report.summary.by_protocol["tcp"], 4 + 8);
    assert_eq!(report.summary.by_protocol["udp"], 3);
    assert_eq!(report.summary.by_tcp_state["listen"], 4);
    assert_eq!(report.summary.by_tcp_state["established"], 8);
    assert_eq!(report.summary.external_ips, 0);
    let me = std::process::id();
    assert_eq!(report.summary.top_processes[0].pid, me);
    assert_eq!(report.summary.top_processes[0].connections, 8);
    let peer_listener = report
        .listening
        .iter()
        .find(|l| l.local.port == port)
        .expect("peer's listener");
    assert_eq!(peer_listener.processes[0].pid, server.pid());
    assert_eq!(peer_listener.processes[0].comm, "netmon-testpeer");
    let exe = peer_listener.processes[0].detail.exe.as_deref().unwrap();
    assert!(exe.ends_with("netmon-testpeer"), "{exe}");
    assert_eq!(
        peer_listener.processes[0].detail.user.as_deref(),
        Some("root")
    );
    assert!(report.unreadable.sock_diag.is_empty());

    // The text form names the same listeners.
    let (status, text, _) = snapshot(&[]);
    assert!(status.success());
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("netmon-testpeer["), "{text}");
    drop((c4, a4, c6, a6, c46, a46, u6, uc, cp));
}

#[test]
fn snapshot_all_netns_finds_sockets_of_other_namespaces_with_their_processes() {
    require_root!();
    // A listener in a namespace of its own, held by another process...
    let ns = NetNs::new();
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "0"]);
    let port: u16 = server.port();
    let inode = ns.inode;
    drop(ns);
    // ...seen from this thread's namespace (another one, the test's own).
    let _here = NetNs::new();
    // Every namespace of the machine: whatever else runs here may raise an alert (exit
    // 1), which is not what this test checks, so the rules are off.
    let no_rules = netmon_tests::ConfigFile::new("[rules]\nenabled = false\n");
    let (status, stdout, stderr) = snapshot(&[
        "--format",
        "json",
        "--show-all",
        "--all-netns",
        "--config",
        &no_rules.arg(),
    ]);
    assert!(status.success(), "exit {status}: {stderr}");
    let report: Report = serde_json::from_str(&stdout).unwrap();
    let found = report
        .sockets
        .as_ref()
        .unwrap()
        .iter()
        .find(|s| s.netns == Some(inode) && s.local.port == port)
        .unwrap_or_else(|| panic!("listener of netns {inode} port {port} missing"));
    assert_eq!(found.state, "listen");
    assert_eq!(found.processes[0].pid, server.pid());
    // Without --all-netns only this namespace (which has no sockets) is read.
    let (status, stdout, _) = snapshot(&["--format", "json", "--show-all"]);
    assert!(status.success());
    let report: Report = serde_json::from_str(&stdout).unwrap();
    assert!(report.sockets.unwrap().is_empty());
}

#[test]
fn snapshot_plan_touches_nothing_and_exits_zero() {
    let (status, text, _) = snapshot(&["--plan", "--format", "json"]);
    assert!(status.success());
    assert!(text.contains("sock_diag"), "{text}");
    // The built-in rules, one line each (no /etc/netmon/netmon.toml on test machines).
    assert!(text.contains("Rules (5)"), "{text}");
    assert!(text.contains("  - SUSPICIOUS_PORT (high): "), "{text}");
    assert!(text.contains("Not run: DNS_TUNNELING"), "{text}");
    let (status, _, stderr) = snapshot(&["--format", "yaml"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}

#[test]
fn snapshot_of_10000_sockets_takes_under_a_second() {
    require_root!();
    skip_in_vm!("the 1 s budget is for real CPUs, not TCG emulation");
    let _ns = NetNs::new();
    raise_nofile(30_000);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::with_capacity(10_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..5_000 {
        assert!(Instant::now() < deadline, "opening sockets took too long");
        let c = TcpStream::connect(addr).unwrap();
        let (a, _) = listener.accept().unwrap();
        held.push(c);
        held.push(a);
    }
    // Warm the page cache for the binary, then time a real run.
    let _ = snapshot(&["--plan"]);
    let cpu_before = children_cpu();
    let start = Instant::now();
    let (status, stdout, stderr) = snapshot(&["--format", "json"]);
    let elapsed = start.elapsed();
    let cpu = children_cpu() - cpu_before;
    assert!(status.success(), "{stderr}");
    let report: Report = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report.summary.sockets, 10_001);
    assert_eq!(report.summary.top_processes[0].connections, 10_000);
    eprintln!(
        "snapshot of {} sockets: {:.0} ms wall (process start included), {:.0} ms inside, {:.0} ms CPU",
        report.summary.sockets,
        elapsed.as_secs_f64() * 1e3,
        report.elapsed_ms,
        cpu.as_secs_f64() * 1e3
    );
    // Wall time is the requirement; on a machine shared with other builds and VMs the
    // CPU time it needed says the same without the wait for a core.
    assert!(
        elapsed < Duration::from_secs(1) || cpu < Duration::from_millis(500),
        "snapshot took {elapsed:?} ({cpu:?} of CPU)"
    );
}

/// User plus system CPU time of the waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: a zeroed rusage is a valid out-value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises RLIMIT_NOFILE to `n`, or to the hard limit when raising that is not allowed
/// (a sandbox without CAP_SYS_RESOURCE); the test needs about 10,050.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit {
            rlim_cur: n,
            rlim_max: n.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    assert!(
        lim.rlim_cur >= 10_100,
        "RLIMIT_NOFILE stuck at {}",
        lim.rlim_cur
    );
}

fn is_flow(e: &Event, local_port: u16, existing: bool) -> bool {
    matches!(&e.body, EventBody::Flow(f) if f.conn.existing == existing
        && (f.conn.src.as_ref().is_some_and(|s| s.port == local_port) || f.conn.dst.port == local_port))
}

#[test]
fn a_connection_open_before_netmon_is_seen_as_existing_and_its_close_is_attributed() {
    require_root!();
    let ns = NetNs::new();
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "5000"]);
    let port: u16 = server.port();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = conn.local_addr().unwrap().port();
    std::thread::sleep(Duration::from_millis(200));

    let mut netmon = Netmon::start(&[]);
    let me = std::process::id();
    // Both sockets show up at once as existing flows, with their processes.
    let client_flow = netmon
        .wait_for(WAIT, |e| {
            is_flow(e, local, true) && flow_dir(e) == Some(Direction::Outbound)
        })
        .expect("no existing flow for the client socket");
    let EventBody::Flow(f) = &client_flow.body else {
        unreachable!()
    };
    assert_eq!(f.conn.process.as_ref().unwrap().pid, me);
    assert_eq!(f.conn.dst.port, port);
    assert_eq!(f.conn.netns, Some(ns.inode));
    assert_eq!(f.state, "established");
    let server_flow = netmon
        .wait_for(WAIT, |e| {
            is_flow(e, local, true) && flow_dir(e) == Some(Direction::Inbound)
        })
        .expect("no existing flow for the server socket");
    let EventBody::Flow(f) = &server_flow.body else {
        unreachable!()
    };
    assert_eq!(f.conn.process.as_ref().unwrap().pid, server.pid());
    assert_eq!(
        f.conn.src.as_ref().unwrap().port,
        local,
        "src is the client"
    );

    // Now it carries data and ends.
    conn.write_all(&[b'c'; 3000]).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    drop(conn);
    assert_eq!(got.len(), 5000);
    assert_eq!(server.line(), "received 3000");
    let server_pid = server.pid();
    server.wait();

    let close_of = |n: &mut Netmon, dir: Direction| {
        n.wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Close(c) if c.conn.direction == Some(dir)
                && c.conn.netns == Some(ns.inode)
                && (c.conn.src.as_ref().unwrap().port == local))
        })
    };
    let client_close = close_of(&mut netmon, Direction::Outbound).expect("no close of the client");
    let server_close = close_of(&mut netmon, Direction::Inbound).expect("no close of the server");
    let (status, _) = netmon.stop();
    assert!(status.success());
    for (ev, pid, sent, received) in [
        (&client_close, me, 3000, 5000),
        (&server_close, server_pid, 5000, 3000),
    ] {
        let EventBody::Close(c) = &ev.body else {
            unreachable!()
        };
        assert!(c.conn.existing, "{c:?}");
        assert_eq!(c.conn.process.as_ref().unwrap().pid, pid, "{c:?}");
        assert_eq!(c.conn.dst.port, port, "dst is the server: {c:?}");
        assert_eq!(
            (c.bytes_sent, c.bytes_received),
            (Some(sent), Some(received)),
            "{c:?}"
        );
        assert_eq!(c.duration_ms, None, "netmon did not see it begin");
    }
}

#[test]
fn accepts_on_a_port_listening_before_netmon_are_attributed_to_its_owner() {
    require_root!();
    let ns = NetNs::new();
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "100"]);
    let port: u16 = server.port();
    let mut netmon = Netmon::start(&[]);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    drop(conn);
    let server_pid = server.pid();
    assert!(server.wait().success());
    let accept = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Accept(c) if c.dst.port == port && c.netns == Some(ns.inode))
        })
        .expect("no accept");
    let p = accept.body.connection().unwrap().process.clone();
    assert_eq!(
        p.map(|p| (p.pid, p.comm)),
        Some((server_pid, "netmon-testpeer".into())),
        "{:#?}",
        netmon.seen
    );
    let close = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Close(c) if c.conn.dst.port == port
                && c.conn.direction == Some(Direction::Inbound))
        })
        .expect("no close of the accepted socket");
    let EventBody::Close(c) = &close.body else {
        unreachable!()
    };
    assert_eq!(c.conn.process.as_ref().map(|p| p.pid), Some(server_pid));
    assert_eq!((c.bytes_sent, c.bytes_received), (Some(100), Some(0)));
}

fn flow_dir(e: &Event) -> Option<Direction> {
    e.body.connection().and_then(|c| c.direction)
}

#[test]
fn ten_megabytes_over_loopback_are_counted_exactly_with_summaries_on_the_way() {
    require_root!();
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&["--flow-interval", "1"]);
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "0"]);
    let port: u16 = server.port();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = conn.local_addr().unwrap().port();
    const TOTAL: usize = 10_000_000;
    let chunk = vec![b'x'; 100_000];
    // Spread over ~3 s so at least two summaries fall inside the transfer.
    for i in 0..TOTAL / chunk.len() {
        conn.write_all(&chunk).unwrap();
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    drop(conn);
    assert_eq!(server.line(), format!("received {TOTAL}"));
    let server_pid = server.pid();
    server.wait();
    let close = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Close(c) if c.conn.direction == Some(Direction::Outbound)
                && c.conn.src.as_ref().unwrap().port == local && c.conn.netns == Some(ns.inode))
        })
        .expect("no close of the client");
    let server_close = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Close(c) if c.conn.direction == Some(Direction::Inbound)
                && c.conn.src.as_ref().unwrap().port == local && c.conn.netns == Some(ns.inode))
        })
        .expect("no close of the server");
    let (status, events) = netmon.stop();
    assert!(status.success());
    let EventBody::Close(c) = &close.body else {
        unreachable!()
    };
    assert_eq!(
        (c.bytes_sent, c.bytes_received),
        (Some(TOTAL as u64), Some(0))
    );
    assert_eq!(c.conn.process.as_ref().unwrap().pid, std::process::id());
    let EventBody::Close(s) = &server_close.body else {
        unreachable!()
    };
    assert_eq!(
        (s.bytes_sent, s.bytes_received),
        (Some(0), Some(TOTAL as u64))
    );
    assert_eq!(s.conn.process.as_ref().unwrap().pid, server_pid);
    // Summaries of the client's flow: bytes so far, growing, never above the total.
    let sent: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Flow(f)
                if f.conn.src.as_ref().unwrap().port == local
                    && f.conn.direction == Some(Direction::Outbound) =>
            {
                f.bytes_sent
            }
            _ => None,
        })
        .collect();
    assert!(!sent.is_empty(), "no flow summaries during a 3 s transfer");
    assert!(sent.windows(2).all(|w| w[0] <= w[1]), "{sent:?}");
    assert!(sent.iter().all(|&n| n <= TOTAL as u64), "{sent:?}");
    assert!(sent.iter().any(|&n| n > 0), "{sent:?}");
}

#[test]
fn idle_udp_flows_close_with_their_counters_and_process() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--udp-timeout", "2"]);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap();
    let sender = Peer::spawn(&["udp-send", &target.to_string(), "5", "100"]);
    let local = sender.local_port();
    let pid = sender.pid();
    assert!(sender.wait().success());
    let close = netmon
        .wait_for(WAIT, |e| {
            // (UDP events carry no netns on the cgroup backend; the port is unique here.)
            matches!(&e.body, EventBody::Close(c) if c.conn.proto == Proto::Udp
                && c.conn.dst.port == target.port())
        })
        .expect("no close for the idle UDP flow");
    let EventBody::Close(c) = &close.body else {
        unreachable!()
    };
    assert_eq!(c.reason.as_deref(), Some("udp_idle"));
    assert_eq!(c.packets_sent, Some(5));
    assert_eq!(c.bytes_sent, Some(500), "UDP payload, headers out");
    assert_eq!(c.bytes_received, None);
    assert_eq!(c.conn.src.as_ref().unwrap().port, local);
    let p = c.conn.process.as_ref().unwrap();
    assert_eq!((p.pid, p.comm.as_str()), (pid, "netmon-testpeer"));
    // The peer was forgotten in the kernel too: a new datagram is a new flow.
    let again = Peer::spawn(&["udp-send", &target.to_string(), "1", "10"]);
    let pid2 = again.pid();
    assert!(again.wait().success());
    assert!(
        netmon
            .wait_for(WAIT, |e| matches!(&e.body, EventBody::Udp(c)
                if c.dst.port == target.port() && c.process.as_ref().is_some_and(|p| p.pid == pid2)))
            .is_some()
    );
    let (status, events) = netmon.stop();
    assert!(status.success());
    let EventBody::Stats(s) = &events.last().unwrap().body else {
        panic!()
    };
    let flows = s.flows.as_ref().expect("stats.flows");
    assert!(flows.udp_expired >= 1, "{flows:?}");
}

#[test]
fn connection_events_carry_process_context() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "10"]);
    let port: u16 = server.port();
    // Both ends stay alive until their events are read: a process that is gone before
    // netmon looks at /proc keeps only the kernel's fields (checked in unit tests).
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let connect = netmon
        .wait_for(
            WAIT,
            |e| matches!(&e.body, EventBody::Connect(c) if c.dst.port == port),
        )
        .expect("no connect");
    let accept = netmon
        .wait_for(
            WAIT,
            |e| matches!(&e.body, EventBody::Accept(c) if c.dst.port == port),
        )
        .expect("no accept");
    let p = connect.body.connection().unwrap().process.clone().unwrap();
    assert_eq!(p.pid, std::process::id());
    let d = &p.detail;
    let me = std::env::current_exe().unwrap();
    assert_eq!(d.exe.as_deref(), Some(me.to_str().unwrap()), "{d:?}");
    // The command line holds argv[0] as it was typed, which is not the resolved exe
    // when the target directory is reached through a symlink (as CI's cache is).
    let argv0 = std::env::args().next().unwrap();
    assert!(
        d.cmdline.as_deref().is_some_and(|c| c.starts_with(&argv0)),
        "{d:?}"
    );
    assert_eq!(d.user, root_name());
    // SAFETY: no preconditions.
    assert_eq!(d.ppid, Some(unsafe { libc::getppid() } as u32));
    let p = accept.body.connection().unwrap().process.clone().unwrap();
    assert_eq!(p.pid, server.pid());
    let d = &p.detail;
    assert!(
        d.exe
            .as_deref()
            .is_some_and(|e| e.ends_with("netmon-testpeer")),
        "{d:?}"
    );
    assert!(
        d.cmdline
            .as_deref()
            .is_some_and(|c| c.ends_with("tcp-server 127.0.0.1:0 10")),
        "{d:?}"
    );
    assert_eq!(d.ppid, Some(std::process::id()));

    // The server's exit is seen (its cache entry is dropped).
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(server.wait().success());
    netmon.collect_for(Duration::from_millis(500));
    let (status, events) = netmon.stop();
    assert!(status.success());
    let EventBody::Stats(s) = &events.last().unwrap().body else {
        panic!()
    };
    assert!(s.processes.as_ref().unwrap().exits >= 1, "{s:?}");
    let EventBody::Probe(probe) = &events[0].body else {
        panic!()
    };
    assert!(
        probe
            .capabilities
            .iter()
            .any(|c| c.capability == "process_exit" && c.backend.is_some()),
        "{probe:?}"
    );
}

/// Resident memory of netmon itself, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib as f64 / 1024.0
}

#[test]
fn a_hundred_thousand_live_flows_fit_in_50_mb_of_netmon() {
    require_root!();
    skip_in_vm!("100,000 flows take minutes under TCG emulation");
    let _ns = NetNs::new();
    // With the history on, as netmon runs by default: its writer (queue, aggregator,
    // SQLite's page cache) counts in the budget too.
    let scratch = Scratch::new("flows-memory");
    let db = scratch.0.join("netmon.db");
    // No summaries or expiry during the measurement: only the table grows.
    let mut netmon = Netmon::start(&[
        "--history",
        db.to_str().unwrap(),
        "--udp-timeout",
        "3600",
        "--flow-interval",
        "3600",
        "--stats-interval",
        "1",
    ]);
    let idle_rss = rss_mib(netmon.pid());
    // 100,000 UDP peers (two loopback addresses × 50,000 ports), one datagram each,
    // paced: 100,000 flows in netmon's table.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for i in 0..100_000u32 {
        let ip = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        let port = 10_000 + (i / 2) as u16;
        let _ = sock.send_to(b"x", (ip, port));
        if i % 2_000 == 1_999 {
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Wait until the table holds them all, or stops growing (the machine is shared:
    // other load can fill the ring buffer, and a lost `udp` event is a flow not seen).
    let mut last_active = 0;
    let mut stats = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(ev) = netmon.wait_for(Duration::from_secs(30), |e| {
            matches!(&e.body, EventBody::Stats(s) if s.flows.as_ref().is_some_and(|f| f.active > 0))
        }) else {
            break;
        };
        netmon.seen.clear();
        let EventBody::Stats(s) = &ev.body else {
            unreachable!()
        };
        let active = s.flows.as_ref().unwrap().active;
        stats = Some(s.clone());
        if active >= 100_000 || (active == last_active && active > 0) {
            break;
        }
        last_active = active;
    }
    let s = stats.expect("no stats line");
    let flows = s.flows.as_ref().unwrap();
    let rss = rss_mib(netmon.pid());
    // Per-flow cost from this run, applied to 100,000 flows.
    let at_100k = idle_rss + (rss - idle_rss) * 100_000.0 / flows.active as f64;
    eprintln!(
        "netmon RSS: {idle_rss:.1} MiB idle, {rss:.1} MiB with {} flows ({} events lost with the ring buffer full); {at_100k:.1} MiB at 100,000 flows",
        flows.active, s.lost
    );
    assert!(flows.active >= 50_000, "too few flows to measure: {s:?}");
    // (Flows of other processes on the machine count too: at the default cap of
    // 100,000 the table may have evicted a few to stay there. That is the point.)
    assert!(flows.active <= 100_000);
    assert!(
        at_100k * 1.048_576 < 50.0,
        "netmon would hold {at_100k:.1} MiB with 100,000 flows"
    );
    // The history was on and kept up: the udp events are in it.
    let history = s.history.as_ref().expect("stats.history with --history");
    assert!(history.written > 0 && history.errors == 0, "{history:?}");
    let (status, _) = netmon.stop();
    assert!(status.success());
}
