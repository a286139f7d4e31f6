//! UDP probes: a protocol-correct request for DNS, NTP and SNMP (and an empty datagram
//! elsewhere), sent on a connected socket so the kernel reports an ICMP port
//! unreachable as `ECONNREFUSED`. A reply → open; port unreachable → closed; silence →
//! open|filtered (UDP cannot tell those apart without an answer).
//!
//! The DNS query and its answer are built and parsed by hickory-proto (never by hand).
use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{DNSClass, Name, RData, RecordType},
};
use tokio::net::UdpSocket;

use super::{PortState, service::ServiceInfo};

const DNS_ID: u16 = 0x6e6d;

/// The request sent to a UDP port.
pub fn payload(port: u16) -> Vec<u8> {
    match port {
        53 | 5353 => version_bind_query(),
        123 => {
            let mut p = vec![0u8; 48];
            p[0] = 0x23; // LI 0, version 4, mode 3 (client)
            p
        }
        161 => vec![
            0x30, 0x29, 0x02, 0x01, 0x01, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0,
            0x1c, 0x02, 0x04, 0x6e, 0x6d, 0x00, 0x01, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30,
            0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05,
            0x00,
        ],
        _ => Vec::new(),
    }
}

/// Names what answered.
pub fn identify(port: u16, data: &[u8]) -> ServiceInfo {
    let mut s = ServiceInfo {
        banner: super::service::excerpt(data),
        ..ServiceInfo::default()
    };
    if let Some(version) = (port == 53 || port == 5353)
        .then(|| dns_reply(data))
        .flatten()
    {
        s.name = Some("domain".into());
        s.version = version;
        s.banner = None;
    } else if port == 123 && data.len() >= 48 && data[0] & 0x07 == 4 {
        s.name = Some("ntp".into());
        s.version = Some(format!("NTPv{}, stratum {}", (data[0] >> 3) & 7, data[1]));
        s.banner = None;
    } else if data.first() == Some(&0x30) && port == 161 {
        s.name = Some("snmp".into());
    } else if let Some(n) = super::ports::well_known(crate::event::Proto::Udp, port) {
        s.name = Some(n.into());
        s.guessed = true;
    }
    s
}

/// A CHAOS TXT query for `version.bind`: BIND, dnsmasq, unbound and others answer
/// with their version (or refuse, which still proves DNS).
fn version_bind_query() -> Vec<u8> {
    let mut m = Message::new(DNS_ID, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let mut q = Query::query(
        Name::from_labels(["version", "bind"]).unwrap_or_default(),
        RecordType::TXT,
    );
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    // Encoding a fixed, valid message cannot fail; an empty datagram would still probe.
    m.to_vec().unwrap_or_default()
}

/// Longest version text kept from a DNS answer (it is the remote host's to choose).
const MAX_VERSION_CHARS: usize = 120;

/// A DNS reply to our query, parsed by hickory-proto: `Some(version)` when it is
/// one (the version is the first TXT answer's text, when there is one).
fn dns_reply(d: &[u8]) -> Option<Option<String>> {
    let m = Message::from_vec(d).ok()?;
    if m.metadata.id != DNS_ID || m.metadata.message_type != MessageType::Response {
        return None;
    }
    let version = m.answers.iter().find_map(|r| match &r.data {
        RData::TXT(t) => t.txt_data.first().map(|s| {
            String::from_utf8_lossy(s)
                .chars()
                .take(MAX_VERSION_CHARS)
                .collect()
        }),
        _ => None,
    });
    Some(version)
}

/// Probes one UDP port (the caller paces it). Two tries, as datagrams get lost.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> (PortState, Option<ServiceInfo>) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return (PortState::OpenFiltered, None);
    };
    if sock.connect(addr).await.is_err() {
        return (PortState::Filtered, None);
    }
    let request = payload(addr.port());
    let mut buf = vec![0u8; 2048];
    for _ in 0..2 {
        if let Err(e) = sock.send(&request).await {
            if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                return (PortState::Closed, None);
            }
            return (PortState::Filtered, None);
        }
        match tokio::time::timeout(timeout / 2, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return (PortState::Open, Some(identify(addr.port(), &buf[..n]))),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                return (PortState::Closed, None);
            }
            Ok(Err(_)) => return (PortState::Filtered, None),
            Err(_) => {}
        }
    }
    (PortState::OpenFiltered, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_version_reply() {
        let mut r = payload(53);
        r[2] = 0x85; // response, authoritative, RD
        r[3] = 0x80;
        r[7] = 1; // one answer
        r.extend([0xc0, 0x0c, 0, 16, 0, 3, 0, 0, 0, 0, 0, 13, 12]);
        r.extend(b"dnsmasq-2.90");
        let s = identify(53, &r);
        assert_eq!(s.name.as_deref(), Some("domain"));
        assert_eq!(s.version.as_deref(), Some("dnsmasq-2.90"));
    }

    #[test]
    fn version_bind_query_is_chaos_txt() {
        let m = Message::from_vec(&payload(53)).unwrap();
        assert_eq!(m.metadata.id, DNS_ID);
        let q = &m.queries[0];
        assert_eq!(q.name().to_ascii(), "version.bind.");
        assert_eq!(q.query_type(), RecordType::TXT);
        assert_eq!(q.query_class(), DNSClass::CH);
    }

    #[test]
    fn dns_reply_is_checked_and_bounded() {
        use hickory_proto::rr::{Record, rdata::TXT};
        let reply = |id: u16, text: &str| {
            let mut m = Message::new(id, MessageType::Response, OpCode::Query);
            let name = Name::from_ascii("version.bind.").unwrap();
            let mut q = Query::query(name.clone(), RecordType::TXT);
            q.set_query_class(DNSClass::CH);
            m.add_query(q);
            let mut r = Record::from_rdata(name, 0, RData::TXT(TXT::new(vec![text.into()])));
            r.dns_class = DNSClass::CH;
            m.add_answer(r);
            m.to_vec().unwrap()
        };
        let long = "x".repeat(250);
        let s = identify(53, &reply(DNS_ID, &long));
        assert_eq!(s.name.as_deref(), Some("domain"));
        assert_eq!(s.version.map(|v| v.len()), Some(MAX_VERSION_CHARS));
        // Another id is not an answer to our query: only a port-number guess.
        let s = identify(53, &reply(1, "bind-9"));
        assert!(s.guessed && s.version.is_none());
        // Garbage with our id is not DNS either.
        let s = identify(53, &[0x6e, 0x6d, 0x80, 0, 0, 0, 0, 5, 0xff]);
        assert!(s.version.is_none());
    }

    #[test]
    fn ntp_and_snmp_replies() {
        let mut r = vec![0u8; 48];
        r[0] = 0x24; // v4, server
        r[1] = 2;
        let s = identify(123, &r);
        assert_eq!(s.name.as_deref(), Some("ntp"));
        assert_eq!(s.version.as_deref(), Some("NTPv4, stratum 2"));
        assert_eq!(identify(161, &[0x30, 0x10]).name.as_deref(), Some("snmp"));
        let s = identify(1900, b"HTTP/1.1 200 OK");
        assert!(s.guessed);
        // The SNMP request is well-formed: its outer length covers the rest.
        let p = payload(161);
        assert_eq!(usize::from(p[1]) + 2, p.len());
    }
}
