//! Each detection rule on a real scenario in a private network namespace (fires), and on
//! a benign one (stays quiet), with a real netmon writing its alerts on the live stream.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use netmon::event::{Alert, EventBody, Severity};
use netmon_tests::{ConfigFile, NetNs, Netmon, Peer, alerts, require_root};

const WAIT: Duration = Duration::from_secs(20);
/// How long a benign scenario is watched for alerts that must not come.
const QUIET: Duration = Duration::from_secs(2);

fn wait_alert(netmon: &mut Netmon, rule: &str, pred: impl Fn(&Alert) -> bool) -> Alert {
    let ev = netmon.wait_for(
        WAIT,
        |e| matches!(&e.body, EventBody::Alert(a) if a.rule == rule && pred(a)),
    );
    match ev.map(|e| e.body) {
        Some(EventBody::Alert(a)) => a,
        _ => panic!(
            "no {rule} alert; last events: {:#?}",
            netmon.seen.iter().rev().take(5).collect::<Vec<_>>()
        ),
    }
}

fn pid_is(a: &Alert, pid: u32) -> bool {
    a.process.as_ref().is_some_and(|p| p.pid == pid)
}

fn port_is(a: &Alert, port: u16) -> bool {
    a.details.get("port").and_then(|p| p.as_u64()) == Some(port as u64)
}

#[test]
fn suspicious_port_fires_on_a_backdoor_port_and_not_on_an_ordinary_one() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let me = std::process::id();
    // Benign first: a listener and a client on an ordinary port.
    let ordinary = TcpListener::bind("127.0.0.1:8080").unwrap();
    drop(TcpStream::connect("127.0.0.1:8080").unwrap());
    drop(ordinary.accept().unwrap());
    // Then the backdoor port.
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:31337", "10"]);
    assert_eq!(server.line(), "port 31337");
    let client = Peer::spawn(&["tcp-client", "127.0.0.1:31337", "10"]);
    let client_pid = client.pid();
    assert!(client.wait().success());
    let a = wait_alert(&mut netmon, "SUSPICIOUS_PORT", |a| {
        pid_is(a, client_pid) && port_is(a, 31337)
    });
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.hits, 1);
    assert!(a.summary.contains("31337"), "{}", a.summary);
    assert!(!a.recommendation.is_empty());
    assert_eq!(a.flows.len(), 1);
    assert_eq!(a.flows[0].dst.port, 31337);
    assert_eq!(a.process.as_ref().unwrap().comm, "netmon-testpeer");
    // The server side (listen, accept) alerts for the server's process.
    let server_pid = server.pid();
    wait_alert(&mut netmon, "SUSPICIOUS_PORT", |a| pid_is(a, server_pid));
    netmon.collect_for(QUIET);
    let (_, events) = netmon.stop();
    let wrong: Vec<_> = alerts(&events, "SUSPICIOUS_PORT")
        .filter(|a| pid_is(a, me) || port_is(a, 8080))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn high_connection_count_fires_at_sixty_not_at_ten() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accept in the background so the backlog never fills.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let mut few = Peer::spawn_holding(&["tcp-many", &addr, "10"]);
    assert_eq!(few.line(), "open 10");
    let mut many = Peer::spawn_holding(&["tcp-many", &addr, "60"]);
    assert_eq!(many.line(), "open 60");
    let many_pid = many.pid();
    let a = wait_alert(&mut netmon, "HIGH_CONNECTION_COUNT", |a| {
        pid_is(a, many_pid)
    });
    assert_eq!(a.severity, Severity::Medium);
    assert!(
        a.details["active_connections"].as_u64().unwrap() >= 50,
        "{a:?}"
    );
    assert_eq!(a.flows.len(), 5);
    netmon.collect_for(QUIET);
    many.release();
    few.release();
    let few_pid = few.pid();
    let (_, events) = netmon.stop();
    assert_eq!(
        alerts(&events, "HIGH_CONNECTION_COUNT")
            .filter(|a| pid_is(a, few_pid))
            .count(),
        0
    );
    assert_eq!(
        alerts(&events, "HIGH_CONNECTION_COUNT")
            .filter(|a| pid_is(a, many_pid))
            .count(),
        1,
        "one alert per condition within the cooldown"
    );
}

#[test]
fn external_connections_fires_on_fan_out() {
    require_root!();
    let _ns = NetNs::new();
    // Inside the test's namespace every 127.x address is local: declare only 10/8
    // internal so loopback addresses count as "external" for this test.
    let config = ConfigFile::new(
        "[rules.external_connections]\ninternal_cidrs = [\"10.0.0.0/8\"]\nthreshold = 20\n",
    );
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let sink = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = sink.local_addr().unwrap().port().to_string();
    let few = Peer::spawn(&["udp-fanout", "127.0.1", "1", "5", &port]);
    let few_pid = few.pid();
    assert!(few.wait().success());
    let many = Peer::spawn(&["udp-fanout", "127.0.2", "1", "30", &port]);
    let many_pid = many.pid();
    assert!(many.wait().success());
    let a = wait_alert(&mut netmon, "EXTERNAL_CONNECTIONS", |a| pid_is(a, many_pid));
    assert_eq!(a.severity, Severity::Low);
    assert!(a.details["unique_external_ips"].as_u64().unwrap() >= 20);
    netmon.collect_for(QUIET);
    let (_, events) = netmon.stop();
    assert_eq!(
        alerts(&events, "EXTERNAL_CONNECTIONS")
            .filter(|a| pid_is(a, few_pid))
            .count(),
        0
    );
}

#[test]
fn unusual_listener_fires_on_an_odd_port_not_on_a_service_port() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let odd = Peer::spawn(&["tcp-server", "127.0.0.1:47123", "0"]);
    assert_eq!(odd.line(), "port 47123");
    let usual = Peer::spawn(&["tcp-server", "127.0.0.1:443", "0"]);
    assert_eq!(usual.line(), "port 443");
    let a = wait_alert(&mut netmon, "UNUSUAL_LISTENERS", |a| {
        pid_is(a, odd.pid()) && port_is(a, 47123)
    });
    assert_eq!(a.severity, Severity::Medium);
    netmon.collect_for(QUIET);
    let usual_pid = usual.pid();
    drop((odd, usual));
    let (_, events) = netmon.stop();
    assert_eq!(
        alerts(&events, "UNUSUAL_LISTENERS")
            .filter(|a| pid_is(a, usual_pid))
            .count(),
        0
    );
}

#[test]
fn port_risk_scores_redis_and_ignores_https() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let redis = TcpListener::bind("127.0.0.1:6379").unwrap();
    let https = TcpListener::bind("127.0.0.1:443").unwrap();
    let client = Peer::spawn(&["tcp-client", "127.0.0.1:443", "0"]);
    drop(https.accept().unwrap());
    let https_client = client.pid();
    let _ = client.wait();
    let client = Peer::spawn(&["tcp-client", "127.0.0.1:6379", "0"]);
    drop(redis.accept().unwrap());
    let redis_client = client.pid();
    let _ = client.wait();
    let a = wait_alert(&mut netmon, "PORT_RISK", |a| pid_is(a, redis_client));
    assert_eq!(a.score, Some(7));
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(a.details["service"], "redis");
    // The listener alerts for this process too.
    let me = std::process::id();
    wait_alert(&mut netmon, "PORT_RISK", |a| {
        pid_is(a, me) && port_is(a, 6379)
    });
    netmon.collect_for(QUIET);
    let (_, events) = netmon.stop();
    assert_eq!(
        alerts(&events, "PORT_RISK")
            .filter(|a| pid_is(a, https_client) || port_is(a, 443))
            .count(),
        0
    );
}

#[test]
fn custom_rule_and_severity_override_from_the_config() {
    require_root!();
    let _ns = NetNs::new();
    let config = ConfigFile::new(
        r#"
[rules.suspicious_port]
severity = "critical"
allow = { ports = [4444] }

[[rules.custom]]
name = "ADMIN_PORT"
severity = "high"
summary = "connection to the admin port range"
proto = "tcp"
direction = "outbound"
ports = ["40100-40199"]
cidrs = ["127.0.0.0/8"]
process = ["netmon-testpeer"]
"#,
    );
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    for port in ["40150", "12345", "4444"] {
        let listener = TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
        let c = Peer::spawn(&["tcp-client", &format!("127.0.0.1:{port}"), "0"]);
        drop(listener.accept().unwrap());
        assert!(c.wait().success());
    }
    let a = wait_alert(&mut netmon, "ADMIN_PORT", |_| true);
    assert_eq!(a.severity, Severity::High);
    assert!(a.summary.starts_with("connection to the admin port range"));
    let a = wait_alert(&mut netmon, "SUSPICIOUS_PORT", |a| port_is(a, 12345));
    assert_eq!(a.severity, Severity::Critical, "severity override");
    netmon.collect_for(QUIET);
    let (_, events) = netmon.stop();
    assert_eq!(
        alerts(&events, "SUSPICIOUS_PORT")
            .filter(|a| port_is(a, 4444))
            .count(),
        0,
        "allowlisted port"
    );
}

#[test]
fn text_output_shows_alerts_as_a_block() {
    require_root!();
    let _ns = NetNs::new();
    let mut child = std::process::Command::new(netmon_tests::netmon_bin())
        .args([
            "run",
            "--format",
            "text",
            "--backend",
            &netmon_tests::backend(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The probe line says netmon is attached.
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(first.contains("probe"), "{first}");
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:6667", "0"]);
    assert_eq!(server.line(), "port 6667");
    let deadline = std::time::Instant::now() + WAIT;
    let mut lines = Vec::new();
    let found = loop {
        let Ok(line) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        else {
            break false;
        };
        let done = lines
            .last()
            .is_some_and(|l: &String| l.contains("[HIGH] SUSPICIOUS_PORT"))
            && line.starts_with("    what to do: ");
        lines.push(line);
        if done {
            break true;
        }
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(found, "no alert block in text output: {lines:#?}");
}
