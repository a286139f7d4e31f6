//! The kernel's neighbour table (ARP for IPv4, NDP for IPv6) over rtnetlink: which MAC
//! address answered for an address on a local link. Read after discovery, whose probes
//! are what fill the table.
//!
//! Messages are built and parsed by the rust-netlink crates (`netlink-packet-route`),
//! never by hand. A failure (no netlink socket, a kernel error such as `EPERM` in the
//! middle of the dump, a message that does not parse) is an error the caller reports,
//! never a silently empty table. `parse_batch` is pure and unit-tested.
use std::{collections::HashMap, io, net::IpAddr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};
use netlink_sys::{Socket as NlSocket, SocketAddr as NlAddr, protocols::NETLINK_ROUTE};

/// Why the neighbour table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("cannot open a netlink route socket: {0}")]
    Open(#[source] io::Error),
    #[error("the neighbour table dump failed: {0}")]
    Request(#[source] io::Error),
    #[error("the kernel's neighbour table answer does not parse: {0}")]
    Parse(String),
}

/// IP → MAC (`aa:bb:cc:dd:ee:ff`) for every valid entry of the table.
pub fn table() -> Result<HashMap<IpAddr, String>, NeighError> {
    let mut nl = NlSocket::new(NETLINK_ROUTE).map_err(NeighError::Open)?;
    nl.bind_auto().map_err(NeighError::Open)?;
    nl.connect(&NlAddr::new(0, 0)).map_err(NeighError::Open)?;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(
        NeighbourMessage::default(),
    ));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    nl.send(&buf, 0).map_err(NeighError::Request)?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = nl.recv(&mut &mut buf[..], 0).map_err(NeighError::Request)?;
        if n == 0 || parse_batch(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

/// Adds the entries of one netlink reply to `out`; `Ok(true)` when the dump is
/// complete, an error when the kernel reported one or a message does not parse.
pub fn parse_batch(
    mut bytes: &[u8],
    out: &mut HashMap<IpAddr, String>,
) -> Result<bool, NeighError> {
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            return Err(NeighError::Parse(format!(
                "message length {len} of {}",
                bytes.len()
            )));
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len])
            .map_err(|e| NeighError::Parse(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NeighError::Request(e.to_io()));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                if let Some((ip, mac)) = entry(&n) {
                    out.insert(ip, mac);
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        bytes = bytes.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(false)
}

/// An entry whose link-layer address is known and was confirmed at some point.
fn entry(n: &NeighbourMessage) -> Option<(IpAddr, String)> {
    if !matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some((*v4).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some((*v6).into()),
            NeighbourAttribute::LinkLayerAddress(l)
                if l.len() == 6 && l.iter().any(|b| *b != 0) =>
            {
                mac = Some(format_mac(l))
            }
            _ => {}
        }
    }
    Some((ip?, mac?))
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_route::AddressFamily;

    use super::*;

    fn bytes(msg: NetlinkMessage<RouteNetlinkMessage>) -> Vec<u8> {
        let mut msg = msg;
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    fn neigh(ip: IpAddr, mac: [u8; 6], state: NeighbourState) -> Vec<u8> {
        let mut n = NeighbourMessage::default();
        n.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        n.header.state = state;
        n.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        bytes(NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(n)))
    }

    #[test]
    fn parses_valid_entries_and_skips_failed_ones() {
        let mut buf = neigh(
            "10.200.0.2".parse().unwrap(),
            [2, 0, 0, 0, 0, 0x0a],
            NeighbourState::Reachable,
        );
        buf.extend(neigh(
            "10.200.0.3".parse().unwrap(),
            [2, 0, 0, 0, 0, 0x0b],
            NeighbourState::Failed,
        ));
        buf.extend(neigh(
            "fd00::2".parse().unwrap(),
            [2, 0, 0, 0, 0, 0x0c],
            NeighbourState::Stale,
        ));
        let mut out = HashMap::new();
        assert!(!parse_batch(&buf, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[&"10.200.0.2".parse::<IpAddr>().unwrap()],
            "02:00:00:00:00:0a"
        );
        assert_eq!(
            out[&"fd00::2".parse::<IpAddr>().unwrap()],
            "02:00:00:00:00:0c"
        );
        let done = bytes(NetlinkMessage::new(
            Default::default(),
            NetlinkPayload::Done(DoneMessage::default()),
        ));
        assert!(parse_batch(&done, &mut out).unwrap());
    }

    /// Issue 18 item 11: a kernel error in the dump is an error, not the end of an
    /// empty table.
    #[test]
    fn a_kernel_error_is_reported_not_read_as_the_end() {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EPERM);
        let err = bytes(NetlinkMessage::new(
            Default::default(),
            NetlinkPayload::Error(e),
        ));
        let mut out = HashMap::new();
        match parse_batch(&err, &mut out) {
            Err(NeighError::Request(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected the kernel's EPERM, got {other:?}"),
        }
        // A truncated message is a parse error.
        let buf = neigh(
            "10.0.0.1".parse().unwrap(),
            [2, 0, 0, 0, 0, 1],
            NeighbourState::Reachable,
        );
        assert!(matches!(
            parse_batch(&buf[..buf.len() - 4], &mut out),
            Err(NeighError::Parse(_))
        ));
    }
}
