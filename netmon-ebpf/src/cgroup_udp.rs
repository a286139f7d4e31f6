//! UDP from cgroup hooks (attached to the cgroup v2 root): the backend for kernels
//! without kprobes or fentry.
//!
//! `cgroup/connect{4,6}` and `cgroup/sendmsg{4,6}` run in the sending process, so they
//! record which process owns each UDP socket (by socket cookie). The egress skb
//! program (`cgroup_skb.rs`) sees every datagram with its real source address, port
//! and length and hands it here, then to `udp.rs`, which reports new peers and counts
//! the rest.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_sock_addr,
    programs::{SkBuffContext, SockAddrContext},
};
use netmon_common::{IPPROTO_UDP, KernelConfig, Process, backend, flags};

use crate::{cgroup_skb::ALLOW, emit::current_process, maps::SOCKET_OWNERS, udp};

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
    if let Err(e) = SOCKET_OWNERS.insert(cookie, process, 0) {
        aya_log_ebpf::warn!(
            (),
            "SOCKET_OWNERS insert failed ({}): pid {}",
            e,
            process.pid
        );
    }
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
