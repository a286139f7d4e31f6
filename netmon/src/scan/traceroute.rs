//! `--traceroute`: ICMP echo requests with TTL 1, 2, 3… on a raw ICMP socket; each
//! router on the way answers "time exceeded" quoting our request, the target answers
//! the echo. One probe per hop, each paced by the rate limiter; stops at the target,
//! at `max_hops`, or after four silent hops in a row. Needs `CAP_NET_RAW` (ping
//! sockets deliver ICMP errors only through the error queue).
use std::{io, net::IpAddr, os::fd::AsRawFd, time::Duration};

use tokio::time::Instant;

use super::{
    net::{self, Icmp, IcmpErrorKind, IcmpMode, IcmpSocket},
    rate::RateLimiter,
};
use crate::event::scan::TraceHop;

/// The routers between here and `dst`, nearest first; the last hop is `dst` itself
/// when it answered.
pub async fn trace(
    dst: IpAddr,
    max_hops: u8,
    timeout: Duration,
    rate: &RateLimiter,
) -> io::Result<Vec<TraceHop>> {
    let v6 = dst.is_ipv6();
    let sock = IcmpSocket::open(v6)
        .ok()
        .filter(|s| s.mode == IcmpMode::Raw);
    let Some(sock) = sock else {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "traceroute needs a raw ICMP socket (CAP_NET_RAW): run as root",
        ));
    };
    let ident = (std::process::id() as u16) ^ 0x7472;
    let mut hops = Vec::new();
    let mut silent = 0;
    for ttl in 1..=max_hops {
        set_ttl(&sock, v6, ttl)?;
        rate.acquire().await;
        let sent = Instant::now();
        let pkt = net::echo_request(v6, ident, u16::from(ttl), b"netmon-traceroute");
        sock.send_to(&pkt, dst).await?;
        let deadline = sent + timeout;
        let mut hop = TraceHop {
            ttl,
            addr: None,
            rtt_ms: None,
        };
        let mut reached = false;
        while let Ok(Ok(r)) = tokio::time::timeout_at(deadline, sock.recv()).await {
            match net::parse_icmp(v6, &r.data) {
                Icmp::EchoReply { ident: id, seq }
                    if id == ident && r.from == dst && seq == u16::from(ttl) =>
                {
                    reached = true;
                }
                Icmp::Error {
                    kind: IcmpErrorKind::TimeExceeded | IcmpErrorKind::Unreachable,
                    quoted_proto,
                    quoted_dst,
                    quoted_ident,
                    ..
                } if quoted_dst == dst
                    && quoted_ident == ident
                    && quoted_proto == if v6 { 58 } else { 1 } => {}
                _ => continue,
            }
            hop.addr = Some(r.from);
            hop.rtt_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        silent = if hop.addr.is_none() { silent + 1 } else { 0 };
        hops.push(hop);
        if reached || silent >= 4 {
            break;
        }
    }
    Ok(hops)
}

fn set_ttl(sock: &IcmpSocket, v6: bool, ttl: u8) -> io::Result<()> {
    let v = libc::c_int::from(ttl);
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TTL)
    };
    // SAFETY: a valid fd and an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.fd.get_ref().as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
