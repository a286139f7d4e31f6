//! Each detection rule on a real scenario in a private network namespace (fires), and on
//! a benign one (stays quiet), with a real netmon writing its alerts on the live stream.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use netmon::{
    cli::snapshot::Report,
    event::{Alert, EventBody, Severity},
};
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
            "--no-history",
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

// `netmon snapshot` runs the same rules over the sockets open now.

/// `netmon snapshot --format json ARGS` from this thread (so in its network namespace):
/// the exit code, the report when stdout has one, and stderr.
fn snapshot(args: &[&str]) -> (Option<i32>, Option<Report>, String) {
    let out = std::process::Command::new(netmon_tests::netmon_bin())
        .args(["snapshot", "--format", "json"])
        .args(args)
        .output()
        .expect("run netmon snapshot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = (!stdout.trim().is_empty())
        .then(|| serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")));
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A listener of this process on `port` (loopback), `n` connections to it held by a
/// `netmon-testpeer`, all accepted (an accepted socket has an owner; one waiting in
/// the backlog has none yet).
struct Held {
    _listener: TcpListener,
    _accepted: Vec<TcpStream>,
    client: Peer,
}

fn held_connections(port: u16, n: usize) -> Held {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = Peer::spawn_holding(&["tcp-many", &format!("127.0.0.1:{port}"), &n.to_string()]);
    assert_eq!(client.line(), format!("open {n}"));
    let accepted = (0..n).map(|_| listener.accept().unwrap().0).collect();
    Held {
        _listener: listener,
        _accepted: accepted,
        client,
    }
}

fn serious(r: &Report) -> Vec<&Alert> {
    r.alerts
        .iter()
        .filter(|a| a.severity >= Severity::High)
        .collect()
}

#[test]
fn snapshot_exits_1_on_a_connection_to_a_backdoor_port_naming_process_and_port() {
    require_root!();
    let _ns = NetNs::new();
    let held = held_connections(31337, 1);
    let client = held.client.pid();
    let me = std::process::id();
    let (code, report, stderr) = snapshot(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    let r = report.unwrap();
    assert!(
        r.sockets.is_none(),
        "sockets are listed with --show-all only"
    );
    assert!(
        r.rules.iter().any(|n| n == "SUSPICIOUS_PORT"),
        "{:?}",
        r.rules
    );
    assert!(
        !r.rules.iter().any(|n| n == "DNS_TUNNELING"),
        "{:?}",
        r.rules
    );
    let sp = |pid: u32, kind: &str| {
        r.alerts.iter().find(|a| {
            a.rule == "SUSPICIOUS_PORT"
                && pid_is(a, pid)
                && port_is(a, 31337)
                && a.flows.first().is_some_and(|f| f.kind == kind)
        })
    };
    let a = sp(client, "connect").unwrap_or_else(|| panic!("{:#?}", r.alerts));
    assert_eq!(a.severity, Severity::High);
    assert!(
        a.summary.contains("netmon-testpeer") && a.summary.contains("31337"),
        "{}",
        a.summary
    );
    assert!(!a.recommendation.is_empty());
    assert_eq!(a.flows[0].dst.port, 31337);
    // The server side: its listener and the connection it accepted.
    assert!(sp(me, "listen").is_some(), "{:#?}", r.alerts);
    assert!(sp(me, "accept").is_some(), "{:#?}", r.alerts);

    // The text report shows the same alert as a block, and exits 1 too.
    let out = std::process::Command::new(netmon_tests::netmon_bin())
        .arg("snapshot")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let headline =
        format!("[HIGH] SUSPICIOUS_PORT: netmon-testpeer[{client}] connected to port 31337");
    assert!(text.contains(&headline), "{text}");
    assert!(text.contains("    what to do: "), "{text}");
}

#[test]
fn snapshot_of_an_ordinary_service_with_a_client_raises_nothing_and_exits_0() {
    require_root!();
    let _ns = NetNs::new();
    // 8080 is an allowed listening port (UNUSUAL_LISTENERS) without a risk score
    // (PORT_RISK), and no known-bad port.
    let _held = held_connections(8080, 1);
    let (code, report, stderr) = snapshot(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = report.unwrap();
    assert_eq!(r.rules.len(), 5, "{:?}", r.rules);
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    assert_eq!(r.summary.connections, 2);
}

#[test]
fn snapshot_reports_a_process_holding_sixty_connections() {
    require_root!();
    let _ns = NetNs::new();
    let held = held_connections(8080, 60);
    let (code, report, stderr) = snapshot(&[]);
    // HIGH_CONNECTION_COUNT is medium: nothing high, so 0.
    assert_eq!(code, Some(0), "{stderr}");
    let r = report.unwrap();
    assert!(serious(&r).is_empty(), "{:#?}", r.alerts);
    let a = r
        .alerts
        .iter()
        .find(|a| a.rule == "HIGH_CONNECTION_COUNT" && pid_is(a, held.client.pid()))
        .unwrap_or_else(|| panic!("{:#?}", r.alerts));
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(a.details["active_connections"], 60, "{a:?}");
    assert_eq!(a.details["threshold"], 50);
    assert_eq!(a.flows.len(), 5);
    assert!(
        a.flows
            .iter()
            .all(|f| f.kind == "connect" && f.dst.port == 8080)
    );
    // This process accepted the same sixty.
    let me = std::process::id();
    assert!(
        r.alerts
            .iter()
            .any(|a| a.rule == "HIGH_CONNECTION_COUNT" && pid_is(a, me)),
        "{:#?}",
        r.alerts
    );
    // With a higher threshold, nobody holds too many.
    let config = ConfigFile::new("[rules.high_connection_count]\nthreshold = 200\n");
    let (code, report, _) = snapshot(&["--config", &config.arg()]);
    assert_eq!(code, Some(0));
    assert!(report.unwrap().alerts.is_empty());
}

#[test]
fn snapshot_follows_the_configuration_allowlists_and_master_switch() {
    require_root!();
    let _ns = NetNs::new();
    let _held = held_connections(31337, 1);
    let (code, _, _) = snapshot(&[]);
    assert_eq!(code, Some(1));
    let allow = ConfigFile::new(
        "[rules.suspicious_port]\nallow = { ports = [31337] }\n\
         [rules.unusual_listeners]\nextra_allowed_ports = [31337]\n",
    );
    let (code, report, stderr) = snapshot(&["--config", &allow.arg()]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = report.unwrap();
    assert!(r.rules.iter().any(|n| n == "SUSPICIOUS_PORT"));
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    let off = ConfigFile::new("[rules]\nenabled = false\n");
    let (code, report, stderr) = snapshot(&["--config", &off.arg()]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = report.unwrap();
    assert!(r.rules.is_empty() && r.alerts.is_empty(), "{r:?}");
    // The plan says which rules would run.
    let out = std::process::Command::new(netmon_tests::netmon_bin())
        .args(["snapshot", "--plan", "--config", &off.arg()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Rules: none enabled"));
}

#[test]
fn snapshot_process_allowlist_matches_the_executable_name_beyond_comm() {
    require_root!();
    let _ns = NetNs::new();
    // This test binary's name (`rules-<hash>`) is longer than the 15 characters the
    // kernel keeps in `comm`: only its executable's file name matches in full.
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.len() > 15, "{name}");
    let _held = held_connections(31337, 1);
    let config = ConfigFile::new(&format!(
        "[rules.suspicious_port]\nallow = {{ process = [\"{name}\", \"netmon-testpeer\"] }}\n"
    ));
    let (code, report, stderr) = snapshot(&["--config", &config.arg()]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = report.unwrap();
    assert!(
        !r.alerts.iter().any(|a| a.rule == "SUSPICIOUS_PORT"),
        "{:#?}",
        r.alerts
    );
}

#[test]
fn snapshot_with_an_invalid_configuration_exits_2_naming_file_line_and_key() {
    require_root!();
    let _ns = NetNs::new();
    let config =
        ConfigFile::new("[rules]\ncooldown_s = 10\n[rules.suspicious_port]\nportz = [1]\n");
    let (code, report, stderr) = snapshot(&["--config", &config.arg()]);
    assert_eq!(code, Some(2));
    assert!(report.is_none(), "nothing is read with a bad configuration");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("netmon: {}:4:", config.arg())),
        "{stderr}"
    );
    assert!(
        lines[0].contains("key `rules.suspicious_port.portz`"),
        "{stderr}"
    );
    assert!(lines[0].contains("unknown field `portz`"), "{stderr}");
}
