//! TCP flow logic shared by every backend: what a state transition, a connect, an
//! accept or a listen means for the maps and which event it emits.
//!
//! The entry points (`tracepoint_tcp.rs` for the tracepoint, `fentry_kprobe.rs` for fentry and
//! kprobes) only find the socket, the states and the tuple. Each capability has one
//! owning backend (`KernelConfig::cap_backend`): only the owner touches that
//! capability's maps and emits its events, so backends can be mixed without duplicates.
use netmon_common::{
    AF_INET, AF_INET6, ConnEvent, FlowStart, IPPROTO_TCP, KernelConfig, ListenerKey, Process, cap,
    flags, kind, kmap,
};

use crate::log::{debug, warn};

use crate::{
    emit::{
        current_process, is_self, ktime_ns, new_event, new_event_at, read_kernel_at, sock_netns,
        submit,
    },
    maps::{CONNECTING, CONNECTING_MAX, LISTENERS, TCP_FLOWS, TCP_FLOWS_MAX, count, put, take},
};

// include/net/tcp_states.h
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_FIN_WAIT2: i32 = 5;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;
pub const TCP_LAST_ACK: i32 = 9;
pub const TCP_LISTEN: i32 = 10;
pub const TCP_CLOSING: i32 = 11;

/// Bit of `sock->sk_flags` (enum sock_flags: SOCK_DEAD, SOCK_DONE, …), stable since 2.6.
const SOCK_DONE: u64 = 1;

/// `FlowStart::flags` bit: the flow belongs to netmon itself and is not reported.
const FLOW_IGNORED: u32 = 1 << 31;

/// The local and remote ends of a TCP socket.
pub struct Tuple {
    pub family: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
}

/// Where a transition's tuple comes from, read only when an event needs it. A trait
/// rather than a closure so the read is always inlined: the verifier refuses a BPF
/// function that returns a struct through a pointer to its caller's stack.
pub trait TupleSource {
    fn tuple(&self) -> Option<Tuple>;
}

#[inline(always)]
pub fn owns(cfg: &KernelConfig, capability: usize, backend: u32) -> bool {
    cfg.cap_backend[capability] as u32 == backend
}

/// Whether `on_transition` does anything for `old → new` (kept beside its `match`).
#[inline(always)]
pub fn handles(old: i32, new: i32) -> bool {
    matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT)
            | (TCP_SYN_SENT, _)
            | (_, TCP_LISTEN)
            | (TCP_LISTEN, TCP_CLOSE)
            | (TCP_SYN_RECV, TCP_ESTABLISHED)
            | (
                TCP_ESTABLISHED
                    | TCP_FIN_WAIT1
                    | TCP_FIN_WAIT2
                    | TCP_CLOSE_WAIT
                    | TCP_LAST_ACK
                    | TCP_CLOSING,
                TCP_CLOSE,
            )
    )
}

/// A state change of socket `sk`, as the tracepoint or `tcp_set_state()` sees it.
/// The tuple is only read when needed.
#[inline(always)]
pub fn on_transition(
    cfg: &KernelConfig,
    backend: u32,
    sk: u64,
    old: i32,
    new: i32,
    source: &impl TupleSource,
) {
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            // connect(): process context, before the source port is chosen. The
            // fentry/kprobe backends capture the process in tcp_connect() instead.
            if owns(cfg, cap::TCP_CONNECT, backend) && backend == netmon_common::backend::TRACEPOINT
            {
                remember_connecting(sk);
            }
        }
        (TCP_SYN_SENT, _) => {
            if owns(cfg, cap::TCP_CONNECT, backend)
                && let Some(t) = source.tuple()
            {
                on_connect_done(cfg, backend, sk, new, &t);
            }
        }
        (_, TCP_LISTEN) => {
            if owns(cfg, cap::TCP_LISTEN, backend)
                && let Some(t) = source.tuple()
            {
                on_listen(cfg, backend, sk, &t);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            if owns(cfg, cap::TCP_LISTEN, backend)
                && let Some(t) = source.tuple()
            {
                let key = listener_key(cfg, sk, t.family, t.local_port);
                // A plain hash: counted removals, no eviction to track.
                if LISTENERS.remove(key).is_ok() {
                    count(kmap::LISTENERS, kmap::REMOVED);
                }
            }
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // The fentry/kprobe backends report accepts from inet_csk_accept(), in the
            // accepting process; only the tracepoint needs the listener's owner.
            if owns(cfg, cap::TCP_ACCEPT, backend)
                && backend == netmon_common::backend::TRACEPOINT
                && let Some(t) = source.tuple()
            {
                on_passive_open(cfg, backend, sk, &t);
            }
        }
        (
            TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK
            | TCP_CLOSING,
            TCP_CLOSE,
        ) => {
            if owns(cfg, cap::TCP_CLOSE, backend)
                && let Some(t) = source.tuple()
            {
                on_close(cfg, backend, sk, old, &t);
            }
        }
        _ => {}
    }
}

/// Records the calling process as the one connecting `sk`.
#[inline(always)]
pub fn remember_connecting(sk: u64) {
    let process = current_process();
    // The message names the pid alone: naming `process` after the insert would keep a
    // copy of the whole struct alive on every run, logging off or not.
    let pid = process.pid;
    if let Err(e) = put!(CONNECTING, kmap::CONNECTING, CONNECTING_MAX, sk, process) {
        warn!((), "CONNECTING insert failed ({}): pid {}", e, pid);
    }
}

/// The handshake of an outbound connection ended: ESTABLISHED, or CLOSE on failure.
#[inline(always)]
fn on_connect_done(cfg: &KernelConfig, backend: u32, sk: u64, new: i32, tuple: &Tuple) {
    // SAFETY: the value is copied out before the entry is removed.
    let recorded = (unsafe { CONNECTING.get(sk) }).copied();
    let (process, unknown) = match recorded {
        Some(p) => {
            take!(CONNECTING, kmap::CONNECTING, sk);
            (p, 0)
        }
        None => {
            // connect() began before netmon started, or its entry was evicted (churn
            // of CONNECTING): the connect is still reported, without its process.
            count(kmap::CONNECTING, kmap::MISSED);
            debug!(
                (),
                "connect done without a recorded connect(): port {} → {}",
                tuple.local_port,
                tuple.remote_port
            );
            (Process::EMPTY, flags::PROCESS_UNKNOWN)
        }
    };
    let now = ktime_ns();
    if is_self(cfg, &process) {
        if new == TCP_ESTABLISHED {
            remember_flow(sk, FLOW_IGNORED, process, 0, now);
        }
        return;
    }
    let mut event = new_event_at(kind::CONNECT, backend, process, now);
    fill_outbound(&mut event, tuple);
    event.flags |= unknown;
    event.netns = sock_netns(cfg, sk);
    if new == TCP_ESTABLISHED {
        remember_flow(sk, unknown, process, event.netns, now);
    } else {
        event.flags |= flags::CONNECT_FAILED;
    }
    submit(&event);
}

/// listen(): process context.
#[inline(always)]
pub fn on_listen(cfg: &KernelConfig, backend: u32, sk: u64, tuple: &Tuple) {
    let process = current_process();
    let key = listener_key(cfg, sk, tuple.family, tuple.local_port);
    if let Err(e) = put!(LISTENERS, kmap::LISTENERS, 0, key, process) {
        warn!(
            (),
            "LISTENERS insert failed ({}): port {}", e, tuple.local_port
        );
    }
    if is_self(cfg, &process) {
        return;
    }
    let mut event = new_event(kind::LISTEN, backend, process);
    event.family = tuple.family;
    event.protocol = IPPROTO_TCP;
    event.dst_addr = tuple.local_addr;
    event.dst_port = tuple.local_port;
    event.netns = key.netns;
    submit(&event);
}

/// A passive open completed (softirq): the flow belongs to the listening port's owner.
#[inline(always)]
fn on_passive_open(cfg: &KernelConfig, backend: u32, sk: u64, tuple: &Tuple) {
    let key = listener_key(cfg, sk, tuple.family, tuple.local_port);
    // SAFETY: copied out immediately.
    let owner = unsafe { LISTENERS.get(key) }.copied();
    let (process, unknown) = match owner {
        Some(p) => (p, 0),
        None => {
            // A listener opened before netmon, or one LISTENERS could not take.
            count(kmap::LISTENERS, kmap::MISSED);
            (Process::EMPTY, flags::PROCESS_UNKNOWN)
        }
    };
    emit_accept_in(cfg, backend, sk, tuple, process, unknown, key.netns);
}

/// An accepted connection, owned by `process` (the acceptor or the listener's owner).
#[inline(always)]
pub fn emit_accept(
    cfg: &KernelConfig,
    backend: u32,
    sk: u64,
    tuple: &Tuple,
    process: Process,
    unknown: u32,
) {
    emit_accept_in(
        cfg,
        backend,
        sk,
        tuple,
        process,
        unknown,
        sock_netns(cfg, sk),
    );
}

/// [`emit_accept`] for a socket whose network namespace is already known.
#[inline(always)]
fn emit_accept_in(
    cfg: &KernelConfig,
    backend: u32,
    sk: u64,
    tuple: &Tuple,
    process: Process,
    unknown: u32,
    netns: u32,
) {
    let now = ktime_ns();
    if is_self(cfg, &process) {
        remember_flow(sk, FLOW_IGNORED, process, 0, now);
        return;
    }
    let mut event = new_event_at(kind::ACCEPT, backend, process, now);
    fill_inbound(&mut event, tuple);
    event.flags |= unknown;
    event.netns = netns;
    remember_flow(sk, flags::INBOUND | unknown, process, netns, now);
    submit(&event);
}

#[inline(always)]
fn on_close(cfg: &KernelConfig, backend: u32, sk: u64, old: i32, tuple: &Tuple) {
    // SAFETY: copied out before the entry is removed.
    let start = unsafe { TCP_FLOWS.get(sk) }.copied();
    if start.is_some() {
        take!(TCP_FLOWS, kmap::TCP_FLOWS, sk);
    }
    let mut event;
    let mut netns = 0;
    match start {
        Some(start) if start.flags & FLOW_IGNORED != 0 => return,
        Some(start) => {
            netns = start.netns;
            event = new_event(kind::CLOSE, backend, start.process);
            event.duration_ns = event.header.ktime_ns.saturating_sub(start.ktime_ns);
            event.flags |= flags::DURATION_KNOWN | (start.flags & flags::PROCESS_UNKNOWN);
            if start.flags & flags::INBOUND != 0 {
                fill_inbound(&mut event, tuple);
            } else {
                fill_outbound(&mut event, tuple);
            }
        }
        None => {
            // The flow began before netmon started, or its entry was evicted: local
            // side first.
            count(kmap::TCP_FLOWS, kmap::MISSED);
            debug!(
                (),
                "close of a flow netmon did not see begin: port {} → {}, state {}",
                tuple.local_port,
                tuple.remote_port,
                old
            );
            event = new_event(kind::CLOSE, backend, Process::EMPTY);
            event.flags |= flags::PROCESS_UNKNOWN | flags::DIRECTION_UNKNOWN;
            fill_outbound(&mut event, tuple);
        }
    }
    let acked = read_kernel_at::<u64>(sk, cfg.tcp_sock_bytes_acked);
    let received = read_kernel_at::<u64>(sk, cfg.tcp_sock_bytes_received);
    if let (Some(acked), Some(received)) = (acked, received) {
        // `bytes_acked` and `bytes_received` count TCP sequence space (RFC 4898), in
        // which SYN and FIN take one byte each. Payload is what users mean, so the
        // control bytes come out: the active opener's SYN is acked into its count (the
        // passive side's child socket starts at 0); our FIN was acked if the flow
        // leaves a state only reachable that way; the peer's FIN was counted if
        // `tcp_fin()` set SOCK_DONE. (The state alone cannot say: an orphaned socket
        // leaves FIN_WAIT2 for time-wait before the peer's FIN arrives.)
        let syn = (event.flags & (flags::INBOUND | flags::DIRECTION_UNKNOWN) == 0) as u64;
        let fin_acked = matches!(old, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING) as u64;
        let sk_flags = read_kernel_at::<u64>(sk, cfg.sock_flags).unwrap_or(0);
        let fin_received = (sk_flags >> SOCK_DONE) & 1;
        event.bytes_sent = acked.saturating_sub(syn + fin_acked);
        event.bytes_received = received.saturating_sub(fin_received);
        event.flags |= flags::BYTES_KNOWN;
    }
    event.netns = if netns != 0 {
        netns
    } else {
        sock_netns(cfg, sk)
    };
    submit(&event);
}

/// Records the start of flow `sk` at `now` (network namespace `netns`, 0 = unknown).
#[inline(always)]
fn remember_flow(sk: u64, flow_flags: u32, process: Process, netns: u32, now: u64) {
    let pid = process.pid; // not `process` itself after the insert: see remember_connecting
    let start = FlowStart {
        ktime_ns: now,
        flags: flow_flags,
        netns,
        process,
    };
    if let Err(e) = put!(TCP_FLOWS, kmap::TCP_FLOWS, TCP_FLOWS_MAX, sk, start) {
        warn!((), "TCP_FLOWS insert failed ({}): pid {}", e, pid);
    }
}

#[inline(always)]
pub fn listener_key(cfg: &KernelConfig, sk: u64, family: u16, port: u16) -> ListenerKey {
    ListenerKey {
        netns: sock_netns(cfg, sk),
        port,
        family,
    }
}

#[inline(always)]
fn fill_outbound(event: &mut ConnEvent, t: &Tuple) {
    event.family = t.family;
    event.protocol = IPPROTO_TCP;
    event.src_addr = t.local_addr;
    event.src_port = t.local_port;
    event.dst_addr = t.remote_addr;
    event.dst_port = t.remote_port;
}

#[inline(always)]
fn fill_inbound(event: &mut ConnEvent, t: &Tuple) {
    event.family = t.family;
    event.protocol = IPPROTO_TCP;
    event.flags |= flags::INBOUND;
    event.src_addr = t.remote_addr;
    event.src_port = t.remote_port;
    event.dst_addr = t.local_addr;
    event.dst_port = t.local_port;
}

/// A socket whose tuple is read from `struct sock_common` with BTF offsets
/// (fentry/kprobe backends; the tracepoint hands it over in its record instead).
pub struct SockTuple<'a> {
    pub cfg: &'a KernelConfig,
    pub sk: u64,
}

impl TupleSource for SockTuple<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<Tuple> {
        tuple_of_sock(self.cfg, self.sk)
    }
}

/// The tuple of `sk` read from `struct sock_common` with BTF offsets.
#[inline(always)]
pub fn tuple_of_sock(cfg: &KernelConfig, sk: u64) -> Option<Tuple> {
    let family = read_kernel_at::<u16>(sk, cfg.skc_family)?;
    let local_port = read_kernel_at::<u16>(sk, cfg.skc_num)?;
    let remote_port = u16::from_be(read_kernel_at::<u16>(sk, cfg.skc_dport)?);
    let mut local_addr = [0u8; 16];
    let mut remote_addr = [0u8; 16];
    if family == AF_INET {
        let l = read_kernel_at::<[u8; 4]>(sk, cfg.skc_rcv_saddr)?;
        let r = read_kernel_at::<[u8; 4]>(sk, cfg.skc_daddr)?;
        local_addr[..4].copy_from_slice(&l);
        remote_addr[..4].copy_from_slice(&r);
    } else if family == AF_INET6 {
        local_addr = read_kernel_at::<[u8; 16]>(sk, cfg.skc_v6_rcv_saddr)?;
        remote_addr = read_kernel_at::<[u8; 16]>(sk, cfg.skc_v6_daddr)?;
    } else {
        debug!(
            (),
            "socket of unknown family {} (offset {})", family, cfg.skc_family
        );
        return None;
    }
    Some(Tuple {
        family,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
    })
}

/// `sk->sk_state` (a u8 in every kernel netmon supports).
#[inline(always)]
pub fn sock_state(cfg: &KernelConfig, sk: u64) -> Option<i32> {
    read_kernel_at::<u8>(sk, cfg.skc_state).map(|s| s as i32)
}
