//! Process lifecycle from the scheduler's tracepoints (every kernel netmon supports has
//! them): `sched_process_exec` (what a process runs), `sched_process_fork` (a new
//! process, which runs its parent's program until it execs) and `sched_process_exit`.
//! Userspace keeps its process table from these records, so even a process that lived
//! 1 ms is named by what the kernel saw, not by a `/proc` read that came too late.
//!
//! Only processes are reported, never threads: exit only for the thread-group leader,
//! fork only when the child is a new thread group. Offsets into `task_struct` and
//! `mm_struct` come from BTF through `CONFIG` (none compiled in); a missing offset
//! leaves its field 0.
use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_current_task, bpf_probe_read_kernel_str, bpf_probe_read_user},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use netmon_common::{
    EXEC_ARGS_MAX, EXEC_FILENAME_MAX, EventHeader, ExecEvent, ForkEvent, KernelConfig, backend,
    kind,
};

use crate::{
    emit::{config, count_lost, current_process, is_self, ktime_ns, read_kernel_at, submit_flags},
    maps::EVENTS,
};

/// `sched_process_exec`'s record: `__data_loc char[] filename` at 8 (offset in the low
/// 16 bits, length in the high 16). Stable since the tracepoint appeared (3.4).
const FILENAME_LOC: usize = 8;

/// Bytes of the argument block read at most: one less than the buffer, so the size
/// the verifier sees is a mask (`& (EXEC_ARGS_MAX - 1)`), which 5.10 accepts.
const ARGS_READ_MAX: u64 = EXEC_ARGS_MAX as u64 - 1;

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let process = current_process();
    if process.pid != process.tid || is_self(config(), &process) {
        return 0;
    }
    let header = EventHeader {
        kind: kind::EXIT,
        backend: backend::TRACEPOINT,
        ktime_ns: ktime_ns(),
        process,
    };
    match EVENTS.reserve::<EventHeader>(0) {
        Some(mut entry) => {
            entry.write(header);
            entry.submit(submit_flags());
        }
        None => count_lost(kind::EXIT),
    }
    0
}

/// Fires in the exec'ing task once the new program is mapped (its `comm`, mm and
/// credentials are the new ones; it is the thread-group leader).
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let process = current_process();
    // SAFETY: a helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let ppid = read_kernel_at::<u64>(task, cfg.task_real_parent)
        .and_then(|parent| read_kernel_at::<u32>(parent, cfg.task_tgid))
        .unwrap_or(0);
    let start_time_ns = read_kernel_at::<u64>(task, cfg.task_start_time).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(kind::EXEC);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring-buffer slot of `size_of::<ExecEvent>()`
    // bytes; fields are written in place (the event is too big for the BPF stack).
    unsafe {
        (*ev).header = EventHeader {
            kind: kind::EXEC,
            backend: backend::TRACEPOINT,
            ktime_ns: ktime_ns(),
            process,
        };
        (*ev).ppid = ppid;
        (*ev).start_time_ns = start_time_ns;
        (*ev).filename_len = read_filename(&ctx, (*ev).filename.as_mut_ptr());
        let (len, truncated) = read_args(cfg, task, (*ev).args.as_mut_ptr());
        (*ev).args_len = len;
        (*ev).args_truncated = truncated;
    }
    entry.submit(submit_flags());
    0
}

/// Copies the exec'd path into `dst` (`EXEC_FILENAME_MAX` bytes); its length without
/// the NUL, 0 when it could not be read.
#[inline(always)]
unsafe fn read_filename(ctx: &TracePointContext, dst: *mut u8) -> u32 {
    // SAFETY: the offset is inside the tracepoint record.
    let loc: u32 = match unsafe { ctx.read_at(FILENAME_LOC) } {
        Ok(v) => v,
        Err(_) => return 0,
    };
    let src = (ctx.as_ptr() as u64 + (loc & 0xffff) as u64) as *const core::ffi::c_void;
    // SAFETY: bpf_probe_read_kernel_str checks the source and bounds the copy.
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), EXEC_FILENAME_MAX as u32, src) };
    if n > 0 { (n - 1) as u32 } else { 0 }
}

/// Copies the new program's argument block (`mm->arg_start..arg_end`, in the current
/// task's user memory, just written by exec) into `dst`: (bytes copied, cut or not).
#[inline(always)]
unsafe fn read_args(cfg: &KernelConfig, task: u64, dst: *mut u8) -> (u32, u32) {
    let Some(mm) = read_kernel_at::<u64>(task, cfg.task_mm) else {
        return (0, 0);
    };
    let (Some(start), Some(end)) = (
        read_kernel_at::<u64>(mm, cfg.mm_arg_start),
        read_kernel_at::<u64>(mm, cfg.mm_arg_end),
    ) else {
        return (0, 0);
    };
    if end <= start {
        return (0, 0);
    }
    let want = end - start;
    let truncated = (want > ARGS_READ_MAX) as u32;
    let n = if want > ARGS_READ_MAX {
        ARGS_READ_MAX
    } else {
        want
    };
    let n = (n as u32) & (EXEC_ARGS_MAX as u32 - 1);
    if n == 0 {
        return (0, 0);
    }
    // SAFETY: bpf_probe_read_user checks the source; `n` < the buffer's size.
    let r = unsafe { bpf_probe_read_user(dst.cast(), n, start as *const core::ffi::c_void) };
    if r == 0 { (n, truncated) } else { (0, 0) }
}

/// `sched_process_fork` as a raw tracepoint, for its `TP_PROTO(struct task_struct
/// *parent, struct task_struct *child)`: the regular tracepoint's record has no way to
/// tell a thread from a process, and its layout changed in 6.x (comms became
/// `__data_loc`). Runs in the parent.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let child: u64 = ctx.arg(1);
    let (Some(pid), Some(tgid)) = (
        read_kernel_at::<u32>(child, cfg.task_pid),
        read_kernel_at::<u32>(child, cfg.task_tgid),
    ) else {
        return 0;
    };
    // A new thread of an existing process: the process table has nothing to learn.
    if pid != tgid {
        return 0;
    }
    let process = current_process();
    if is_self(cfg, &process) {
        return 0;
    }
    let event = ForkEvent {
        header: EventHeader {
            kind: kind::FORK,
            backend: backend::TRACEPOINT,
            ktime_ns: ktime_ns(),
            process,
        },
        child_pid: tgid,
        _pad: 0,
        child_start_time_ns: read_kernel_at::<u64>(child, cfg.task_start_time).unwrap_or(0),
    };
    match EVENTS.reserve::<ForkEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(submit_flags());
        }
        None => count_lost(kind::FORK),
    }
    0
}
