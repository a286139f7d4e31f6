//! DNS visibility: turns the kernel's raw DNS packets (`DnsEvent`) into `dns` events
//! (a query matched with its response on the same socket), and remembers which names
//! each process resolved to which addresses so later flows can carry `dst.name`.
//!
//! Pure: bytes and values in, values out; no aya, no I/O. Nothing read from the wire
//! is trusted: the kernel's lengths are checked against the record, DNS's own lengths
//! are checked by the parser (hickory-proto), and anything malformed is counted in
//! [`DnsStats`], never a panic.
use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use chrono::{DateTime, Utc};
use hickory_proto::{
    op::{Message, MessageType},
    rr::{RData, RecordType},
};
use netmon_common::{DNS_PAYLOAD_MAX, DnsEvent, IPPROTO_TCP, IPPROTO_UDP, dns_flags};

use crate::{
    clock::BootClock,
    decode::{DecodeError, ip_of, process_info, read_struct},
    event::{Dns, DnsAnswer, DnsRole, DnsStats, Endpoint, Family, ProcessInfo, Proto},
};

/// One DNS packet as the kernel captured it, checked but not yet parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    pub ts: DateTime<Utc>,
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Leaving the host (egress) rather than arriving.
    pub egress: bool,
    pub socket_cookie: u64,
    pub process: Option<ProcessInfo>,
    /// Transport payload length on the wire.
    pub payload_len: u32,
    /// The captured bytes (at most `DNS_PAYLOAD_MAX`).
    pub payload: Vec<u8>,
}

/// Decodes a `kind::DNS` ring-buffer record. The captured length must fit both the
/// record and the payload array: a kernel bug or a short record is an error here, not
/// an out-of-bounds read later.
pub fn decode_packet(bytes: &[u8], clock: &BootClock) -> Result<Packet, DecodeError> {
    let raw: DnsEvent = read_struct(bytes)?;
    let proto = match raw.protocol {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        other => return Err(DecodeError::UnknownProtocol(other)),
    };
    let captured = (raw.captured_len as usize)
        .min(DNS_PAYLOAD_MAX)
        .min(raw.payload_len as usize);
    let process =
        (raw.flags & dns_flags::PROCESS_UNKNOWN == 0).then(|| process_info(&raw.header.process));
    Ok(Packet {
        ts: clock.to_wall(raw.header.ktime_ns),
        proto,
        src: SocketAddr::new(ip_of(raw.family, &raw.src_addr)?, raw.src_port),
        dst: SocketAddr::new(ip_of(raw.family, &raw.dst_addr)?, raw.dst_port),
        egress: raw.flags & dns_flags::EGRESS != 0,
        socket_cookie: raw.socket_cookie,
        process,
        payload_len: raw.payload_len,
        payload: raw.payload[..captured].to_vec(),
    })
}

/// Why a payload gave no DNS message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is longer than what was captured: not an error of the sender.
    #[error("message longer than the {0} bytes captured")]
    Truncated(usize),
    #[error("not a DNS message: {0}")]
    Malformed(String),
}

/// The DNS messages in one transport payload: one for UDP; for TCP every complete
/// length-prefixed message of the segment (RFC 1035 4.2.2). `payload_len` is the
/// length on the wire, `captured` what the kernel copied.
pub fn parse_payload(
    proto: Proto,
    captured: &[u8],
    payload_len: usize,
) -> Vec<Result<Message, ParseError>> {
    let cut = payload_len > captured.len();
    match proto {
        Proto::Udp => {
            if cut {
                return vec![Err(ParseError::Truncated(captured.len()))];
            }
            vec![parse_message(captured)]
        }
        Proto::Tcp => {
            let mut out = Vec::new();
            let mut rest = captured;
            while !rest.is_empty() {
                if rest.len() < 2 {
                    out.push(Err(if cut {
                        ParseError::Truncated(captured.len())
                    } else {
                        ParseError::Malformed("TCP length prefix cut short".into())
                    }));
                    break;
                }
                let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(msg) = rest.get(2..2 + len) else {
                    out.push(Err(if cut {
                        ParseError::Truncated(captured.len())
                    } else {
                        // A message continued in the next segment: netmon does not
                        // reassemble TCP streams.
                        ParseError::Malformed(format!(
                            "TCP DNS message of {len} bytes spans segments"
                        ))
                    }));
                    break;
                };
                out.push(parse_message(msg));
                rest = &rest[2 + len..];
            }
            out
        }
    }
}

/// Parses one DNS message. Never panics on any input (fuzzed: `fuzz/fuzz_targets/dns.rs`).
pub fn parse_message(bytes: &[u8]) -> Result<Message, ParseError> {
    if bytes.len() < 12 {
        return Err(ParseError::Malformed(format!(
            "{} bytes is shorter than a DNS header",
            bytes.len()
        )));
    }
    let msg = Message::from_vec(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
    if msg.queries.is_empty() {
        return Err(ParseError::Malformed("no question".into()));
    }
    Ok(msg)
}

/// Name of a record type as DNS tools print it; `TYPEnnn` (RFC 3597) when unnamed.
pub fn type_name(t: RecordType) -> String {
    match t {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        other => other.to_string(),
    }
}

/// The response code mnemonic (`NOERROR`, `NXDOMAIN`, …), `RCODEnn` when unnamed.
pub fn rcode_name(code: u16) -> String {
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        other => return format!("RCODE{other}"),
    };
    name.to_owned()
}

/// A DNS name for output: lower case, no trailing dot, `.` for the root.
fn name_text(name: &hickory_proto::rr::Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

const MAX_DATA_CHARS: usize = 255;

fn answer_of(r: &hickory_proto::rr::Record) -> DnsAnswer {
    let data = match &r.data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(n) => name_text(&n.0),
        RData::PTR(n) => name_text(&n.0),
        RData::NS(n) => name_text(&n.0),
        other => other.to_string(),
    };
    DnsAnswer {
        name: name_text(&r.name),
        rtype: type_name(r.record_type()),
        ttl: r.ttl,
        data: data.chars().take(MAX_DATA_CHARS).collect(),
    }
}

/// A query waiting for its response.
#[derive(Clone, Debug)]
struct Pending {
    ts: DateTime<Utc>,
    dns: Dns,
}

/// Identifies a transaction: the socket, the message id and the asker's endpoint (a
/// server socket answers many clients that may reuse ids).
type TxKey = (u64, u16, SocketAddr);

/// Matches queries with responses and produces `dns` events. Bounded: at most
/// `MAX_PENDING` queries wait; older ones are reported unanswered.
pub struct Tracker {
    pending: foldhash::HashMap<TxKey, Pending>,
    order: VecDeque<(DateTime<Utc>, TxKey)>,
    /// How long a query waits for its response before it is reported unanswered.
    pub timeout: Duration,
    pub stats: DnsStats,
}

const MAX_PENDING: usize = 16384;

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            pending: Default::default(),
            order: VecDeque::new(),
            timeout: Duration::from_secs(5),
            stats: DnsStats::default(),
        }
    }

    /// Feeds one packet; appends the transactions it completes to `out`.
    pub fn on_packet(&mut self, p: &Packet, out: &mut Vec<Dns>) {
        self.stats.packets += 1;
        for parsed in parse_payload(p.proto, &p.payload, p.payload_len as usize) {
            match parsed {
                Ok(msg) => self.on_message(p, &msg, out),
                Err(ParseError::Truncated(_)) => self.stats.truncated += 1,
                Err(ParseError::Malformed(_)) => self.stats.malformed += 1,
            }
        }
    }

    fn on_message(&mut self, p: &Packet, msg: &Message, out: &mut Vec<Dns>) {
        let is_query = msg.metadata.message_type == MessageType::Query;
        // The asker sent the query and receives the response.
        let (asker, answerer) = if is_query {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        // The local process asked when its query leaves or its response arrives.
        let role = if is_query == p.egress {
            DnsRole::Client
        } else {
            DnsRole::Server
        };
        let key = (p.socket_cookie, msg.metadata.id, asker);
        let q = &msg.queries[0];
        // The transaction as the query describes it (no response yet).
        let fresh = || Dns {
            proto: p.proto,
            family: Family::of(&asker.ip()),
            role,
            src: Endpoint::new(asker.ip(), asker.port()),
            dst: Endpoint::new(answerer.ip(), answerer.port()),
            id: msg.metadata.id,
            query: name_text(&q.name),
            qtype: type_name(q.query_type),
            rcode: None,
            answers: Vec::new(),
            latency_ms: None,
            process: p.process.clone(),
            truncated: false,
        };
        if is_query {
            let dns = fresh();
            if let Some(old) = self.pending.insert(key, Pending { ts: p.ts, dns }) {
                // A retransmission with the same id: report the first as unanswered.
                self.stats.unanswered += 1;
                out.push(old.dns);
            }
            self.order.push_back((p.ts, key));
            while self.pending.len() > MAX_PENDING {
                self.evict_oldest(out);
            }
            return;
        }
        let answers: Vec<DnsAnswer> = msg.answers.iter().map(answer_of).collect();
        let rcode = rcode_name(u16::from(msg.metadata.response_code));
        let mut dns = match self.pending.remove(&key) {
            Some(pending) => {
                let mut dns = pending.dns;
                let ms = (p.ts - pending.ts).num_microseconds().unwrap_or(0) as f64 / 1e3;
                dns.latency_ms = Some(ms.max(0.0));
                dns
            }
            None => {
                self.stats.unmatched += 1;
                fresh()
            }
        };
        if dns.process.is_none() {
            dns.process = p.process.clone();
        }
        dns.rcode = Some(rcode);
        dns.answers = answers;
        dns.truncated = msg.metadata.truncation;
        out.push(dns);
    }

    fn evict_oldest(&mut self, out: &mut Vec<Dns>) {
        while let Some((ts, key)) = self.order.pop_front() {
            if let Some(p) = self.pending.get(&key)
                && p.ts == ts
            {
                let p = self.pending.remove(&key).expect("present");
                self.stats.unanswered += 1;
                out.push(p.dns);
                return;
            }
        }
    }

    /// Reports queries older than the timeout as unanswered (null `rcode`).
    pub fn expire(&mut self, now: DateTime<Utc>, out: &mut Vec<Dns>) {
        let timeout = chrono::Duration::from_std(self.timeout).unwrap_or(chrono::Duration::MAX);
        while let Some(&(ts, key)) = self.order.front() {
            if now - ts < timeout {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.get(&key)
                && p.ts == ts
            {
                let p = self.pending.remove(&key).expect("present");
                self.stats.unanswered += 1;
                out.push(p.dns);
            }
        }
    }
}

/// Which names each process resolved to which addresses, so a following flow can say
/// which name it went to. Entries live for the record's TTL (at least a minute, at
/// most an hour); the cache is bounded.
#[derive(Default)]
pub struct NameCache {
    names: foldhash::HashMap<(u32, IpAddr), (String, DateTime<Utc>)>,
}

const MAX_NAMES: usize = 65536;
const MIN_TTL_S: i64 = 60;
const MAX_TTL_S: i64 = 3600;

impl NameCache {
    /// Remembers the addresses of a client transaction's answers for its process.
    pub fn learn(&mut self, ts: DateTime<Utc>, dns: &Dns) {
        if dns.role != DnsRole::Client {
            return;
        }
        let Some(pid) = dns.process.as_ref().map(|p| p.pid) else {
            return;
        };
        if self.names.len() >= MAX_NAMES {
            self.names.retain(|_, (_, until)| *until > ts);
            if self.names.len() >= MAX_NAMES {
                self.names.clear();
            }
        }
        for a in &dns.answers {
            let Ok(ip) = a.data.parse::<IpAddr>() else {
                continue;
            };
            if a.rtype != "A" && a.rtype != "AAAA" {
                continue;
            }
            let ttl = (a.ttl as i64).clamp(MIN_TTL_S, MAX_TTL_S);
            let until = ts + chrono::Duration::seconds(ttl);
            self.names.insert((pid, ip), (dns.query.clone(), until));
        }
    }

    /// The name `pid` resolved to `ip`, if it is still fresh at `ts`.
    pub fn lookup(&self, ts: DateTime<Utc>, pid: u32, ip: &IpAddr) -> Option<&str> {
        let (name, until) = self.names.get(&(pid, *ip))?;
        (*until > ts).then_some(name.as_str())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, rdata},
    };

    use super::*;

    fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn response(id: u16, name: &str, ips: &[&str]) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        let n = Name::from_ascii(name).unwrap();
        m.add_query(Query::query(n.clone(), RecordType::A));
        for ip in ips {
            m.add_answer(Record::from_rdata(
                n.clone(),
                300,
                RData::A(rdata::A(ip.parse().unwrap())),
            ));
        }
        m.to_vec().unwrap()
    }

    fn packet(egress: bool, src: &str, dst: &str, payload: Vec<u8>, ms: i64) -> Packet {
        Packet {
            ts: DateTime::from_timestamp_millis(1_000_000 + ms).unwrap(),
            proto: Proto::Udp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            egress,
            socket_cookie: 7,
            process: Some(ProcessInfo::kernel(42, 42, "dig".into(), 0, 0, 1)),
            payload_len: payload.len() as u32,
            payload,
        }
    }

    #[test]
    fn matches_a_response_to_its_query() {
        let mut t = Tracker::new();
        let mut out = Vec::new();
        let q = query(0x1234, "WWW.Example.com.", RecordType::A);
        t.on_packet(
            &packet(true, "127.0.0.1:40000", "127.0.0.1:53", q, 0),
            &mut out,
        );
        assert!(out.is_empty());
        let r = response(0x1234, "www.example.com.", &["10.1.2.3", "10.1.2.4"]);
        t.on_packet(
            &packet(false, "127.0.0.1:53", "127.0.0.1:40000", r, 3),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let d = &out[0];
        assert_eq!(d.query, "www.example.com");
        assert_eq!(d.qtype, "A");
        assert_eq!(d.rcode.as_deref(), Some("NOERROR"));
        assert_eq!(d.role, DnsRole::Client);
        assert_eq!(d.src.port, 40000);
        assert_eq!(d.dst.port, 53);
        assert_eq!(d.answers.len(), 2);
        assert_eq!(d.answers[0].data, "10.1.2.3");
        assert_eq!(d.latency_ms, Some(3.0));
        let mut names = NameCache::default();
        names.learn(DateTime::from_timestamp_millis(1_000_003).unwrap(), d);
        let ts = DateTime::from_timestamp_millis(1_001_000).unwrap();
        assert_eq!(
            names.lookup(ts, 42, &"10.1.2.4".parse().unwrap()),
            Some("www.example.com")
        );
        assert_eq!(names.lookup(ts, 43, &"10.1.2.4".parse().unwrap()), None);
    }

    #[test]
    fn server_side_sees_query_in_and_response_out() {
        let mut t = Tracker::new();
        let mut out = Vec::new();
        let q = query(9, "a.lan.", RecordType::AAAA);
        t.on_packet(&packet(false, "[::1]:5000", "[::1]:53", q, 0), &mut out);
        let r = response(9, "a.lan.", &[]);
        t.on_packet(&packet(true, "[::1]:53", "[::1]:5000", r, 1), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].role, DnsRole::Server);
        assert_eq!(out[0].qtype, "AAAA");
        assert_eq!(out[0].family, Family::Ipv6);
    }

    #[test]
    fn unanswered_queries_expire_and_garbage_is_counted() {
        let mut t = Tracker::new();
        let mut out = Vec::new();
        t.on_packet(
            &packet(
                true,
                "127.0.0.1:1",
                "127.0.0.1:53",
                query(1, "x.y.", RecordType::TXT),
                0,
            ),
            &mut out,
        );
        t.on_packet(
            &packet(true, "127.0.0.1:1", "127.0.0.1:53", vec![0xff; 40], 0),
            &mut out,
        );
        t.on_packet(
            &packet(true, "127.0.0.1:1", "127.0.0.1:53", vec![1, 2, 3], 0),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(t.stats.malformed, 2);
        t.expire(
            DateTime::from_timestamp_millis(1_010_000).unwrap(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rcode, None);
        assert_eq!(out[0].qtype, "TXT");
        assert_eq!(t.stats.unanswered, 1);
    }

    #[test]
    fn tcp_payloads_carry_a_length_prefix() {
        let q = query(5, "t.lan.", RecordType::A);
        let mut seg = (q.len() as u16).to_be_bytes().to_vec();
        seg.extend_from_slice(&q);
        let msgs = parse_payload(Proto::Tcp, &seg, seg.len());
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].is_ok());
        // A prefix that claims more than the segment holds.
        let mut bad = seg.clone();
        bad[1] = 0xff;
        assert!(matches!(
            parse_payload(Proto::Tcp, &bad, bad.len())[0],
            Err(ParseError::Malformed(_))
        ));
        // Cut by the capture limit: truncated, not malformed.
        assert!(matches!(
            parse_payload(Proto::Udp, &q[..10], 600)[0],
            Err(ParseError::Truncated(10))
        ));
    }

    #[test]
    fn decode_rejects_short_records() {
        let clock = BootClock::from_offset_ns(0);
        assert!(decode_packet(&[0u8; 100], &clock).is_err());
    }

    #[test]
    fn names_of_types_and_codes() {
        assert_eq!(type_name(RecordType::NULL), "NULL");
        assert_eq!(type_name(RecordType::Unknown(65280)), "TYPE65280");
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(23), "RCODE23");
    }
}
