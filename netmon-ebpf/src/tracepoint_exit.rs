//! Process exits from the `sched:sched_process_exit` tracepoint (every kernel netmon
//! supports has it), so userspace can forget the context it cached for a pid before
//! the pid is reused.
//!
//! The tracepoint fires in the exiting task for every thread; only the thread-group
//! leader's exit (pid == tid) is reported, one small record per process.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netmon_common::{EventHeader, backend, kind};

use crate::{
    emit::{config, count_lost, current_process, is_self, ktime_ns, submit_flags},
    maps::EVENTS,
};

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let process = current_process();
    if process.pid != process.tid || is_self(&config(), &process) {
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
