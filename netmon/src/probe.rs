//! Loads netmon's eBPF object and attaches, for each core capability (TCP connect,
//! accept, listen, close; UDP send), the best hook the running kernel accepts; then the
//! optional capabilities (process exits, DNS), whose failure is a warning whatever the
//! backend.
//!
//! This is the only module, with the ring-buffer reader, that touches aya. It is split
//! by concern: `hooks.rs` is the hook table (data: which programs make up each
//! backend), `attach.rs` walks it against the kernel, `maps.rs` holds the map handles
//! and run counters, `tracefs.rs` the tracepoint layout checks. Every link is owned by
//! the returned [`Tracer`]: dropping it, or the process exiting for any reason,
//! detaches everything.
use aya::{Ebpf, EbpfLoader};
use netmon_common::{KernelConfig, maps as map_names};

use crate::{event::ProbeReport, kernel_btf, system};

mod attach;
mod hooks;
mod log;
mod maps;
mod tracefs;

pub use attach::kprobes_available;
pub use hooks::{BackendChoice, Capability};
pub use log::{EbpfLog, LogQueue, LogTo};
pub use maps::{LossCounters, SkippedRuns, UdpPeers};
pub use tracefs::verify_format;

/// The compiled eBPF object, built by `build.rs` from `netmon-ebpf` on every build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmon"));

/// Errors of loading and attaching; each says what failed and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    System(#[from] system::SystemError),
    #[error(
        "this netmon binary was built without its eBPF object (AYA_BUILD_SKIP was set): rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "--backend {backend} cannot provide {capability} on this kernel: {reason}. Run `netmon doctor` to see what this kernel supports, or use --backend auto"
    )]
    BackendRefused {
        backend: &'static str,
        capability: &'static str,
        reason: String,
    },
    #[error(
        "no capability could be attached on this kernel ({reasons}). Run `netmon doctor` for the missing pieces and how to fix them"
    )]
    NothingAttached { reasons: String },
}

/// Options of [`Tracer::start`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub backend: BackendChoice,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Ports whose traffic is DNS; empty leaves the `dns` capability out.
    pub dns_ports: Vec<u16>,
    /// Batched wake-ups: the programs wake the reader only once this many bytes are
    /// unread (`None`: the ring buffer's own policy, a wake-up whenever the reader has
    /// caught up). A reader that sets it must also drain on a timer: below the
    /// threshold nothing wakes it.
    pub wakeup_bytes: Option<u32>,
    /// Which of the programs' own messages to forward.
    pub ebpf_log: EbpfLog,
    /// Where: stderr, or a queue taken with [`Tracer::take_log_queue`].
    pub ebpf_log_to: LogTo,
    /// DNS packets copied per process at most (`[dns] rate_limit`, `rate_burst`).
    pub dns_rate: DnsRate,
}

/// The kernel's per-process bound on DNS packets copied into the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsRate {
    /// Sustained packets per second per process; 0 = no limit.
    pub per_second: u32,
    /// Packets a process may send at once above that (at least 1).
    pub burst: u32,
}

impl DnsRate {
    pub const UNLIMITED: DnsRate = DnsRate {
        per_second: 0,
        burst: 1,
    };

    /// The programs' globals: (interval between packets, tolerance), in ns (GCRA).
    fn globals(self) -> (u64, u64) {
        if self.per_second == 0 {
            return (0, 0);
        }
        let interval = (1_000_000_000 / u64::from(self.per_second)).max(1);
        (interval, interval * u64::from(self.burst.max(1) - 1))
    }
}

impl LoadOptions {
    /// The wake-up threshold `netmon run` uses: a quarter of the ring, so a reader
    /// woken late still has three quarters of it to absorb a burst.
    pub fn batched_wakeup_bytes(ring_buffer_bytes: u32) -> u32 {
        (ring_buffer_bytes / 4).max(1)
    }
}

/// The loaded object with everything attached. Drop it to detach.
pub struct Tracer {
    ebpf: Ebpf,
    /// Forwards the programs' log when `--ebpf-log` is not `off`.
    _log: Option<log::Forwarder>,
    /// The forwarder's queue, with [`LogTo::Queue`], until taken.
    log_queue: Option<LogQueue>,
    pub report: ProbeReport,
    /// Whether events carry the network namespace (the BTF offsets were found).
    pub netns_known: bool,
}

impl Tracer {
    /// Checks the host, loads the object, attaches the chosen hooks.
    pub fn start(opts: &LoadOptions) -> Result<Tracer, Error> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        system::check_privileges()?;
        let mut warnings = Vec::new();
        if let Err(e) = system::raise_memlock()
            && system::memlock_charges_bpf()
        {
            warnings.push(format!(
                "could not raise RLIMIT_MEMLOCK ({e}); map creation may fail on kernels before 5.11"
            ));
        }
        let offsets = match kernel_btf::resolve() {
            Ok(r) => {
                for m in &r.missing {
                    warnings.push(format!(
                        "{m} not found in kernel BTF; the field that needs it is left out"
                    ));
                }
                r.config
            }
            Err(e) => {
                warnings.push(format!(
                    "cannot read {} ({e}); byte counts and network namespaces are left out",
                    kernel_btf::VMLINUX_BTF
                ));
                KernelConfig::UNKNOWN
            }
        };
        // One parse of the kernel's BTF serves the loader and every fentry attach.
        let btf = aya::Btf::from_sys_fs().ok();
        let wakeup_bytes = u64::from(opts.wakeup_bytes.unwrap_or(0));
        let (dns_interval, dns_tolerance) = opts.dns_rate.globals();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .map_max_entries(map_names::EVENTS, opts.ring_buffer_bytes)
            .override_global(map_names::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(map_names::DNS_RATE_INTERVAL_NS, &dns_interval, true)
            .override_global(map_names::DNS_RATE_TOLERANCE_NS, &dns_tolerance, true)
            // Absent only from the benchmark's build without logging (build.rs).
            .override_global(
                log::LEVEL_GLOBAL,
                &opts.ebpf_log.kernel_level(),
                !cfg!(netmon_ebpf_no_log),
            )
            .load(EBPF_OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        let (log, log_queue) = match opts.ebpf_log {
            EbpfLog::Off => (None, None),
            _ => match log::Forwarder::start(&mut ebpf, opts.ebpf_log_to) {
                Ok((f, queue)) => (Some(f), queue),
                Err(e) => {
                    warnings.push(e);
                    (None, None)
                }
            },
        };
        let mut config = KernelConfig {
            self_pid: std::process::id(),
            ..offsets
        };
        let mut cx = attach::Context {
            btf: btf.as_ref(),
            offsets: config,
            attached: Default::default(),
            warnings: Vec::new(),
        };
        let (mut report, owners) = attach::attach_all(&mut ebpf, opts.backend, warnings, &mut cx)?;
        // Programs stay silent until they learn which capabilities they own, so two
        // backends attached for different capabilities never report the same thing.
        for (cap, backend) in owners {
            config.cap_backend[cap.wire_index()] = backend.wire_id();
        }
        maps::write_config(&mut ebpf, config)?;
        for cap in Capability::OPTIONAL {
            let ready = match cap {
                Capability::Dns if opts.dns_ports.is_empty() => continue,
                Capability::Dns => maps::fill_dns_ports(&mut ebpf, &opts.dns_ports),
                _ => Ok(()),
            };
            if attach::attach_optional(&mut ebpf, cap, ready, &mut report, &mut cx) {
                // The egress program is shared with UDP: it looks for DNS from now on.
                config.cap_backend[cap.wire_index()] = BackendChoice::Tracepoint.wire_id();
            }
        }
        maps::write_config(&mut ebpf, config)?;
        report.warnings.append(&mut cx.warnings);
        let netns_known = config.sock_net != netmon_common::NO_OFFSET
            && config.net_ns_inum != netmon_common::NO_OFFSET;
        Ok(Tracer {
            ebpf,
            _log: log,
            log_queue,
            report,
            netns_known,
        })
    }
}

impl Tracer {
    /// The programs' messages, with `--ebpf-log` not `off` and [`LogTo::Queue`]
    /// (once; `None` otherwise).
    pub fn take_log_queue(&mut self) -> Option<LogQueue> {
        self.log_queue.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_rate_becomes_an_interval_and_a_tolerance() {
        assert_eq!(DnsRate::UNLIMITED.globals(), (0, 0));
        let r = DnsRate {
            per_second: 500,
            burst: 1000,
        };
        assert_eq!(r.globals(), (2_000_000, 999 * 2_000_000));
        let one = DnsRate {
            per_second: 1,
            burst: 1,
        };
        assert_eq!(one.globals(), (1_000_000_000, 0));
        // A zero burst is read as 1 (validation refuses it before this).
        let zero = DnsRate {
            per_second: 1_000_000_000,
            burst: 0,
        };
        assert_eq!(zero.globals(), (1, 0));
    }
}
