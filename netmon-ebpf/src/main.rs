//! netmon's kernel programs. One module per hook family; this file only wires them
//! together and owns the license and panic handler every aya program needs.
#![no_std]
#![no_main]
// BPF's atomic add for shared counters (see udp_cgroup.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod emit;
mod kfuncs;
mod maps;
mod tcp;
mod tcp_state;
mod udp;
mod udp_cgroup;

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
