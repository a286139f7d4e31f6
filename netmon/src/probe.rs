//! Loads netmon's eBPF object and attaches, for each capability (TCP connect, accept,
//! listen, close; UDP send), the best hook the running kernel accepts; then the
//! optional capabilities (DNS), whose failure is a warning whatever the backend.
//!
//! This is the only module, with `reader.rs`, that touches aya. Which hooks make up a
//! backend is data (`hook_groups`); the choice is made by really loading and attaching,
//! because a kernel's version says little about what it allows (6.18 here refuses
//! fentry). Every link is owned by the returned [`Tracer`]: dropping it, or the process
//! exiting for any reason, detaches everything.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry, FExit, KProbe,
        ProgramError, ProgramFd, TracePoint,
    },
};
use netmon_common::{KernelConfig, UdpPeerKey, UdpPeerStats, kind, maps};

use crate::{
    event::{CapabilityReport, ProbeReport, SkippedBackend},
    kernel_btf, system,
};

/// The compiled eBPF object, built by `build.rs` from `netmon-ebpf` on every build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmon"));

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// For each capability the best hook that attaches: fentry, then kprobe, then tracepoint.
    Auto,
    /// fentry/fexit programs (BPF trampolines); fails if the kernel refuses them.
    Fentry,
    /// kprobes/kretprobes; fails if the kernel has no kprobes.
    Kprobe,
    /// The `sock:inet_sock_set_state` tracepoint and cgroup socket hooks.
    Tracepoint,
}

impl BackendChoice {
    /// The `backend` id the programs use; 0 for `auto` (never an owner).
    pub fn wire_id(self) -> u8 {
        match self {
            BackendChoice::Auto => 0,
            BackendChoice::Fentry => netmon_common::backend::FENTRY as u8,
            BackendChoice::Kprobe => netmon_common::backend::KPROBE as u8,
            BackendChoice::Tracepoint => netmon_common::backend::TRACEPOINT as u8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Fentry => "fentry",
            BackendChoice::Kprobe => "kprobe",
            BackendChoice::Tracepoint => "tracepoint",
        }
    }
}

/// What netmon observes; each is provided by one backend at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    TcpConnect,
    TcpAccept,
    TcpListen,
    TcpClose,
    UdpSend,
    /// DNS queries and responses (optional: cgroup skb hooks, the same on every backend).
    Dns,
}

impl Capability {
    /// Capabilities netmon can run without; attached after the core ones.
    pub const OPTIONAL: [Capability; 1] = [Capability::Dns];

    pub const ALL: [Capability; 5] = [
        Capability::TcpConnect,
        Capability::TcpAccept,
        Capability::TcpListen,
        Capability::TcpClose,
        Capability::UdpSend,
    ];

    /// Index into `KernelConfig::cap_backend`.
    pub fn wire_index(self) -> usize {
        match self {
            Capability::TcpConnect => netmon_common::cap::TCP_CONNECT,
            Capability::TcpAccept => netmon_common::cap::TCP_ACCEPT,
            Capability::TcpListen => netmon_common::cap::TCP_LISTEN,
            Capability::TcpClose => netmon_common::cap::TCP_CLOSE,
            Capability::UdpSend => netmon_common::cap::UDP_SEND,
            Capability::Dns => netmon_common::cap::DNS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::TcpConnect => "tcp_connect",
            Capability::TcpAccept => "tcp_accept",
            Capability::TcpListen => "tcp_listen",
            Capability::TcpClose => "tcp_close",
            Capability::UdpSend => "udp_send",
            Capability::Dns => "dns",
        }
    }
}

/// How one program attaches.
#[derive(Clone, Copy, Debug)]
enum Attach {
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    CgroupSockAddr,
    CgroupSkbEgress,
    CgroupSkbIngress,
    FEntry(&'static str),
    FExit(&'static str),
    KProbe(&'static str),
    KRetProbe(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Hook {
    program: &'static str,
    attach: Attach,
}

impl Hook {
    fn describe(&self) -> String {
        match self.attach {
            Attach::TracePoint { category, name } => format!("tracepoint:{category}:{name}"),
            Attach::CgroupSockAddr | Attach::CgroupSkbEgress | Attach::CgroupSkbIngress => {
                format!("cgroup:{}", self.program)
            }
            Attach::FEntry(f) => format!("fentry:{f}"),
            Attach::FExit(f) => format!("fexit:{f}"),
            Attach::KProbe(f) => format!("kprobe:{f}"),
            Attach::KRetProbe(f) => format!("kretprobe:{f}"),
        }
    }
}

/// Programs that attach together and together provide some capabilities.
struct HookGroup {
    backend: BackendChoice,
    capabilities: &'static [Capability],
    hooks: &'static [Hook],
}

impl HookGroup {
    fn is_optional(&self) -> bool {
        self.capabilities
            .iter()
            .all(|c| Capability::OPTIONAL.contains(c))
    }
}

/// Fills `DNS_PORTS` and attaches the `dns` group; a failure becomes a warning and a
/// `dns` capability without backend in the report.
fn attach_dns(
    ebpf: &mut Ebpf,
    ports: &[u16],
    report: &mut ProbeReport,
    btf: Option<&aya::Btf>,
    offsets: &KernelConfig,
) {
    let mut result = fill_dns_ports(ebpf, ports);
    let mut hooks = Vec::new();
    if result.is_ok() {
        let group = hook_groups()
            .iter()
            .find(|g| g.capabilities.contains(&Capability::Dns))
            .expect("the dns hook group");
        match attach_group(ebpf, group, &mut BTreeSet::new(), btf, offsets) {
            Ok(h) => hooks = h,
            Err(reason) => result = Err(reason),
        }
    }
    let mut cap = CapabilityReport {
        capability: Capability::Dns.name().into(),
        backend: None,
        hooks,
        skipped: Vec::new(),
    };
    match result {
        Ok(()) => cap.backend = Some(OPTIONAL_BACKEND.into()),
        Err(reason) => {
            report
                .warnings
                .push(format!("dns is not observed: {reason}"));
            cap.skipped.push(SkippedBackend {
                backend: OPTIONAL_BACKEND.into(),
                reason,
            });
        }
    }
    report.capabilities.push(cap);
}

fn fill_dns_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), String> {
    let map = ebpf
        .map_mut(maps::DNS_PORTS)
        .ok_or_else(|| format!("map {} is missing from the eBPF object", maps::DNS_PORTS))?;
    let mut map: BpfHashMap<&mut MapData, u16, u8> =
        BpfHashMap::try_from(map).map_err(|e| format!("map {}: {e}", maps::DNS_PORTS))?;
    for port in ports {
        map.insert(port, 1, 0)
            .map_err(|e| format!("map {}: {e}", maps::DNS_PORTS))?;
    }
    Ok(())
}

const fn hook(program: &'static str, attach: Attach) -> Hook {
    Hook { program, attach }
}

/// Hooks outside the backends: attached whatever `--backend` says (tracepoints every
/// supported kernel has). A failure is a warning: netmon works on, with less.
const OPTIONAL_HOOKS: &[(&str, Hook)] = &[(
    // Evicts the per-pid process-context cache (see `process.rs`).
    "process_exit",
    Hook {
        program: "sched_process_exit",
        attach: Attach::TracePoint {
            category: "sched",
            name: "sched_process_exit",
        },
    },
)];

/// Every way netmon knows to observe each capability. The order of backends to try
/// is `fentry`, `kprobe`, `tracepoint` (see `attach_all`).
fn hook_groups() -> &'static [HookGroup] {
    HOOK_GROUPS
}

use Capability::{Dns, TcpAccept, TcpClose, TcpConnect, TcpListen, UdpSend};

const TCP_STATE_FENTRY: Hook = hook("fentry_tcp_set_state", Attach::FEntry("tcp_set_state"));
const TCP_STATE_KPROBE: Hook = hook("kprobe_tcp_set_state", Attach::KProbe("tcp_set_state"));
const TCP_STATE_TP: Hook = hook(
    "inet_sock_set_state",
    Attach::TracePoint {
        category: "sock",
        name: "inet_sock_set_state",
    },
);
static HOOK_GROUPS: &[HookGroup] = &[
    // fentry/fexit: BPF trampolines, the cheapest hooks (5.5+, where allowed).
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpConnect],
        hooks: &[
            hook("fentry_tcp_connect", Attach::FEntry("tcp_connect")),
            TCP_STATE_FENTRY,
        ],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpAccept],
        hooks: &[hook(
            "fexit_inet_csk_accept",
            Attach::FExit("inet_csk_accept"),
        )],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpListen],
        hooks: &[
            hook(
                "fentry_inet_csk_listen_start",
                Attach::FEntry("inet_csk_listen_start"),
            ),
            TCP_STATE_FENTRY,
        ],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpClose],
        hooks: &[TCP_STATE_FENTRY],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[UdpSend],
        hooks: &[
            hook("fentry_ip_send_skb", Attach::FEntry("ip_send_skb")),
            hook("fentry_ip6_send_skb", Attach::FEntry("ip6_send_skb")),
        ],
    },
    // kprobes: every production kernel with CONFIG_KPROBES.
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpConnect],
        hooks: &[
            hook("kprobe_tcp_connect", Attach::KProbe("tcp_connect")),
            TCP_STATE_KPROBE,
        ],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpAccept],
        hooks: &[hook(
            "kretprobe_inet_csk_accept",
            Attach::KRetProbe("inet_csk_accept"),
        )],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpListen],
        hooks: &[
            hook(
                "kprobe_inet_csk_listen_start",
                Attach::KProbe("inet_csk_listen_start"),
            ),
            TCP_STATE_KPROBE,
        ],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpClose],
        hooks: &[TCP_STATE_KPROBE],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[UdpSend],
        hooks: &[
            hook("kprobe_ip_send_skb", Attach::KProbe("ip_send_skb")),
            hook("kprobe_ip6_send_skb", Attach::KProbe("ip6_send_skb")),
        ],
    },
    // The tracepoint and cgroup hooks: every kernel netmon supports.
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[TcpConnect, TcpAccept, TcpListen, TcpClose],
        hooks: &[TCP_STATE_TP],
    },
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[UdpSend],
        hooks: &[
            hook("udp_connect4", Attach::CgroupSockAddr),
            hook("udp_connect6", Attach::CgroupSockAddr),
            hook("udp_sendmsg4", Attach::CgroupSockAddr),
            hook("udp_sendmsg6", Attach::CgroupSockAddr),
            hook("udp_egress", Attach::CgroupSkbEgress),
        ],
    },
    // Optional: cgroup hooks exist on every kernel netmon supports, so DNS uses them
    // whatever backend provides the rest. The sock_addr hooks record which process
    // owns sockets that talk to DNS ports (TCP too); the skb hooks copy the DNS
    // payloads in both directions. Attached by `attach_dns`, not by `attach_all`.
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[Dns],
        hooks: &[
            hook("dns_connect4", Attach::CgroupSockAddr),
            hook("dns_connect6", Attach::CgroupSockAddr),
            hook("dns_sendmsg4", Attach::CgroupSockAddr),
            hook("dns_sendmsg6", Attach::CgroupSockAddr),
            hook("dns_egress", Attach::CgroupSkbEgress),
            hook("dns_ingress", Attach::CgroupSkbIngress),
        ],
    },
];

/// The name optional capabilities report as their backend: the cgroup hooks.
const OPTIONAL_BACKEND: &str = "cgroup";

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
}

/// The loaded object with everything attached. Drop it to detach.
pub struct Tracer {
    ebpf: Ebpf,
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
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .map_max_entries(maps::EVENTS, opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        let mut config = KernelConfig {
            self_pid: std::process::id(),
            ..offsets
        };
        let (mut report, owners) =
            attach_all(&mut ebpf, opts.backend, warnings, btf.as_ref(), &config)?;
        // Programs stay silent until they learn which capabilities they own, so two
        // backends attached for different capabilities never report the same thing.
        for (cap, backend) in owners {
            config.cap_backend[cap.wire_index()] = backend.wire_id();
        }
        write_config(&mut ebpf, config)?;
        for (capability, hook) in OPTIONAL_HOOKS {
            match attach_hook(&mut ebpf, hook, btf.as_ref(), &config) {
                Ok(()) => report.capabilities.push(CapabilityReport {
                    capability: (*capability).into(),
                    backend: Some(BackendChoice::Tracepoint.name().into()),
                    hooks: vec![hook.describe()],
                    skipped: Vec::new(),
                }),
                Err(reason) => report.warnings.push(format!(
                    "optional {capability} not observed ({}: {reason})",
                    hook.describe()
                )),
            }
        }
        if !opts.dns_ports.is_empty() {
            attach_dns(
                &mut ebpf,
                &opts.dns_ports,
                &mut report,
                btf.as_ref(),
                &config,
            );
        }
        let netns_known = config.sock_net != netmon_common::NO_OFFSET
            && config.net_ns_inum != netmon_common::NO_OFFSET;
        Ok(Tracer {
            ebpf,
            report,
            netns_known,
        })
    }

    /// Takes the ring buffer out of the object (once) for the reader.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, Error> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(Error::MissingMap { name: maps::EVENTS })?;
        RingBuf::try_from(map).map_err(|source| Error::Map {
            name: maps::EVENTS,
            source,
        })
    }

    /// A handle that reads the kernel's per-kind loss counters.
    pub fn take_loss_counters(&mut self) -> Result<LossCounters, Error> {
        let map = self
            .ebpf
            .take_map(maps::LOST)
            .ok_or(Error::MissingMap { name: maps::LOST })?;
        let array = PerCpuArray::try_from(map).map_err(|source| Error::Map {
            name: maps::LOST,
            source,
        })?;
        Ok(LossCounters { array })
    }
}

impl Tracer {
    /// Handles on every loaded program, for the kernel's count of the runs it skipped.
    pub fn skipped_runs(&self) -> SkippedRuns {
        let programs = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_owned(), p.fd().ok()?.try_clone().ok()?)))
            .collect();
        SkippedRuns { programs }
    }
}

/// The kernel's `recursion_misses` of netmon's programs: runs it skipped because a BPF
/// program was already running on that CPU (a softirq interrupting a tracing program,
/// say). Each may be an event that never reached the ring buffer and so is not in
/// `lost`; `stats` reports them beside it.
pub struct SkippedRuns {
    programs: Vec<(String, ProgramFd)>,
}

impl SkippedRuns {
    /// Skipped runs per program (only programs with some); `None` when the kernel does
    /// not count them (before 5.12).
    pub fn read(&self) -> Option<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        let mut counted = false;
        for (name, fd) in &self.programs {
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let Some(n) = fs::read_to_string(path)
                .ok()
                .and_then(|text| fdinfo_field(&text, "recursion_misses"))
            else {
                continue;
            };
            counted = true;
            if n > 0 {
                *out.entry(name.clone()).or_default() += n;
            }
        }
        counted.then_some(out)
    }
}

/// A numeric `key:\tvalue` line of a `/proc/<pid>/fdinfo/<fd>` file.
fn fdinfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

impl Tracer {
    /// A handle on `UDP_PEERS`, the kernel's per-(process, peer) UDP counters.
    pub fn take_udp_peers(&mut self) -> Result<UdpPeers, Error> {
        let map = self
            .ebpf
            .take_map(maps::UDP_PEERS)
            .ok_or(Error::MissingMap {
                name: maps::UDP_PEERS,
            })?;
        let map = aya::maps::HashMap::try_from(map).map_err(|source| Error::Map {
            name: maps::UDP_PEERS,
            source,
        })?;
        Ok(UdpPeers { map })
    }
}

/// Reads and prunes `UDP_PEERS` (LRU hash of [`UdpPeerKey`] → [`UdpPeerStats`]).
pub struct UdpPeers {
    map: aya::maps::HashMap<MapData, UdpPeerKey, UdpPeerStats>,
}

impl UdpPeers {
    /// Every entry now. Entries the kernel evicts meanwhile are skipped.
    pub fn read_all(&self) -> Vec<(UdpPeerKey, UdpPeerStats)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Forgets a peer, so the kernel reports its next datagram as a new `udp` event.
    pub fn remove(&mut self, key: &UdpPeerKey) {
        let _ = self.map.remove(key);
    }
}

fn write_config(ebpf: &mut Ebpf, config: KernelConfig) -> Result<(), Error> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or(Error::MissingMap { name: maps::CONFIG })?;
    let mut array: Array<&mut MapData, KernelConfig> =
        Array::try_from(map).map_err(|source| Error::Map {
            name: maps::CONFIG,
            source,
        })?;
    array.set(0, config, 0).map_err(|source| Error::Map {
        name: maps::CONFIG,
        source,
    })
}

/// Reads `LOST`: events the kernel could not reserve ring-buffer space for.
pub struct LossCounters {
    array: PerCpuArray<MapData, u64>,
}

impl LossCounters {
    /// Per event kind, summed over CPUs.
    pub fn read(&self) -> Vec<(u32, u64)> {
        (1..kind::COUNT)
            .map(|k| {
                let n = self
                    .array
                    .get(&k, 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0);
                (k, n)
            })
            .collect()
    }
}

/// Attaches, per capability, the first group (in preference order) that works.
type Owners = Vec<(Capability, BackendChoice)>;

fn attach_all(
    ebpf: &mut Ebpf,
    choice: BackendChoice,
    mut warnings: Vec<String>,
    btf: Option<&aya::Btf>,
    offsets: &KernelConfig,
) -> Result<(ProbeReport, Owners), Error> {
    let order: &[BackendChoice] = match choice {
        BackendChoice::Auto => &[
            BackendChoice::Fentry,
            BackendChoice::Kprobe,
            BackendChoice::Tracepoint,
        ],
        BackendChoice::Fentry => &[BackendChoice::Fentry],
        BackendChoice::Kprobe => &[BackendChoice::Kprobe],
        BackendChoice::Tracepoint => &[BackendChoice::Tracepoint],
    };
    let mut reports: Vec<CapabilityReport> = Capability::ALL
        .iter()
        .map(|c| CapabilityReport {
            capability: c.name().into(),
            backend: None,
            hooks: Vec::new(),
            skipped: Vec::new(),
        })
        .collect();
    let mut covered: BTreeSet<Capability> = BTreeSet::new();
    let mut owners: Owners = Vec::new();
    let mut attached_programs: BTreeSet<&'static str> = BTreeSet::new();

    for &backend in order {
        let groups: Vec<&HookGroup> = hook_groups()
            .iter()
            .filter(|g| g.backend == backend && !g.is_optional())
            .collect();
        let missing: Vec<Capability> = Capability::ALL
            .into_iter()
            .filter(|c| !covered.contains(c))
            .collect();
        for cap in &missing {
            if !groups.iter().any(|g| g.capabilities.contains(cap)) {
                let reason = format!("netmon has no {} hook for {}", backend.name(), cap.name());
                skip(&mut reports, *cap, backend, reason);
            }
        }
        for group in groups {
            let wanted: Vec<Capability> = group
                .capabilities
                .iter()
                .copied()
                .filter(|c| !covered.contains(c))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            match attach_group(ebpf, group, &mut attached_programs, btf, offsets) {
                Ok(hooks) => {
                    for cap in wanted {
                        covered.insert(cap);
                        owners.push((cap, backend));
                        let r = &mut reports[cap as usize];
                        r.backend = Some(backend.name().into());
                        r.hooks = hooks.clone();
                    }
                }
                Err(reason) => {
                    for cap in wanted {
                        skip(&mut reports, cap, backend, reason.clone());
                    }
                }
            }
        }
    }

    for r in &reports {
        if r.backend.is_none() {
            let reasons: Vec<String> = r
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.backend, s.reason))
                .collect();
            if choice != BackendChoice::Auto {
                return Err(Error::BackendRefused {
                    backend: choice.name(),
                    capability: Capability::ALL[reports.iter().position(|x| x == r).unwrap_or(0)]
                        .name(),
                    reason: reasons.join("; "),
                });
            }
            warnings.push(format!(
                "{} is not observed: {}",
                r.capability,
                reasons.join("; ")
            ));
        }
    }
    if covered.is_empty() {
        let reasons = reports
            .iter()
            .flat_map(|r| {
                r.skipped
                    .iter()
                    .map(move |s| format!("{} via {}: {}", r.capability, s.backend, s.reason))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::NothingAttached { reasons });
    }
    let report = ProbeReport {
        requested: choice.name().into(),
        kernel: system::kernel_release(),
        capabilities: reports,
        warnings,
    };
    Ok((report, owners))
}

fn skip(reports: &mut [CapabilityReport], cap: Capability, backend: BackendChoice, reason: String) {
    reports[cap as usize].skipped.push(SkippedBackend {
        backend: backend.name().into(),
        reason,
    });
}

/// Loads and attaches every program of `group`; on failure detaches what it attached.
fn attach_group(
    ebpf: &mut Ebpf,
    group: &HookGroup,
    attached_programs: &mut BTreeSet<&'static str>,
    btf: Option<&aya::Btf>,
    offsets: &KernelConfig,
) -> Result<Vec<String>, String> {
    if matches!(group.backend, BackendChoice::Fentry | BackendChoice::Kprobe) {
        kfunc_offsets_known(offsets)?;
    }
    let mut done: Vec<&'static str> = Vec::new();
    let mut described = Vec::new();
    for hook in group.hooks {
        if attached_programs.contains(hook.program) {
            described.push(hook.describe());
            continue;
        }
        match attach_hook(ebpf, hook, btf, offsets) {
            Ok(()) => {
                done.push(hook.program);
                described.push(hook.describe());
            }
            Err(reason) => {
                for hook in group.hooks.iter().filter(|h| done.contains(&h.program)) {
                    unload(ebpf, hook, offsets);
                }
                return Err(format!("{}: {reason}", hook.describe()));
            }
        }
    }
    attached_programs.extend(done);
    Ok(described)
}

/// Detaches and unloads one program of a group that could not attach whole.
fn unload(ebpf: &mut Ebpf, hook: &Hook, offsets: &KernelConfig) {
    let Ok(name) = program_for(hook, offsets) else {
        return;
    };
    let Some(program) = ebpf.program_mut(name) else {
        return;
    };
    let _ = match hook.attach {
        Attach::TracePoint { .. } => <&mut TracePoint>::try_from(program).map(|p| p.unload()),
        Attach::CgroupSockAddr => <&mut CgroupSockAddr>::try_from(program).map(|p| p.unload()),
        Attach::CgroupSkbEgress | Attach::CgroupSkbIngress => {
            <&mut CgroupSkb>::try_from(program).map(|p| p.unload())
        }
        Attach::FEntry(_) => <&mut FEntry>::try_from(program).map(|p| p.unload()),
        Attach::FExit(_) => <&mut FExit>::try_from(program).map(|p| p.unload()),
        Attach::KProbe(_) | Attach::KRetProbe(_) => {
            <&mut KProbe>::try_from(program).map(|p| p.unload())
        }
    };
}

fn attach_hook(
    ebpf: &mut Ebpf,
    hook: &Hook,
    btf: Option<&aya::Btf>,
    offsets: &KernelConfig,
) -> Result<(), String> {
    let name = program_for(hook, offsets)?;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    match hook.attach {
        Attach::TracePoint { category, name } => {
            let tracefs = system::ensure_tracefs().map_err(|e| e.to_string())?;
            if category == "sock" && name == "inet_sock_set_state" {
                check_inet_sock_set_state_format(&tracefs)?;
            }
            let tp: &mut TracePoint = program.try_into().map_err(explain)?;
            tp.load().map_err(explain)?;
            tp.attach(category, name).map_err(explain)?;
        }
        // `Single` means "no flags": on 5.7+ aya attaches through a bpf_link, which
        // already coexists with other programs, and the kernel rejects link flags
        // (EINVAL). Before 5.7 it is a plain exclusive attach.
        Attach::CgroupSockAddr => {
            let cgroup = cgroup_root()?;
            let p: &mut CgroupSockAddr = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            p.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(explain)?;
        }
        Attach::CgroupSkbEgress | Attach::CgroupSkbIngress => {
            let cgroup = cgroup_root()?;
            let p: &mut CgroupSkb = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            let direction = if matches!(hook.attach, Attach::CgroupSkbIngress) {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            p.attach(&cgroup, direction, CgroupAttachMode::Single)
                .map_err(explain)?;
        }
        Attach::FEntry(function) => {
            let btf = btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FEntry = program.try_into().map_err(explain)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
        Attach::FExit(function) => {
            let btf = btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FExit = program.try_into().map_err(explain)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
        Attach::KProbe(function) | Attach::KRetProbe(function) => {
            if !kprobes_available() {
                return Err(
                    "no kprobe PMU (/sys/bus/event_source/devices/kprobe is absent: CONFIG_KPROBES is off)"
                        .into(),
                );
            }
            let p: &mut KProbe = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            p.attach(function, 0).map_err(explain)?;
        }
    }
    Ok(())
}

/// Programs that exist once per kernel prototype of their function: (hook name, the
/// function's argument count in BTF, program to load).
const PROTOTYPE_VARIANTS: &[(&str, u32, &str)] = &[
    ("fexit_inet_csk_accept", 4, "fexit_inet_csk_accept_4args"),
    ("fexit_inet_csk_accept", 2, "fexit_inet_csk_accept_2args"),
];

/// The program that implements `hook` on this kernel.
fn program_for(hook: &Hook, offsets: &KernelConfig) -> Result<&'static str, String> {
    let variants: Vec<_> = PROTOTYPE_VARIANTS
        .iter()
        .filter(|(h, _, _)| *h == hook.program)
        .collect();
    if variants.is_empty() {
        return Ok(hook.program);
    }
    let args = offsets.accept_ret_index;
    variants
        .iter()
        .find(|(_, n, _)| *n == args)
        .map(|(_, _, p)| *p)
        .ok_or_else(|| {
            format!(
                "this kernel's {} takes {args} arguments, a prototype netmon does not know",
                hook.describe()
            )
        })
}

/// fentry and kprobe programs read the socket tuple and the datagram through struct
/// offsets from BTF; without them they would attach and see nothing.
fn kfunc_offsets_known(c: &KernelConfig) -> Result<(), String> {
    use netmon_common::NO_OFFSET;
    let needed = [
        ("sock_common.skc_family", c.skc_family),
        ("sock_common.skc_state", c.skc_state),
        ("sock_common.skc_daddr", c.skc_daddr),
        ("sock_common.skc_rcv_saddr", c.skc_rcv_saddr),
        ("sock_common.skc_dport", c.skc_dport),
        ("sock_common.skc_num", c.skc_num),
        ("sock_common.skc_v6_daddr", c.skc_v6_daddr),
        ("sock_common.skc_v6_rcv_saddr", c.skc_v6_rcv_saddr),
        ("sk_buff.head", c.skb_head),
        ("sk_buff.network_header", c.skb_network_header),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, off)| *off == NO_OFFSET)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kernel BTF offsets unavailable ({})",
            missing.join(", ")
        ))
    }
}

/// Whether the kernel has kprobes (the PMU aya attaches through).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

fn cgroup_root() -> Result<fs::File, String> {
    let path = system::cgroup2_mount().map_err(|e| e.to_string())?;
    fs::File::open(&path).map_err(|e| format!("cannot open cgroup v2 root {}: {e}", path.display()))
}

/// A short reason from an aya error: the kernel's errno name where there is one, plus
/// the first line of the verifier log.
fn explain(e: ProgramError) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let line = first_line(&text);
    match errno_in(&text) {
        // "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier
        // output: …" says little more than the errno; keep the call and the errno.
        Some(errno) => match line.split(" returned ").next() {
            Some(call) if call != line => format!("{errno} ({call} failed)"),
            _ => format!("{errno} ({line})"),
        },
        None => line,
    }
}

fn first_line(s: &str) -> String {
    // The whole verifier log, for whoever debugs a program the kernel refuses.
    if std::env::var_os("NETMON_VERIFIER_LOG").is_some() {
        eprintln!("{s}");
    }
    s.lines().next().unwrap_or(s).chars().take(300).collect()
}

/// `EPERM` etc. for the OS error codes aya embeds as "(os error N)".
fn errno_in(text: &str) -> Option<&'static str> {
    let start = text.find("os error ")? + "os error ".len();
    let code: i32 = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOTSUPP_LINUX => "ENOTSUPP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        libc::E2BIG => "E2BIG",
        libc::EBUSY => "EBUSY",
        _ => return None,
    })
}

mod libc {
    pub use ::libc::*;
    /// The kernel-internal ENOTSUPP (524) that BPF returns for unsupported attach types.
    pub const ENOTSUPP_LINUX: i32 = 524;
}

/// The programs read the tracepoint record at fixed offsets; check them against the
/// kernel's own description before attaching, so a changed layout is refused, not misread.
fn check_inet_sock_set_state_format(tracefs: &Path) -> Result<(), String> {
    let path = tracefs.join("events/sock/inet_sock_set_state/format");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    verify_format(&text, INET_SOCK_SET_STATE_FIELDS)
        .map_err(|field| format!("unexpected layout of sock:inet_sock_set_state ({field})"))
}

/// Field name and offset the program uses.
const INET_SOCK_SET_STATE_FIELDS: &[(&str, usize)] = &[
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// Checks `expected` (name, offset) pairs against a tracefs `format` text; the error
/// names the first field that differs.
pub fn verify_format(format: &str, expected: &[(&str, usize)]) -> Result<(), String> {
    for (name, offset) in expected {
        let found = format.lines().find_map(|line| {
            let decl = line.trim().strip_prefix("field:")?;
            let (decl, rest) = decl.split_once(';')?;
            let field_name = decl
                .split_whitespace()
                .last()?
                .split('[')
                .next()?
                .trim_start_matches('*');
            if field_name != *name {
                return None;
            }
            let off = rest
                .split("offset:")
                .nth(1)?
                .split(';')
                .next()?
                .trim()
                .parse::<usize>()
                .ok()?;
            Some(off)
        });
        match found {
            Some(o) if o == *offset => {}
            Some(o) => return Err(format!("{name} at offset {o}, expected {offset}")),
            None => return Err(format!("{name} missing")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields_are_read_by_exact_key() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_cnt:\t12\nrecursion_misses:\t7\nverified_insns:\t301\n";
        assert_eq!(fdinfo_field(text, "recursion_misses"), Some(7));
        assert_eq!(fdinfo_field(text, "run_cnt"), Some(12));
        assert_eq!(fdinfo_field(text, "misses"), None);
        assert_eq!(fdinfo_field("prog_type:\t5\n", "recursion_misses"), None);
    }

    #[test]
    fn a_process_without_programs_reports_nothing_skipped() {
        let none = SkippedRuns {
            programs: Vec::new(),
        };
        assert_eq!(none.read(), None);
    }

    const FORMAT_6_X: &str = "name: inet_sock_set_state
ID: 1442
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn accepts_the_known_layout() {
        assert_eq!(
            verify_format(FORMAT_6_X, INET_SOCK_SET_STATE_FIELDS),
            Ok(())
        );
    }

    #[test]
    fn refuses_a_moved_field() {
        let moved = FORMAT_6_X.replace("sport;\toffset:24", "sport;\toffset:44");
        let err = verify_format(&moved, INET_SOCK_SET_STATE_FIELDS).unwrap_err();
        assert_eq!(err, "sport at offset 44, expected 24");
        let missing = FORMAT_6_X.replace("protocol", "proto_x");
        assert_eq!(
            verify_format(&missing, INET_SOCK_SET_STATE_FIELDS).unwrap_err(),
            "protocol missing"
        );
    }

    #[test]
    fn names_the_errno_in_aya_errors() {
        assert_eq!(
            errno_in("bpf_prog_load failed: Operation not permitted (os error 1)"),
            Some("EPERM")
        );
        assert_eq!(errno_in("no errno here"), None);
    }
}
