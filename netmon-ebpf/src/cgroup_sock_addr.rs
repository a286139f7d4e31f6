//! The cgroup `connect{4,6}` and `sendmsg{4,6}` programs (cgroup v2 root): they run in
//! the process that connects or sends, so they record which process owns the socket
//! (`SOCKET_OWNERS`, by socket cookie) for the packet programs, which run where the
//! process is unknown. One program per hook serves both users, so a `connect()` pays
//! for one run:
//!
//! - UDP sends on the tracepoint backend (`cgroup_udp.rs`): every UDP socket;
//! - DNS (`cgroup_dns.rs`): sockets talking to a DNS port, TCP included, so a response
//!   arriving on the same socket is attributed to the process that asked.
//!
//! Anything else (every TCP connect to a non-DNS port) leaves after reading two fields
//! of the context.
use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use netmon_common::{IPPROTO_TCP, IPPROTO_UDP, backend, cap};

use crate::{
    cgroup_skb::ALLOW,
    cgroup_udp::remember_socket_owner,
    emit::{config, current_process},
    maps::is_dns_port,
};

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    remember_owner(&ctx);
    ALLOW
}

/// Records the calling process as the owner of the socket when a UDP send or DNS
/// wants it.
#[inline(always)]
fn remember_owner(ctx: &SockAddrContext) {
    let addr: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the verifier hands us a valid context pointer.
    let (protocol, user_port) = unsafe { ((*addr).protocol, (*addr).user_port) };
    let is_udp = protocol == IPPROTO_UDP as u32;
    if !is_udp && protocol != IPPROTO_TCP as u32 {
        return;
    }
    let cfg = config();
    let udp = is_udp && cfg.cap_backend[cap::UDP_SEND] as u32 == backend::TRACEPOINT;
    // `user_port` holds the port in network byte order in its low 16 bits.
    let dns = || cfg.cap_backend[cap::DNS] != 0 && is_dns_port(u16::from_be(user_port as u16));
    if !udp && !dns() {
        return;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    remember_socket_owner(cookie, current_process());
}
