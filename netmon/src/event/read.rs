//! Reading events of the JSON Lines contract fast, for the readers of agents' streams
//! (`netmon top`) and of files (`netmon replay`).
//!
//! serde's derive reads `Event` (`type` tag, `flatten`ed body) and `ProcessInfo`
//! (`flatten`ed detail) by first copying every key and value of the object into a
//! buffer of its own: a `connect` line took 3.7–5 µs. Here the flattened parts are
//! read straight from the text instead: [`ProcessInfo`] through [`ProcessWire`] (its
//! fields and its detail's, in one struct), and for the frequent types
//! [`from_json`] reads the line once for `ts`/`host`/`type` and once per part of the
//! body (serde skips the fields a part does not have, without copying them). Other
//! types take serde's derive. `tests.rs` checks that both readings agree on every type.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{
    Close, Connection, Container, Event, EventBody, FlowSummary, ProcessDetail, ProcessInfo,
};

/// A `process` object as the contract writes it: [`ProcessInfo`]'s fields and its
/// [`ProcessDetail`]'s side by side (what `flatten` makes of them).
#[derive(Deserialize)]
pub(super) struct ProcessWire {
    pid: u32,
    tid: u32,
    comm: String,
    #[serde(default)]
    thread: Option<String>,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    #[serde(default)]
    exe: Option<String>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ppid: Option<u32>,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    start_time: Option<DateTime<Utc>>,
    #[serde(default)]
    ancestors: Vec<String>,
    #[serde(default)]
    container: Option<Container>,
}

impl From<ProcessWire> for ProcessInfo {
    fn from(w: ProcessWire) -> ProcessInfo {
        ProcessInfo {
            pid: w.pid,
            tid: w.tid,
            comm: w.comm.into(),
            thread: w.thread,
            uid: w.uid,
            gid: w.gid,
            cgroup_id: w.cgroup_id,
            detail: Arc::new(ProcessDetail {
                exe: w.exe,
                cmdline: w.cmdline,
                user: w.user,
                ppid: w.ppid,
                parent: w.parent,
                start_time: w.start_time,
                ancestors: w.ancestors,
                container: w.container,
            }),
        }
    }
}

/// What every line has.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(deserialize_with = "super::de_ts")]
    ts: DateTime<Utc>,
    host: String,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

/// A `close` without its connection.
#[derive(Deserialize)]
struct CloseRest {
    duration_ms: Option<f64>,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    #[serde(default)]
    packets_sent: Option<u64>,
    #[serde(default)]
    packets_received: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// A `flow` without its connection.
#[derive(Deserialize)]
struct FlowRest {
    state: String,
    #[serde(deserialize_with = "super::de_ts")]
    start: DateTime<Utc>,
    duration_ms: f64,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    #[serde(default)]
    packets_sent: Option<u64>,
    #[serde(default)]
    packets_received: Option<u64>,
}

/// One event from one JSON line of the contract (what `serde_json::from_str::<Event>`
/// gives, faster for connection events).
pub fn from_json(line: &str) -> serde_json::Result<Event> {
    let head: Head = serde_json::from_str(line)?;
    let conn = || serde_json::from_str::<Connection>(line);
    let body = match head.kind {
        "connect" => EventBody::Connect(conn()?),
        "accept" => EventBody::Accept(conn()?),
        "udp" => EventBody::Udp(conn()?),
        "listen" => EventBody::Listen(conn()?),
        "close" => {
            let r: CloseRest = serde_json::from_str(line)?;
            EventBody::Close(Close {
                conn: conn()?,
                duration_ms: r.duration_ms,
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                packets_sent: r.packets_sent,
                packets_received: r.packets_received,
                reason: r.reason,
            })
        }
        "flow" => {
            let r: FlowRest = serde_json::from_str(line)?;
            EventBody::Flow(FlowSummary {
                conn: conn()?,
                state: r.state,
                start: r.start,
                duration_ms: r.duration_ms,
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                packets_sent: r.packets_sent,
                packets_received: r.packets_received,
            })
        }
        _ => return serde_json::from_str(line),
    };
    Ok(Event {
        ts: head.ts,
        host: head.host.into(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Direction, Endpoint, Family, Proto};

    fn process() -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            tid: 4243,
            comm: "curl".into(),
            thread: Some("worker\u{1b}[2J".into()),
            uid: 1000,
            gid: 1001,
            cgroup_id: 77,
            detail: Arc::new(ProcessDetail {
                exe: Some("/usr/bin/curl".into()),
                cmdline: Some("curl \"https://example.org/\"\n-x".into()),
                user: Some("alice".into()),
                ppid: Some(1),
                parent: Some("/usr/bin/bash".into()),
                start_time: Some("2026-12-07T01:02:03.456Z".parse().unwrap()),
                ancestors: vec!["/usr/bin/bash".into(), "/usr/sbin/sshd".into()],
                container: Some(Container {
                    id: Some("ab".repeat(32)),
                    runtime: Some("docker".into()),
                    pod_uid: Some("pod-1".into()),
                }),
            }),
        }
    }

    fn connection(process: Option<ProcessInfo>) -> Connection {
        Connection {
            proto: Proto::Tcp,
            family: Family::Ipv6,
            direction: Some(Direction::Outbound),
            src: Some(Endpoint::new("::1".parse().unwrap(), 40000)),
            dst: Endpoint::new("::1".parse().unwrap(), 443),
            process,
            backend: "fentry".into(),
            netns: Some(4026531840),
            failed: true,
            bytes: Some(17),
            existing: true,
        }
    }

    /// Every field set (and one event with the optional ones left out): the fast
    /// reading equals serde's, and both equal what was written. A field added to
    /// these types and not to the structs above fails here.
    #[test]
    fn the_fast_reading_equals_serdes_for_every_connection_type_and_all_fields() {
        let ts: DateTime<Utc> = "2026-12-07T01:02:03.123456789Z".parse().unwrap();
        let full = connection(Some(process()));
        let bare = Connection {
            src: None,
            process: None,
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
            direction: None,
            ..connection(None)
        };
        let mut bodies = Vec::new();
        for c in [full, bare] {
            bodies.push(EventBody::Connect(c.clone()));
            bodies.push(EventBody::Accept(c.clone()));
            bodies.push(EventBody::Udp(c.clone()));
            bodies.push(EventBody::Listen(c.clone()));
            bodies.push(EventBody::Close(Close {
                conn: c.clone(),
                duration_ms: Some(12.5),
                bytes_sent: Some(1),
                bytes_received: None,
                packets_sent: Some(3),
                packets_received: Some(4),
                reason: Some("idle".into()),
            }));
            bodies.push(EventBody::Flow(FlowSummary {
                conn: c.clone(),
                state: "established".into(),
                start: ts,
                duration_ms: 1000.0,
                bytes_sent: None,
                bytes_received: Some(9),
                packets_sent: None,
                packets_received: Some(2),
            }));
            bodies.push(EventBody::Exec(crate::event::Exec { process: process() }));
        }
        for body in bodies {
            let event = Event {
                ts,
                host: "web-1".into(),
                body,
            };
            let mut line = Vec::new();
            crate::output::json::write_event(&mut line, &event);
            let line = String::from_utf8(line).unwrap();
            let fast = from_json(&line).unwrap();
            let serde: Event = serde_json::from_str(&line).unwrap();
            assert_eq!(fast, serde, "{line}");
            assert_eq!(fast, event, "{line}");
        }
    }

    #[test]
    fn a_line_that_is_not_an_event_is_an_error() {
        for bad in [
            "",
            "{}",
            r#"{"ts":"x","host":"h","type":"connect"}"#,
            r#"{"ts":"2026-12-07T01:02:03Z","host":"h","type":"connect","proto":"tcp"}"#,
            r#"{"ts":"2026-12-07T01:02:03Z","host":"h","type":"nope"}"#,
            "[1,2]",
        ] {
            assert!(from_json(bad).is_err(), "{bad}");
        }
    }
}
