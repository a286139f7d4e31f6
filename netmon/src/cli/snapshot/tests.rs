//! Tests of `crate::cli::snapshot`.

use std::net::SocketAddr;

use super::*;

/// A socket for tests (also used by `events.rs`'s tests).
pub(super) fn sock(proto: Proto, state: u8, local: &str, remote: &str, inode: u32) -> SocketInfo {
    let local: SocketAddr = local.parse().unwrap();
    SocketInfo {
        proto,
        family: Family::of(&local.ip()),
        state,
        local,
        remote: remote.parse().unwrap(),
        inode,
        uid: 0,
        tcp: None,
        netns: None,
    }
}

fn p(pid: u32, comm: &str) -> ProcessInfo {
    ProcessInfo::kernel(pid, pid, comm.into(), 0, 0, 0)
}

fn sample() -> Vec<SocketInfo> {
    vec![
        sock(Proto::Tcp, 10, "0.0.0.0:22", "0.0.0.0:0", 1),
        sock(Proto::Tcp, 1, "10.0.0.5:22", "203.0.113.9:50000", 2),
        sock(Proto::Tcp, 1, "10.0.0.5:22", "203.0.113.9:50001", 3),
        sock(Proto::Tcp, 1, "10.0.0.5:40000", "10.0.0.9:443", 4),
        sock(Proto::Tcp, 6, "10.0.0.5:40001", "198.51.100.7:443", 0),
        sock(Proto::Udp, 7, "127.0.0.53:53", "0.0.0.0:0", 5),
        sock(
            Proto::Udp,
            1,
            "[2001:db8::5]:5000",
            "[2606:4700::1111]:53",
            6,
        ),
        sock(Proto::Tcp, 10, "[::]:80", "[::]:0", 7),
    ]
}

fn owners(inode: u32) -> Vec<ProcessInfo> {
    match inode {
        1..=3 => vec![p(812, "sshd")],
        4 => vec![p(900, "curl")],
        5 | 6 => vec![p(500, "resolved")],
        7 => vec![p(1000, "nginx"), p(1001, "nginx")],
        _ => vec![],
    }
}

#[test]
fn summarises_protocols_states_listeners_and_external_peers() {
    let r = build(&sample(), &owners, false, 10);
    let m = &r.summary;
    assert_eq!((m.sockets, m.connections, m.listeners), (8, 5, 3));
    assert_eq!(m.by_protocol["tcp"], 6);
    assert_eq!(m.by_protocol["udp"], 2);
    assert_eq!(m.by_tcp_state["established"], 3);
    assert_eq!(m.by_tcp_state["listen"], 2);
    assert_eq!(m.by_tcp_state["time_wait"], 1);
    // 203.0.113.9 (twice), 198.51.100.7 and 2606:4700::1111; 10.0.0.9 is private.
    assert_eq!(m.external_ips, 3);
    assert_eq!(m.top_processes[0].comm, "sshd");
    assert_eq!(m.top_processes[0].connections, 2);
    assert_eq!(m.top_processes.len(), 3);
    let ports: Vec<u16> = r.listening.iter().map(|l| l.local.port).collect();
    assert_eq!(ports, vec![22, 80, 53]);
    let nginx = &r.listening[1];
    assert_eq!(nginx.processes.len(), 2);
    assert!(nginx.remote.is_none());
    assert!(r.sockets.is_none());
    let all = build(&sample(), &owners, true, 1);
    assert_eq!(all.sockets.as_ref().unwrap().len(), 8);
    assert_eq!(all.summary.top_processes.len(), 1);
}

#[test]
fn external_means_public_unicast() {
    for ip in [
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:1.1.1.1",
        "203.0.113.1",
    ] {
        assert!(is_external(ip.parse().unwrap()), "{ip}");
    }
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
    ] {
        assert!(!is_external(ip.parse().unwrap()), "{ip}");
    }
}

#[test]
fn text_and_json_render() {
    let r = build(&sample(), &owners, true, 10);
    let text = render_text(&r, true);
    assert!(text.contains("Unique external IPs: 3"), "{text}");
    assert!(text.contains("sshd[812]"));
    assert!(text.contains("nginx[1000],nginx[1001]"));
    assert!(text.contains("time_wait"));
    let json = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

fn detect_default(sockets: &[SocketInfo], cfg: &RulesConfig) -> (Vec<String>, Vec<Alert>) {
    let evs = events::socket_events(sockets, &owners, Utc::now(), "h");
    detect(&snapshot_rules(cfg), &evs, Box::new(rules::NoResolver))
}

#[test]
fn rules_run_on_the_sockets_and_alerts_come_most_severe_first() {
    let mut sockets = sample();
    // curl[900] holds a connection to a backdoor port on a private address.
    sockets.push(sock(Proto::Tcp, 1, "10.0.0.5:40002", "10.0.0.9:31337", 4));
    let (names, alerts) = detect_default(&sockets, &RulesConfig::default());
    assert_eq!(
        names,
        [
            "SUSPICIOUS_PORT",
            "HIGH_CONNECTION_COUNT",
            "EXTERNAL_CONNECTIONS",
            "UNUSUAL_LISTENERS",
            "PORT_RISK"
        ]
    );
    let sp: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.rule == "SUSPICIOUS_PORT")
        .collect();
    assert_eq!(sp.len(), 1, "{alerts:#?}");
    assert_eq!(sp[0].severity, crate::event::Severity::High);
    assert_eq!(sp[0].process.as_ref().unwrap().pid, 900);
    assert_eq!(sp[0].details["port"], 31337);
    assert_eq!(sp[0].flows[0].kind, "connect");
    assert_eq!(alerts[0].severity, crate::event::Severity::High);
    assert!(alerts.windows(2).all(|w| w[0].severity >= w[1].severity));
    // sshd on 22, nginx on 80 and resolved on 53 are ordinary: only the backdoor alerts.
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
}

#[test]
fn the_configuration_decides_which_rules_run() {
    let mut sockets = sample();
    sockets.push(sock(Proto::Tcp, 1, "10.0.0.5:40002", "10.0.0.9:31337", 4));
    let off = RulesConfig {
        enabled: false,
        ..RulesConfig::default()
    };
    assert_eq!(detect_default(&sockets, &off), (vec![], vec![]));
    let mut cfg = RulesConfig::default();
    cfg.suspicious_port.allow.ports = vec![crate::rules::matchers::PortRange::one(31337)];
    let (names, alerts) = detect_default(&sockets, &cfg);
    assert!(names.contains(&"SUSPICIOUS_PORT".to_owned()));
    assert!(alerts.is_empty(), "{alerts:#?}");
    // DNS_TUNNELING never runs on a snapshot, even when the configuration enables it.
    assert!(cfg.dns_tunneling.enabled);
    assert!(!names.contains(&"DNS_TUNNELING".to_owned()));
}

#[test]
fn text_shows_each_alert_as_a_block() {
    let mut sockets = sample();
    sockets.push(sock(Proto::Tcp, 1, "10.0.0.5:40002", "10.0.0.9:31337", 4));
    let mut r = build(&sockets, &owners, false, 10);
    (r.rules, r.alerts) = detect_default(&sockets, &RulesConfig::default());
    let text = render_text(&r, false);
    assert!(
        text.contains("\n  [HIGH] SUSPICIOUS_PORT: curl[900] connected to port 31337"),
        "{text}"
    );
    assert!(text.contains("\n      what to do: "), "{text}");
    assert!(text.contains("\n      flow: connect 10.0.0.5:40002 -> 10.0.0.9:31337"));
    assert!(
        text.contains("Alerts: 1 from 5 rules (SUSPICIOUS_PORT, "),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["alerts"][0]["rule"], "SUSPICIOUS_PORT");
    assert_eq!(json["alerts"][0]["severity"], "high");
    assert_eq!(json["alerts"][0]["process"]["pid"], 900);
    r.rules.clear();
    r.alerts.clear();
    assert!(render_text(&r, false).contains("Rules: none ran"));
}

#[test]
fn plan_names_the_sources_and_the_rules() {
    let args = SnapshotArgs {
        format: Format::Json,
        show_all: true,
        plan: true,
        top: 10,
        all_netns: true,
        config: super::super::ConfigArgs::default(),
    };
    let all = plan_text(&args, &snapshot_rules(&RulesConfig::default()), None);
    assert!(all.contains("sock_diag"));
    assert!(all.contains("Rules from the built-in defaults."), "{all}");
    assert!(all.contains("every other one"));
    assert!(all.contains("Rules (5)"), "{all}");
    assert!(
            all.contains("  - SUSPICIOUS_PORT (high): a listener on, or a connection to or from, a known-bad port (4444, "),
            "{all}"
        );
    assert!(all.contains("  - HIGH_CONNECTION_COUNT (medium): a process holding at least 50"));
    assert!(all.contains("Not run: DNS_TUNNELING"));
    let none = plan_text(
        &args,
        &RulesConfig {
            enabled: false,
            ..RulesConfig::default()
        },
        Some(Path::new("/etc/netmon/off.toml")),
    );
    assert!(none.contains("none enabled"), "{none}");
    assert!(none.contains("Rules from /etc/netmon/off.toml."), "{none}");
}
