//! Decodes ring-buffer records into [`Event`]s: checks lengths and kinds, converts
//! addresses (v4-mapped IPv6 becomes IPv4) and kernel timestamps. Pure: bytes in,
//! values out; it never touches aya or the kernel.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netmon_common::{
    AF_INET, AF_INET6, ConnEvent, EXEC_ARGS_MAX, EXEC_FILENAME_MAX, EventHeader, ExecEvent,
    ForkEvent, IPPROTO_TCP, IPPROTO_UDP,
};
use netmon_common::{backend, flags, kind};

use crate::{
    clock::BootClock,
    event::{
        Close, Connection, Direction, Endpoint, Event, EventBody, Family, Name, ProcessInfo, Proto,
    },
    process::{Exec, Fork},
};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown protocol {0}")]
    UnknownProtocol(u16),
}

/// The event kind of a raw record, read from its header alone.
pub fn record_kind(bytes: &[u8]) -> Result<u32, DecodeError> {
    let header: EventHeader = read_struct(bytes)?;
    Ok(header.kind)
}

/// Decodes one ring-buffer record into the `Arc` the pipeline moves events in.
///
/// Everything that can fail is checked first; the event is then written once, into
/// its allocation. Built on the stack and moved into `Arc::new`, the ~380-byte event
/// was copied four times (body, result, event, `Arc`): a tenth of the reader's CPU.
pub fn decode(
    bytes: &[u8],
    clock: &BootClock,
    host: &std::sync::Arc<str>,
) -> Result<std::sync::Arc<Event>, DecodeError> {
    let kind = record_kind(bytes)?;
    if !matches!(
        kind,
        kind::CONNECT | kind::ACCEPT | kind::UDP | kind::LISTEN | kind::CLOSE
    ) {
        return Err(DecodeError::UnknownKind(kind));
    }
    let raw: ConnEvent = read_struct(bytes)?;
    let wire = Wire::check(&raw)?;
    let mut shared = std::sync::Arc::<Event>::new_uninit();
    std::sync::Arc::get_mut(&mut shared)
        .expect("a new Arc has one owner")
        .write(Event {
            ts: clock.to_wall(raw.header.ktime_ns),
            host: host.clone(),
            body: connection_body(&raw, wire),
        });
    // SAFETY: written just above.
    Ok(unsafe { shared.assume_init() })
}

pub fn decode_exec(bytes: &[u8], clock: &BootClock) -> Result<Exec, DecodeError> {
    let raw: ExecEvent = read_struct(bytes)?;
    let p = process_info(&raw.header.process);
    let filename = &raw.filename[..(raw.filename_len as usize).min(EXEC_FILENAME_MAX)];
    let filename = &filename[..filename
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(filename.len())];
    let args = &raw.args[..(raw.args_len as usize).min(EXEC_ARGS_MAX)];
    Ok(Exec {
        ts: clock.to_wall(raw.header.ktime_ns),
        pid: p.pid,
        cgroup_id: p.cgroup_id,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm,
        ppid: raw.ppid,
        start_ns: raw.start_time_ns,
        start_time: (raw.start_time_ns != 0).then(|| clock.to_wall(raw.start_time_ns)),
        filename: String::from_utf8_lossy(filename).into_owned(),
        args: args.to_vec(),
    })
}

/// Decodes a fork record (`kind::FORK`) for the process table.
pub fn decode_fork(bytes: &[u8], clock: &BootClock) -> Result<Fork, DecodeError> {
    let raw: ForkEvent = read_struct(bytes)?;
    let parent = process_info(&raw.header.process);
    Ok(Fork {
        parent_pid: parent.pid,
        comm: parent.comm,
        child_pid: raw.child_pid,
        child_start_ns: raw.child_start_time_ns,
        child_start_time: (raw.child_start_time_ns != 0)
            .then(|| clock.to_wall(raw.child_start_time_ns)),
    })
}

/// The name of a kind for stats keys; `None` for unknown kinds.
pub fn kind_name(kind: u32) -> Option<&'static str> {
    Some(match kind {
        kind::CONNECT => "connect",
        kind::ACCEPT => "accept",
        kind::UDP => "udp",
        kind::LISTEN => "listen",
        kind::CLOSE => "close",
        kind::EXIT => "exit",
        kind::DNS => "dns",
        kind::EXEC => "exec",
        kind::FORK => "fork",
        _ => return None,
    })
}

pub fn backend_name(backend: u32) -> &'static str {
    match backend {
        backend::FENTRY => "fentry",
        backend::KPROBE => "kprobe",
        backend::TRACEPOINT => "tracepoint",
        _ => "unknown",
    }
}

/// The parts of a connection record that may not decode.
#[derive(Clone, Copy)]
struct Wire {
    proto: Proto,
    src_ip: IpAddr,
    dst_ip: IpAddr,
}

impl Wire {
    #[inline]
    fn check(raw: &ConnEvent) -> Result<Wire, DecodeError> {
        let proto = match raw.protocol {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            other => return Err(DecodeError::UnknownProtocol(other)),
        };
        Ok(Wire {
            proto,
            src_ip: ip_of(raw.family, &raw.src_addr)?,
            dst_ip: ip_of(raw.family, &raw.dst_addr)?,
        })
    }
}

#[inline(always)]
fn connection_body(raw: &ConnEvent, wire: Wire) -> EventBody {
    let Wire {
        proto,
        src_ip,
        dst_ip,
    } = wire;
    let direction = if raw.flags & flags::DIRECTION_UNKNOWN != 0 {
        None
    } else if raw.flags & flags::INBOUND != 0 || raw.header.kind == kind::LISTEN {
        Some(Direction::Inbound)
    } else {
        Some(Direction::Outbound)
    };
    let process = (raw.flags & flags::PROCESS_UNKNOWN == 0).then(|| process_of(raw));
    let conn = Connection {
        proto,
        family: Family::of(&dst_ip),
        direction,
        src: (raw.header.kind != kind::LISTEN).then_some(Endpoint::new(src_ip, raw.src_port)),
        dst: Endpoint::new(dst_ip, raw.dst_port),
        process,
        backend: backend_name(raw.header.backend).into(),
        netns: (raw.netns != 0).then_some(raw.netns),
        failed: raw.flags & flags::CONNECT_FAILED != 0,
        bytes: (raw.header.kind == kind::UDP).then_some(raw.bytes_sent),
        existing: false,
    };
    match raw.header.kind {
        kind::CONNECT => EventBody::Connect(conn),
        kind::ACCEPT => EventBody::Accept(conn),
        kind::UDP => EventBody::Udp(conn),
        kind::LISTEN => EventBody::Listen(conn),
        _ => {
            let bytes_known = raw.flags & flags::BYTES_KNOWN != 0;
            EventBody::Close(Close {
                conn,
                duration_ms: (raw.flags & flags::DURATION_KNOWN != 0)
                    .then(|| raw.duration_ns as f64 / 1e6),
                bytes_sent: bytes_known.then_some(raw.bytes_sent),
                bytes_received: bytes_known.then_some(raw.bytes_received),
                packets_sent: None,
                packets_received: None,
                reason: None,
            })
        }
    }
}

fn process_of(raw: &ConnEvent) -> ProcessInfo {
    process_info(&raw.header.process)
}

/// The userspace form of a kernel [`Process`](netmon_common::Process).
pub fn process_info(p: &netmon_common::Process) -> ProcessInfo {
    ProcessInfo::kernel(p.pid, p.tid, comm_name(&p.comm), p.uid, p.gid, p.cgroup_id)
}

/// Kernel `comm`s seen last on this thread.
const COMM_SLOTS: usize = 64;

/// A remembered `comm`: its raw bytes and their [`Name`].
type CommSlot = Option<([u8; 16], Name)>;

/// The [`Name`] of a kernel `comm` (16 bytes, NUL-padded), shared with the events
/// before it: a busy host's events come from a few processes, so nearly every
/// event's name is one seen just before. A direct-mapped table, bounded, keyed by
/// the raw bytes (a slot only ever answers for exactly its bytes).
pub fn comm_name(comm: &[u8; 16]) -> Name {
    thread_local! {
        static NAMES: std::cell::RefCell<[CommSlot; COMM_SLOTS]> =
            const { std::cell::RefCell::new([const { None }; COMM_SLOTS]) };
    }
    let word = u64::from_ne_bytes(comm[..8].try_into().expect("8 bytes"))
        ^ u64::from_ne_bytes(comm[8..].try_into().expect("8 bytes")).rotate_left(29);
    let slot = (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % COMM_SLOTS;
    NAMES.with(|cell| {
        let Ok(mut names) = cell.try_borrow_mut() else {
            return decode_comm(comm); // re-entered: never, but never panic either
        };
        match &names[slot] {
            Some((bytes, name)) if bytes == comm => name.clone(),
            _ => {
                let name = decode_comm(comm);
                names[slot] = Some((*comm, name.clone()));
                name
            }
        }
    })
}

fn decode_comm(comm: &[u8; 16]) -> Name {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    Name::from(&*String::from_utf8_lossy(&comm[..end]))
}

/// The address of `family`; a v4-mapped IPv6 address becomes the IPv4 address.
pub(crate) fn ip_of(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            Ok(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

/// Copies a `T` out of the front of `bytes` (records are not aligned for `T`).
pub(crate) fn read_struct<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a plain `repr(C)` wire type, valid for any bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use netmon_common::Process;

    use super::*;

    fn raw(kind: u32, family: u16) -> ConnEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        ConnEvent {
            header: EventHeader {
                kind,
                backend: backend::TRACEPOINT,
                ktime_ns: 2_000_000_000,
                process: Process {
                    pid: 10,
                    tid: 11,
                    uid: 1000,
                    gid: 100,
                    cgroup_id: 7,
                    comm,
                },
            },
            src_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40000,
            dst_port: 80,
            family,
            protocol: IPPROTO_TCP,
            flags: 0,
            netns: 4026531840,
            duration_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    fn bytes_of(ev: &ConnEvent) -> Vec<u8> {
        // SAFETY: ConnEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const ConnEvent).cast::<u8>(),
                size_of::<ConnEvent>(),
            )
        }
        .to_vec()
    }

    fn decode_raw(ev: &ConnEvent) -> Event {
        std::sync::Arc::unwrap_or_clone(
            decode(&bytes_of(ev), &BootClock::from_offset_ns(0), &"h".into()).unwrap(),
        )
    }

    #[test]
    fn decodes_a_connect() {
        let ev = decode_raw(&raw(kind::CONNECT, AF_INET));
        assert_eq!(ev.ts.timestamp(), 2);
        let EventBody::Connect(c) = ev.body else {
            panic!("{:?}", ev.body)
        };
        assert_eq!(c.src.unwrap().ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.dst.port, 80);
        assert_eq!(c.direction, Some(Direction::Outbound));
        let p = c.process.unwrap();
        assert_eq!((p.pid, p.tid, p.comm.as_str()), (10, 11, "curl"));
        assert_eq!(c.netns, Some(4026531840));
    }

    #[test]
    fn v4_mapped_ipv6_becomes_ipv4() {
        let mut r = raw(kind::ACCEPT, AF_INET6);
        r.flags = flags::INBOUND;
        r.src_addr = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]).octets();
        r.dst_addr = Ipv6Addr::LOCALHOST.octets();
        let ev = decode_raw(&r);
        let c = ev.body.connection().unwrap();
        assert_eq!(
            c.src.as_ref().unwrap().ip,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.dst.ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.direction, Some(Direction::Inbound));
    }

    #[test]
    fn listen_has_only_a_destination() {
        let ev = decode_raw(&raw(kind::LISTEN, AF_INET));
        let c = ev.body.connection().unwrap();
        assert!(c.src.is_none());
        assert_eq!(ev.body.type_name(), "listen");
    }

    #[test]
    fn close_without_counters_reports_null() {
        let mut r = raw(kind::CLOSE, AF_INET);
        r.flags = flags::PROCESS_UNKNOWN | flags::DIRECTION_UNKNOWN;
        let ev = decode_raw(&r);
        let EventBody::Close(c) = ev.body else {
            panic!()
        };
        assert_eq!(c.duration_ms, None);
        assert_eq!(c.bytes_sent, None);
        assert!(c.conn.process.is_none());
        assert!(c.conn.direction.is_none());
    }

    #[test]
    fn close_reports_payload_bytes() {
        let mut r = raw(kind::CLOSE, AF_INET);
        r.flags = flags::BYTES_KNOWN | flags::DURATION_KNOWN;
        r.duration_ns = 2_500_000;
        r.bytes_sent = 1000;
        r.bytes_received = 50;
        let EventBody::Close(c) = decode_raw(&r).body else {
            panic!()
        };
        assert_eq!(c.duration_ms, Some(2.5));
        assert_eq!((c.bytes_sent, c.bytes_received), (Some(1000), Some(50)));
    }

    #[test]
    fn a_comm_is_named_by_its_own_bytes_whatever_was_seen_before() {
        let comm = |s: &[u8]| {
            let mut c = [0u8; 16];
            c[..s.len()].copy_from_slice(s);
            c
        };
        // More names than slots, each asked for twice: every answer is its own bytes,
        // and a repeated one is the same shared string.
        for round in 0..2 {
            for i in 0..(COMM_SLOTS * 3) {
                let raw = format!("proc-{i}");
                let name = comm_name(&comm(raw.as_bytes()));
                assert_eq!(name, raw.as_str(), "round {round}");
            }
        }
        let a = comm_name(&comm(b"nginx"));
        let b = comm_name(&comm(b"nginx"));
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        // All 16 bytes used (no NUL), and bytes that are not UTF-8.
        assert_eq!(comm_name(&[b'x'; 16]), "x".repeat(16).as_str());
        assert_eq!(comm_name(&comm(b"a\xffb")), "a\u{fffd}b");
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let clock = BootClock::from_offset_ns(0);
        assert!(matches!(
            decode(&[0; 8], &clock, &"h".into()),
            Err(DecodeError::Short { .. })
        ));
        let bytes = bytes_of(&raw(99, AF_INET));
        assert_eq!(
            decode(&bytes, &clock, &"h".into()),
            Err(DecodeError::UnknownKind(99))
        );
        let bytes = bytes_of(&raw(kind::CONNECT, 77));
        assert_eq!(
            decode(&bytes, &clock, &"h".into()),
            Err(DecodeError::UnknownFamily(77))
        );
    }
}
