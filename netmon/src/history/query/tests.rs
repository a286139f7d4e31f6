use std::sync::Arc;

use super::*;
use crate::{
    event::{Dns, DnsRole, Endpoint, Event, EventBody, Family, ProcessInfo, Proto},
    history::{HistoryConfig, Writer},
    query::{Filter, Window},
};

/// A history at `path` holding `events`, written by the real writer, and its reader.
fn stored(path: &std::path::Path, events: Vec<Event>) -> Store {
    let (tx, rx) = crate::pipeline::hub::direct(events.len() + 1);
    let config = HistoryConfig {
        path: path.to_owned(),
        ..HistoryConfig::default()
    };
    let writer = Writer::spawn(config, rx, None).unwrap();
    for e in events {
        tx.try_send(Arc::new(e)).unwrap();
    }
    drop(tx);
    writer.finish();
    Store::open(path).unwrap()
}

fn dns(ts: i64, name: &str, comm: &str) -> Event {
    let pid = if comm == "curl" { 8 } else { 9 };
    Event {
        ts: DateTime::from_timestamp(ts, 0).unwrap(),
        host: "h".into(),
        body: EventBody::Dns(Dns {
            proto: Proto::Udp,
            family: Family::Ipv4,
            role: DnsRole::Client,
            src: Endpoint::new("10.0.0.1".parse().unwrap(), 5353),
            dst: Endpoint::new("10.0.0.53".parse().unwrap(), 53),
            id: 7,
            query: name.into(),
            qtype: "A".into(),
            rcode: Some("NOERROR".into()),
            answers: Vec::new(),
            latency_ms: Some(1.0),
            process: Some(ProcessInfo::kernel(pid, pid, comm.into(), 1000, 1000, 1)),
            truncated: false,
        }),
    }
}

#[test]
fn dns_names_are_counted_in_the_window_most_asked_first() {
    let dir = std::env::temp_dir().join(format!("netmon-dns-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    let t = Utc::now().timestamp() - 3600;
    let mut events = vec![dns(t - 600, "old.example", "dig")];
    for i in 0..3 {
        events.push(dns(t + i, "a.example", if i == 0 { "curl" } else { "dig" }));
    }
    events.push(dns(t + 5, "b.example", "dig"));
    let store = stored(&path, events);
    let q = |limit| Question {
        window: Window {
            since: DateTime::from_timestamp(t, 0),
            until: DateTime::from_timestamp(t + 60, 0),
        },
        filter: Filter {
            limit,
            ..Filter::default()
        },
    };
    let names = store.dns_names(&q(10)).unwrap();
    let got: Vec<(&str, u64, Vec<&str>)> = names
        .iter()
        .map(|d| {
            let p = d.processes.iter().map(String::as_str).collect();
            (d.name.as_str(), d.queries, p)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a.example", 3, vec!["curl", "dig"]),
            ("b.example", 1, vec!["dig"])
        ]
    );
    assert_eq!(store.dns_names(&q(1)).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_chart_in_one_question_equals_a_question_per_bucket() {
    use crate::event::Direction;
    use crate::history::aggregate::tests::{at, conn};
    let dir = std::env::temp_dir().join(format!("netmon-over-time-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    // Connections over three hours, a few per minute, some minutes empty.
    let start = (Utc::now().timestamp() - 4 * 3600).div_euclid(3600) * 3600 + 600;
    let mut events = Vec::new();
    for i in 0..400i64 {
        let ts = start + i * 29;
        if (ts / 60) % 7 == 3 {
            continue;
        }
        events.push(at(
            ts,
            EventBody::Connect(conn(Direction::Outbound, 40000 + (i % 50) as u16, 443)),
        ));
    }
    let total = events.len() as u64;
    let store = stored(&path, events);
    let window = Window {
        since: DateTime::from_timestamp(start - 300, 0),
        until: DateTime::from_timestamp(start + 4 * 3600, 0),
    };
    for bucket in [300i64, 900, 3600] {
        let chart = store.connections_over_time(&window, bucket).unwrap();
        assert_eq!(chart.iter().map(|(_, n)| n).sum::<u64>(), total, "{bucket}");
        for (t, n) in &chart {
            assert_eq!(t.timestamp() % bucket, 0);
            let one = Question {
                window: Window {
                    since: Some((*t).max(window.since.unwrap())),
                    until: Some(*t + chrono::Duration::seconds(bucket)),
                },
                filter: Filter {
                    limit: 1_000_000,
                    ..Filter::default()
                },
            };
            let asked: u64 = store
                .flows(&one)
                .unwrap()
                .iter()
                .map(|f| f.connections)
                .sum();
            assert_eq!(*n, asked, "bucket {t} of {bucket} s");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
