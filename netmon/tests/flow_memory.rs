//! Memory of the flow table at its default cap: 100,000 live flows must fit in netmon's
//! 50 MB budget. A test binary of its own (one test), so the resident-set growth it
//! measures is the table's alone.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use netmon::{
    event::{Container, Direction, ProcessDetail, ProcessInfo, Proto},
    flow::{Counters, FlowConfig, FlowKey, FlowState, FlowTable, NS_PER_S, Open},
};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_thousand_flows_fit_in_the_memory_budget() {
    const FLOWS: usize = 100_000;
    // 500 processes with realistic context, shared by their flows as in `netmon run`.
    let processes: Vec<Arc<ProcessInfo>> = (0..500u32)
        .map(|i| {
            let mut p = ProcessInfo::kernel(
                10_000 + i,
                10_000 + i,
                format!("worker-{i}").into(),
                1000,
                1000,
                4242,
            );
            p.detail = Arc::new(ProcessDetail {
                exe: Some("/usr/lib/jvm/java-17-openjdk-amd64/bin/java".into()),
                cmdline: Some(format!(
                    "/usr/bin/java -Xmx4g -jar /srv/app-{i}.jar --spring.profiles.active=prod"
                )),
                user: Some("app".into()),
                ppid: Some(1),
                container: Some(Container {
                    id: Some(
                        "4f3c9b1e2a7d8c6b5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d".into(),
                    ),
                    runtime: Some("containerd".into()),
                    pod_uid: Some("8a1b2c3d-4e5f-6789-abcd-ef0123456789".into()),
                }),
                ..Default::default()
            });
            Arc::new(p)
        })
        .collect();
    let before = rss_kib();
    let mut table = FlowTable::new(FlowConfig::default());
    for i in 0..FLOWS {
        let (proto, local, remote) = if i % 4 == 3 {
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
            (
                Proto::Udp,
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    30_000 + (i % 30_000) as u16,
                ),
                SocketAddr::new(IpAddr::V6(v6), 443),
            )
        } else {
            (
                Proto::Tcp,
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                    1024 + (i % 60_000) as u16,
                ),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i as u32)), 443),
            )
        };
        let key = FlowKey::new(proto, 4026531840, local, remote);
        let o = table.open(Open {
            key,
            direction: Some(Direction::Outbound),
            process: Some(processes[i % processes.len()].clone()),
            existing: false,
            now_ns: i as u64 * 1000,
        });
        assert!(o.new && o.evicted.is_none());
        table.set_counters(
            &key,
            Counters {
                bytes_sent: Some(i as u64),
                bytes_received: Some(2 * i as u64),
                packets_sent: Some(3),
                packets_received: Some(4),
            },
            if proto == Proto::Tcp {
                FlowState::Established
            } else {
                FlowState::Active
            },
            NS_PER_S + i as u64,
        );
    }
    assert_eq!(table.len(), FLOWS);
    let after = rss_kib();
    let mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "flow table: {FLOWS} flows add {mib:.1} MiB resident ({:.0} bytes per flow); process RSS {:.1} MiB",
        mib * 1024.0 * 1024.0 / FLOWS as f64,
        after as f64 / 1024.0
    );
    // The table's share of netmon's 50 MB (47.7 MiB): `netmon run` idles at about
    // 23 MiB (its code, the ring buffer's double mapping), and a burst's events in
    // flight in the consumers' queues take a few MiB more.
    assert!(
        mib < 14.0,
        "100k flows take {mib:.1} MiB of the table's 14 MiB share of netmon's 50 MB"
    );
    // One more evicts the oldest, and the table stays at its cap.
    let key = FlowKey::new(
        Proto::Tcp,
        1,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let o = table.open(Open {
        key,
        direction: None,
        process: None,
        existing: false,
        now_ns: u64::MAX / 2,
    });
    assert!(o.evicted.is_some());
    assert_eq!(table.len(), FLOWS);
    assert_eq!(table.stats().evicted, 1);
}
