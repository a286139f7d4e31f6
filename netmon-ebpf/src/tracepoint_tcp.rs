//! The `sock:inet_sock_set_state` tracepoint (kernel 4.16+): TCP connect, accept, listen
//! and close for kernels without kprobes or fentry.
//!
//! The tracepoint fires in whatever context changes the state: `connect()` and
//! `listen()` run in the caller's process, but the handshake's end and most closes run
//! in softirq, where the task on the CPU is unrelated. `tcp.rs` captures the process
//! where it is right and carries it in maps to where the event is emitted; an accepted
//! connection belongs to the owner of its listening port.
use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use netmon_common::{AF_INET, AF_INET6, IPPROTO_TCP, backend};

use crate::{
    emit::config,
    tcp::{Tuple, TupleSource, handles, on_transition},
};

// Field offsets of the tracepoint record. The layout has been stable since 4.16;
// userspace checks it against tracefs' `format` file before attaching. Every field is
// at an offset that is a multiple of its size, as direct context loads require.
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
    let record = Record(ctx);
    if record.u16_at(PROTOCOL) != IPPROTO_TCP {
        return Ok(());
    }
    let sk = record.u64_at(SKADDR);
    let old = record.u32_at(OLDSTATE) as i32;
    let new = record.u32_at(NEWSTATE) as i32;
    // Most transitions of a connection (FIN_WAIT1 → FIN_WAIT2, SYN_RECV on the
    // listener's side…) mean nothing to netmon: leave before any map lookup.
    if !handles(old, new) {
        return Ok(());
    }
    let cfg = config();
    on_transition(cfg, backend::TRACEPOINT, sk, old, new, &record);
    Ok(())
}

/// The tracepoint's record, read with direct loads from the program's context: a
/// tracepoint program may load any aligned field past the 8-byte common header
/// (`tp_prog_is_valid_access`, every kernel with BPF tracepoints). A
/// `bpf_probe_read_kernel` per field, as `TracePointContext::read_at` does, cost about
/// 40 ns each: more than the rest of a run that returns early.
struct Record<'a>(&'a TracePointContext);

impl Record<'_> {
    /// The `T` at `offset`, which must be a constant multiple of `size_of::<T>()` and
    /// at least 8. Volatile, so that LLVM keeps the load at the field's width.
    #[inline(always)]
    fn at<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: offsets inside the tracepoint record, checked by userspace against
        // tracefs' `format`; the verifier checks the bounds and alignment of each load.
        unsafe { core::ptr::read_volatile(self.0.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
    }

    #[inline(always)]
    fn u16_at(&self, offset: usize) -> u16 {
        self.at(offset)
    }

    #[inline(always)]
    fn u32_at(&self, offset: usize) -> u32 {
        self.at(offset)
    }

    #[inline(always)]
    fn u64_at(&self, offset: usize) -> u64 {
        self.at(offset)
    }

    /// Four address bytes, as stored (network order).
    #[inline(always)]
    fn ipv4_at(&self, offset: usize) -> [u8; 4] {
        self.u32_at(offset).to_ne_bytes()
    }

    /// Sixteen address bytes, as stored (network order), in two 8-byte loads.
    #[inline(always)]
    fn ipv6_at(&self, offset: usize) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&self.u64_at(offset).to_ne_bytes());
        addr[8..].copy_from_slice(&self.u64_at(offset + 8).to_ne_bytes());
        addr
    }
}

impl TupleSource for Record<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<Tuple> {
        let family = self.u16_at(FAMILY);
        let mut local_addr = [0u8; 16];
        let mut remote_addr = [0u8; 16];
        if family == AF_INET6 {
            local_addr = self.ipv6_at(SADDR_V6);
            remote_addr = self.ipv6_at(DADDR_V6);
        } else if family == AF_INET {
            local_addr[..4].copy_from_slice(&self.ipv4_at(SADDR));
            remote_addr[..4].copy_from_slice(&self.ipv4_at(DADDR));
        } else {
            crate::log::debug!((), "inet_sock_set_state of unknown family {}", family);
            return None;
        }
        Some(Tuple {
            family,
            local_addr,
            remote_addr,
            local_port: self.u16_at(SPORT),
            remote_port: self.u16_at(DPORT),
        })
    }
}
