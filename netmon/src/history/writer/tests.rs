//! Tests of `crate::history::writer`.

use super::super::aggregate::tests::{at, close, conn};
use super::*;
use crate::event::{Direction, Endpoint, Family, ProcessInfo, Proto};
use chrono::{DateTime, Utc};

fn dns_event(s: i64) -> EventBody {
    EventBody::Dns(crate::event::Dns {
        proto: Proto::Udp,
        family: Family::Ipv4,
        role: crate::event::DnsRole::Client,
        src: Endpoint::new("10.0.0.1".parse().unwrap(), 5353),
        dst: Endpoint::new("10.0.0.53".parse().unwrap(), 53),
        id: 7,
        query: format!("host{s}.example\u{1b}"),
        qtype: "A".into(),
        rcode: Some("NOERROR".into()),
        answers: Vec::new(),
        latency_ms: Some(1.0),
        process: Some(ProcessInfo::kernel(9, 9, "dig".into(), 1000, 1000, 1)),
        truncated: false,
    })
}

fn write_all(path: &std::path::Path, events: Vec<Event>) -> HistoryStats {
    let config = HistoryConfig {
        path: path.to_owned(),
        ..HistoryConfig::default()
    };
    let (tx, rx) = crate::pipeline::hub::direct(events.len() + 1);
    let writer = Writer::spawn(config, rx, None).unwrap();
    let counters = writer.counters();
    for e in events {
        tx.try_send(Arc::new(e)).unwrap();
    }
    drop(tx);
    writer.finish();
    counters.snapshot()
}

#[test]
fn what_the_writer_commits_the_queries_answer() {
    use crate::query::{Filter, Question, Source, Window};
    let dir = std::env::temp_dir().join(format!("netmon-history-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    let now = Utc::now().timestamp() / 3600 * 3600 - 7200;
    let mut events = Vec::new();
    for i in 0..100 {
        let sport = 40000 + i as u16;
        events.push(at(
            now + i,
            EventBody::Connect(conn(Direction::Outbound, sport, 443)),
        ));
        events.push(at(
            now + i,
            close(conn(Direction::Outbound, sport, 443), 10, 20),
        ));
    }
    events.push(at(
        now + 3700,
        EventBody::Accept(conn(Direction::Inbound, 50000, 22)),
    ));
    events.push(at(
        now + 3701,
        close(conn(Direction::Inbound, 50000, 22), 3, 4),
    ));
    events.push(at(now + 5, dns_event(5)));
    let stats = write_all(&path, events);
    assert_eq!(stats.written, 203, "{stats:?}");
    assert_eq!((stats.errors, stats.dropped), (0, 0));
    let store = super::super::query::Store::open(&path).unwrap();
    let q = |since: i64, until: i64, filter: Filter| Question {
        window: Window {
            since: DateTime::from_timestamp(since, 0),
            until: DateTime::from_timestamp(until, 0),
        },
        filter: Filter {
            limit: if filter.limit == 0 {
                1000
            } else {
                filter.limit
            },
            ..filter
        },
    };
    // A window of whole hours (flow_hour) and one with ragged ends (flow_minute)
    // give the same totals.
    for (since, until) in [
        (now - 3600, now + 7200),
        (now + 30, now + 3720),
        (now, now + 60),
    ] {
        let flows = store.flows(&q(since, until, Filter::default())).unwrap();
        let out: Vec<_> = flows.iter().filter(|f| f.direction == "outbound").collect();
        let first = (since.max(now)..(now + 100).min(until)).count() as u64;
        if first > 0 {
            assert_eq!(out.len(), 1, "{since}..{until}: {flows:?}");
            assert_eq!(out[0].remote_port, 443);
            assert_eq!(out[0].comm, "curl");
        }
    }
    let all = store
        .flows(&q(now - 3600, now + 7200, Filter::default()))
        .unwrap();
    let out = all.iter().find(|f| f.direction == "outbound").unwrap();
    assert_eq!(
        (out.connections, out.bytes_sent, out.bytes_received),
        (100, 1000, 2000)
    );
    let inb = all.iter().find(|f| f.direction == "inbound").unwrap();
    assert_eq!(
        (inb.local_port, inb.connections, inb.bytes_received),
        (22, 1, 4)
    );
    // The ragged window counts only its own minutes.
    let part = store
        .flows(&q(now + 3660, now + 7200, Filter::default()))
        .unwrap();
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].direction, "inbound");
    // Filters: port, host, process, type.
    let by_port = store
        .flows(&q(
            now - 3600,
            now + 7200,
            Filter {
                port: Some(22),
                ..Filter::default()
            },
        ))
        .unwrap();
    assert_eq!(by_port.len(), 1);
    let events = store
        .events(&q(
            now - 10,
            now + 7200,
            Filter {
                types: vec!["close".into()],
                host: Some("10.0.0.0/24".parse().unwrap()),
                ..Filter::default()
            },
        ))
        .unwrap();
    assert_eq!(events.len(), 101);
    assert!(
        events.windows(2).all(|w| w[0].ts <= w[1].ts),
        "oldest first"
    );
    let dig = store
        .events(&q(
            now - 10,
            now + 7200,
            Filter {
                process: Some("dig".into()),
                ..Filter::default()
            },
        ))
        .unwrap();
    assert_eq!(dig.len(), 1);
    assert_eq!(dig[0].kind, "dns");
    assert_eq!(dig[0].remote_name.as_deref(), Some("host5.example\u{1b}"));
    assert_eq!(dig[0].detail.as_ref().unwrap()["qtype"], "A");
    let none = store
        .events(&q(
            now - 10,
            now + 7200,
            Filter {
                host: Some("192.168.0.0/16".parse().unwrap()),
                ..Filter::default()
            },
        ))
        .unwrap();
    assert!(none.is_empty());
    let newest = store
        .events(&q(
            now - 10,
            now + 7200,
            Filter {
                limit: 3,
                ..Filter::default()
            },
        ))
        .unwrap();
    assert_eq!(newest.len(), 3);
    assert_eq!(newest[2].kind, "close");
    assert_eq!(newest[2].dst_port, Some(22));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retention_prunes_each_table_by_its_own_period() {
    let dir = std::env::temp_dir().join(format!("netmon-history-prune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    let now = Utc::now().timestamp();
    let day = 86_400;
    let mut events = Vec::new();
    for age_days in [1, 10, 40, 400] {
        let t = now - age_days * day;
        events.push(at(
            t,
            EventBody::Connect(conn(Direction::Outbound, 40000, 443)),
        ));
        events.push(at(t, close(conn(Direction::Outbound, 40000, 443), 1, 1)));
    }
    write_all(&path, events);
    let (conn, _) = super::super::open_writer(&path).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        (count("events"), count("flow_minute"), count("flow_hour")),
        (8, 4, 4)
    );
    retention::Pruner::new(&HistoryConfig::default(), Utc::now())
        .run(&conn)
        .unwrap();
    // raw 7 d keeps 1 day; per-minute 30 d keeps 1 and 10 days; hourly 365 d keeps all but 400.
    assert_eq!(
        (count("events"), count("flow_minute"), count("flow_hour")),
        (2, 2, 3)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_checkpointer_moves_the_wal_into_the_file_while_the_writer_keeps_it_open() {
    let dir = std::env::temp_dir().join(format!("netmon-history-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    let (db, _) = super::super::open_writer(&path).unwrap();
    let mut store = Store::new(db, &path);
    // The writer's own checkpoints are only the backstop.
    let pages: i64 = store
        .conn
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
        .unwrap();
    assert_eq!(pages, WRITER_CHECKPOINT_PAGES);
    let now = Utc::now().timestamp();
    let batch: Vec<(u64, Arc<Event>)> = (0..2_000u16)
        .map(|i| {
            let event = at(
                now,
                close(conn(Direction::Outbound, 30_000 + i, 443), 10, 20),
            );
            (u64::from(i) + 1, Arc::new(event))
        })
        .collect();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    store.write(&batch, &[]).unwrap();
    // Far fewer than WRITER_CHECKPOINT_PAGES: only the checkpointer copies them.
    let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 20;
    while size() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(CHECKPOINT_EVERY / 5);
    }
    assert!(
        size() > before,
        "the file stayed at {before} bytes: nothing checkpointed"
    );
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn connection_events_are_kept_many_to_a_row_and_read_back_through_events() {
    let dir = std::env::temp_dir().join(format!("netmon-history-batches-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    // Two minutes of connect + close pairs, and DNS between them.
    let t = Utc::now().timestamp() / 60 * 60 - 600;
    let mut events = Vec::new();
    for i in 0..300 {
        let s = t + i * 120 / 300;
        let sport = 40000 + i as u16;
        events.push(at(
            s,
            EventBody::Connect(conn(Direction::Outbound, sport, 443)),
        ));
        events.push(at(s, close(conn(Direction::Outbound, sport, 443), 10, 20)));
        if i % 60 == 0 {
            events.push(at(s, dns_event(s)));
        }
    }
    let stats = write_all(&path, events);
    assert_eq!((stats.written, stats.dropped), (605, 0), "{stats:?}");
    let db = crate::history::open_reader(&path).unwrap();
    let one = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    // The 600 connection events are a few rows (a commit's, cut at each minute), the
    // DNS events one row each; the view shows all 605.
    let batches = one("SELECT count(*) FROM event_batches");
    assert!((2..=4).contains(&batches), "{batches} batches");
    assert_eq!(one("SELECT sum(count) FROM event_batches"), 600);
    assert_eq!(
        one(
            "SELECT count(*) FROM event_batches WHERE first_ts / 60000000000 != last_ts / 60000000000"
        ),
        0,
        "a batch within one minute"
    );
    assert_eq!(one("SELECT count(*) FROM event_rows WHERE type = 'dns'"), 5);
    assert_eq!(one("SELECT count(*) FROM events"), 605);
    assert_eq!(
        one("SELECT count(DISTINCT seq) FROM events WHERE seq BETWEEN 1 AND 605"),
        605
    );
    let (kind, port, sent, received, comm): (String, i64, i64, i64, String) = db
        .query_row(
            "SELECT type, dst_port, bytes_sent, bytes_received, comm FROM events_with_process WHERE src_port = 40123 AND type = 'close'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), port, sent, received, comm.as_str()),
        ("close", 443, 10, 20, "curl")
    );
    // A window reads only its batches: through the index on their newest time.
    let plan: Vec<String> = db
        .prepare("EXPLAIN QUERY PLAN SELECT ts FROM events WHERE batch_last_ts >= 1 AND ts >= 1")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("event_batches_last_ts")),
        "{plan:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_view_reads_each_batched_column_at_its_position() {
    let sql = include_str!("../migrations/0004_event_batches.sql");
    for (i, column) in super::super::batch::BATCH_COLUMNS.iter().enumerate() {
        let read = format!("json_extract(e.value, '$[{i}]') AS {column},");
        assert!(sql.contains(&read), "the view lacks {read}");
    }
}
