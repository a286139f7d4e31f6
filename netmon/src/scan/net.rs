//! Low-level pieces the probes share: the Internet checksum, ICMP echo and TCP header
//! building and parsing (pure), and thin wrappers for raw and ICMP sockets, the
//! source address the kernel would use, `CAP_NET_RAW` and `RLIMIT_NOFILE`.
use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// Whether this process may open raw sockets.
pub fn has_net_raw() -> bool {
    crate::system::has_capability(crate::system::CAP_NET_RAW)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// How many probes may be in flight: the file-descriptor limit less a reserve for
/// everything else, capped so one scan does not hog the ephemeral port range.
pub fn concurrency_for(nofile: u64) -> usize {
    nofile.saturating_sub(128).clamp(16, 8192) as usize
}

/// The address the kernel would send from to reach `dst` (no packet is sent: a UDP
/// `connect` only picks a route).
pub fn source_for(dst: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect((dst, 9))?;
    Ok(s.local_addr()?.ip())
}

/// Whether `ip` is one of this host's addresses (in the current network namespace).
pub fn is_local(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    let bind: SocketAddr = (ip, 0).into();
    UdpSocket::bind(bind).is_ok()
}

/// RFC 1071 checksum over `data`, continuing from `sum`.
pub fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn checksum_finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn checksum(data: &[u8]) -> u16 {
    checksum_finish(checksum_add(0, data))
}

/// The TCP/UDP pseudo-header sum for `src` → `dst`.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum += u32::from(proto) + len as u32;
        }
        _ => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            sum = checksum_add(sum, &v6(src));
            sum = checksum_add(sum, &v6(dst));
            sum += len as u32 + u32::from(proto);
        }
    }
    sum
}

/// An ICMP (v4 type 8) or ICMPv6 (type 128) echo request. The ICMPv6 checksum is left
/// zero: the kernel fills it in for ICMPv6 sockets.
pub fn echo_request(v6: bool, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// An ICMP message as seen by a receiver (after the IP header, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    EchoReply {
        ident: u16,
        seq: u16,
    },
    /// Destination unreachable / time exceeded, with what the quoted packet was.
    Error {
        kind: IcmpErrorKind,
        quoted_proto: u8,
        quoted_dst: IpAddr,
        quoted_dport: u16,
        quoted_ident: u16,
    },
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpErrorKind {
    /// Port unreachable (v4 type 3 code 3, v6 type 1 code 4).
    PortUnreachable,
    /// Any other destination unreachable.
    Unreachable,
    TimeExceeded,
}

/// Parses an ICMP/ICMPv6 message (the ICMP header first).
pub fn parse_icmp(v6: bool, msg: &[u8]) -> Icmp {
    if msg.len() < 8 {
        return Icmp::Other;
    }
    let (ty, code) = (msg[0], msg[1]);
    let be16 = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let echo_reply = if v6 { 129 } else { 0 };
    if ty == echo_reply {
        return Icmp::EchoReply {
            ident: be16(4),
            seq: be16(6),
        };
    }
    let kind = match (v6, ty, code) {
        (false, 3, 3) | (true, 1, 4) => IcmpErrorKind::PortUnreachable,
        (false, 3, _) | (true, 1, _) => IcmpErrorKind::Unreachable,
        (false, 11, _) | (true, 3, _) => IcmpErrorKind::TimeExceeded,
        _ => return Icmp::Other,
    };
    let quoted = &msg[8..];
    let (proto, dst, l4) = if v6 {
        if quoted.len() < 40 {
            return Icmp::Other;
        }
        let mut d = [0u8; 16];
        d.copy_from_slice(&quoted[24..40]);
        (quoted[6], IpAddr::V6(Ipv6Addr::from(d)), &quoted[40..])
    } else {
        if quoted.len() < 20 {
            return Icmp::Other;
        }
        let ihl = usize::from(quoted[0] & 0xf) * 4;
        if quoted.len() < ihl {
            return Icmp::Other;
        }
        let d = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
        (quoted[9], IpAddr::V4(d), &quoted[ihl..])
    };
    let (dport, ident) = if l4.len() >= 8 {
        (
            u16::from_be_bytes([l4[2], l4[3]]),
            u16::from_be_bytes([l4[4], l4[5]]),
        )
    } else if l4.len() >= 4 {
        (u16::from_be_bytes([l4[2], l4[3]]), 0)
    } else {
        (0, 0)
    };
    Icmp::Error {
        kind,
        quoted_proto: proto,
        quoted_dst: dst,
        quoted_dport: dport,
        quoted_ident: ident,
    }
}

/// How an ICMP socket was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpMode {
    /// `SOCK_RAW`: needs `CAP_NET_RAW`; IPv4 reads include the IP header.
    Raw,
    /// `SOCK_DGRAM` "ping" socket: unprivileged where `net.ipv4.ping_group_range`
    /// includes our group; the kernel chooses the echo identifier.
    Datagram,
}

/// An ICMP or ICMPv6 socket registered with tokio.
pub struct IcmpSocket {
    pub fd: AsyncFd<Socket>,
    pub mode: IcmpMode,
    pub v6: bool,
}

/// One datagram read from a socket, with the TTL / hop limit when the kernel gave it.
pub struct Received {
    pub from: IpAddr,
    pub data: Vec<u8>,
    pub ttl: Option<u8>,
}

impl IcmpSocket {
    /// Opens a raw ICMP socket, or the unprivileged kind when raw is not allowed.
    pub fn open(v6: bool) -> io::Result<IcmpSocket> {
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let (sock, mode) = match Socket::new(domain, Type::RAW, Some(proto)) {
            Ok(s) => (s, IcmpMode::Raw),
            Err(raw_err) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
                Ok(s) => (s, IcmpMode::Datagram),
                Err(_) => return Err(raw_err),
            },
        };
        sock.set_nonblocking(true)?;
        let _ = sock.set_recv_buffer_size(1 << 20);
        enable_ttl_cmsg(&sock, v6)?;
        // SAFETY: the socket is owned by the AsyncFd and stays open, unchanged, for as
        // long as it is registered.
        let fd = unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)?;
        Ok(IcmpSocket { fd, mode, v6 })
    }

    pub async fn send_to(&self, buf: &[u8], dst: IpAddr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::new(dst, 0));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(buf, &addr)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one message; for raw IPv4 the IP header is stripped (its TTL kept).
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| recv_with_ttl(s.get_ref())) {
                Ok(Ok(mut r)) => {
                    if self.mode == IcmpMode::Raw && !self.v6 {
                        let ihl = r.data.first().map_or(0, |b| usize::from(b & 0xf) * 4);
                        if r.data.len() < ihl || ihl < 20 {
                            continue;
                        }
                        r.ttl = Some(r.data[8]);
                        r.data.drain(..ihl);
                    }
                    return Ok(r);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Asks the kernel for the TTL (IPv4) or hop limit (IPv6) of each datagram.
pub fn enable_ttl_cmsg(sock: &Socket, v6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVTTL)
    };
    // SAFETY: a valid fd and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recvmsg` with the TTL / hop-limit control message.
pub fn recv_with_ttl(sock: &Socket) -> io::Result<Received> {
    let mut buf = vec![0u8; 2048];
    let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is valid; every pointer below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at valid buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let mut ttl = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::IPPROTO_IP && ty == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_HOPLIMIT)
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // SAFETY: the kernel wrote a sockaddr of the socket's family into `name`.
    let from = unsafe { sockaddr_ip(&name.assume_init()) }.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source")
    })?;
    Ok(Received {
        from,
        data: buf,
        ttl,
    })
}

/// The IP address of a `sockaddr_in` / `sockaddr_in6` held in a `sockaddr_storage`.
///
/// # Safety
/// `ss` must hold an initialised sockaddr of the family it says.
pub unsafe fn sockaddr_ip(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in; storage is large and aligned.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_packet() {
        // RFC 1071 example words 0001 f203 f4f5 f6f7 sum to ddf2 → checksum 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // A packet with its checksum filled in sums to zero.
        let p = echo_request(false, 0x1234, 7, b"netmon");
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn echo_reply_and_port_unreachable_parse() {
        let mut reply = echo_request(false, 0xbeef, 3, b"x");
        reply[0] = 0;
        assert_eq!(
            parse_icmp(false, &reply),
            Icmp::EchoReply {
                ident: 0xbeef,
                seq: 3
            }
        );
        // Port unreachable quoting a UDP datagram to 10.0.0.2:53.
        let mut msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        msg.extend(ip);
        assert_eq!(
            parse_icmp(false, &msg),
            Icmp::Error {
                kind: IcmpErrorKind::PortUnreachable,
                quoted_proto: 17,
                quoted_dst: "10.0.0.2".parse().unwrap(),
                quoted_dport: 53,
                quoted_ident: 8,
            }
        );
        assert_eq!(parse_icmp(false, &[8, 0, 0]), Icmp::Other);
    }

    #[test]
    fn concurrency_follows_the_fd_limit() {
        assert_eq!(concurrency_for(1024), 896);
        assert_eq!(concurrency_for(20), 16);
        assert_eq!(concurrency_for(1 << 20), 8192);
    }
}
