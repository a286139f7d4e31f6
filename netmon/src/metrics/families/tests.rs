//! Tests of `crate::metrics::families`.

use super::*;
use crate::event::{Connection, Endpoint, Family, ProcessInfo};

fn conn(direction: Direction, failed: bool) -> Connection {
    Connection {
        proto: Proto::Tcp,
        family: Family::Ipv4,
        direction: Some(direction),
        src: Some(Endpoint::new("10.0.0.1".parse().unwrap(), 40000)),
        dst: Endpoint::new("10.0.0.2".parse().unwrap(), 80),
        process: Some(ProcessInfo::kernel(7, 7, "curl".into(), 0, 0, 1)),
        backend: "tracepoint".into(),
        netns: None,
        failed,
        bytes: None,
        existing: false,
    }
}

fn event(body: EventBody) -> Event {
    Event {
        ts: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
        host: "h".into(),
        body,
    }
}

#[test]
fn connections_are_counted_by_direction_and_result() {
    let r = Registry::new();
    let mut f = Families::register(&r, 10, 300.0);
    f.observe(&event(EventBody::Connect(conn(Direction::Outbound, false))));
    f.observe(&event(EventBody::Connect(conn(Direction::Outbound, true))));
    f.observe(&event(EventBody::Accept(conn(Direction::Inbound, false))));
    let mut existing = conn(Direction::Outbound, false);
    existing.existing = true;
    f.observe(&event(EventBody::Connect(existing)));
    let get = |d: &str, r: &str| f.connections.with_label_values(&[d, "tcp", r]).get();
    assert_eq!(get("outbound", "established"), 1);
    assert_eq!(get("outbound", "failed"), 1);
    assert_eq!(get("inbound", "established"), 1);
}

#[test]
fn stats_totals_raise_counters_and_never_lower_them() {
    let r = Registry::new();
    let mut f = Families::register(&r, 10, 300.0);
    let mut s = Stats::default();
    s.events.insert("connect".into(), 5);
    f.observe(&event(EventBody::Stats(Box::new(s.clone()))));
    s.events.insert("connect".into(), 3);
    f.observe(&event(EventBody::Stats(Box::new(s))));
    assert_eq!(f.events.with_label_values(&["connect"]).get(), 5);
}

#[test]
fn kernel_map_counters_and_the_dns_rate_limit_become_families() {
    let r = Registry::new();
    let mut f = Families::register(&r, 10, 300.0);
    let mut s = Stats::default();
    s.kernel_maps.insert(
        "socket_owners".into(),
        crate::event::KernelMapStats {
            capacity: 65536,
            inserted: 70000,
            removed: 10,
            insert_failed: 2,
            evicted: 4000,
            missed: 7,
        },
    );
    s.dns = Some(crate::event::DnsStats {
        rate_limited: 12,
        ..Default::default()
    });
    f.observe(&event(EventBody::Stats(Box::new(s))));
    let map = ["socket_owners"];
    assert_eq!(f.kernel_map_evicted.with_label_values(&map).get(), 4000);
    assert_eq!(f.kernel_map_insert_failed.with_label_values(&map).get(), 2);
    assert_eq!(f.kernel_map_missed.with_label_values(&map).get(), 7);
    assert_eq!(f.dns_rate_limited.get(), 12);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap();
    assert!(text.contains("netmon_kernel_map_evicted_total{map=\"socket_owners\"} 4000"));
    assert!(text.contains("netmon_dns_rate_limited_total 12"));
}

#[test]
fn unknown_dns_types_and_codes_share_one_label() {
    let r = Registry::new();
    let mut f = Families::register(&r, 10, 300.0);
    for qtype in ["TYPE65280", "TYPE1234", "A"] {
        f.observe(&event(EventBody::Dns(crate::event::Dns {
            proto: Proto::Udp,
            family: Family::Ipv4,
            role: crate::event::DnsRole::Client,
            src: Endpoint::new("10.0.0.1".parse().unwrap(), 5353),
            dst: Endpoint::new("10.0.0.2".parse().unwrap(), 53),
            id: 1,
            query: "x.example".into(),
            qtype: qtype.into(),
            rcode: Some("WEIRD".into()),
            answers: Vec::new(),
            latency_ms: Some(2.0),
            process: None,
            truncated: false,
        })));
    }
    assert_eq!(
        f.dns_queries.with_label_values(&["other", "other"]).get(),
        2
    );
    assert_eq!(f.dns_queries.with_label_values(&["A", "other"]).get(), 1);
}
