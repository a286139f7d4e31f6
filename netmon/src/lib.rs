//! netmon: a Linux network monitor on eBPF.
//!
//! Pure modules (`event`, `decode`, `clock`, `output`, `flow`, `rules`, `dns`) take
//! plain values and return plain values; only `probe` (loading and attaching) and
//! `pipeline::reader` (the ring-buffer drain) touch aya and the kernel; `pipeline`
//! holds the stages of `netmon run`, one file each. `sockets` (sock_diag,
//! `/proc/*/fd`) and `process` (`/proc/<pid>`) read the system through thin edges
//! around pure parsers.
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod dns;
pub mod event;
pub mod flow;
pub mod geoip;
pub mod history;
pub mod kernel_btf;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod process;
pub mod query;
pub mod report;
pub mod rules;
pub mod scan;
pub mod sockets;
pub mod system;
