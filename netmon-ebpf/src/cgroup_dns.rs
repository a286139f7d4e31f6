//! DNS packets from the cgroup skb programs (`cgroup_skb.rs`; cgroup v2 root, every
//! kernel netmon supports, whatever its kprobe/fentry situation): UDP datagrams and
//! TCP segments to or from a DNS port (`DNS_PORTS`: 53 plus the configured ones) are
//! copied, up to `DNS_PAYLOAD_MAX` bytes with their real length, into the ring buffer
//! as `DnsEvent`s.
//!
//! Attribution: the socket cookie of the packet's socket maps to the process that last
//! connected or sent on it (`SOCKET_OWNERS`). The `sock_connect*`/`sock_sendmsg*` programs
//! (`cgroup_sock_addr.rs`) fill it for sockets talking to a DNS port (TCP included, which the UDP hooks skip),
//! so a response arriving on the same socket is attributed to the process that asked.
//! The kernel never interprets the DNS message: userspace parses it and distrusts every
//! length in it.
//!
//! Rate: each packet is 600+ bytes in the shared ring buffer, so a flood to port 53
//! would push out every other kind of event. Packets are copied at most at a sustained
//! rate per owning process (GCRA on `DNS_RATE`, the owner's tgid; unknown owners share
//! one budget); the excess is counted (`kmap::DNS_RATE_LIMITED`), not copied.
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use netmon_common::{
    AF_INET, AF_INET6, DNS_PAYLOAD_MAX, DnsEvent, IPPROTO_TCP, IPPROTO_UDP, Process, backend,
    dns_flags, kind,
};

use crate::{
    cgroup_skb::{ETH_P_IP, ETH_P_IPV6},
    emit::{config, count_lost, is_self, ktime_ns, submit_flags},
    maps::{DNS_RATE, DNS_RATE_MAX, EVENTS, SOCKET_OWNERS, bump, is_dns_port, put},
};

/// Nanoseconds between two packets at a process's sustained rate; 0 = no limit. Set
/// by the loader (`EbpfLoader::override_global`) before the programs load.
#[unsafe(no_mangle)]
static DNS_RATE_INTERVAL_NS: u64 = 0;

/// How far ahead of its sustained rate a process may run: `(burst - 1) * interval`.
#[unsafe(no_mangle)]
static DNS_RATE_TOLERANCE_NS: u64 = 0;

/// Whether a DNS packet of process `pid` may be copied now (GCRA: the process's
/// theoretical arrival time may run at most the tolerance ahead of now). Two CPUs
/// updating one process at once may let a packet more through; never fewer.
#[inline(always)]
fn within_rate(pid: u32) -> bool {
    // SAFETY: plain reads of globals the loader may have rewritten.
    let interval = unsafe { core::ptr::read_volatile(&DNS_RATE_INTERVAL_NS) };
    if interval == 0 {
        return true;
    }
    let tolerance = unsafe { core::ptr::read_volatile(&DNS_RATE_TOLERANCE_NS) };
    let now = ktime_ns();
    if let Some(tat) = DNS_RATE.get_ptr_mut(pid) {
        // SAFETY: a valid map value.
        let due = unsafe { *tat };
        let due = if due > now { due } else { now };
        if due - now > tolerance {
            bump(netmon_common::kmap::DNS_RATE_LIMITED);
            return false;
        }
        // SAFETY: as above.
        unsafe { *tat = due + interval };
        return true;
    }
    let _ = put!(
        DNS_RATE,
        netmon_common::kmap::DNS_RATE,
        DNS_RATE_MAX,
        pid,
        now + interval
    );
    true
}

/// Where a packet's DNS payload lies, and its endpoints.
struct Segment {
    family: u16,
    protocol: u16,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    src_port: u16,
    dst_port: u16,
    /// Offset of the transport payload from the network header.
    payload_off: u32,
    payload_len: u32,
}

/// Copies the DNS message in `ctx` (a packet to or from a DNS port; `direction` is
/// `dns_flags::EGRESS` or 0) into the ring buffer.
#[inline(always)]
pub fn capture(ctx: &SkBuffContext, direction: u32) -> Result<(), i64> {
    let Some(seg) = parse_segment(ctx)? else {
        return Ok(());
    };
    let dns_port = is_dns_port(seg.dst_port) || is_dns_port(seg.src_port);
    if !dns_port || seg.payload_len == 0 {
        return Ok(()); // not DNS, or a bare TCP ACK/SYN/FIN
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: copied out immediately.
    let owner = unsafe { SOCKET_OWNERS.get(cookie) }.copied();
    let (process, unknown) = match owner {
        Some(p) => (p, 0),
        None => (Process::EMPTY, dns_flags::PROCESS_UNKNOWN),
    };
    let cfg = config();
    if is_self(cfg, &process) || !within_rate(process.pid) {
        return Ok(());
    }
    // The event is 600+ bytes: it is written straight into the ring buffer, never
    // built on the 512-byte BPF stack.
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        count_lost(kind::DNS);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    let mut captured = seg.payload_len;
    if captured > DNS_PAYLOAD_MAX as u32 {
        captured = DNS_PAYLOAD_MAX as u32;
    }
    // SAFETY: `ev` points at a reserved entry of the right size; each field is written
    // before submission.
    unsafe {
        (*ev).header.kind = kind::DNS;
        (*ev).header.backend = backend::TRACEPOINT;
        (*ev).header.ktime_ns = ktime_ns();
        (*ev).header.process = process;
        (*ev).src_addr = seg.src_addr;
        (*ev).dst_addr = seg.dst_addr;
        (*ev).src_port = seg.src_port;
        (*ev).dst_port = seg.dst_port;
        (*ev).family = seg.family;
        (*ev).protocol = seg.protocol;
        (*ev).flags = direction | unknown;
        (*ev)._pad = 0;
        (*ev).socket_cookie = cookie;
        (*ev).payload_len = seg.payload_len;
        (*ev).captured_len = captured;
    }
    // The copy length must be provably in 1..=DNS_PAYLOAD_MAX *in the register passed
    // to the helper*. LLVM rewrites range checks into forms the verifier cannot follow
    // (e.g. `n - 1 < 512` on a copy), so the bound is re-derived by masking a value
    // LLVM cannot reason about (read back volatile): `((c - 1) & 511) + 1` is c for any
    // c in 1..=512 (payload_len is not 0 here), and the verifier tracks `&` and `+`.
    // SAFETY: reading back the field just written.
    let c = unsafe { core::ptr::read_volatile(&raw const (*ev).captured_len) };
    let n = (c.wrapping_sub(1) & (DNS_PAYLOAD_MAX as u32 - 1)) + 1;
    // SAFETY: `payload` has DNS_PAYLOAD_MAX bytes and n <= DNS_PAYLOAD_MAX.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            seg.payload_off,
            (&raw mut (*ev).payload).cast(),
            n,
        )
    };
    if rc != 0 {
        crate::log::warn!(
            (),
            "DNS payload copy failed ({}): {} bytes at {}",
            rc,
            n,
            seg.payload_off
        );
        entry.discard(0);
        return Ok(());
    }
    entry.submit(submit_flags());
    Ok(())
}

/// The UDP datagram or TCP segment in `ctx` (from its network header), or `None` for
/// any other packet. IPv6 extension headers are not walked: sockets send UDP and TCP
/// right after the fixed header.
#[inline(always)]
fn parse_segment(ctx: &SkBuffContext) -> Result<Option<Segment>, i64> {
    let eth_proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let (family, proto, l4) = if eth_proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0)?;
        let proto: u8 = ctx.load(9)?;
        let s: [u8; 4] = ctx.load(12)?;
        let d: [u8; 4] = ctx.load(16)?;
        src_addr[..4].copy_from_slice(&s);
        dst_addr[..4].copy_from_slice(&d);
        (AF_INET, proto, ((vihl & 0x0f) as u32) * 4)
    } else if eth_proto == ETH_P_IPV6 {
        let next: u8 = ctx.load(6)?;
        src_addr = ctx.load(8)?;
        dst_addr = ctx.load(24)?;
        (AF_INET6, next, 40)
    } else {
        return Ok(None);
    };
    let header_len = if proto == IPPROTO_UDP as u8 {
        8
    } else if proto == IPPROTO_TCP as u8 {
        let doff: u8 = ctx.load(l4 as usize + 12)?;
        ((doff >> 4) as u32) * 4
    } else {
        return Ok(None);
    };
    let src_port: u16 = ctx.load(l4 as usize)?;
    let dst_port: u16 = ctx.load(l4 as usize + 2)?;
    let payload_off = l4 + header_len;
    let skb_len = ctx.len();
    let payload_len = skb_len.saturating_sub(payload_off);
    Ok(Some(Segment {
        family,
        protocol: proto as u16,
        src_addr,
        dst_addr,
        src_port: u16::from_be(src_port),
        dst_port: u16::from_be(dst_port),
        payload_off,
        payload_len,
    }))
}
