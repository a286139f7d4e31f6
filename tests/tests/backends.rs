//! Backend choice: an explicit backend the kernel refuses fails loudly; `doctor`
//! agrees with `run`; every backend this kernel supports reports the same events —
//! types, processes, addresses, ports, bytes — for one scenario.
use std::{collections::BTreeSet, net::UdpSocket, process::Command, time::Duration};

use netmon::event::{Event, EventBody};
use netmon_tests::{NetNs, Netmon, Peer, netmon_bin, require_root};

const BACKENDS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// On a kernel where the runner expects fentry to win, every backend must work.
fn all_backends_expected() -> bool {
    std::env::var("NETMON_EXPECT_AUTO").is_ok_and(|v| v == "fentry")
}

/// One event reduced to what must not depend on the backend: pids become roles.
type Normalized = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn normalize(e: &Event, roles: &[(u32, &str)], netns: u32) -> Option<Normalized> {
    let c = e.body.connection()?;
    if c.netns.is_some_and(|n| n != netns) {
        return None;
    }
    let role = match &c.process {
        Some(p) => roles
            .iter()
            .find(|(pid, _)| *pid == p.pid)
            .map(|(_, r)| format!("{r}/{}", p.comm))?,
        None => "unknown".into(),
    };
    let extra = match &e.body {
        EventBody::Close(x) => format!("sent={:?} received={:?}", x.bytes_sent, x.bytes_received),
        EventBody::Udp(u) => format!("bytes={:?}", u.bytes),
        EventBody::Connect(u) => format!("failed={}", u.failed),
        _ => String::new(),
    };
    Some((
        e.body.type_name().into(),
        format!("{:?}", c.proto),
        format!("{:?}", c.family),
        format!("{:?}", c.direction),
        c.src
            .as_ref()
            .map(|s| format!("{}:{}", s.ip, s.port))
            .unwrap_or_default(),
        format!("{}:{}", c.dst.ip, c.dst.port),
        role,
        extra,
        String::new(),
    ))
}

/// A normalized event from its eight fields, in `Normalized` order.
fn n(f: [&str; 8]) -> Normalized {
    let [t, proto, fam, dir, src, dst, role, extra] = f.map(String::from);
    (t, proto, fam, dir, src, dst, role, extra, String::new())
}

/// What the scenario must produce, on every backend.
fn expected() -> BTreeSet<Normalized> {
    let mut set = BTreeSet::new();
    for (fam, server, client) in [
        ("Ipv4", "127.0.0.1:7001", "127.0.0.1:7101"),
        ("Ipv6", "::1:7002", "::1:7102"),
    ] {
        let out = "Some(Outbound)";
        let inb = "Some(Inbound)";
        set.insert(n([
            "listen",
            "Tcp",
            fam,
            inb,
            "",
            server,
            "server/netmon-testpeer",
            "",
        ]));
        set.insert(n([
            "connect",
            "Tcp",
            fam,
            out,
            client,
            server,
            "client/netmon-testpeer",
            "failed=false",
        ]));
        set.insert(n([
            "accept",
            "Tcp",
            fam,
            inb,
            client,
            server,
            "server/netmon-testpeer",
            "",
        ]));
        set.insert(n([
            "close",
            "Tcp",
            fam,
            out,
            client,
            server,
            "client/netmon-testpeer",
            "sent=Some(300) received=Some(500)",
        ]));
        set.insert(n([
            "close",
            "Tcp",
            fam,
            inb,
            client,
            server,
            "server/netmon-testpeer",
            "sent=Some(500) received=Some(300)",
        ]));
    }
    set.insert(n([
        "udp",
        "Udp",
        "Ipv4",
        "Some(Outbound)",
        "127.0.0.1:7103",
        "127.0.0.1:7003",
        "sender/netmon-testpeer",
        "bytes=Some(28)",
    ]));
    set.insert(n([
        "udp",
        "Udp",
        "Ipv6",
        "Some(Outbound)",
        "::1:7104",
        "::1:7004",
        "sender/netmon-testpeer",
        "bytes=Some(28)",
    ]));
    set
}

/// Runs the scenario under `backend` in a fresh namespace; `None` if the kernel
/// refuses the backend.
fn scenario(backend: &str) -> Option<BTreeSet<Normalized>> {
    let ns = NetNs::new();
    let mut netmon = match Netmon::try_start(backend, &[]) {
        Ok(n) => n,
        Err(e) => {
            assert!(
                !all_backends_expected(),
                "--backend {backend} must work on this kernel: {e}"
            );
            eprintln!(
                "backend {backend} unavailable here: {}",
                e.lines().last().unwrap_or("")
            );
            return None;
        }
    };
    let mut roles = Vec::new();
    for (server, client) in [
        ("127.0.0.1:7001", "127.0.0.1:7101"),
        ("[::1]:7002", "[::1]:7102"),
    ] {
        let s = Peer::spawn(&["tcp-server", server, "500"]);
        assert!(s.line().starts_with("port "));
        let c = Peer::spawn(&["tcp-client", server, "300", client]);
        roles.push((s.pid(), "server"));
        roles.push((c.pid(), "client"));
        assert_eq!(
            c.line(),
            format!("local {}", client.rsplit(':').next().unwrap())
        );
        assert_eq!(c.line(), "received 500");
        assert_eq!(s.line(), "received 300");
        assert!(c.wait().success() && s.wait().success());
    }
    let sinks: Vec<UdpSocket> = ["127.0.0.1:7003", "[::1]:7004"]
        .iter()
        .map(|a| UdpSocket::bind(a).unwrap())
        .collect();
    for (to, from) in [
        ("127.0.0.1:7003", "127.0.0.1:7103"),
        ("[::1]:7004", "[::1]:7104"),
    ] {
        let u = Peer::spawn(&["udp-send", to, "3", "20", from]);
        roles.push((u.pid(), "sender"));
        assert!(u.wait().success());
    }
    let want = expected();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got: BTreeSet<_> = netmon
            .seen
            .iter()
            .filter_map(|e| normalize(e, &roles, ns.inode))
            .collect();
        if want.is_subset(&got) || std::time::Instant::now() > deadline {
            break;
        }
        netmon.collect_for(Duration::from_millis(200));
    }
    netmon.collect_for(Duration::from_millis(300));
    drop(sinks);
    let (status, events) = netmon.stop();
    assert!(status.success());
    let got: Vec<Normalized> = events
        .iter()
        .filter_map(|e| normalize(e, &roles, ns.inode))
        .collect();
    let unique: BTreeSet<Normalized> = got.iter().cloned().collect();
    assert_eq!(
        got.len(),
        unique.len(),
        "backend {backend} reported duplicates: {got:#?}"
    );
    Some(unique)
}

#[test]
fn every_backend_reports_the_same_events() {
    require_root!();
    let want = expected();
    let mut ran = Vec::new();
    for backend in BACKENDS {
        let Some(got) = scenario(backend) else {
            continue;
        };
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "backend {backend}:\nmissing {missing:#?}\nunexpected {extra:#?}"
        );
        ran.push(backend);
    }
    assert!(
        ran.contains(&"tracepoint"),
        "the tracepoint backend must work everywhere"
    );
    eprintln!("conformance checked on: {ran:?}");
}

#[test]
fn a_refused_explicit_backend_exits_2_naming_the_hook() {
    require_root!();
    let _ns = NetNs::new();
    for backend in ["fentry", "kprobe"] {
        let mut child = Command::new(netmon_bin())
            .args(["run", "--no-history", "--backend", backend])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A backend that works prints its probe line and keeps running: stop it then.
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        if std::io::BufRead::read_line(&mut stdout, &mut first).unwrap_or(0) > 0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(2) {
            assert!(
                !all_backends_expected(),
                "{backend} refused on a kernel that should have it: {err}"
            );
            assert!(
                err.contains(&format!("--backend {backend} cannot provide")),
                "{err}"
            );
            assert!(
                err.contains(&format!("{backend}:"))
                    || err.contains("fexit:")
                    || err.contains("kretprobe:"),
                "names the hook: {err}"
            );
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        } else {
            assert!(out.status.success(), "{backend}: {err}");
        }
    }
}

#[test]
fn doctor_agrees_with_run() {
    require_root!();
    let _ns = NetNs::new();
    let out = Command::new(netmon_bin())
        .args(["doctor", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["can_run"], true);
    let doctor: Vec<(String, String)> = d["auto"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["capability"].as_str().unwrap().into(),
                c["backend"].as_str().unwrap_or("none").into(),
            )
        })
        .collect();
    // The five core capabilities, plus the optional ones (dns) on their cgroup hooks.
    assert_eq!(
        doctor.len(),
        5 + netmon_tests::OPTIONAL_CAPABILITIES.len(),
        "{doctor:?}"
    );
    if let Ok(want) = std::env::var("NETMON_EXPECT_AUTO") {
        assert!(
            doctor
                .iter()
                .filter(|(c, _)| !netmon_tests::OPTIONAL_CAPABILITIES.contains(&c.as_str()))
                .all(|(_, b)| *b == want),
            "{doctor:?}"
        );
    }
    let netmon = Netmon::try_start("auto", &[]).unwrap();
    let (_, events) = netmon.stop();
    let EventBody::Probe(p) = &events[0].body else {
        panic!("first line is not probe")
    };
    let run: Vec<(String, String)> = p
        .capabilities
        .iter()
        .map(|c| {
            (
                c.capability.clone(),
                c.backend.clone().unwrap_or_else(|| "none".into()),
            )
        })
        .collect();
    assert_eq!(run, doctor);
    let text = Command::new(netmon_bin()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for word in [
        "kernel",
        "btf",
        "kprobes",
        "fentry",
        "tracefs",
        "cgroup v2",
        "lockdown",
        "memlock",
        "would use",
    ] {
        assert!(text.contains(word), "doctor text lacks {word}:\n{text}");
    }
}

/// The programs' own diagnostics (aya-log): with `--ebpf-log debug` the close of a flow
/// that began before netmon started is logged with its ports; with the default (`off`)
/// nothing is, on every backend.
#[test]
fn ebpf_log_reports_what_the_programs_skip_and_is_silent_by_default() {
    require_root!();
    let _ns = NetNs::new();
    for (flag, expect) in [(Some("debug"), true), (None, false)] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // The flow begins before netmon: its close is a flow netmon did not see begin.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = client.local_addr().unwrap().port();
        let (server, _) = listener.accept().unwrap();
        let extra: Vec<&str> = flag.map(|f| vec!["--ebpf-log", f]).unwrap_or_default();
        let mut netmon = Netmon::start(&extra);
        drop(client);
        drop(server);
        let closed = netmon.wait_for(Duration::from_secs(20), |e| {
            e.body.type_name() == "close"
                && e.body.connection().is_some_and(|c| {
                    c.dst.port == port || c.src.as_ref().is_some_and(|s| s.port == port)
                })
        });
        assert!(closed.is_some(), "no close for port {port}");
        let stderr = netmon.stderr.clone();
        let (status, _) = netmon.stop();
        assert!(status.success());
        let text = stderr.lock().unwrap().clone();
        let line = format!("close of a flow netmon did not see begin: port {local} → {port}");
        if expect {
            assert!(text.contains(&line), "no `{line}` in stderr:\n{text}");
        } else {
            assert!(!text.contains("netmon: ebpf"), "logged while off:\n{text}");
        }
    }
}

/// A TCP connection made before netmon starts, closed by `close()` after: a flow the
/// programs did not see begin, which they log at `debug` (`netmon-ebpf/src/tcp.rs`).
/// Returns the closer and the line's prefix.
fn flow_netmon_did_not_see_begin() -> (impl FnOnce(), String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    let close = move || {
        drop(client);
        drop(server);
        drop(listener);
    };
    (
        close,
        format!("close of a flow netmon did not see begin: port {local} → {port}, state "),
    )
}

/// `--events log`: the programs' messages arrive as `log` events on stdout (level,
/// message, target, location), counted in `stats.events`, and nothing of them on
/// stderr; without `--ebpf-log` the same flag yields no `log` event and a warning.
#[test]
fn ebpf_log_events_arrive_on_the_stream_instead_of_stderr() {
    require_root!();
    let ns = NetNs::new();
    let (close, prefix) = flow_netmon_did_not_see_begin();
    let mut netmon = Netmon::start(&["--ebpf-log", "debug", "--events", "log"]);
    close();
    let log = netmon.wait_for(
        Duration::from_secs(20),
        |e| matches!(&e.body, EventBody::Log(l) if l.message.starts_with(&prefix)),
    );
    let stderr = netmon.stderr.clone();
    let (status, events) = netmon.stop();
    assert!(status.success());
    let Some(Event {
        body: EventBody::Log(log),
        ..
    }) = log
    else {
        panic!("no `log` event starting with `{prefix}`");
    };
    assert_eq!(log.level, netmon::event::log::LogLevel::Debug);
    assert_eq!(log.target, "netmon::tcp");
    assert!(
        log.location
            .as_deref()
            .is_some_and(|l| l.contains("tcp.rs:")),
        "{log:?}"
    );
    let logs = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::Log(_)))
        .count() as u64;
    let Some(EventBody::Stats(last)) = events
        .iter()
        .rev()
        .map(|e| &e.body)
        .find(|b| matches!(b, EventBody::Stats(_)))
    else {
        panic!("no final stats");
    };
    assert!(last.r#final);
    assert_eq!(
        last.events.get("log").copied(),
        Some(logs),
        "{:?}",
        last.events
    );
    assert_eq!(last.ebpf_log.as_ref().map(|l| l.dropped), Some(0));
    let text = stderr.lock().unwrap().clone();
    assert!(
        !text.contains("netmon: ebpf"),
        "a message went to stderr:\n{text}"
    );

    // The default (`--ebpf-log off`): `--events log` has nothing to carry, and says so.
    let (close, prefix) = flow_netmon_did_not_see_begin();
    let mut netmon = Netmon::start(&["--events", "log"]);
    close();
    let closed = netmon.wait_for(Duration::from_secs(20), |e| {
        e.body.type_name() == "close"
            && e.body
                .connection()
                .is_some_and(|c| c.netns.is_none_or(|n| n == ns.inode))
    });
    assert!(closed.is_some(), "no close after `{prefix}`");
    let stderr = netmon.stderr.clone();
    let (status, events) = netmon.stop();
    assert!(status.success());
    assert!(
        !events.iter().any(|e| matches!(e.body, EventBody::Log(_))),
        "logged while off"
    );
    let text = stderr.lock().unwrap().clone();
    assert!(
        text.contains("--events log: the programs log nothing with --ebpf-log off"),
        "{text}"
    );
    assert!(!text.contains("netmon: ebpf"), "logged while off:\n{text}");
}

/// `netmon doctor --trace 2`: exit 0; says what it attached and what traffic it made;
/// the connection it opened before attaching is logged (the log path works), and the
/// summary says whether anything else was logged, agreeing with what it printed.
#[test]
fn doctor_trace_shows_what_the_programs_logged() {
    require_root!();
    let _ns = NetNs::new();
    let out = Command::new(netmon_bin())
        .args(["doctor", "--trace", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("attached (tcp_connect="), "{stdout}");
    assert!(stdout.contains("the programs logging at debug"), "{stdout}");
    assert!(
        stdout.contains("closing a TCP connection opened before attaching"),
        "{stdout}"
    );
    assert!(stdout.contains("making clean traffic"), "{stdout}");
    let canary = stdout
        .lines()
        .filter(|l| {
            l.starts_with("  ebpf debug netmon::tcp: close of a flow netmon did not see begin")
                && l.ends_with("(expected: the canary)")
        })
        .count();
    assert_eq!(canary, 2, "both ends of the canary close:\n{stdout}");
    let others = stdout
        .lines()
        .filter(|l| l.starts_with("  ebpf ") && !l.ends_with("(expected: the canary)"))
        .count();
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("netmon doctor --trace: done: 2 message(s) about the connection opened before attaching (the log path works)"),
        "{summary}"
    );
    if others == 0 {
        assert!(
            summary.contains("; nothing else: the clean traffic"),
            "{summary}"
        );
    } else {
        assert!(
            summary.contains(&format!("; {others} other message(s)")),
            "{summary}"
        );
    }
}

/// Every backend and kernel: the socket-release hook attaches (5.9+; no warning about
/// it) and a closed UDP socket's owner leaves `SOCKET_OWNERS`, as `stats.kernel_maps`
/// says (the heavy churn tests are in `blind.rs`, host only).
#[test]
fn closed_sockets_leave_the_owner_table() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&["--stats-interval", "1"]);
    let probe = netmon
        .wait_for(Duration::from_secs(5), |e| {
            matches!(e.body, EventBody::Probe(_))
        })
        .unwrap();
    let EventBody::Probe(p) = &probe.body else {
        unreachable!()
    };
    assert!(
        p.capabilities
            .iter()
            .any(|c| c.hooks.iter().any(|h| h == "cgroup:sock_release")),
        "{p:?}"
    );
    assert!(
        !p.warnings.iter().any(|w| w.contains("sock_release")),
        "{:?}",
        p.warnings
    );
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap();
    for _ in 0..20 {
        // Through the DNS hooks (port 53) on every backend, the UDP ones too on the
        // tracepoint backend.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"x", to).unwrap();
        s.send_to(&[0u8; 12], ("127.0.0.1", 53)).unwrap();
    }
    let owners = |e: &Event| match &e.body {
        EventBody::Stats(s) => s.kernel_maps.get("socket_owners").cloned(),
        _ => None,
    };
    let seen = netmon.wait_for(Duration::from_secs(20), |e| {
        owners(e).is_some_and(|m| m.inserted >= 20 && m.removed >= 20)
    });
    let last = netmon.seen.iter().rev().find_map(owners);
    assert!(
        seen.is_some(),
        "socket owners not removed on close: {last:?}"
    );
}
