//! The event contract: what every JSON line of `netmon run` holds (see `docs/events.md`).
//!
//! Every line has `ts` (RFC 3339, UTC, nanoseconds), `type` and `host`. These types are
//! plain data with serde derives; they know nothing of the kernel or of aya. Later work
//! adds types and optional fields; it never renames or removes one.
use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One line of output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(serialize_with = "ser_ts", deserialize_with = "de_ts")]
    pub ts: DateTime<Utc>,
    pub host: String,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The `type`-specific part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A process opened an outbound TCP connection.
    Connect(Connection),
    /// A listening process got an inbound TCP connection.
    Accept(Connection),
    /// A process started sending UDP to a new peer.
    Udp(Connection),
    /// A TCP socket started listening (`dst` is the local address).
    Listen(Connection),
    /// A TCP flow ended.
    Close(Close),
    /// Periodic and final counters.
    Stats(Stats),
    /// What the loader attached, first line of `netmon run`.
    Probe(ProbeReport),
}

impl EventBody {
    /// The `type` string of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::Connect(_) => "connect",
            EventBody::Accept(_) => "accept",
            EventBody::Udp(_) => "udp",
            EventBody::Listen(_) => "listen",
            EventBody::Close(_) => "close",
            EventBody::Stats(_) => "stats",
            EventBody::Probe(_) => "probe",
        }
    }

    /// The connection part of connection events.
    pub fn connection(&self) -> Option<&Connection> {
        match self {
            EventBody::Connect(c)
            | EventBody::Accept(c)
            | EventBody::Udp(c)
            | EventBody::Listen(c) => Some(c),
            EventBody::Close(c) => Some(&c.conn),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// The process an event belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
}

/// `connect`, `accept`, `udp` and `listen` events, and the common part of `close`.
///
/// `src` is the side that initiated and `dst` the side that responded; `listen` has
/// only `dst`. `direction` is null when netmon did not see the flow begin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub proto: Proto,
    pub family: Family,
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    pub dst: Endpoint,
    /// Null when the kernel could not attribute the event to a process.
    pub process: Option<ProcessInfo>,
    /// Which hook family produced the event: `fentry`, `kprobe` or `tracepoint`.
    pub backend: String,
    /// Network namespace inode, when the kernel's BTF let netmon read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// `connect` only: true when the handshake never completed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    /// `udp` only: size of the first datagram (UDP header included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A `close` event: a connection plus how long it lived and what it carried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Close {
    #[serde(flatten)]
    pub conn: Connection,
    /// Milliseconds from establishment to close; null when netmon did not see it begin.
    pub duration_ms: Option<f64>,
    /// Payload bytes sent and acknowledged by the peer (SYN and FIN not counted); null
    /// when the kernel's counters cannot be read.
    pub bytes_sent: Option<u64>,
    /// Payload bytes received (SYN and FIN not counted).
    pub bytes_received: Option<u64>,
}

/// `stats`: counters since netmon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since netmon started.
    pub uptime_s: f64,
    /// Events received from the kernel, per type.
    pub events: BTreeMap<String, u64>,
    /// Events the kernel could not hand over (ring buffer full), in total.
    pub lost: u64,
    /// The same, per type.
    pub lost_by_type: BTreeMap<String, u64>,
    /// Records from the kernel that netmon could not decode.
    pub malformed: u64,
    /// True on the last line netmon writes before it exits.
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#final: bool,
}

/// `probe`: per capability, the hook that was attached and why others were skipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// `auto`, `fentry`, `kprobe` or `tracepoint`: what the user asked for.
    pub requested: String,
    pub kernel: String,
    pub capabilities: Vec<CapabilityReport>,
    /// Problems that did not stop netmon (a hook that failed in `auto`, a missing offset).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// `tcp_connect`, `tcp_accept`, `tcp_listen`, `tcp_close`, `udp_send`.
    pub capability: String,
    /// The backend in use, null when nothing could be attached.
    pub backend: Option<String>,
    /// The kernel hooks attached for it.
    pub hooks: Vec<String>,
    /// Backends tried before and why they were not used.
    pub skipped: Vec<SkippedBackend>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedBackend {
    pub backend: String,
    pub reason: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn ser_ts<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_connect() -> Event {
        Event {
            ts: DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap(),
            host: "web-1".into(),
            body: EventBody::Connect(Connection {
                proto: Proto::Tcp,
                family: Family::Ipv4,
                direction: Some(Direction::Outbound),
                src: Some(Endpoint {
                    ip: "10.0.0.5".parse().unwrap(),
                    port: 43512,
                }),
                dst: Endpoint {
                    ip: "10.0.0.9".parse().unwrap(),
                    port: 443,
                },
                process: Some(ProcessInfo {
                    pid: 1234,
                    tid: 1234,
                    comm: "curl".into(),
                    uid: 1000,
                    gid: 1000,
                    cgroup_id: 4242,
                }),
                backend: "tracepoint".into(),
                netns: None,
                failed: false,
                bytes: None,
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
}
