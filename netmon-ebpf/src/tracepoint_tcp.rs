//! The `sock:inet_sock_set_state` tracepoint (kernel 4.16+): TCP connect, accept, listen
//! and close for kernels without kprobes or fentry.
//!
//! The tracepoint fires in whatever context changes the state: `connect()` and
//! `listen()` run in the caller's process, but the handshake's end and most closes run
//! in softirq, where the task on the CPU is unrelated. `tcp.rs` captures the process
//! where it is right and carries it in maps to where the event is emitted; an accepted
//! connection belongs to the owner of its listening port.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netmon_common::{AF_INET, AF_INET6, IPPROTO_TCP, backend};

use crate::{
    emit::config,
    tcp::{Tuple, TupleSource, handles, on_transition},
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

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: offsets inside the tracepoint record, checked by userspace.
    let protocol: u16 = unsafe { ctx.read_at(PROTOCOL) }.map_err(|e| e as i64)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(SKADDR) }.map_err(|e| e as i64)?;
    let old: i32 = unsafe { ctx.read_at(OLDSTATE) }.map_err(|e| e as i64)?;
    let new: i32 = unsafe { ctx.read_at(NEWSTATE) }.map_err(|e| e as i64)?;
    // Most transitions of a connection (FIN_WAIT1 → FIN_WAIT2, SYN_RECV on the
    // listener's side…) mean nothing to netmon: leave before any map lookup.
    if !handles(old, new) {
        return Ok(());
    }
    let cfg = config();
    on_transition(&cfg, backend::TRACEPOINT, sk, old, new, &RecordTuple(ctx));
    Ok(())
}

/// The tuple as the tracepoint record carries it.
struct RecordTuple<'a>(&'a TracePointContext);

impl TupleSource for RecordTuple<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<Tuple> {
        read_tuple(self.0)
    }
}

#[inline(always)]
fn read_tuple(ctx: &TracePointContext) -> Option<Tuple> {
    // SAFETY: offsets inside the tracepoint record, checked by userspace.
    unsafe {
        let family: u16 = ctx.read_at(FAMILY).ok()?;
        let local_port: u16 = ctx.read_at(SPORT).ok()?;
        let remote_port: u16 = ctx.read_at(DPORT).ok()?;
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == AF_INET6 {
            local_addr = ctx.read_at(SADDR_V6).ok()?;
            remote_addr = ctx.read_at(DADDR_V6).ok()?;
        } else if family == AF_INET {
            let s: [u8; 4] = ctx.read_at(SADDR).ok()?;
            let d: [u8; 4] = ctx.read_at(DADDR).ok()?;
            local_addr[..4].copy_from_slice(&s);
            remote_addr[..4].copy_from_slice(&d);
        } else {
            crate::log::debug!((), "inet_sock_set_state of unknown family {}", family);
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
}
