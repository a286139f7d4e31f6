//! Connection events kept many to a row (`event_batches`, schema 4): each event a JSON
//! array of the columns of `events` by position, the events of one commit and one
//! minute (at most 64 KiB of them) one row. Why: one SQLite row per event, with its
//! indexes, cost the writer more CPU per event than the rest of `netmon run` on a busy
//! web server (docs/history.md). The view `events` (migration 0004) unpacks them.
use std::net::IpAddr;

use rusqlite::{Transaction, params};

use crate::event::{Connection as Conn, EventBody};

/// What columns do not hold of a connection event, only what is set: an object of
/// the batch's JSON (`events.detail`), written straight from the event.
#[derive(serde::Serialize, Default)]
pub(super) struct ConnDetail<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

impl<'a> ConnDetail<'a> {
    pub(super) fn of(c: &Conn) -> ConnDetail<'a> {
        ConnDetail {
            failed: c.failed,
            existing: c.existing,
            ..ConnDetail::default()
        }
    }

    fn is_empty(&self) -> bool {
        !self.failed
            && !self.existing
            && self.reason.is_none()
            && self.state.is_none()
            && self.start.is_none()
    }
}

/// Whether an event of this type is kept in `event_batches` (the types a busy server
/// makes by the thousand per second) rather than as a row of `event_rows`.
pub fn batched(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::Connect(_)
            | EventBody::Accept(_)
            | EventBody::Udp(_)
            | EventBody::Listen(_)
            | EventBody::Close(_)
            | EventBody::Flow(_)
    )
}

/// One event of `event_batches`: a JSON array of the columns of `events` in the order
/// of [`BATCH_COLUMNS`] (`null` for what it lacks; `detail` an object). Positional, so
/// an event is about 110 bytes of JSON, not 200 with the names.
pub(super) struct BatchedEvent<'a> {
    pub ts: i64,
    pub kind: &'a str,
    pub seq: Option<i64>,
    pub process_id: Option<i64>,
    pub proto: Option<&'static str>,
    pub direction: Option<&'static str>,
    pub src: Option<(IpAddr, u16)>,
    pub dst: Option<(IpAddr, u16)>,
    pub remote_name: Option<&'a str>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub packets_sent: Option<u64>,
    pub packets_received: Option<u64>,
    pub duration_ms: Option<f64>,
    pub detail: &'a ConnDetail<'a>,
}

/// The position of each column in a batched event (migration 0004's view reads them
/// by these numbers).
/// [`BatchedEvent::write`] writes them in this order; the tests hold both to it.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the order is the tests' reference")
)]
pub const BATCH_COLUMNS: [&str; 17] = [
    "ts",
    "type",
    "seq",
    "process_id",
    "proto",
    "direction",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "remote_name",
    "bytes_sent",
    "bytes_received",
    "packets_sent",
    "packets_received",
    "duration_ms",
    "detail",
];

impl BatchedEvent<'_> {
    /// Appends the event's JSON array: serde_json's bytes for it (the `Serialize`
    /// below, checked in a test), written by hand for all but a non-empty `detail`,
    /// as `output::json` does for the sink (serde formats each address through a
    /// `String` and escapes it again).
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        use crate::output::json::{float, int, ip_digits, opt_string, string};
        let opt_int = |out: &mut Vec<u8>, v: Option<i64>| match v {
            Some(v) => int(out, v),
            None => out.extend_from_slice(b"null"),
        };
        // Counters are u64; the columns are SQLite integers.
        let n = |out: &mut Vec<u8>, v: Option<u64>| {
            opt_int(out, v.map(|v| v.min(i64::MAX as u64) as i64))
        };
        let end = |out: &mut Vec<u8>, e: Option<(IpAddr, u16)>| match e {
            Some((ip, port)) => {
                out.push(b'"');
                ip_digits(out, &ip);
                out.extend_from_slice(b"\",");
                int(out, port.into());
            }
            None => out.extend_from_slice(b"null,null"),
        };
        out.push(b'[');
        int(out, self.ts);
        out.push(b',');
        string(out, self.kind);
        out.push(b',');
        opt_int(out, self.seq);
        out.push(b',');
        opt_int(out, self.process_id);
        out.push(b',');
        opt_string(out, self.proto);
        out.push(b',');
        opt_string(out, self.direction);
        out.push(b',');
        end(out, self.src);
        out.push(b',');
        end(out, self.dst);
        out.push(b',');
        opt_string(out, self.remote_name);
        for v in [
            self.bytes_sent,
            self.bytes_received,
            self.packets_sent,
            self.packets_received,
        ] {
            out.push(b',');
            n(out, v);
        }
        out.push(b',');
        match self.duration_ms {
            Some(ms) => float(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
        if self.detail.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            // Writing to a Vec cannot fail, and every field serializes.
            let _ = serde_json::to_writer(&mut *out, self.detail);
        }
        out.push(b']');
    }
}

/// The reference for [`BatchedEvent::write`].
#[cfg(test)]
impl serde::Serialize for BatchedEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let n = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        let mut t = s.serialize_tuple(BATCH_COLUMNS.len())?;
        t.serialize_element(&self.ts)?;
        t.serialize_element(self.kind)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(&self.process_id)?;
        t.serialize_element(&self.proto)?;
        t.serialize_element(&self.direction)?;
        t.serialize_element(&self.src.map(|s| s.0))?;
        t.serialize_element(&self.src.map(|s| s.1))?;
        t.serialize_element(&self.dst.map(|d| d.0))?;
        t.serialize_element(&self.dst.map(|d| d.1))?;
        t.serialize_element(&self.remote_name)?;
        t.serialize_element(&n(self.bytes_sent))?;
        t.serialize_element(&n(self.bytes_received))?;
        t.serialize_element(&n(self.packets_sent))?;
        t.serialize_element(&n(self.packets_received))?;
        t.serialize_element(&self.duration_ms)?;
        t.serialize_element(&(!self.detail.is_empty()).then_some(self.detail))?;
        t.end()
    }
}

/// Connection events of one commit and one minute (at most [`MAX_BATCH_BYTES`] of
/// them), as the JSON array of one `event_batches` row (a row per minute, so that
/// retention, which drops whole rows, drops events within a minute of their time); the
/// writer keeps one and reuses its buffer.
#[derive(Default)]
pub(super) struct Batch {
    json: Vec<u8>,
    count: i64,
    first_ts: i64,
    last_ts: i64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
}

impl Batch {
    /// Whether an event at `ts` (Unix nanoseconds) belongs to a new row: the batch
    /// holds another minute's events, or [`MAX_BATCH_BYTES`] already.
    pub(super) fn ends_before(&self, ts: i64) -> bool {
        self.count > 0
            && (ts.div_euclid(MINUTE_NS) != self.first_ts.div_euclid(MINUTE_NS)
                || self.json.len() >= MAX_BATCH_BYTES)
    }

    pub(super) fn push(&mut self, event: &BatchedEvent<'_>) {
        if self.count == 0 {
            self.json.clear();
            self.json.reserve(MAX_BATCH_BYTES + 1024);
            self.json.push(b'[');
            self.first_ts = event.ts;
            self.last_ts = event.ts;
            self.first_seq = event.seq;
            self.last_seq = event.seq;
        } else {
            self.json.push(b',');
            self.first_ts = self.first_ts.min(event.ts);
            self.last_ts = self.last_ts.max(event.ts);
            self.first_seq = self
                .first_seq
                .min(event.seq)
                .or(self.first_seq)
                .or(event.seq);
            self.last_seq = self.last_seq.max(event.seq);
        }
        event.write(&mut self.json);
        self.count += 1;
    }

    /// Inserts the batch's row (nothing if it is empty) and empties it.
    pub(super) fn insert(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        self.json.push(b']');
        let events = std::str::from_utf8(&self.json).unwrap_or("[]");
        tx.prepare_cached(
            "INSERT INTO event_batches (first_ts, last_ts, first_seq, last_seq, count, events) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            self.first_ts,
            self.last_ts,
            self.first_seq,
            self.last_seq,
            self.count,
            events
        ])?;
        self.count = 0;
        Ok(())
    }
}

const MINUTE_NS: i64 = 60_000_000_000;

/// JSON after which a batch's row is written and a new one begun (about 500 events):
/// the buffer, and SQLite's copies of it while it writes the row, stay small enough to
/// be reused from the heap. (A whole commit's 4,096 events in one row, ~0.5 MB copied
/// three times, cost netmon a MiB of its 50 MB at 100,000 flows.)
const MAX_BATCH_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_row_is_serde_jsons() {
        let hostile = "a\"b\\c\u{0}\u{1f}\u{7f}é\u{2028}";
        let details = [
            ConnDetail::default(),
            ConnDetail {
                failed: true,
                existing: true,
                reason: Some(hostile),
                state: Some("established"),
                start: Some("2026-12-07T09:00:00Z".into()),
            },
        ];
        let ends = [
            None,
            Some(("127.0.0.1".parse().unwrap(), 0)),
            Some(("255.10.0.9".parse().unwrap(), 65535)),
            Some(("::ffff:10.0.0.1".parse().unwrap(), 443)),
            Some(("fe80::1:2".parse().unwrap(), 53)),
        ];
        let numbers = [None, Some(0), Some(7), Some(u64::MAX)];
        let floats = [
            None,
            Some(0.0),
            Some(1.5e-7),
            Some(123456.789),
            Some(f64::NAN),
        ];
        let mut n = 0;
        for detail in &details {
            for (i, src) in ends.iter().enumerate() {
                let dst = ends[(i + 2) % ends.len()];
                for (j, bytes) in numbers.iter().enumerate() {
                    let event = BatchedEvent {
                        ts: [i64::MIN, -1, 0, 1_796_000_000_123_456_789][j],
                        kind: [hostile, "close"][j % 2],
                        seq: [None, Some(1), Some(i64::MAX), Some(42)][j],
                        process_id: [Some(3), None, Some(-4), Some(0)][j],
                        proto: [None, Some("tcp")][i % 2],
                        direction: [Some("inbound"), None][j % 2],
                        src: *src,
                        dst,
                        remote_name: [None, Some(hostile), Some("example.com")][i % 3],
                        bytes_sent: *bytes,
                        bytes_received: numbers[(j + 1) % 4],
                        packets_sent: numbers[(j + 2) % 4],
                        packets_received: numbers[(j + 3) % 4],
                        duration_ms: floats[(i + j) % floats.len()],
                        detail,
                    };
                    let mut ours = Vec::new();
                    event.write(&mut ours);
                    let theirs = serde_json::to_vec(&event).unwrap();
                    assert_eq!(
                        String::from_utf8(ours).unwrap(),
                        String::from_utf8(theirs).unwrap()
                    );
                    n += 1;
                }
            }
        }
        assert_eq!(n, 40);
    }
}
