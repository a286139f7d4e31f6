//! fentry/fexit and kprobe/kretprobe programs on kernel functions: the backends for
//! production kernels. Both call the same logic in `tcp.rs` and `udp.rs`; they differ
//! only in how they read arguments. Each hook states the prototype it expects.
//!
//! - `tcp_connect(struct sock *sk)`: process context, after the source port is chosen;
//!   captures the connecting process.
//! - `tcp_set_state(struct sock *sk, int state)`: every TCP transition except LISTEN
//!   and the child's SYN_RECV (those use `inet_sk_state_store`); the handshake's end
//!   and the close are reported from here, with `sk_state` read before the change.
//! - `inet_csk_accept(struct sock *sk, …)` return: the accepted child socket, in the
//!   process that called accept(). Its arguments changed in 6.10 (4 → 2), so there is
//!   one fexit program per prototype and the loader picks by BTF.
//! - `inet_csk_listen_start(struct sock *sk, …)`: listen(), process context.
//! - `ip_send_skb(struct net *net, struct sk_buff *skb)` and
//!   `ip6_send_skb(struct sk_buff *skb)`: every UDP datagram a socket sends, fully
//!   built (route-chosen source address, autobound port) and still in the sender's
//!   context. `udp_sendmsg()`'s arguments lack the source address of an unbound
//!   socket, which is why the datagram is read one call deeper.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use netmon_common::{KernelConfig, backend, cap};

use crate::{
    emit::{config, current_process, read_kernel_at},
    tcp::{
        SockTuple, emit_accept, on_listen, on_transition, owns, remember_connecting, sock_state,
        tuple_of_sock,
    },
    udp,
};

// ---- shared bodies -------------------------------------------------------------

#[inline(always)]
fn on_tcp_connect(backend: u32, sk: u64) {
    let cfg = config();
    if owns(cfg, cap::TCP_CONNECT, backend) {
        remember_connecting(sk);
    }
}

#[inline(always)]
fn on_tcp_set_state(backend: u32, sk: u64, new: i32) {
    let cfg = config();
    let Some(old) = sock_state(cfg, sk) else {
        return;
    };
    on_transition(cfg, backend, sk, old, new, &SockTuple { cfg, sk });
}

#[inline(always)]
fn on_accept_return(backend: u32, newsk: u64) {
    let cfg = config();
    if newsk == 0 || !owns(cfg, cap::TCP_ACCEPT, backend) {
        return;
    }
    if let Some(t) = tuple_of_sock(cfg, newsk) {
        emit_accept(cfg, backend, newsk, &t, current_process(), 0);
    }
}

#[inline(always)]
fn on_listen_start(backend: u32, sk: u64) {
    let cfg = config();
    if !owns(cfg, cap::TCP_LISTEN, backend) {
        return;
    }
    if let Some(t) = tuple_of_sock(cfg, sk) {
        on_listen(cfg, backend, sk, &t);
    }
}

#[inline(always)]
fn on_send_skb(backend: u32, skb: u64, is_ipv6: bool) {
    let cfg = config();
    if !owns(cfg, cap::UDP_SEND, backend) {
        return;
    }
    let Some(base) = network_header(cfg, skb) else {
        return;
    };
    let datagram = udp::parse(is_ipv6, &KernelBytes(base));
    if let Some(d) = datagram {
        udp::on_datagram(cfg, backend, current_process(), 0, &d);
    }
}

/// Datagram bytes in kernel memory starting at the IP header.
struct KernelBytes(u64);

impl udp::PacketBytes for KernelBytes {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly.
        unsafe { bpf_probe_read_kernel((self.0 + offset as u64) as *const [u8; N]) }.ok()
    }
}

/// `skb->head + skb->network_header`: where the IP header starts.
#[inline(always)]
fn network_header(cfg: &KernelConfig, skb: u64) -> Option<u64> {
    let head = read_kernel_at::<u64>(skb, cfg.skb_head)?;
    let nh = read_kernel_at::<u16>(skb, cfg.skb_network_header)?;
    Some(head + nh as u64)
}

// ---- fentry / fexit ------------------------------------------------------------

#[fentry(function = "tcp_connect")]
pub fn fentry_tcp_connect(ctx: FEntryContext) -> u32 {
    on_tcp_connect(backend::FENTRY, ctx.arg::<u64>(0));
    0
}

#[fentry(function = "tcp_set_state")]
pub fn fentry_tcp_set_state(ctx: FEntryContext) -> u32 {
    on_tcp_set_state(backend::FENTRY, ctx.arg::<u64>(0), ctx.arg::<u64>(1) as i32);
    0
}

// Two programs for the two prototypes: the return value follows the arguments in the
// fexit context, and the verifier refuses both a context read at a computed offset and
// one past the function's arguments, so each program reads one fixed slot and the
// loader picks the one matching the kernel's BTF.

/// `struct sock *inet_csk_accept(struct sock *sk, int flags, int *err, bool kern)`
/// (before 6.10).
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept_4args(ctx: FExitContext) -> u32 {
    on_accept_return(backend::FENTRY, ctx.arg::<u64>(4));
    0
}

/// `struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)` (6.10+).
#[fexit(function = "inet_csk_accept")]
pub fn fexit_inet_csk_accept_2args(ctx: FExitContext) -> u32 {
    on_accept_return(backend::FENTRY, ctx.arg::<u64>(2));
    0
}

#[fentry(function = "inet_csk_listen_start")]
pub fn fentry_inet_csk_listen_start(ctx: FEntryContext) -> u32 {
    on_listen_start(backend::FENTRY, ctx.arg::<u64>(0));
    0
}

#[fentry(function = "ip_send_skb")]
pub fn fentry_ip_send_skb(ctx: FEntryContext) -> u32 {
    on_send_skb(backend::FENTRY, ctx.arg::<u64>(1), false);
    0
}

#[fentry(function = "ip6_send_skb")]
pub fn fentry_ip6_send_skb(ctx: FEntryContext) -> u32 {
    on_send_skb(backend::FENTRY, ctx.arg::<u64>(0), true);
    0
}

// ---- kprobe / kretprobe --------------------------------------------------------

#[kprobe(function = "tcp_connect")]
pub fn kprobe_tcp_connect(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        on_tcp_connect(backend::KPROBE, sk);
    }
    0
}

#[kprobe(function = "tcp_set_state")]
pub fn kprobe_tcp_set_state(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(state)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        on_tcp_set_state(backend::KPROBE, sk, state as i32);
    }
    0
}

#[kretprobe(function = "inet_csk_accept")]
pub fn kretprobe_inet_csk_accept(ctx: RetProbeContext) -> u32 {
    on_accept_return(backend::KPROBE, ctx.ret::<u64>());
    0
}

#[kprobe(function = "inet_csk_listen_start")]
pub fn kprobe_inet_csk_listen_start(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        on_listen_start(backend::KPROBE, sk);
    }
    0
}

#[kprobe(function = "ip_send_skb")]
pub fn kprobe_ip_send_skb(ctx: ProbeContext) -> u32 {
    if let Some(skb) = ctx.arg::<u64>(1) {
        on_send_skb(backend::KPROBE, skb, false);
    }
    0
}

#[kprobe(function = "ip6_send_skb")]
pub fn kprobe_ip6_send_skb(ctx: ProbeContext) -> u32 {
    if let Some(skb) = ctx.arg::<u64>(0) {
        on_send_skb(backend::KPROBE, skb, true);
    }
    0
}
