//! UDP from cgroup hooks (attached to the cgroup v2 root): the backend for kernels
//! without kprobes or fentry.
//!
//! `cgroup/connect{4,6}` and `cgroup/sendmsg{4,6}` run in the sending process, so they
//! record which process owns each UDP socket (by socket cookie; the programs are in
//! `cgroup_sock_addr.rs`, shared with DNS). The egress skb
//! program (`cgroup_skb.rs`) sees every datagram with its real source address, port
//! and length and hands it here, then to `udp.rs`, which reports new peers and counts
//! the rest.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_sock,
    programs::{SkBuffContext, SockContext},
};
use netmon_common::{IPPROTO_UDP, KernelConfig, Process, backend, flags, kmap};

use crate::{
    cgroup_skb::ALLOW,
    maps::{SOCKET_OWNERS, SOCKET_OWNERS_MAX, count, entered, is_dns_port, take},
    udp,
};

/// Records `process` as the owner of the socket with `cookie`. Runs on every
/// `sendmsg()` of an unconnected socket, so a known socket is updated in place (an
/// LRU update would allocate a new entry each time); only a new one is inserted.
#[inline(always)]
pub fn remember_socket_owner(cookie: u64, process: Process) {
    if let Some(owner) = SOCKET_OWNERS.get_ptr_mut(cookie) {
        // SAFETY: a valid map value. Two processes sending on one socket at once may
        // leave a mix of both; either is a right answer.
        unsafe { *owner = process };
        return;
    }
    // Only the pid is kept for the message: naming `process` after the insert made the
    // compiler keep a 40-byte copy of it on every run, logging off or not.
    let pid = process.pid;
    match SOCKET_OWNERS.insert(cookie, process, aya_ebpf::bindings::BPF_NOEXIST as u64) {
        Ok(()) => entered(kmap::SOCKET_OWNERS, SOCKET_OWNERS_MAX),
        Err(crate::maps::EEXIST) => {}
        Err(e) => {
            count(kmap::SOCKET_OWNERS, kmap::INSERT_FAILED);
            crate::log::warn!((), "SOCKET_OWNERS insert failed ({}): pid {}", e, pid);
        }
    }
}

/// A socket was released (its last `close()`; kernel 5.9+, `BPF_CGROUP_INET_SOCK_RELEASE`,
/// every inet socket of every cgroup under the root): its owner is forgotten, so
/// short-lived sockets (one per DNS lookup, say) do not push out live ones. TCP
/// sockets talking to DNS ports are in `SOCKET_OWNERS` too; this covers them.
///
/// A TCP socket is only looked up when its peer is on a DNS port (the only TCP sockets
/// the map holds): asking for a cookie makes one, which every other TCP close would
/// pay for.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the verifier hands us a valid context pointer.
    let protocol = unsafe { (*ctx.sock).protocol };
    let wanted = protocol == IPPROTO_UDP as u32
        || (protocol == netmon_common::IPPROTO_TCP as u32 && is_dns_port(peer_port(&ctx)));
    if wanted {
        // SAFETY: a helper call on the program's own context (5.7+ for cgroup/sock).
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
        take!(SOCKET_OWNERS, kmap::SOCKET_OWNERS, cookie);
    }
    ALLOW
}

/// `bpf_sock.dst_port` (host byte order). A 4-byte load: before 5.19 the field was a
/// `__u32` that only took full-width loads; since, it is a `__be16` whose 4-byte load
/// the kernel still accepts. Either way the port is in the first two bytes.
#[inline(always)]
fn peer_port(ctx: &SockContext) -> u16 {
    // SAFETY: a context field the verifier lets cgroup/sock programs read; volatile
    // so LLVM keeps the load 4 bytes wide.
    let raw = unsafe { core::ptr::read_volatile((&raw const (*ctx.sock).dst_port).cast::<u32>()) };
    u16::from_be(raw as u16)
}

/// A UDP datagram leaving the host (IPv6 when `is_ipv6`).
#[inline(always)]
pub fn on_egress(ctx: &SkBuffContext, cfg: &KernelConfig, is_ipv6: bool) -> Option<()> {
    let datagram = udp::parse(is_ipv6, &SkbBytes(ctx))?;
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: copied out immediately.
    let owner = unsafe { SOCKET_OWNERS.get(cookie) }.copied();
    let (process, unknown) = match owner {
        Some(p) => (p, 0),
        None => (Process::EMPTY, flags::PROCESS_UNKNOWN),
    };
    udp::on_datagram(cfg, backend::TRACEPOINT, process, unknown, &datagram);
    Some(())
}

/// Datagram bytes of an skb, read with `bpf_skb_load_bytes`.
struct SkbBytes<'a>(&'a SkBuffContext);

impl udp::PacketBytes for SkbBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // `load` reads exactly N bytes; `load_bytes` clamps the length to skb->len,
        // which the verifier then sees as possibly zero and rejects.
        self.0.load::<[u8; N]>(offset).ok()
    }
}
