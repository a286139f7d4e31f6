//! Helpers every program shares: who is running, the BTF-derived config, and
//! pushing an event into the ring buffer (counting it in `LOST` when it is full).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, generated::bpf_get_current_cgroup_id,
    },
};
use netmon_common::{ConnEvent, EventHeader, KernelConfig, NO_OFFSET, Process};

use crate::maps::{CONFIG, EVENTS, LOST};

/// The task on this CPU. Only meaningful in process context (syscalls, not softirq).
#[inline(always)]
pub fn current_process() -> Process {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Process {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: a helper call without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// The loader's [`KernelConfig`], read in place: a copy would be ~100 bytes moved on
/// every run of every program.
#[inline(always)]
pub fn config() -> &'static KernelConfig {
    match CONFIG.get(0) {
        Some(c) => c,
        None => &UNKNOWN_CONFIG,
    }
}

static UNKNOWN_CONFIG: KernelConfig = KernelConfig::UNKNOWN;

#[inline(always)]
pub fn is_self(cfg: &KernelConfig, process: &Process) -> bool {
    cfg.self_pid != 0 && process.pid == cfg.self_pid
}

#[inline(always)]
pub fn ktime_ns() -> u64 {
    // SAFETY: a helper call without arguments.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }
}

/// Reads a `T` at `base + offset` in kernel memory; `None` when the offset is unknown
/// (`NO_OFFSET`) or the read faults.
#[inline(always)]
pub fn read_kernel_at<T>(base: u64, offset: u32) -> Option<T> {
    if offset == NO_OFFSET || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// Network-namespace inode of a `struct sock *`, 0 when the offsets are unknown.
#[inline(always)]
pub fn sock_netns(cfg: &KernelConfig, sk: u64) -> u32 {
    let inum = match read_kernel_at::<u64>(sk, cfg.sock_net) {
        Some(net) => read_kernel_at::<u32>(net, cfg.net_ns_inum).unwrap_or(0),
        None => 0,
    };
    if inum == 0 && cfg.sock_net != NO_OFFSET {
        crate::log::debug!(
            (),
            "network namespace read as 0 (sock_net offset {})",
            cfg.sock_net
        );
    }
    inum
}

/// A zeroed connection event with its header filled in.
#[inline(always)]
pub fn new_event(kind: u32, backend: u32, process: Process) -> ConnEvent {
    new_event_at(kind, backend, process, ktime_ns())
}

/// [`new_event`] at a time the caller already read (one clock read per run).
#[inline(always)]
pub fn new_event_at(kind: u32, backend: u32, process: Process, ktime_ns: u64) -> ConnEvent {
    ConnEvent {
        header: EventHeader {
            kind,
            backend,
            ktime_ns,
            process,
        },
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        family: 0,
        protocol: 0,
        flags: 0,
        netns: 0,
        duration_ns: 0,
        bytes_sent: 0,
        bytes_received: 0,
    }
}

/// Unread bytes in `EVENTS` from which a submit wakes the reader; 0 keeps the ring
/// buffer's own policy (wake a reader that has caught up). Set by the loader
/// (`EbpfLoader::set_global`) before the programs load, so the verifier sees a constant.
///
/// Batching: below the threshold a submit does not wake the reader
/// (`BPF_RB_NO_WAKEUP`); userspace drains on a short timer instead, which bounds the
/// delivery latency. A reader woken for every few events spends its time in
/// `epoll_wait` and context switches, and the kernel charges the wake-up to the
/// program that submitted (2.3 µs of a 2.8 µs tracepoint run, measured on 6.18).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// The flags for `bpf_ringbuf_submit`: see [`WAKEUP_BYTES`].
#[inline(always)]
pub fn submit_flags() -> u64 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Sends `event` to userspace, or counts it as lost when the ring buffer is full.
#[inline(always)]
pub fn submit(event: &ConnEvent) {
    match EVENTS.reserve::<ConnEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(submit_flags());
        }
        None => count_lost(event.header.kind),
    }
}

#[inline(always)]
pub fn count_lost(kind: u32) {
    crate::log::warn!((), "ring buffer full: an event of kind {} is lost", kind);
    if let Some(counter) = LOST.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently.
        unsafe { *counter += 1 };
    }
}
