//! The kernel's neighbour table (ARP for IPv4, NDP for IPv6) over rtnetlink: which MAC
//! address answered for an address on a local link. Read after discovery, whose probes
//! are what fill the table. `parse_dump` is pure and unit-tested.
use std::{collections::HashMap, io, net::IpAddr};

const RTM_GETNEIGH: u16 = 30;
const RTM_NEWNEIGH: u16 = 28;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states that mean the link-layer address is known and was confirmed at
/// some point (`NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT`).
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;

/// IP → MAC (`aa:bb:cc:dd:ee:ff`) for every valid entry of the table.
pub fn table() -> io::Result<HashMap<IpAddr, String>> {
    // SAFETY: plain socket syscalls on an fd we own and close.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = dump(fd);
        libc::close(fd);
        result
    }
}

unsafe fn dump(fd: i32) -> io::Result<HashMap<IpAddr, String>> {
    // nlmsghdr (16) + ndmsg (12)
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    // SAFETY: req is a valid buffer of the length given.
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse_dump(&buf[..n as usize], &mut out) {
            return Ok(out);
        }
    }
}

/// Adds the entries of one netlink reply to `out`; true when the dump is complete.
pub fn parse_dump(mut buf: &[u8], out: &mut HashMap<IpAddr, String>) -> bool {
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return true;
        }
        let ty = u16_at(buf, 4);
        if ty == NLMSG_DONE || ty == NLMSG_ERROR {
            return true;
        }
        if ty == RTM_NEWNEIGH && len >= 28 {
            let msg = &buf[16..len];
            let state = u16_at(msg, 8);
            let mut ip = None;
            let mut mac = None;
            let mut attrs = &msg[12..];
            while attrs.len() >= 4 {
                let alen = usize::from(u16_at(attrs, 0));
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                let data = &attrs[4..alen];
                match u16_at(attrs, 2) {
                    NDA_DST if data.len() == 4 => {
                        ip = Some(IpAddr::from(<[u8; 4]>::try_from(data).expect("len 4")))
                    }
                    NDA_DST if data.len() == 16 => {
                        ip = Some(IpAddr::from(<[u8; 16]>::try_from(data).expect("len 16")))
                    }
                    NDA_LLADDR if data.len() == 6 => mac = Some(format_mac(data)),
                    _ => {}
                }
                attrs = &attrs[(alen + 3) & !3..];
                if attrs.len() < 4 {
                    break;
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac)
                && state & NUD_VALID != 0
                && mac != "00:00:00:00:00:00"
            {
                out.insert(ip, mac);
            }
        }
        let next = (len + 3) & !3;
        if next >= buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    false
}

pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neigh_msg(ip: &[u8], mac: &[u8], state: u16) -> Vec<u8> {
        let mut attrs = Vec::new();
        for (ty, data) in [(NDA_DST, ip), (NDA_LLADDR, mac)] {
            let l = 4 + data.len();
            attrs.extend((l as u16).to_ne_bytes());
            attrs.extend(ty.to_ne_bytes());
            attrs.extend(data);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        }
        let mut nd = vec![2u8, 0, 0, 0, 3, 0, 0, 0];
        nd.extend(state.to_ne_bytes());
        nd.extend([0, 1]);
        nd.extend(attrs);
        let mut m = Vec::new();
        m.extend(((16 + nd.len()) as u32).to_ne_bytes());
        m.extend(RTM_NEWNEIGH.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(nd);
        m
    }

    #[test]
    fn parses_valid_entries_and_skips_failed_ones() {
        let mut buf = neigh_msg(&[10, 200, 0, 2], &[0x02, 0, 0, 0, 0, 0x0a], 0x02);
        buf.extend(neigh_msg(&[10, 200, 0, 3], &[0x02, 0, 0, 0, 0, 0x0b], 0x20)); // FAILED
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 2;
        buf.extend(neigh_msg(&v6, &[0x02, 0, 0, 0, 0, 0x0c], 0x04)); // STALE
        let mut out = HashMap::new();
        assert!(!parse_dump(&buf, &mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[&"10.200.0.2".parse::<IpAddr>().unwrap()],
            "02:00:00:00:00:0a"
        );
        assert_eq!(
            out[&"fd00::2".parse::<IpAddr>().unwrap()],
            "02:00:00:00:00:0c"
        );
        let mut done = vec![0u8; 20];
        done[0] = 20;
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse_dump(&done, &mut out));
    }
}
