//! Tests of `crate::event`.

use super::*;

fn sample_connect() -> Event {
    Event {
        ts: DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap(),
        host: "web-1".into(),
        body: EventBody::Connect(Connection {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            direction: Some(Direction::Outbound),
            src: Some(Endpoint::new("10.0.0.5".parse().unwrap(), 43512)),
            dst: Endpoint::new("10.0.0.9".parse().unwrap(), 443),
            process: Some(ProcessInfo::kernel(
                1234,
                1234,
                "curl".into(),
                1000,
                1000,
                4242,
            )),
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        }),
    }
}

#[test]
fn connect_renders_the_documented_fields() {
    let json: serde_json::Value = serde_json::to_value(sample_connect()).unwrap();
    assert_eq!(json["ts"], "2026-11-18T11:06:40.123456789Z");
    assert_eq!(json["type"], "connect");
    assert_eq!(json["host"], "web-1");
    assert_eq!(json["proto"], "tcp");
    assert_eq!(json["family"], "ipv4");
    assert_eq!(json["direction"], "outbound");
    assert_eq!(json["src"]["ip"], "10.0.0.5");
    assert_eq!(json["dst"]["port"], 443);
    assert_eq!(json["process"]["comm"], "curl");
    assert_eq!(json["process"]["cgroup_id"], 4242);
    assert!(json.get("failed").is_none(), "false flags are left out");
}

#[test]
fn events_round_trip_through_json() {
    let event = sample_connect();
    let line = serde_json::to_string(&event).unwrap();
    assert!(!line.contains('\n'));
    let back: Event = serde_json::from_str(&line).unwrap();
    assert_eq!(back, event);
}

#[test]
fn close_always_carries_its_counters_even_when_unknown() {
    let Event { ts, host, body } = sample_connect();
    let EventBody::Connect(conn) = body else {
        unreachable!()
    };
    let close = Event {
        ts,
        host,
        body: EventBody::Close(Close {
            conn,
            duration_ms: Some(1.5),
            bytes_sent: None,
            bytes_received: None,
            packets_sent: None,
            packets_received: None,
            reason: None,
        }),
    };
    let json = serde_json::to_value(&close).unwrap();
    assert_eq!(json["type"], "close");
    assert_eq!(json["duration_ms"], 1.5);
    assert!(json["bytes_sent"].is_null());
    assert!(json.as_object().unwrap().contains_key("bytes_received"));
    let back: Event = serde_json::from_value(json).unwrap();
    assert_eq!(back, close);
}

#[test]
fn an_event_stays_small_enough_to_move_cheaply() {
    // Every event is moved by value through the reader, enrichment, rules and hub: the
    // rare large variants are boxed so the enum is the size of the hot ones (a Flow).
    let size = std::mem::size_of::<Event>();
    assert!(
        size <= 400,
        "Event is {size} bytes: box the variant that grew (EventBody is {} bytes)",
        std::mem::size_of::<EventBody>()
    );
}
