//! UDP logic shared by every backend: one event the first time a process sends to a
//! peer, counters for the rest (`UDP_PEERS`), so a DNS or QUIC burst costs one event.
//! Entry points parse the datagram's IP and UDP headers and hand them over.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;
use netmon_common::{
    AF_INET, AF_INET6, IPPROTO_UDP, KernelConfig, Process, UdpPeerKey, UdpPeerStats, cap, kind,
    kmap,
};

use crate::{
    emit::{is_self, ktime_ns, new_event, submit},
    maps::{EEXIST, UDP_PEERS, UDP_PEERS_MAX, count, entered},
    tcp::owns,
};

/// Addresses and ports of one datagram, read from its IP and UDP headers.
pub struct Datagram {
    pub family: u16,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// UDP header plus payload.
    pub udp_len: u64,
}

/// Where datagram bytes come from: an skb context or kernel memory. Reads have a
/// constant size `N` at each call site, which the verifier requires.
pub trait PacketBytes {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

/// Reads a datagram's IP and UDP headers. `None` for anything but UDP right after the
/// IP header (IPv6 extension headers are not walked: sockets do not send them for
/// plain UDP).
#[inline(always)]
pub fn parse(is_ipv6: bool, p: &impl PacketBytes) -> Option<Datagram> {
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let (family, l4) = if !is_ipv6 {
        let [vihl] = p.load::<1>(0)?;
        let [proto] = p.load::<1>(9)?;
        if proto != IPPROTO_UDP as u8 {
            return None;
        }
        src_addr[..4].copy_from_slice(&p.load::<4>(12)?);
        dst_addr[..4].copy_from_slice(&p.load::<4>(16)?);
        (AF_INET, ((vihl & 0x0f) as usize) * 4)
    } else {
        let [next] = p.load::<1>(6)?;
        if next != IPPROTO_UDP as u8 {
            return None;
        }
        src_addr = p.load::<16>(8)?;
        dst_addr = p.load::<16>(24)?;
        (AF_INET6, 40)
    };
    let udp = p.load::<6>(l4)?;
    Some(Datagram {
        family,
        src_addr,
        dst_addr,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        udp_len: u16::from_be_bytes([udp[4], udp[5]]) as u64,
    })
}

/// Counts `datagram` for its (process, peer) and reports the peer the first time.
#[inline(always)]
pub fn on_datagram(cfg: &KernelConfig, backend: u32, process: Process, unknown: u32, d: &Datagram) {
    if !owns(cfg, cap::UDP_SEND, backend) || is_self(cfg, &process) {
        return;
    }
    let key = UdpPeerKey {
        pid: process.pid,
        family: d.family,
        dst_port: d.dst_port,
        dst_addr: d.dst_addr,
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
                d.udp_len,
            );
            (*stats).last_ktime_ns = now;
        }
        return;
    }
    let stats = UdpPeerStats {
        first_ktime_ns: now,
        last_ktime_ns: now,
        datagrams: 1,
        bytes: d.udp_len,
    };
    // Only the CPU whose insert wins reports the new peer. Any other refusal is
    // counted and the peer still reported (its later datagrams are then not counted).
    match UDP_PEERS.insert(key, stats, BPF_NOEXIST as u64) {
        Ok(()) => entered(kmap::UDP_PEERS, UDP_PEERS_MAX),
        Err(EEXIST) => return,
        Err(_) => count(kmap::UDP_PEERS, kmap::INSERT_FAILED),
    }
    if unknown != 0 {
        // A new peer of a socket whose owner SOCKET_OWNERS does not hold (evicted, or
        // the socket was set up before netmon started).
        count(kmap::SOCKET_OWNERS, kmap::MISSED);
    }
    let mut event = new_event(kind::UDP, backend, process);
    event.family = d.family;
    event.protocol = IPPROTO_UDP;
    event.flags = unknown;
    event.src_addr = d.src_addr;
    event.src_port = d.src_port;
    event.dst_addr = d.dst_addr;
    event.dst_port = d.dst_port;
    event.bytes_sent = d.udp_len;
    submit(&event);
}
