//! netmon: a Linux network monitor on eBPF. `docs/architecture.md` maps the tree.
//!
//! Layers, arrows pointing down only: the contract (`event`); pure state and ideas
//! (`addr`, `escape`, `flow`, `dns`, `process`, `clock`, `config`), which take plain
//! values and return plain values; the kernel edge (`probe` loads and attaches,
//! `decode` turns ring records into events; only `probe` and `pipeline::reader` touch
//! aya); the pipeline of `netmon run` (`pipeline`: reader → enrich → detect → hub →
//! consumers, one file each, with `rules` and `output`); the faces (`cli`, `scan`).
//! `sockets` (sock_diag, `/proc/*/fd`), `system` and `privileges` meet the host
//! through thin edges around pure parsers.
pub mod addr;
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod decode;
pub mod dns;
pub mod escape;
pub mod event;
pub mod flow;
pub mod geoip;
pub mod history;
pub mod kernel_btf;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod privileges;
pub mod probe;
pub mod process;
pub mod query;
pub mod report;
pub mod rules;
pub mod scan;
pub mod sockets;
pub mod stderr;
pub mod system;
pub mod tui;
