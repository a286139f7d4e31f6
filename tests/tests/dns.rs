//! DNS visibility end to end: a real dnsmasq on loopback in a private network namespace,
//! real clients (`dig`, and `netmon-testpeer` resolving then connecting), a real netmon;
//! its `dns` events and alerts read back with serde.
use std::{net::TcpListener, time::Duration};

use netmon::event::{Dns, DnsRole, Event, EventBody, Family, Proto};
use netmon_tests::{
    ConfigFile, Dnsmasq, NetNs, Netmon, Peer, alerts, dig, free_port, require_root,
};

const WAIT: Duration = Duration::from_secs(20);

fn dns_of(e: &Event) -> Option<&Dns> {
    match &e.body {
        EventBody::Dns(d) => Some(d),
        _ => None,
    }
}

/// A `dns` event of `pid` for `name` and `qtype`, within WAIT.
fn wait_dns(netmon: &mut Netmon, pid: u32, name: &str, qtype: &str) -> Dns {
    let ev = netmon.wait_for(WAIT, |e| {
        dns_of(e).is_some_and(|d| {
            d.query == name
                && d.qtype == qtype
                && d.role == DnsRole::Client
                && d.process.as_ref().is_some_and(|p| p.pid == pid)
        })
    });
    let ev = ev.unwrap_or_else(|| {
        panic!(
            "no dns event for {name} {qtype} by {pid}: {:#?}",
            netmon.seen
        )
    });
    dns_of(&ev).unwrap().clone()
}

fn dns_config(port: u16) -> ConfigFile {
    ConfigFile::new(&format!("[dns]\nports = [{port}]\n"))
}

#[test]
fn dig_over_udp_ipv4_and_ipv6_on_a_configured_port() {
    require_root!();
    let _ns = NetNs::new();
    let port = free_port();
    let config = dns_config(port);
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(
        port,
        &[
            "--host-record=web.test,127.0.0.7,::7",
            "--cname=alias.test,web.test",
        ],
    );
    let p = port.to_string();
    let (pid, out) = dig(&["+short", "-p", &p, "@127.0.0.1", "web.test", "A"]);
    assert_eq!(out.trim(), "127.0.0.7");
    let d = wait_dns(&mut netmon, pid, "web.test", "A");
    assert_eq!(d.proto, Proto::Udp);
    assert_eq!(d.family, Family::Ipv4);
    assert_eq!(d.rcode.as_deref(), Some("NOERROR"));
    assert_eq!(d.dst.port, port);
    // `comm` is the process's name (the event contract); dig sends from its
    // `isc-net-NNNN` worker threads, whose name is in `thread` (tests/tests/exec.rs);
    // the pid (checked by wait_dns) is dig's.
    let comm = &d.process.as_ref().unwrap().comm;
    assert!(comm == "dig" || comm.starts_with("isc-"), "{comm}");
    let addrs: Vec<&str> = d.answers.iter().map(|a| a.data.as_str()).collect();
    assert_eq!(addrs, ["127.0.0.7"]);
    assert!(d.latency_ms.is_some_and(|ms| (0.0..5000.0).contains(&ms)));

    let (pid6, out) = dig(&["+short", "-p", &p, "@::1", "web.test", "AAAA"]);
    assert_eq!(out.trim(), "::7");
    let d = wait_dns(&mut netmon, pid6, "web.test", "AAAA");
    assert_eq!(d.family, Family::Ipv6);
    assert_eq!(d.answers[0].data, "::7");

    // A CNAME chain: the answers carry the alias and the address.
    let (pidc, _) = dig(&["+short", "-p", &p, "@127.0.0.1", "alias.test", "A"]);
    let d = wait_dns(&mut netmon, pidc, "alias.test", "A");
    assert!(
        d.answers
            .iter()
            .any(|a| a.rtype == "CNAME" && a.data == "web.test"),
        "{d:?}"
    );
    assert!(
        d.answers
            .iter()
            .any(|a| a.rtype == "A" && a.data == "127.0.0.7")
    );

    // NXDOMAIN is reported as such.
    let (pidn, _) = dig(&["-p", &p, "@127.0.0.1", "missing.invalid", "A"]);
    let d = wait_dns(&mut netmon, pidn, "missing.invalid", "A");
    assert_ne!(d.rcode.as_deref(), Some("NOERROR"));
    let (status, events) = netmon.stop();
    assert!(status.success());
    // The server's side of the same exchanges is reported too, as `server`.
    assert!(
        events
            .iter()
            .filter_map(dns_of)
            .any(|d| d.role == DnsRole::Server && d.query == "web.test" && d.dst.port == port),
        "no server-side dns event"
    );
    let stats = events.iter().rev().find_map(|e| match &e.body {
        EventBody::Stats(s) => s.dns.clone(),
        _ => None,
    });
    let stats = stats.expect("final stats carry dns counters");
    assert!(stats.packets >= 8, "{stats:?}");
}

#[test]
fn dig_over_tcp() {
    require_root!();
    let _ns = NetNs::new();
    let port = free_port();
    let config = dns_config(port);
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(port, &["--host-record=tcp.test,127.0.0.8"]);
    let (pid, out) = dig(&[
        "+tcp",
        "+short",
        "-p",
        &port.to_string(),
        "@127.0.0.1",
        "tcp.test",
    ]);
    assert_eq!(out.trim(), "127.0.0.8");
    let d = wait_dns(&mut netmon, pid, "tcp.test", "A");
    assert_eq!(d.proto, Proto::Tcp);
    assert_eq!(d.answers[0].data, "127.0.0.8");
    assert_eq!(d.rcode.as_deref(), Some("NOERROR"));
    assert!(d.latency_ms.is_some());
}

#[test]
fn a_port_53_server_needs_no_configuration() {
    require_root!();
    let _ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let _server = Dnsmasq::start(53, &["--host-record=plain.test,127.0.0.5"]);
    let (pid, out) = dig(&["+short", "@127.0.0.1", "plain.test"]);
    assert_eq!(out.trim(), "127.0.0.5");
    let d = wait_dns(&mut netmon, pid, "plain.test", "A");
    assert_eq!(d.dst.port, 53);
    assert_eq!(d.answers[0].data, "127.0.0.5");
}

#[test]
fn a_resolved_name_is_attached_to_the_following_connection() {
    require_root!();
    let ns = NetNs::new();
    let port = free_port();
    let config = dns_config(port);
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(port, &["--host-record=app.test,127.0.0.9"]);
    let listener = TcpListener::bind("127.0.0.9:0").unwrap();
    let tcp_port = listener.local_addr().unwrap().port();
    let peer = Peer::spawn(&[
        "resolve-connect",
        &format!("127.0.0.1:{port}"),
        "app.test",
        &tcp_port.to_string(),
    ]);
    assert_eq!(peer.line(), "resolved 127.0.0.9");
    assert_eq!(peer.line(), "connected");
    let pid = peer.pid();
    assert!(peer.wait().success());
    let d = wait_dns(&mut netmon, pid, "app.test", "A");
    assert_eq!(d.process.as_ref().unwrap().comm, "netmon-testpeer");
    let ev = netmon.wait_for(WAIT, |e| {
        matches!(&e.body, EventBody::Connect(c)
            if c.dst.port == tcp_port && c.netns == Some(ns.inode))
    });
    let ev = ev.expect("no connect event");
    let c = ev.body.connection().unwrap();
    assert_eq!(c.process.as_ref().unwrap().pid, pid);
    assert_eq!(c.dst.name.as_deref(), Some("app.test"));
    // The UDP flow to the DNS server itself has no name.
    drop(listener);
}

/// Writes a `dig -f` batch file of `names` (A queries) and runs one dig over it.
fn dig_batch(port: u16, names: &[String]) -> u32 {
    let path = std::env::temp_dir().join(format!("netmon-dig-{}-{port}.txt", std::process::id()));
    let text: String = names.iter().map(|n| format!("{n} A\n")).collect();
    std::fs::write(&path, text).unwrap();
    let (pid, _) = dig(&[
        "+short",
        "+tries=1",
        "+time=2",
        "-p",
        &port.to_string(),
        "@127.0.0.1",
        "-f",
        &path.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&path);
    pid
}

fn random_label(seed: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ALPHABET[(*seed % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

const QUERIES: usize = 300;

#[test]
fn a_tunnel_of_random_subdomains_fires_dns_tunneling() {
    require_root!();
    let _ns = NetNs::new();
    let port = free_port();
    let config = dns_config(port);
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(port, &["--address=/tunnel.test/127.0.0.9"]);
    let mut seed = 0x2545F4914F6CDD1D;
    let names: Vec<String> = (0..QUERIES)
        .map(|_| {
            format!(
                "{}.{}.tunnel.test",
                random_label(&mut seed, 50),
                random_label(&mut seed, 20)
            )
        })
        .collect();
    let pid = dig_batch(port, &names);
    let alert = netmon.wait_for(WAIT, |e| {
        matches!(&e.body, EventBody::Alert(a) if a.rule == "DNS_TUNNELING"
            && a.details.get("domain").and_then(|d| d.as_str()) == Some("tunnel.test"))
    });
    let alert =
        alert.unwrap_or_else(|| panic!("no DNS_TUNNELING alert: {:#?}", netmon.seen.last()));
    let EventBody::Alert(a) = &alert.body else {
        unreachable!()
    };
    assert_eq!(a.severity, netmon::event::Severity::High);
    assert_eq!(a.process.as_ref().map(|p| p.pid), Some(pid));
    assert!(!a.flows.is_empty() && a.flows.len() <= 5);
    netmon.collect_for(Duration::from_secs(1));
    let (_, events) = netmon.stop();
    let n = alerts(&events, "DNS_TUNNELING")
        .filter(|a| a.details.get("domain").and_then(|d| d.as_str()) == Some("tunnel.test"))
        .count();
    assert_eq!(n, 1, "the cooldown keeps it to one alert");
}

#[test]
fn ordinary_lookups_of_the_same_volume_stay_quiet() {
    require_root!();
    let _ns = NetNs::new();
    let port = free_port();
    let config = dns_config(port);
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(port, &["--address=/test/127.0.0.9"]);
    let names: Vec<String> = (0..QUERIES).map(|i| format!("www.shop{i}.test")).collect();
    let pid = dig_batch(port, &names);
    // The last lookup has arrived: everything before it was seen too.
    wait_dns(
        &mut netmon,
        pid,
        &format!("www.shop{}.test", QUERIES - 1),
        "A",
    );
    netmon.collect_for(Duration::from_secs(1));
    let (_, events) = netmon.stop();
    let seen = events
        .iter()
        .filter_map(dns_of)
        .filter(|d| d.process.as_ref().is_some_and(|p| p.pid == pid))
        .count();
    assert!(
        seen >= QUERIES * 9 / 10,
        "only {seen} dns events of {QUERIES}"
    );
    let fired: Vec<_> = alerts(&events, "DNS_TUNNELING")
        .filter(|a| a.process.as_ref().is_some_and(|p| p.pid == pid))
        .collect();
    assert!(fired.is_empty(), "{fired:#?}");
}
