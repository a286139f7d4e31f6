//! UDP probes: a protocol-correct request for DNS, NTP and SNMP (and an empty datagram
//! elsewhere), sent on a connected socket so the kernel reports an ICMP port
//! unreachable as `ECONNREFUSED`. A reply → open; port unreachable → closed; silence →
//! open|filtered (UDP cannot tell those apart without an answer).
use std::{net::SocketAddr, time::Duration};

use tokio::net::UdpSocket;

use super::{PortState, service::ServiceInfo};

const DNS_ID: u16 = 0x6e6d;

/// The request sent to a UDP port.
pub fn payload(port: u16) -> Vec<u8> {
    match port {
        53 | 5353 => {
            // A CHAOS TXT query for version.bind: BIND, dnsmasq, unbound and others
            // answer with their version (or refuse, which still proves DNS).
            let mut q = Vec::new();
            q.extend(DNS_ID.to_be_bytes());
            q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
            for label in ["version", "bind"] {
                q.push(label.len() as u8);
                q.extend(label.as_bytes());
            }
            q.extend([0, 0, 16, 0, 3]); // root, TXT, CH
            q
        }
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
    if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == DNS_ID && data[2] & 0x80 != 0 {
        s.name = Some("domain".into());
        s.version = dns_txt_answer(data);
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

/// The text of the first TXT answer of a DNS reply.
fn dns_txt_answer(d: &[u8]) -> Option<String> {
    let ancount = u16::from_be_bytes([d[6], d[7]]);
    if ancount == 0 {
        return None;
    }
    let mut i = 12;
    // Skip the question name and its type/class.
    i = skip_name(d, i)? + 4;
    // The answer's name, then type, class, ttl, rdlength.
    i = skip_name(d, i)?;
    let ty = u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?]);
    let rdlen = usize::from(u16::from_be_bytes([*d.get(i + 8)?, *d.get(i + 9)?]));
    i += 10;
    if ty != 16 || rdlen == 0 {
        return None;
    }
    let len = usize::from(*d.get(i)?);
    let text = d.get(i + 1..i + 1 + len)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

fn skip_name(d: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let l = *d.get(i)?;
        if l == 0 {
            return Some(i + 1);
        }
        if l & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + usize::from(l);
    }
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
