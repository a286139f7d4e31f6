//! The two cgroup skb programs (cgroup v2 root): `skb_egress` for UDP (the tracepoint
//! backend's `udp_send`) and DNS, `skb_ingress` for DNS. They run on every packet of
//! every socket on the host, so what they cost on the packets they do not want is what
//! netmon costs a busy server: such a packet (TCP with DNS off, TCP between non-DNS
//! ports, anything not UDP or TCP) leaves after a few instructions.
//!
//! The headers are read with direct packet access (`skb->data`, `data_end`), which
//! cgroup skb programs have since kernel 4.20 (loaded with CAP_BPF/CAP_SYS_ADMIN);
//! `skb->data` is the network header here. A header outside the linear part (never
//! for packets the local stack builds) falls back to `bpf_skb_load_bytes`.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use netmon_common::{IPPROTO_TCP, IPPROTO_UDP, KernelConfig, backend, cap, dns_flags};

use crate::{cgroup_dns, cgroup_udp, emit::config, maps::is_dns_port};

/// Return value of cgroup hooks that lets the operation proceed.
pub const ALLOW: i32 = 1;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_packet(&ctx, dns_flags::EGRESS);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_packet(&ctx, 0);
    ALLOW
}

/// What the fast path reads of a packet.
struct Peek {
    is_ipv6: bool,
    protocol: u8,
    /// Offset of the transport header from the network header.
    l4: usize,
}

#[inline(always)]
fn try_packet(ctx: &SkBuffContext, direction: u32) -> Option<()> {
    let cfg: &KernelConfig = config();
    let udp = direction == dns_flags::EGRESS
        && cfg.cap_backend[cap::UDP_SEND] as u32 == backend::TRACEPOINT;
    let dns = cfg.cap_backend[cap::DNS] != 0;
    if !udp && !dns {
        return None;
    }
    let p = peek(ctx)?;
    let is_udp = p.protocol == IPPROTO_UDP as u8;
    if !is_udp && (p.protocol != IPPROTO_TCP as u8 || !dns) {
        return None;
    }
    if udp && is_udp {
        cgroup_udp::on_egress(ctx, cfg, p.is_ipv6);
    }
    if dns {
        let (src, dst) = ports(ctx, p.l4)?;
        if is_dns_port(src) || is_dns_port(dst) {
            let _ = cgroup_dns::capture(ctx, direction);
        }
    }
    Some(())
}

/// The network header's family, transport protocol and length.
#[inline(always)]
fn peek(ctx: &SkBuffContext) -> Option<Peek> {
    let eth = u16::from_be(ctx.skb.protocol() as u16);
    let (data, end) = bounds(ctx);
    if eth == ETH_P_IP {
        let (vihl, protocol) = if data + 20 <= end {
            // SAFETY: inside [data, data_end), checked just above.
            unsafe { (*(data as *const u8), *((data + 9) as *const u8)) }
        } else {
            (ctx.load::<u8>(0).ok()?, ctx.load::<u8>(9).ok()?)
        };
        Some(Peek {
            is_ipv6: false,
            protocol,
            l4: ((vihl & 0x0f) as usize) * 4,
        })
    } else if eth == ETH_P_IPV6 {
        // Extension headers are not walked: sockets send UDP and TCP right after the
        // fixed header.
        let protocol = if data + 40 <= end {
            // SAFETY: inside [data, data_end), checked just above.
            unsafe { *((data + 6) as *const u8) }
        } else {
            ctx.load::<u8>(6).ok()?
        };
        Some(Peek {
            is_ipv6: true,
            protocol,
            l4: 40,
        })
    } else {
        None
    }
}

/// Source and destination port (host byte order) of the transport header at `l4`.
#[inline(always)]
fn ports(ctx: &SkBuffContext, l4: usize) -> Option<(u16, u16)> {
    let (data, end) = bounds(ctx);
    // `l4` is at most 60: the verifier tracks the bound of the variable offset.
    let l4 = l4 & 0x3f;
    let at = data + l4;
    let raw: [u8; 4] = if at + 4 <= end {
        // SAFETY: inside [data, data_end), checked just above.
        unsafe { *(at as *const [u8; 4]) }
    } else {
        ctx.load::<[u8; 4]>(l4).ok()?
    };
    Some((
        u16::from_be_bytes([raw[0], raw[1]]),
        u16::from_be_bytes([raw[2], raw[3]]),
    ))
}

/// `skb->data` and `skb->data_end` as addresses.
#[inline(always)]
fn bounds(ctx: &SkBuffContext) -> (usize, usize) {
    // SAFETY: context fields the verifier lets cgroup skb programs read.
    unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    }
}
