//! Tests of `crate::history::replay`.

use std::sync::Arc;

use super::*;
use crate::{
    event::{Direction, FlowSummary, ProcessInfo, Proto},
    history::{
        HistoryConfig, Writer,
        aggregate::tests::{at, close, conn},
    },
};

/// What the history cannot keep, filled in as `events` fills it in.
fn as_replayed(mut e: Event) -> Event {
    e.host = "agent".into();
    let fill = |p: &mut ProcessInfo| {
        p.tid = p.pid;
        p.gid = 0;
        p.cgroup_id = 0;
    };
    if let Some(c) = e.body.connection_mut() {
        c.backend = BACKEND.into();
        if let Some(p) = &mut c.process {
            fill(p);
        }
    }
    e
}

#[test]
fn events_come_back_by_number_as_they_were_written() {
    let dir = std::env::temp_dir().join(format!("netmon-history-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("h.db");
    let t = 1_780_000_000;
    let mut udp = conn(Direction::Outbound, 5000, 53);
    udp.proto = Proto::Udp;
    udp.bytes = Some(40);
    udp.dst.name = Some("dns.example".into());
    let mut failed = conn(Direction::Outbound, 40001, 80);
    failed.failed = true;
    let events = vec![
        at(t, EventBody::Connect(conn(Direction::Outbound, 40000, 443))),
        // Not kept: its number is a gap.
        at(t, EventBody::Stats(Default::default())),
        at(
            t + 1,
            EventBody::Accept(conn(Direction::Inbound, 50000, 22)),
        ),
        at(t + 1, EventBody::Udp(udp)),
        at(t + 2, EventBody::Connect(failed)),
        at(t + 2, close(conn(Direction::Outbound, 40000, 443), 10, 20)),
        at(
            t + 3,
            EventBody::Flow(FlowSummary {
                conn: conn(Direction::Outbound, 40002, 443),
                state: "established".into(),
                start: chrono::DateTime::from_timestamp(t, 0).unwrap(),
                duration_ms: 3000.0,
                bytes_sent: Some(1),
                bytes_received: Some(2),
                packets_sent: Some(3),
                packets_received: Some(4),
            }),
        ),
    ];
    let (tx, rx) = crate::pipeline::hub::direct(64);
    let config = HistoryConfig {
        path: path.clone(),
        ..HistoryConfig::default()
    };
    let writer = Writer::spawn(config, rx, None).unwrap();
    let counters = writer.counters();
    for e in &events {
        tx.try_send(Arc::new(e.clone())).unwrap();
    }
    drop(tx);
    writer.finish();
    assert_eq!(counters.settled(), events.len() as u64, "all settled");
    assert_eq!(last_seq(&path), events.len() as u64);
    let conn = crate::history::open_reader(&path).unwrap();
    assert_eq!(first_seq(&conn).unwrap(), Some(1));
    let back = super::events(&conn, 1, 100, 100, "agent").unwrap();
    let numbers: Vec<u64> = back.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        [1, 3, 4, 5, 6, 7],
        "the stats line (2) is not kept"
    );
    for (n, ev) in &back {
        let want = as_replayed(events[*n as usize - 1].clone());
        assert_eq!(*ev, want, "event {n}");
    }
    // A window, and a limit.
    let some = super::events(&conn, 3, 6, 2, "agent").unwrap();
    assert_eq!(some.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 4]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_history_numbers_from_one() {
    assert_eq!(last_seq(std::path::Path::new("/nonexistent/netmon.db")), 0);
}
