//! A TCP reply as the SYN scan reads it off a raw socket (an IPv4 packet with its
//! header, or an IPv6 segment with the hop limit and traffic class from control
//! messages): pure parsing, bounded by the slice it is given, never panicking.
//!
//! It keeps what judging the port needs (ports, ack, flags) and what the OS
//! fingerprint and uptime guess need (TTL, DF, IP ID, ECN, window, options).
use super::tcpopt::{self, Options};

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// Everything read from one reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub v6: bool,
    /// TTL / hop limit as received (0 when the kernel did not say).
    pub ttl: u8,
    /// IPv4 "don't fragment".
    pub df: bool,
    /// IPv4 identification.
    pub ip_id: u16,
    /// The reserved ("evil") IPv4 flag bit is set (p0f's `0+`).
    pub ip_reserved: bool,
    /// ECN bits of the IP header (TOS / traffic class, low two bits).
    pub ip_ecn: u8,
    /// IPv4 options length in bytes.
    pub ip_opt_len: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urg_ptr: u16,
    pub options: Options,
    /// Payload bytes after the TCP header.
    pub payload_len: usize,
}

impl Reply {
    pub fn is_syn_ack(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
    }
}

/// An IPv4 packet carrying TCP (the raw socket hands the header over).
pub fn parse_v4(pkt: &[u8]) -> Option<Reply> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return None;
    }
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    let mut r = parse_tcp(&pkt[ihl..])?;
    r.ttl = pkt[8];
    r.df = frag & 0x4000 != 0;
    r.ip_reserved = frag & 0x8000 != 0;
    r.ip_id = u16::from_be_bytes([pkt[4], pkt[5]]);
    r.ip_ecn = pkt[1] & 3;
    r.ip_opt_len = (ihl - 20) as u8;
    Some(r)
}

/// An IPv6 TCP segment (no IP header: the raw IPv6 socket strips it).
pub fn parse_v6(seg: &[u8], hop_limit: Option<u8>, tclass: Option<u8>) -> Option<Reply> {
    let mut r = parse_tcp(seg)?;
    r.v6 = true;
    r.ttl = hop_limit.unwrap_or(0);
    r.ip_ecn = tclass.unwrap_or(0) & 3;
    Some(r)
}

/// The TCP header and its options.
pub fn parse_tcp(seg: &[u8]) -> Option<Reply> {
    if seg.len() < 20 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([seg[i], seg[i + 1], seg[i + 2], seg[i + 3]]);
    let off = usize::from(seg[12] >> 4) * 4;
    let (opts, payload_len) = if off >= 20 && off <= seg.len() {
        (tcpopt::parse(&seg[20..off]), seg.len() - off)
    } else {
        (
            Options {
                malformed: true,
                ..Options::default()
            },
            0,
        )
    };
    Some(Reply {
        sport: be16(0),
        dport: be16(2),
        seq: be32(4),
        ack: be32(8),
        flags: seg[13],
        window: be16(14),
        urg_ptr: be16(18),
        options: opts,
        payload_len,
        ..Reply::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN-ACK from 10.0.0.2:22 as a Linux host sends it (DF, ID 0, TTL 64).
    pub fn linux_syn_ack() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        p.extend([
            0, 22, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0xa0, 0x12, 0xfe, 0x88,
        ]);
        p.extend([0, 0, 0, 0]);
        p.extend([
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 7, 1, 3, 3, 7,
        ]);
        p
    }

    #[test]
    fn a_syn_ack_parses_with_its_ip_fields() {
        let r = parse_v4(&linux_syn_ack()).unwrap();
        assert!(r.is_syn_ack() && r.df && !r.ip_reserved);
        assert_eq!(
            (r.ttl, r.ip_id, r.window, r.sport, r.dport),
            (64, 0, 65160, 22, 40000)
        );
        assert_eq!(r.options.timestamp, Some((12345, 7)));
        assert_eq!(r.options.wscale, Some(7));
        assert_eq!(r.payload_len, 0);
    }

    #[test]
    fn truncated_and_hostile_packets_never_panic() {
        let good = linux_syn_ack();
        for n in 0..good.len() {
            let _ = parse_v4(&good[..n]);
        }
        let mut bad = good.clone();
        bad[32] = 0xf0; // data offset 60 > length
        assert!(parse_v4(&bad).unwrap().options.malformed);
        let mut bad = good.clone();
        bad[0] = 0x4f; // IHL 60 > length
        assert!(parse_v4(&bad).is_none());
        assert!(parse_v6(&good[20..], Some(64), Some(2)).unwrap().ip_ecn == 2);
    }
}
