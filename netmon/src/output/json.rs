//! JSON Lines for the hot event types, written by hand: `connect`, `accept`, `udp`,
//! `listen`, `close`, `flow`, `dns` and `exec`, byte for byte what `serde_json` writes for
//! them (the contract stays the serde derives in `event.rs`), about four times faster:
//! serde's `#[serde(flatten)]` turns each event into a map whose every key is escaped,
//! and every timestamp went through a `String`. Every other type goes through
//! `serde_json`. Owns no I/O: it appends to a `Vec<u8>`.
//!
//! Each struct is taken apart with an exhaustive pattern, so a field added to the
//! contract does not compile here until it is written; the tests compare with
//! `serde_json` on every type, every optional field set and unset, and on hostile
//! strings (control characters, quotes, backslashes, huge fields).
use std::net::IpAddr;

use chrono::{DateTime, Datelike as _, SecondsFormat, Timelike as _, Utc};
use serde_json::ser::{CompactFormatter, Formatter as _};

use crate::event::{
    Close, Connection, Container, Direction, Dns, DnsAnswer, DnsRole, Endpoint, Event, EventBody,
    Exec, Family, FlowSummary, ProcessDetail, ProcessInfo, Proto,
};

/// Appends `event` as one JSON object (no newline) to `out`: `serde_json::to_writer`'s
/// bytes.
pub fn write_event(out: &mut Vec<u8>, event: &Event) {
    let Event { ts, host, body } = event;
    let ty: &[u8] = match body {
        EventBody::Connect(_) => b"connect",
        EventBody::Accept(_) => b"accept",
        EventBody::Udp(_) => b"udp",
        EventBody::Listen(_) => b"listen",
        EventBody::Close(_) => b"close",
        EventBody::Flow(_) => b"flow",
        EventBody::Dns(_) => b"dns",
        EventBody::Exec(_) => b"exec",
        _ => {
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, event);
            return;
        }
    };
    out.extend_from_slice(b"{\"ts\":\"");
    timestamp(out, ts, SecondsFormat::Nanos);
    out.extend_from_slice(b"\",\"host\":");
    string(out, host);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(ty);
    out.push(b'"');
    match body {
        EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Udp(c) | EventBody::Listen(c) => {
            connection(out, c)
        }
        EventBody::Close(c) => close(out, c),
        EventBody::Flow(f) => flow(out, f),
        EventBody::Dns(d) => dns(out, d),
        EventBody::Exec(Exec { process: p }) => {
            out.extend_from_slice(b",\"process\":");
            process(out, p);
        }
        _ => unreachable!("other types went to serde_json above"),
    }
    out.push(b'}');
}

/// The fields of a connection, each preceded by a comma.
fn connection(out: &mut Vec<u8>, c: &Connection) {
    let Connection {
        proto: p,
        family,
        direction,
        src,
        dst,
        process: pr,
        backend,
        netns,
        failed,
        bytes,
        existing,
    } = c;
    out.extend_from_slice(b",\"proto\":");
    proto(out, *p);
    out.extend_from_slice(match family {
        Family::Ipv4 => b",\"family\":\"ipv4\",\"direction\":",
        Family::Ipv6 => b",\"family\":\"ipv6\",\"direction\":",
    });
    out.extend_from_slice(match direction {
        Some(Direction::Outbound) => b"\"outbound\"",
        Some(Direction::Inbound) => b"\"inbound\"",
        None => b"null",
    });
    if let Some(src) = src {
        out.extend_from_slice(b",\"src\":");
        endpoint(out, src);
    }
    out.extend_from_slice(b",\"dst\":");
    endpoint(out, dst);
    out.extend_from_slice(b",\"process\":");
    match pr {
        Some(p) => process(out, p),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"backend\":");
    string(out, backend);
    if let Some(n) = netns {
        out.extend_from_slice(b",\"netns\":");
        uint(out, *n);
    }
    if *failed {
        out.extend_from_slice(b",\"failed\":true");
    }
    if let Some(b) = bytes {
        out.extend_from_slice(b",\"bytes\":");
        uint(out, *b);
    }
    if *existing {
        out.extend_from_slice(b",\"existing\":true");
    }
}

fn close(out: &mut Vec<u8>, c: &Close) {
    let Close {
        conn,
        duration_ms,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        reason,
    } = c;
    connection(out, conn);
    out.extend_from_slice(b",\"duration_ms\":");
    match duration_ms {
        Some(ms) => float(out, *ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_sent\":");
    opt_uint(out, *bytes_sent);
    out.extend_from_slice(b",\"bytes_received\":");
    opt_uint(out, *bytes_received);
    skipped_uint(out, b",\"packets_sent\":", *packets_sent);
    skipped_uint(out, b",\"packets_received\":", *packets_received);
    if let Some(r) = reason {
        out.extend_from_slice(b",\"reason\":");
        string(out, r);
    }
}

fn flow(out: &mut Vec<u8>, f: &FlowSummary) {
    let FlowSummary {
        conn,
        state,
        start,
        duration_ms,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
    } = f;
    connection(out, conn);
    out.extend_from_slice(b",\"state\":");
    string(out, state);
    out.extend_from_slice(b",\"start\":\"");
    timestamp(out, start, SecondsFormat::Nanos);
    out.extend_from_slice(b"\",\"duration_ms\":");
    float(out, *duration_ms);
    out.extend_from_slice(b",\"bytes_sent\":");
    opt_uint(out, *bytes_sent);
    out.extend_from_slice(b",\"bytes_received\":");
    opt_uint(out, *bytes_received);
    skipped_uint(out, b",\"packets_sent\":", *packets_sent);
    skipped_uint(out, b",\"packets_received\":", *packets_received);
}

fn dns(out: &mut Vec<u8>, d: &Dns) {
    let Dns {
        proto: p,
        family,
        role,
        src,
        dst,
        id,
        query,
        qtype,
        rcode,
        answers,
        latency_ms,
        process: pr,
        truncated,
    } = d;
    out.extend_from_slice(b",\"proto\":");
    proto(out, *p);
    out.extend_from_slice(match family {
        Family::Ipv4 => b",\"family\":\"ipv4\",\"role\":",
        Family::Ipv6 => b",\"family\":\"ipv6\",\"role\":",
    });
    out.extend_from_slice(match role {
        DnsRole::Client => b"\"client\"",
        DnsRole::Server => b"\"server\"",
    });
    out.extend_from_slice(b",\"src\":");
    endpoint(out, src);
    out.extend_from_slice(b",\"dst\":");
    endpoint(out, dst);
    out.extend_from_slice(b",\"id\":");
    uint(out, *id);
    out.extend_from_slice(b",\"query\":");
    string(out, query);
    out.extend_from_slice(b",\"qtype\":");
    string(out, qtype);
    out.extend_from_slice(b",\"rcode\":");
    opt_string(out, rcode.as_deref());
    out.extend_from_slice(b",\"answers\":[");
    for (i, a) in answers.iter().enumerate() {
        let DnsAnswer {
            name,
            rtype,
            ttl,
            data,
        } = a;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        string(out, name);
        out.extend_from_slice(b",\"type\":");
        string(out, rtype);
        out.extend_from_slice(b",\"ttl\":");
        uint(out, *ttl);
        out.extend_from_slice(b",\"data\":");
        string(out, data);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"latency_ms\":");
    match latency_ms {
        Some(ms) => float(out, *ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"process\":");
    match pr {
        Some(p) => process(out, p),
        None => out.extend_from_slice(b"null"),
    }
    if *truncated {
        out.extend_from_slice(b",\"truncated\":true");
    }
}

fn process(out: &mut Vec<u8>, p: &ProcessInfo) {
    let ProcessInfo {
        pid,
        tid,
        comm,
        thread,
        uid,
        gid,
        cgroup_id,
        detail,
    } = p;
    out.extend_from_slice(b"{\"pid\":");
    uint(out, *pid);
    out.extend_from_slice(b",\"tid\":");
    uint(out, *tid);
    out.extend_from_slice(b",\"comm\":");
    string(out, comm);
    if let Some(t) = thread {
        out.extend_from_slice(b",\"thread\":");
        string(out, t);
    }
    out.extend_from_slice(b",\"uid\":");
    uint(out, *uid);
    out.extend_from_slice(b",\"gid\":");
    uint(out, *gid);
    out.extend_from_slice(b",\"cgroup_id\":");
    uint(out, *cgroup_id);
    detail_memo(out, detail);
    out.push(b'}');
}

/// How many processes' detail each thread keeps written (see [`detail_memo`]).
const DETAIL_SLOTS: usize = 64;

type DetailSlot = Option<(std::sync::Arc<ProcessDetail>, Box<[u8]>)>;

thread_local! {
    /// The last details written on this thread, by address of their shared `Arc`:
    /// a direct-mapped table, so bounded and without hashing.
    static DETAILS: std::cell::RefCell<[DetailSlot; DETAIL_SLOTS]> =
        const { std::cell::RefCell::new([const { None }; DETAIL_SLOTS]) };
}

/// [`detail`], remembered per process: every event of a process shares its
/// `Arc<ProcessDetail>` (exe, command line, ancestors…, about half of a line's bytes),
/// so its fields are escaped once and then copied. The slot holds the `Arc` itself, so
/// its address cannot be reused by another detail while it is there.
fn detail_memo(out: &mut Vec<u8>, d: &std::sync::Arc<ProcessDetail>) {
    // Fibonacci hashing of the address: the allocator hands out blocks of one size
    // at fixed strides, so the low bits alone put two busy processes in one slot
    // (seen with mimalloc: every event of nginx and wrk missed).
    let slot = ((std::sync::Arc::as_ptr(d) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
        as usize
        % DETAIL_SLOTS;
    DETAILS.with(|cell| {
        let Ok(mut slots) = cell.try_borrow_mut() else {
            return detail(out, d); // re-entered: never, but never panic either
        };
        match &slots[slot] {
            Some((kept, bytes)) if std::sync::Arc::ptr_eq(kept, d) => out.extend_from_slice(bytes),
            _ => {
                let start = out.len();
                detail(out, d);
                slots[slot] = Some((d.clone(), out[start..].into()));
            }
        }
    })
}

/// The detail fields of a `process` object, from `,"exe":` to the container.
fn detail(out: &mut Vec<u8>, d: &ProcessDetail) {
    let ProcessDetail {
        exe,
        cmdline,
        user,
        ppid,
        parent,
        start_time,
        ancestors,
        container,
    } = d;
    out.extend_from_slice(b",\"exe\":");
    opt_string(out, exe.as_deref());
    out.extend_from_slice(b",\"cmdline\":");
    opt_string(out, cmdline.as_deref());
    out.extend_from_slice(b",\"user\":");
    opt_string(out, user.as_deref());
    out.extend_from_slice(b",\"ppid\":");
    opt_uint(out, *ppid);
    out.extend_from_slice(b",\"parent\":");
    opt_string(out, parent.as_deref());
    out.extend_from_slice(b",\"start_time\":");
    match start_time {
        // chrono's own Serialize: RFC 3339 with as many fraction digits as needed.
        Some(t) => {
            out.push(b'"');
            timestamp(out, t, SecondsFormat::AutoSi);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ancestors\":[");
    for (i, a) in ancestors.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, a);
    }
    out.extend_from_slice(b"],\"container\":");
    match container {
        Some(Container {
            id,
            runtime,
            pod_uid,
        }) => {
            out.extend_from_slice(b"{\"id\":");
            opt_string(out, id.as_deref());
            out.extend_from_slice(b",\"runtime\":");
            opt_string(out, runtime.as_deref());
            if let Some(u) = pod_uid {
                out.extend_from_slice(b",\"pod_uid\":");
                string(out, u);
            }
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    let Endpoint { ip, port, name } = e;
    out.extend_from_slice(b"{\"ip\":\"");
    ip_digits(out, ip);
    out.extend_from_slice(b"\",\"port\":");
    uint(out, *port);
    if let Some(n) = name {
        out.extend_from_slice(b",\"name\":");
        string(out, n);
    }
    out.push(b'}');
}

/// An address as serde writes it, without the quotes.
pub(crate) fn ip_digits(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a stack buffer, then one copy: a push per character checked the
            // Vec's capacity each time.
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if o >= 100 {
                    buf[len] = b'0' + o / 100;
                    len += 1;
                }
                if o >= 10 {
                    buf[len] = b'0' + o / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + o % 10;
                len += 1;
            }
            out.extend_from_slice(&buf[..len]);
        }
        // std's Display, as serde's Serialize uses (no character in it needs escaping).
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn proto(out: &mut Vec<u8>, p: Proto) {
    out.extend_from_slice(match p {
        Proto::Tcp => b"\"tcp\"",
        Proto::Udp => b"\"udp\"",
    });
}

/// Numbers through serde_json's own formatter (itoa; zmij for floats), so they are
/// its bytes whatever version it is.
pub(crate) fn uint(out: &mut Vec<u8>, v: impl Into<u64>) {
    // Writing into a Vec cannot fail.
    let _ = CompactFormatter.write_u64(out, v.into());
}

/// serde_json's i64.
pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
    let _ = CompactFormatter.write_i64(out, v);
}

pub(crate) fn opt_uint(out: &mut Vec<u8>, v: Option<impl Into<u64>>) {
    match v {
        Some(v) => uint(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A field left out when absent (`skip_serializing_if = "Option::is_none"`).
fn skipped_uint(out: &mut Vec<u8>, key: &[u8], v: Option<u64>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        uint(out, v);
    }
}

/// serde_json's f64: its formatter for finite values, null for NaN and infinities.
pub(crate) fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = CompactFormatter.write_f64(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

pub(crate) fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Which bytes serde_json escapes: control characters, `"` and `\` (0: none; `u`:
/// `\u00XX`; else the letter after the backslash).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A JSON string, escaped as serde_json escapes (nothing above U+001F but `"` and `\`).
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if esc == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `ts.to_rfc3339_opts(format, true)` without the `String`: `Nanos` always writes nine
/// fraction digits, `AutoSi` none, three, six or nine. Years outside 0..=9999 and leap
/// seconds (which chrono spells its own way) go through chrono.
fn timestamp(out: &mut Vec<u8>, ts: &DateTime<Utc>, format: SecondsFormat) {
    // `DateTime<Utc>`'s accessors each convert to local (naive) time again.
    let ts = ts.naive_utc();
    let (year, nanos) = (ts.year(), ts.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(ts.and_utc().to_rfc3339_opts(format, true).as_bytes());
        return;
    }
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    let y = year as u32;
    pair(&mut buf[0..2], y / 100);
    pair(&mut buf[2..4], y % 100);
    pair(&mut buf[5..7], ts.month());
    pair(&mut buf[8..10], ts.day());
    pair(&mut buf[11..13], ts.hour());
    pair(&mut buf[14..16], ts.minute());
    pair(&mut buf[17..19], ts.second());
    buf[20] = b'0' + (nanos / 100_000_000) as u8;
    let rest = nanos % 100_000_000;
    pair(&mut buf[21..23], rest / 1_000_000);
    pair(&mut buf[23..25], rest / 10_000 % 100);
    pair(&mut buf[25..27], rest / 100 % 100);
    pair(&mut buf[27..29], rest % 100);
    let fraction = match format {
        SecondsFormat::AutoSi if nanos == 0 => 0,
        SecondsFormat::AutoSi if nanos % 1_000_000 == 0 => 3,
        SecondsFormat::AutoSi if nanos % 1_000 == 0 => 6,
        _ => 9,
    };
    if fraction == 0 {
        out.extend_from_slice(&buf[..19]);
    } else {
        out.extend_from_slice(&buf[..20 + fraction]);
    }
    out.push(b'Z');
}

/// Two decimal digits of `v` (below 100) into `out`.
fn pair(out: &mut [u8], v: u32) {
    const DIGITS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = v as usize * 2;
    out.copy_from_slice(&DIGITS[i..i + 2]);
}

#[cfg(test)]
mod tests;
