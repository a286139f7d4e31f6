//! The hand-written writer against serde_json: every hot type with every optional field
//! set and unset, generated events with hostile strings and odd numbers, huge fields.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::write_event;
use crate::event::{
    Alert, Close, Connection, Container, Direction, Dns, DnsAnswer, DnsRole, Endpoint, Event,
    EventBody, Exec, Family, FlowSummary, ProcessDetail, ProcessInfo, Proto, Severity,
};

fn ours(e: &Event) -> String {
    let mut out = Vec::new();
    write_event(&mut out, e);
    String::from_utf8(out).expect("the writer writes UTF-8")
}

fn assert_same(e: &Event) {
    let expected = serde_json::to_string(e).unwrap();
    assert_eq!(ours(e), expected, "{e:?}");
}

const HOSTILE: &str =
    "a\"b\\c\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1b}[2J\u{1f} \u{7f}é\u{2028}\u{202e}😀/";

fn full_process(s: &str) -> ProcessInfo {
    ProcessInfo {
        pid: u32::MAX,
        tid: 0,
        comm: s.into(),
        thread: Some(s.into()),
        uid: 1000,
        gid: u32::MAX,
        cgroup_id: u64::MAX,
        detail: Arc::new(ProcessDetail {
            exe: Some(s.into()),
            cmdline: Some(s.into()),
            user: Some(s.into()),
            ppid: Some(1),
            parent: Some(s.into()),
            start_time: DateTime::from_timestamp(1_795_000_000, 120_000_000),
            ancestors: vec![s.into(), "/usr/bin/bash".into()],
            container: Some(Container {
                id: Some(s.into()),
                runtime: None,
                pod_uid: Some(s.into()),
            }),
        }),
    }
}

fn full_connection(s: &str) -> Connection {
    Connection {
        proto: Proto::Udp,
        family: Family::Ipv6,
        direction: Some(Direction::Inbound),
        src: Some(Endpoint {
            ip: "::ffff:10.0.0.1".parse().unwrap(),
            port: 0,
            name: Some(s.into()),
        }),
        dst: Endpoint {
            ip: "2001:db8::1".parse().unwrap(),
            port: u16::MAX,
            name: Some(s.into()),
        },
        process: Some(full_process(s)),
        backend: s.to_owned().into(),
        netns: Some(4026531840),
        failed: true,
        bytes: Some(0),
        existing: true,
    }
}

fn bare_connection() -> Connection {
    Connection {
        proto: Proto::Tcp,
        family: Family::Ipv4,
        direction: None,
        src: None,
        dst: Endpoint::new("0.0.0.0".parse().unwrap(), 0),
        process: None,
        backend: String::new().into(),
        netns: None,
        failed: false,
        bytes: None,
        existing: false,
    }
}

fn event(ts: DateTime<Utc>, host: &str, body: EventBody) -> Event {
    Event {
        ts,
        host: host.into(),
        body,
    }
}

fn close(conn: Connection, ms: Option<f64>, full: bool, s: &str) -> Close {
    Close {
        conn,
        duration_ms: ms,
        bytes_sent: full.then_some(u64::MAX),
        bytes_received: full.then_some(0),
        packets_sent: full.then_some(3),
        packets_received: full.then_some(4),
        reason: full.then(|| s.into()),
    }
}

fn dns(s: &str, full: bool) -> Dns {
    Dns {
        proto: Proto::Udp,
        family: Family::Ipv4,
        role: if full {
            DnsRole::Server
        } else {
            DnsRole::Client
        },
        src: Endpoint::new("127.0.0.1".parse().unwrap(), 40000),
        dst: Endpoint::new("127.0.0.53".parse().unwrap(), 53),
        id: u16::MAX,
        query: s.into(),
        qtype: "TYPE65280".into(),
        rcode: full.then(|| "NXDOMAIN".into()),
        answers: if full {
            vec![
                DnsAnswer {
                    name: s.into(),
                    rtype: "TXT".into(),
                    ttl: u32::MAX,
                    data: s.into(),
                },
                DnsAnswer {
                    name: "a".into(),
                    rtype: "A".into(),
                    ttl: 0,
                    data: "1.2.3.4".into(),
                },
            ]
        } else {
            Vec::new()
        },
        latency_ms: full.then_some(0.1 + 0.2),
        process: full.then(|| full_process(s)),
        truncated: full,
    }
}

/// Every hot type, fully populated and bare, plus types that go through serde_json.
fn samples(s: &str) -> Vec<Event> {
    let ts = DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap();
    let ts0 = DateTime::from_timestamp(0, 0).unwrap();
    let full = full_connection(s);
    let bare = bare_connection();
    let mut v = Vec::new();
    for c in [full.clone(), bare.clone()] {
        v.push(event(ts, s, EventBody::Connect(c.clone())));
        v.push(event(ts0, s, EventBody::Accept(c.clone())));
        v.push(event(ts, "", EventBody::Udp(c.clone())));
        v.push(event(ts, s, EventBody::Listen(c.clone())));
        for ms in [
            None,
            Some(0.0),
            Some(1.5),
            Some(1e-7),
            Some(1e300),
            Some(f64::NAN),
        ] {
            v.push(event(
                ts,
                s,
                EventBody::Close(close(c.clone(), ms, true, s)),
            ));
            v.push(event(
                ts,
                s,
                EventBody::Close(close(c.clone(), ms, false, s)),
            ));
        }
        for ms in [0.0, 61_000.25, f64::INFINITY] {
            v.push(event(
                ts,
                s,
                EventBody::Flow(FlowSummary {
                    conn: c.clone(),
                    state: s.into(),
                    start: ts0,
                    duration_ms: ms,
                    bytes_sent: Some(1),
                    bytes_received: None,
                    packets_sent: None,
                    packets_received: Some(2),
                }),
            ));
        }
    }
    let mut p = full_process(s);
    v.push(event(ts, s, EventBody::Exec(Exec { process: p.clone() })));
    // AutoSi: no fraction, milliseconds, microseconds, nanoseconds.
    for nanos in [0, 5_000_000, 7_000, 1] {
        Arc::make_mut(&mut p.detail).start_time = DateTime::from_timestamp(86_400, nanos);
        v.push(event(ts, s, EventBody::Exec(Exec { process: p.clone() })));
    }
    p.thread = None;
    p.detail = Arc::default();
    v.push(event(ts, s, EventBody::Exec(Exec { process: p })));
    v.push(event(ts, s, EventBody::Dns(dns(s, true))));
    v.push(event(ts, s, EventBody::Dns(dns(s, false))));
    // Not written by hand: must still be serde_json's.
    v.push(event(ts, s, EventBody::Stats(Box::default())));
    v.push(event(
        ts,
        s,
        EventBody::Log(crate::event::log::KernelLog {
            level: crate::event::log::LogLevel::Warn,
            message: s.into(),
            target: s.into(),
            location: Some(s.into()),
        }),
    ));
    v.push(event(
        ts,
        s,
        EventBody::Alert(Alert {
            rule: s.into(),
            severity: Severity::High,
            summary: s.into(),
            recommendation: s.into(),
            process: None,
            flows: Vec::new(),
            key: s.into(),
            hits: 1,
            score: Some(3),
            details: BTreeMap::from([("k".to_string(), serde_json::json!(s))]),
        }),
    ));
    v
}

#[test]
fn every_hot_type_is_serde_jsons_bytes() {
    for s in ["", "plain", HOSTILE] {
        for e in samples(s) {
            assert_same(&e);
        }
    }
}

#[test]
fn timestamps_match_chrono_at_the_edges() {
    // Year 0, 9999, beyond (chrono's signed form), before 1970, a leap second.
    let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
        .unwrap()
        .and_utc();
    let times = [
        DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z")
            .unwrap()
            .to_utc(),
        DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999999Z")
            .unwrap()
            .to_utc(),
        DateTime::from_timestamp(253_402_300_800, 0).unwrap(),
        DateTime::from_timestamp(-1, 999_999_999).unwrap(),
        leap,
    ];
    for ts in times {
        let mut e = samples("x").remove(0);
        e.ts = ts;
        if let EventBody::Connect(c) = &mut e.body {
            let p = c.process.as_mut().unwrap();
            Arc::make_mut(&mut p.detail).start_time = Some(ts);
        }
        assert_same(&e);
    }
}

#[test]
fn a_process_detail_written_before_is_copied_and_a_new_one_is_written_anew() {
    // Events of one process share their `Arc<ProcessDetail>`: the writer keeps its
    // bytes by the Arc's address. Whatever it kept, every line is serde_json's.
    let shared = full_process("/usr/bin/curl");
    let conn = |p: &ProcessInfo| {
        let mut c = full_connection("x");
        c.process = Some(p.clone());
        EventBody::Connect(c)
    };
    let ts = DateTime::from_timestamp(1_795_000_000, 5).unwrap();
    for _ in 0..3 {
        assert_same(&event(ts, "h", conn(&shared)));
    }
    // Details dropped and made again (one may land at a freed detail's address), and
    // more of them than the writer keeps: each line still has its own.
    for round in 0..3 {
        for i in 0..200 {
            let mut p = full_process(&format!("/opt/p{round}-{i}"));
            Arc::make_mut(&mut p.detail).ppid = Some(i);
            assert_same(&event(ts, "h", conn(&p)));
            assert_same(&event(ts, "h", conn(&p)));
        }
    }
    assert_same(&event(ts, "h", conn(&shared)));
}

#[test]
fn huge_fields_are_written_whole() {
    let huge: String = HOSTILE.repeat(10_000);
    for e in samples(&huge) {
        assert_same(&e);
    }
}

fn hostile_string() -> BoxedStrategy<String> {
    let special = prop::sample::select(vec![
        '"', '\\', '\u{0}', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}', '\u{7f}', '\u{2028}',
        '\u{fffd}', 'é', '😀',
    ]);
    prop::collection::vec(prop_oneof![any::<char>(), special], 0..24)
        .prop_map(|cs| cs.into_iter().collect())
        .boxed()
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        any::<[u8; 4]>().prop_map(|b| IpAddr::from(std::net::Ipv4Addr::from(b).to_ipv6_mapped())),
    ]
}

fn endpoint() -> BoxedStrategy<Endpoint> {
    (ip(), any::<u16>(), prop::option::of(hostile_string()))
        .prop_map(|(ip, port, name)| Endpoint { ip, port, name })
        .boxed()
}

fn process() -> BoxedStrategy<ProcessInfo> {
    (
        (any::<u32>(), any::<u32>(), hostile_string()),
        prop::option::of(hostile_string()),
        (any::<u32>(), any::<u32>(), any::<u64>()),
        (
            prop::option::of(hostile_string()),
            prop::option::of(hostile_string()),
            prop::option::of(any::<u32>()),
            prop::option::of(-100_000_000_000i64..300_000_000_000),
            prop::collection::vec(hostile_string(), 0..3),
            prop::option::of((
                prop::option::of(hostile_string()),
                prop::option::of(hostile_string()),
            )),
        ),
    )
        .prop_map(
            |(
                (pid, tid, comm),
                thread,
                (uid, gid, cgroup_id),
                (exe, user, ppid, start, ancestors, c),
            )| {
                ProcessInfo {
                    pid,
                    tid,
                    comm: comm.clone().into(),
                    thread,
                    uid,
                    gid,
                    cgroup_id,
                    detail: Arc::new(ProcessDetail {
                        exe,
                        cmdline: Some(comm),
                        user,
                        ppid,
                        parent: None,
                        start_time: start
                            .and_then(|s| DateTime::from_timestamp(s, (s as u32) % 1_000_000_000)),
                        ancestors,
                        container: c.map(|(id, pod_uid)| Container {
                            id,
                            runtime: Some("docker".into()),
                            pod_uid,
                        }),
                    }),
                }
            },
        )
        .boxed()
}

fn connection() -> BoxedStrategy<Connection> {
    (
        (any::<bool>(), any::<bool>(), 0u8..3),
        (prop::option::of(endpoint()), endpoint()),
        prop::option::of(process()),
        hostile_string(),
        (
            prop::option::of(any::<u32>()),
            any::<bool>(),
            prop::option::of(any::<u64>()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((tcp, v4, dir), (src, dst), process, backend, (netns, failed, bytes, existing))| {
                Connection {
                    proto: if tcp { Proto::Tcp } else { Proto::Udp },
                    family: if v4 { Family::Ipv4 } else { Family::Ipv6 },
                    direction: [None, Some(Direction::Outbound), Some(Direction::Inbound)]
                        [dir as usize],
                    src,
                    dst,
                    process,
                    backend: backend.into(),
                    netns,
                    failed,
                    bytes,
                    existing,
                }
            },
        )
        .boxed()
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (0u64..10_000_000).prop_map(|n| n as f64 / 1e6),
        Just(f64::NAN),
        Just(-0.0),
    ]
}

fn opt_u64() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(any::<u64>())
}

fn body() -> BoxedStrategy<EventBody> {
    prop_oneof![
        connection().prop_map(EventBody::Connect),
        connection().prop_map(EventBody::Accept),
        connection().prop_map(EventBody::Udp),
        connection().prop_map(EventBody::Listen),
        (
            connection(),
            prop::option::of(float()),
            (opt_u64(), opt_u64(), opt_u64(), opt_u64()),
            prop::option::of(hostile_string())
        )
            .prop_map(|(conn, duration_ms, (bs, br, ps, pr), reason)| {
                EventBody::Close(Close {
                    conn,
                    duration_ms,
                    bytes_sent: bs,
                    bytes_received: br,
                    packets_sent: ps,
                    packets_received: pr,
                    reason,
                })
            })
            .boxed(),
        (
            connection(),
            hostile_string(),
            any::<i32>(),
            float(),
            (opt_u64(), opt_u64(), opt_u64(), opt_u64())
        )
            .prop_map(|(conn, state, start, duration_ms, (bs, br, ps, pr))| {
                EventBody::Flow(FlowSummary {
                    conn,
                    state,
                    start: DateTime::from_timestamp(
                        start as i64 * 100,
                        start as u32 % 1_000_000_000,
                    )
                    .unwrap(),
                    duration_ms,
                    bytes_sent: bs,
                    bytes_received: br,
                    packets_sent: ps,
                    packets_received: pr,
                })
            })
            .boxed(),
        process()
            .prop_map(|process| EventBody::Exec(Exec { process }))
            .boxed(),
        (
            (endpoint(), endpoint(), any::<u16>()),
            (
                hostile_string(),
                hostile_string(),
                prop::option::of(hostile_string())
            ),
            prop::collection::vec((hostile_string(), any::<u32>(), hostile_string()), 0..3),
            (
                prop::option::of(float()),
                prop::option::of(process()),
                any::<bool>()
            ),
        )
            .prop_map(
                |(
                    (src, dst, id),
                    (query, qtype, rcode),
                    answers,
                    (latency_ms, process, truncated),
                )| {
                    EventBody::Dns(Dns {
                        proto: Proto::Udp,
                        family: Family::of(&dst.ip),
                        role: if truncated {
                            DnsRole::Server
                        } else {
                            DnsRole::Client
                        },
                        src,
                        dst,
                        id,
                        query,
                        qtype,
                        rcode,
                        answers: answers
                            .into_iter()
                            .map(|(name, ttl, data)| DnsAnswer {
                                name,
                                rtype: data.clone(),
                                ttl,
                                data,
                            })
                            .collect(),
                        latency_ms,
                        process,
                        truncated,
                    })
                }
            )
            .boxed(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn generated_events_are_serde_jsons_bytes(
        secs in -10_000_000_000i64..300_000_000_000,
        nanos in 0u32..1_000_000_000,
        host in hostile_string(),
        body in body(),
    ) {
        let e = Event { ts: DateTime::from_timestamp(secs, nanos).unwrap(), host: host.into(), body };
        prop_assert_eq!(ours(&e), serde_json::to_string(&e).unwrap());
    }
}
