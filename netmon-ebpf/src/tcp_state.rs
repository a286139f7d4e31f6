//! TCP connect, accept, listen and close from the `sock:inet_sock_set_state`
//! tracepoint (kernel 4.16+): the backend for kernels without kprobes or fentry.
//!
//! The tracepoint fires in whatever context changes the state: `connect()` and
//! `listen()` run in the caller's process, but the handshake's end and most closes
//! run in softirq, where the task on the CPU is unrelated. So the process is captured
//! where it is right (SYN_SENT, LISTEN) and carried in maps to where the event is
//! emitted: an accepted connection belongs to the owner of its listening port.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netmon_common::{
    AF_INET, AF_INET6, ConnEvent, FlowStart, IPPROTO_TCP, KernelConfig, ListenerKey, Process,
    backend, flags, kind,
};

use crate::{
    emit::{
        config, current_process, is_self, ktime_ns, new_event, read_kernel_at, sock_netns, submit,
    },
    maps::{CONNECTING, LISTENERS, TCP_FLOWS},
};

// Field offsets of the tracepoint record. The layout has been stable since 4.16;
// userspace checks it against tracefs' `format` file before attaching.
const SKADDR: usize = 8;
const OLDSTATE: usize = 16;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const DPORT: usize = 26;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;
const SADDR: usize = 32;
const DADDR: usize = 36;
const SADDR_V6: usize = 40;
const DADDR_V6: usize = 56;

// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSING: i32 = 11;

/// Bit of `sock->sk_flags` (enum sock_flags: SOCK_DEAD, SOCK_DONE, …), stable since 2.6.
const SOCK_DONE: u64 = 1;

/// `FlowStart::flags` bit: the flow belongs to netmon itself and is not reported.
const FLOW_IGNORED: u32 = 1 << 31;

/// The local and remote ends as the tracepoint reports them.
struct Tuple {
    family: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
    local_port: u16,
    remote_port: u16,
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets inside the tracepoint record, checked by userspace.
    let protocol: u16 = unsafe { ctx.read_at(PROTOCOL) }.map_err(|e| e as i64)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(SKADDR) }.map_err(|e| e as i64)?;
    let old: i32 = unsafe { ctx.read_at(OLDSTATE) }.map_err(|e| e as i64)?;
    let new: i32 = unsafe { ctx.read_at(NEWSTATE) }.map_err(|e| e as i64)?;
    let cfg = config();

    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            // connect(): process context, but the source port is not chosen yet.
            let process = current_process();
            let _ = CONNECTING.insert(sk, process, 0);
        }
        (TCP_SYN_SENT, _) => on_connect_done(ctx, &cfg, sk, new),
        (_, TCP_LISTEN) => on_listen(ctx, &cfg, sk)?,
        (TCP_LISTEN, TCP_CLOSE) => {
            let tuple = read_tuple(ctx)?;
            let key = listener_key(&cfg, sk, tuple.local_port);
            let _ = LISTENERS.remove(key);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => on_accept(ctx, &cfg, sk)?,
        (
            TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK
            | TCP_CLOSING,
            TCP_CLOSE,
        ) => on_close(ctx, &cfg, sk, old)?,
        _ => {}
    }
    Ok(())
}

/// The handshake of an outbound connection ended: ESTABLISHED, or CLOSE on failure.
#[inline(always)]
fn on_connect_done(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64, new: i32) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(process) = (unsafe { CONNECTING.get(sk) }).copied() else {
        return; // connect() began before netmon started
    };
    let _ = CONNECTING.remove(sk);
    let Ok(tuple) = read_tuple(ctx) else {
        return;
    };
    if is_self(cfg, &process) {
        if new == TCP_ESTABLISHED {
            remember_flow(sk, FLOW_IGNORED, process);
        }
        return;
    }
    let mut event = new_event(kind::CONNECT, backend::TRACEPOINT, process);
    fill_outbound(&mut event, &tuple);
    event.netns = sock_netns(cfg, sk);
    if new == TCP_ESTABLISHED {
        remember_flow(sk, 0, process);
    } else {
        event.flags |= flags::CONNECT_FAILED;
    }
    submit(&event);
}

#[inline(always)]
fn on_listen(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64) -> Result<(), i64> {
    // listen(): process context.
    let process = current_process();
    let tuple = read_tuple(ctx)?;
    let key = listener_key(cfg, sk, tuple.local_port);
    let _ = LISTENERS.insert(key, process, 0);
    if is_self(cfg, &process) {
        return Ok(());
    }
    let mut event = new_event(kind::LISTEN, backend::TRACEPOINT, process);
    event.family = tuple.family;
    event.protocol = IPPROTO_TCP;
    event.dst_addr = tuple.local_addr;
    event.dst_port = tuple.local_port;
    event.netns = key.netns;
    submit(&event);
    Ok(())
}

/// A passive open completed (softirq): the flow belongs to the listening port's owner.
#[inline(always)]
fn on_accept(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64) -> Result<(), i64> {
    let tuple = read_tuple(ctx)?;
    let key = listener_key(cfg, sk, tuple.local_port);
    // SAFETY: copied out immediately.
    let owner = unsafe { LISTENERS.get(key) }.copied();
    let (process, unknown) = match owner {
        Some(p) => (p, 0),
        None => (Process::EMPTY, flags::PROCESS_UNKNOWN),
    };
    if is_self(cfg, &process) {
        remember_flow(sk, FLOW_IGNORED, process);
        return Ok(());
    }
    let mut event = new_event(kind::ACCEPT, backend::TRACEPOINT, process);
    fill_inbound(&mut event, &tuple);
    event.flags |= unknown;
    event.netns = key.netns;
    remember_flow(sk, flags::INBOUND | unknown, process);
    submit(&event);
    Ok(())
}

#[inline(always)]
fn on_close(ctx: &TracePointContext, cfg: &KernelConfig, sk: u64, old: i32) -> Result<(), i64> {
    // SAFETY: copied out before the entry is removed.
    let start = unsafe { TCP_FLOWS.get(sk) }.copied();
    let _ = TCP_FLOWS.remove(sk);
    let tuple = read_tuple(ctx)?;
    let mut event;
    match start {
        Some(start) if start.flags & FLOW_IGNORED != 0 => return Ok(()),
        Some(start) => {
            event = new_event(kind::CLOSE, backend::TRACEPOINT, start.process);
            event.duration_ns = event.header.ktime_ns.saturating_sub(start.ktime_ns);
            event.flags |= flags::DURATION_KNOWN | (start.flags & flags::PROCESS_UNKNOWN);
            if start.flags & flags::INBOUND != 0 {
                fill_inbound(&mut event, &tuple);
            } else {
                fill_outbound(&mut event, &tuple);
            }
        }
        None => {
            // The flow began before netmon started: local side first.
            event = new_event(kind::CLOSE, backend::TRACEPOINT, Process::EMPTY);
            event.flags |= flags::PROCESS_UNKNOWN | flags::DIRECTION_UNKNOWN;
            fill_outbound(&mut event, &tuple);
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
    event.netns = sock_netns(cfg, sk);
    submit(&event);
    Ok(())
}

#[inline(always)]
fn remember_flow(sk: u64, flow_flags: u32, process: Process) {
    let start = FlowStart {
        ktime_ns: ktime_ns(),
        flags: flow_flags,
        _pad: 0,
        process,
    };
    let _ = TCP_FLOWS.insert(sk, start, 0);
}

#[inline(always)]
fn listener_key(cfg: &KernelConfig, sk: u64, port: u16) -> ListenerKey {
    ListenerKey {
        netns: sock_netns(cfg, sk),
        port,
        _pad: 0,
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

#[inline(always)]
fn read_tuple(ctx: &TracePointContext) -> Result<Tuple, i64> {
    // SAFETY: offsets inside the tracepoint record, checked by userspace.
    unsafe {
        let family: u16 = ctx.read_at(FAMILY).map_err(|e| e as i64)?;
        let local_port: u16 = ctx.read_at(SPORT).map_err(|e| e as i64)?;
        let remote_port: u16 = ctx.read_at(DPORT).map_err(|e| e as i64)?;
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == AF_INET6 {
            local_addr = ctx.read_at(SADDR_V6).map_err(|e| e as i64)?;
            remote_addr = ctx.read_at(DADDR_V6).map_err(|e| e as i64)?;
        } else if family == AF_INET {
            let s: [u8; 4] = ctx.read_at(SADDR).map_err(|e| e as i64)?;
            let d: [u8; 4] = ctx.read_at(DADDR).map_err(|e| e as i64)?;
            local_addr[..4].copy_from_slice(&s);
            remote_addr[..4].copy_from_slice(&d);
        } else {
            return Err(0);
        }
        Ok(Tuple {
            family,
            local_addr,
            remote_addr,
            local_port,
            remote_port,
        })
    }
}
