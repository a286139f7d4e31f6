//! UDP from cgroup hooks (attached to the cgroup v2 root): the backend for kernels
//! without kprobes or fentry.
//!
//! `cgroup/connect{4,6}` and `cgroup/sendmsg{4,6}` run in the sending process, so they
//! record which process owns each UDP socket (by socket cookie). `cgroup_skb/egress`
//! sees every datagram with its real source port and length: it reports the first
//! datagram to each new peer of a process and counts the rest in `UDP_PEERS`, so a
//! DNS or QUIC burst costs one ring-buffer event, not thousands.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use netmon_common::{
    AF_INET, AF_INET6, IPPROTO_UDP, Process, UdpPeerKey, UdpPeerStats, backend, flags, kind,
};

use crate::{
    emit::{config, current_process, is_self, ktime_ns, new_event, submit},
    maps::{SOCKET_OWNERS, UDP_PEERS},
};

/// Return value of cgroup hooks that lets the operation proceed.
const ALLOW: i32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[inline(always)]
fn remember_owner(ctx: &SockAddrContext) {
    let addr: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the verifier hands us a valid context pointer.
    let protocol = unsafe { (*addr).protocol };
    if protocol != IPPROTO_UDP as u32 {
        return;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let process = current_process();
    let _ = SOCKET_OWNERS.insert(cookie, process, 0);
}

#[cgroup_skb(egress)]
pub fn udp_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_udp_egress(&ctx);
    ALLOW
}

/// Addresses and ports of one datagram, read from its IP and UDP headers.
struct Datagram {
    family: u16,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    src_port: u16,
    dst_port: u16,
    /// UDP header plus payload.
    udp_len: u64,
}

#[inline(always)]
fn try_udp_egress(ctx: &SkBuffContext) -> Result<(), i64> {
    let Some(datagram) = parse_udp(ctx)? else {
        return Ok(());
    };
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: copied out immediately.
    let owner = unsafe { SOCKET_OWNERS.get(cookie) }.copied();
    let cfg = config();
    let (process, unknown) = match owner {
        Some(p) => (p, 0),
        None => (Process::EMPTY, flags::PROCESS_UNKNOWN),
    };
    if is_self(&cfg, &process) {
        return Ok(());
    }
    let key = UdpPeerKey {
        pid: process.pid,
        family: datagram.family,
        dst_port: datagram.dst_port,
        dst_addr: datagram.dst_addr,
    };
    let now = ktime_ns();
    if let Some(stats) = UDP_PEERS.get_ptr_mut(key) {
        // SAFETY: a valid map value. Two CPUs may send to the same peer at once, so
        // the counters use BPF's atomic add (`core`'s atomics are not available on
        // the bpf target because it has no compare-and-swap before v3).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).datagrams, 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*stats).bytes,
                datagram.udp_len,
            );
            (*stats).last_ktime_ns = now;
        }
        return Ok(());
    }
    let stats = UdpPeerStats {
        first_ktime_ns: now,
        last_ktime_ns: now,
        datagrams: 1,
        bytes: datagram.udp_len,
    };
    // Only the CPU whose insert wins reports the new peer.
    if UDP_PEERS.insert(key, stats, BPF_NOEXIST as u64).is_err() {
        return Ok(());
    }
    let mut event = new_event(kind::UDP, backend::TRACEPOINT, process);
    event.family = datagram.family;
    event.protocol = IPPROTO_UDP;
    event.flags = unknown;
    event.src_addr = datagram.src_addr;
    event.src_port = datagram.src_port;
    event.dst_addr = datagram.dst_addr;
    event.dst_port = datagram.dst_port;
    event.bytes_sent = datagram.udp_len;
    submit(&event);
    Ok(())
}

/// The UDP datagram in `ctx`, or `None` for any other packet. IPv6 extension headers
/// are not walked: UDP right after the fixed header is what sockets send.
#[inline(always)]
fn parse_udp(ctx: &SkBuffContext) -> Result<Option<Datagram>, i64> {
    let eth_proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let (family, l4) = if eth_proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0)?;
        let proto: u8 = ctx.load(9)?;
        if proto != IPPROTO_UDP as u8 {
            return Ok(None);
        }
        let s: [u8; 4] = ctx.load(12)?;
        let d: [u8; 4] = ctx.load(16)?;
        src_addr[..4].copy_from_slice(&s);
        dst_addr[..4].copy_from_slice(&d);
        (AF_INET, ((vihl & 0x0f) as usize) * 4)
    } else if eth_proto == ETH_P_IPV6 {
        let next: u8 = ctx.load(6)?;
        if next != IPPROTO_UDP as u8 {
            return Ok(None);
        }
        src_addr = ctx.load(8)?;
        dst_addr = ctx.load(24)?;
        (AF_INET6, 40)
    } else {
        return Ok(None);
    };
    let src_port: u16 = ctx.load(l4)?;
    let dst_port: u16 = ctx.load(l4 + 2)?;
    let udp_len: u16 = ctx.load(l4 + 4)?;
    Ok(Some(Datagram {
        family,
        src_addr,
        dst_addr,
        src_port: u16::from_be(src_port),
        dst_port: u16::from_be(dst_port),
        udp_len: u16::from_be(udp_len) as u64,
    }))
}
