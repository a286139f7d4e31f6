//! The `log` event (`docs/events.md`): one message of netmon's own eBPF programs
//! (aya-log), on the stream with `netmon run --ebpf-log warn|debug --events log`
//! instead of stderr. Also `stats.ebpf_log`, what could not become such an event.
//!
//! Plain data, like the rest of the contract; `probe/log.rs` builds these values from
//! aya-log's records, bounded ([`MAX_MESSAGE_CHARS`]) because the text comes from the
//! kernel. The text renderer escapes it like every other string.
use serde::{Deserialize, Serialize};

/// The most characters of a message a `log` event carries (a longer one ends in `…`).
/// netmon's own messages are under 100; the bound is for a record gone wrong.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// The most characters of `target` and `location`.
pub const MAX_NAME_CHARS: usize = 128;

/// `log`: what a program logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLog {
    /// `error`, `warn`, `info`, `debug` or `trace` (netmon's programs use `warn` for
    /// anomalies and `debug` for what they skip).
    pub level: LogLevel,
    /// The message as aya-log formatted it (numbers only, never payload).
    pub message: String,
    /// The module of the eBPF program that logged, as aya-log names it
    /// (`netmon::tcp`, `netmon::emit`, …).
    pub target: String,
    /// The source line that logged (`netmon-ebpf/src/tcp.rs:287`), when the record
    /// carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `stats.ebpf_log` (with `--events log`): messages that did not become `log` events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EbpfLogStats {
    /// Messages dropped because the queue from the log reader to the event loop was
    /// full (the loop was behind): the reader never waits for it.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventBody};

    #[test]
    fn log_events_have_the_documented_fields_and_round_trip() {
        let event = Event {
            ts: chrono::DateTime::from_timestamp(1_795_000_000, 5).unwrap(),
            host: "web-1".into(),
            body: EventBody::Log(KernelLog {
                level: LogLevel::Debug,
                message: "close of a flow netmon did not see begin: port 41000 → 22, state 1"
                    .into(),
                target: "netmon::tcp".into(),
                location: Some("netmon-ebpf/src/tcp.rs:287".into()),
            }),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "log");
        assert_eq!(json["level"], "debug");
        assert_eq!(json["target"], "netmon::tcp");
        assert_eq!(json["location"], "netmon-ebpf/src/tcp.rs:287");
        assert!(json["message"].as_str().unwrap().starts_with("close of"));
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        let EventBody::Log(mut log) = event.body else {
            unreachable!()
        };
        log.location = None;
        let json = serde_json::to_value(EventBody::Log(log)).unwrap();
        assert!(json.get("location").is_none(), "unknown location left out");
    }
}
