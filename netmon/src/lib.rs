//! netmon: a Linux network monitor on eBPF.
//!
//! Pure modules (`event`, `decode`, `clock`, `output`, `flow`, `rules`, `dns`) take
//! plain values and return plain values; only `probe` (loading and attaching) and
//! `cli::run` (the ring-buffer loop) touch aya and the kernel. `sockets` (sock_diag,
//! `/proc/*/fd`) and `process` (`/proc/<pid>`) read the system through thin edges
//! around pure parsers.
pub mod analysis;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod dns;
pub mod event;
pub mod flow;
pub mod history;
pub mod kernel_btf;
pub mod output;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod query;
pub mod rules;
pub mod scan;
pub mod sockets;
pub mod system;
