//! netmon's kernel programs. Files are named by hook family: `fentry_kprobe.rs`
//! (fentry/fexit and kprobe/kretprobe programs on kernel functions),
//! `tracepoint_*.rs` (tracepoints), `cgroup_*.rs` (cgroup sock_addr and skb hooks).
//! The logic they share is in `tcp.rs`, `udp.rs` and `emit.rs`, the maps in `maps.rs`.
//! This file only wires them together and owns the license and panic handler every
//! aya program needs.
#![no_std]
#![no_main]
// BPF's atomic add for shared counters (see udp.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup_dns;
mod cgroup_skb;
mod cgroup_sock_addr;
mod cgroup_udp;
mod emit;
mod fentry_kprobe;
mod log;
mod maps;
mod tcp;
mod tracepoint_process;
mod tracepoint_tcp;
mod udp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves programs cannot panic; this is never reached.
    loop {}
}

/// GPL-compatible licence: `bpf_probe_read_kernel` and the tracing helpers need it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
