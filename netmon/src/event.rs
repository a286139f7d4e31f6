//! The event contract: what every JSON line of `netmon run` holds (see `docs/events.md`).
//!
//! Every line has `ts` (RFC 3339, UTC, nanoseconds), `type` and `host`. These types are
//! plain data with serde derives; they know nothing of the kernel or of aya. Later work
//! adds types and optional fields; it never renames or removes one.
//!
//! Over 600 lines: the whole contract in one place on purpose (plain data types with
//! their serde attributes, ~60 lines of code); `event/scan.rs` and `event/log.rs` hold
//! the scanner's and the programs' types, the tests `event/tests.rs`.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use chrono::{DateTime, SecondsFormat, Utc};
pub use name::Name;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod log;
pub mod name;
pub mod read;
pub mod scan;

/// One line of output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(serialize_with = "ser_ts", deserialize_with = "de_ts")]
    pub ts: DateTime<Utc>,
    pub host: std::sync::Arc<str>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The `type`-specific part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A process opened an outbound TCP connection.
    Connect(Connection),
    /// A listening process got an inbound TCP connection.
    Accept(Connection),
    /// A process started sending UDP to a new peer.
    Udp(Connection),
    /// A TCP socket started listening (`dst` is the local address).
    Listen(Connection),
    /// A TCP flow ended, or a UDP flow went idle (see `flow.rs`).
    Close(Close),
    /// Periodic summary of a long-lived flow: bytes so far (see `flow.rs`).
    Flow(FlowSummary),
    /// Periodic and final counters. Boxed, as the other rare large variants: an event
    /// is moved several times on its way (reader, enrichment, rules, hub), and the
    /// enum is as large as its largest variant (an `Event` was 632 bytes with `Stats`
    /// inline, under 400 now: those copies were a tenth of `netmon run`'s CPU).
    Stats(Box<Stats>),
    /// What the loader attached, first line of `netmon run`.
    Probe(ProbeReport),
    /// A DNS query and its response, seen on one socket (see `dns.rs`).
    Dns(Dns),
    /// A process exec'd a program (off by default: `--events exec`).
    Exec(Exec),
    /// A message of netmon's own eBPF programs (`--ebpf-log` with `--events log`).
    Log(log::KernelLog),
    /// A detection rule fired (see `rules.rs`).
    Alert(Alert),
    /// Scanner: one scanned host (`netmon scan`).
    Host(Box<scan::ScanHost>),
    /// Scanner: one open port (`netmon scan`).
    Port(scan::ScanPort),
    /// Inventory: a host answered that was unknown or down.
    HostUp(scan::HostChange),
    /// Inventory: a known host stopped answering (it stays in the inventory).
    HostDown(scan::HostChange),
    /// Inventory: a port of a known host opened.
    PortOpened(scan::PortChange),
    /// Inventory: an open port closed.
    PortClosed(scan::PortChange),
    /// Inventory: an open port answers with another service or version.
    ServiceChanged(scan::ServiceChange),
}

impl EventBody {
    /// The `type` string of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::Connect(_) => "connect",
            EventBody::Accept(_) => "accept",
            EventBody::Udp(_) => "udp",
            EventBody::Listen(_) => "listen",
            EventBody::Close(_) => "close",
            EventBody::Flow(_) => "flow",
            EventBody::Stats(_) => "stats",
            EventBody::Probe(_) => "probe",
            EventBody::Dns(_) => "dns",
            EventBody::Exec(_) => "exec",
            EventBody::Log(_) => "log",
            EventBody::Alert(_) => "alert",
            EventBody::Host(_) => "host",
            EventBody::Port(_) => "port",
            EventBody::HostUp(_) => "host_up",
            EventBody::HostDown(_) => "host_down",
            EventBody::PortOpened(_) => "port_opened",
            EventBody::PortClosed(_) => "port_closed",
            EventBody::ServiceChanged(_) => "service_changed",
        }
    }

    /// The connection part of connection events.
    pub fn connection(&self) -> Option<&Connection> {
        match self {
            EventBody::Connect(c)
            | EventBody::Accept(c)
            | EventBody::Udp(c)
            | EventBody::Listen(c) => Some(c),
            EventBody::Close(c) => Some(&c.conn),
            EventBody::Flow(f) => Some(&f.conn),
            _ => None,
        }
    }

    /// The connection part of connection events, mutable (for enrichment).
    pub fn connection_mut(&mut self) -> Option<&mut Connection> {
        match self {
            EventBody::Connect(c)
            | EventBody::Accept(c)
            | EventBody::Udp(c)
            | EventBody::Listen(c) => Some(c),
            EventBody::Close(c) => Some(&mut c.conn),
            EventBody::Flow(f) => Some(&mut f.conn),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// One end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The DNS name this process resolved to `ip` shortly before (outbound `connect`
    /// and `udp` only); absent when netmon saw no such answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Endpoint {
        Endpoint {
            ip,
            port,
            name: None,
        }
    }
}

/// The process an event belongs to. (Read through `read::ProcessWire`: serde's
/// `flatten` would copy the whole object first.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "read::ProcessWire")]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    /// The process's name: its thread-group leader's `comm` (what `ps` shows), from
    /// the process table; the kernel's name of the thread when the process is unknown.
    pub comm: Name,
    /// The name of the thread that acted, when it differs from `comm` (dig's
    /// `isc-net-0000`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// What userspace read from `/proc/<pid>` (`exe`, `cmdline`, `user`, `ppid`,
    /// `container`), flattened into the `process` object; each field is null when it
    /// could not be read (the process was gone, or permission). Shared between every
    /// event and flow of one process, hence the `Arc`.
    #[serde(flatten, default)]
    pub detail: Arc<ProcessDetail>,
}

impl ProcessInfo {
    /// A process known only by the kernel's fields.
    pub fn kernel(pid: u32, tid: u32, comm: Name, uid: u32, gid: u32, cgroup_id: u64) -> Self {
        ProcessInfo {
            pid,
            tid,
            comm,
            thread: None,
            uid,
            gid,
            cgroup_id,
            detail: ProcessDetail::unknown(),
        }
    }
}

/// Process context from the process table (see `process.rs`): recorded by the kernel
/// at exec and fork, or read from `/proc` for processes that ran before netmon (and
/// as a fallback). Every field is optional: null when neither source had it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDetail {
    /// The program the process runs: the absolute path it was exec'd by (the kernel's
    /// `bprm->filename`), else `/proc/<pid>/exe` (may end in ` (deleted)`). Not
    /// changed by the process renaming itself.
    #[serde(default)]
    pub exe: Option<String>,
    /// The arguments, joined by spaces (from the kernel: the first 1 KiB; from
    /// `/proc/<pid>/cmdline`: 4 KiB).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Name of `uid`, through the system's user database (NSS: files, LDAP, sssd).
    #[serde(default)]
    pub user: Option<String>,
    /// Parent pid.
    #[serde(default)]
    pub ppid: Option<u32>,
    /// The parent's `exe` when the process started.
    #[serde(default)]
    pub parent: Option<String>,
    /// When the process started (with `pid`, it names one process: a reused pid has
    /// another start time).
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// The `exe` of the parent, grandparent… (nearest first, up to 8 levels) when the
    /// process started, so `bash → curl` is visible. Empty when unknown.
    #[serde(default)]
    pub ancestors: Vec<String>,
    /// The container the process runs in, from its cgroup path; null outside containers.
    #[serde(default)]
    pub container: Option<Container>,
}

impl ProcessDetail {
    /// The detail of a process nothing was read about, shared by the thread's events:
    /// every kernel event starts with it until enrichment swaps in the process's own,
    /// so a fresh allocation each time would be one per event for nothing.
    pub fn unknown() -> Arc<ProcessDetail> {
        thread_local! {
            static UNKNOWN: Arc<ProcessDetail> = Arc::default();
        }
        UNKNOWN.with(Arc::clone)
    }
}

/// An `exec` event: the process as it is after the exec (its new `exe`, `cmdline`,
/// and the lineage it was started from).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub process: ProcessInfo,
}

/// A container recognised from a cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Container id (64 hex digits for docker, containerd, cri-o and podman).
    pub id: Option<String>,
    /// `docker`, `containerd`, `cri-o` or `podman`; null when the path does not say
    /// (a bare id under a cgroupfs `kubepods` tree).
    pub runtime: Option<String>,
    /// Kubernetes pod UID, when the cgroup path has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// `connect`, `accept`, `udp` and `listen` events, and the common part of `close`.
///
/// `src` is the side that initiated and `dst` the side that responded; `listen` has
/// only `dst`. `direction` is null when netmon did not see the flow begin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub proto: Proto,
    pub family: Family,
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    pub dst: Endpoint,
    /// Null when the kernel could not attribute the event to a process.
    pub process: Option<ProcessInfo>,
    /// Which hook family produced the event: `fentry`, `kprobe` or `tracepoint`
    /// (borrowed from netmon's own names, owned only when read back from JSON).
    pub backend: std::borrow::Cow<'static, str>,
    /// Network namespace inode, when the kernel's BTF let netmon read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// `connect` only: true when the handshake never completed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    /// `udp` only: size of the first datagram (UDP header included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// True when the flow was already open when netmon started (seeded from
    /// sock_diag): netmon did not see it begin.
    #[serde(default, skip_serializing_if = "is_false")]
    pub existing: bool,
}

/// A `close` event: a connection plus how long it lived and what it carried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Close {
    #[serde(flatten)]
    pub conn: Connection,
    /// Milliseconds from establishment to close; null when netmon did not see it begin.
    pub duration_ms: Option<f64>,
    /// Payload bytes sent and acknowledged by the peer (SYN and FIN not counted); null
    /// when the kernel's counters cannot be read.
    pub bytes_sent: Option<u64>,
    /// Payload bytes received (SYN and FIN not counted).
    pub bytes_received: Option<u64>,
    /// Packets (UDP datagrams) sent, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_sent: Option<u64>,
    /// Packets received, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_received: Option<u64>,
    /// Why the flow ended when netmon, not the kernel, decided: `udp_idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A `flow` event: the state of a long-lived flow, every `--flow-interval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSummary {
    #[serde(flatten)]
    pub conn: Connection,
    /// `established` for TCP (or the TCP state sock_diag reported), `active` for UDP.
    pub state: String,
    /// When netmon saw the flow begin (for `existing` flows: when netmon started).
    #[serde(serialize_with = "ser_ts", deserialize_with = "de_ts")]
    pub start: DateTime<Utc>,
    /// Milliseconds since `start`.
    pub duration_ms: f64,
    /// Payload bytes so far (TCP: from the socket's `tcp_info`; UDP: UDP payload
    /// counted by the kernel); null when netmon cannot read them.
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_received: Option<u64>,
}

/// `stats`: counters since netmon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since netmon started.
    pub uptime_s: f64,
    /// Events netmon wrote before this line, per type (every path counts: kernel
    /// events, netmon's own closes and `flow` summaries, `dns`, alerts, scanner
    /// changes, `probe`); `stats` lines themselves are not counted.
    pub events: BTreeMap<String, u64>,
    /// Events the kernel could not hand over (ring buffer full), in total.
    pub lost: u64,
    /// The same, per type.
    pub lost_by_type: BTreeMap<String, u64>,
    /// Records from the kernel that netmon could not decode.
    pub malformed: u64,
    /// Runs of netmon's programs the kernel skipped (`recursion_misses`: a BPF program
    /// was already running on that CPU); each may be an event never made, so not in
    /// `lost`. Absent on kernels that do not count them (before 5.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_runs: Option<u64>,
    /// The same per program, programs with none left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_runs_by_program: BTreeMap<String, u64>,
    /// The kernel maps whose failures can hide an event or lose its process, by name
    /// (`connecting`, `tcp_flows`, `listeners`, `socket_owners`, `udp_peers`,
    /// `dns_rate`): what each took, gave back, refused, evicted and could not answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kernel_maps: BTreeMap<String, KernelMapStats>,
    /// True on the last line netmon writes before it exits.
    #[serde(default, skip_serializing_if = "is_false")]
    pub r#final: bool,
    /// The flow table's counters (see `flow.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowStats>,
    /// The process-context cache's counters (see `process.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<ProcessStats>,
    /// DNS capture counters, when the `dns` capability is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStats>,
    /// Detection rule counters, when rules are enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleStats>,
    /// The scanner's counters, when `[scan]` allows a network (see `scan/monitor.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<scan::MonitorCounters>,
    /// The history writer's counters, when the history is on (see `history.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryStats>,
    /// Each consumer of the pipeline's hub (the sink, the history writer, …) by name:
    /// what waits in its queue and what it missed because its queue was full (see
    /// `pipeline/hub.rs`). The sink is never dropped for: it is waited for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, ConsumerStats>,
    /// With `--events log`: the programs' messages that could not become `log` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf_log: Option<log::EbpfLogStats>,
    /// The ring buffer's fill (`netmon run` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_buffer: Option<RingBufferStats>,
}

/// `stats.kernel_maps.<map>`: counters of one kernel map since netmon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMapStats {
    /// Entries the map holds at most.
    pub capacity: u64,
    /// New keys inserted.
    pub inserted: u64,
    /// Entries removed because what they describe ended (a socket closed, a connect
    /// completed, a peer expired).
    pub removed: u64,
    /// Inserts the kernel refused (a full map): that entry is missing.
    pub insert_failed: u64,
    /// Entries an LRU map dropped to make room: new keys that arrived while the
    /// programs counted it full (the LRU may begin a few hundred entries earlier, so
    /// this can run behind by that much). Always 0 for `listeners`, which refuses instead.
    pub evicted: u64,
    /// Lookups that found no entry where one was needed: the event went out without
    /// its process (or, for `tcp_flows`, without its direction and duration). Also
    /// counts what began before netmon started.
    pub missed: u64,
}

/// `stats.history`: what the history writer kept and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryStats {
    /// Events committed to the database.
    pub written: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Failures: opening, writing or pruning the database (each also warned on stderr).
    pub errors: u64,
    /// Events not kept because the database could not take them (their batch failed,
    /// or it could not be opened); what its full queue missed is in
    /// `stats.consumers.history.dropped`.
    pub dropped: u64,
}

/// `stats.ring_buffer`: how full the kernel → userspace ring buffer is (bytes the
/// kernel reserved that netmon has not yet read, record headers included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingBufferStats {
    /// The ring's size.
    pub size_bytes: u64,
    /// In use when this line was made.
    pub used_bytes: u64,
    /// Most in use at any drain step since the previous `stats` line (or start).
    pub peak_used_bytes: u64,
}

/// `stats.consumers.<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerStats {
    /// Events in the consumer's queue now, not yet taken.
    pub queued: u64,
    /// Events it missed since start because its queue was full (or it had stopped).
    pub dropped: u64,
}

/// `stats.flows`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Flows in the table now.
    pub active: u64,
    /// The table's cap (`--max-flows`).
    pub cap: u64,
    /// Flows seeded at start from sockets that already existed.
    pub existing: u64,
    /// Flows opened since start (seeded ones included).
    pub opened: u64,
    /// Flows that ended with a `close` (TCP close from the kernel, UDP idle expiry).
    pub closed: u64,
    /// UDP flows closed after `--udp-timeout` without a datagram.
    pub udp_expired: u64,
    /// Flows dropped from the table to stay under the cap (oldest idle first); their
    /// later `close`, if any, carries only what the kernel knows.
    pub evicted: u64,
    /// `flow` summaries written.
    pub summaries: u64,
    /// Socket dumps (sock_diag) that failed, for seeding or for byte counters.
    #[serde(default)]
    pub sock_diag_errors: u64,
}

/// `stats.processes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Processes in the process table now.
    pub cached: u64,
    /// Process exits seen (each entry is dropped a few seconds after its exit).
    pub exits: u64,
    /// Exec records from the kernel.
    #[serde(default)]
    pub execs: u64,
    /// Fork records (new processes) from the kernel.
    #[serde(default)]
    pub forks: u64,
    /// Entries dropped because the table was full (`process.table_size`).
    #[serde(default)]
    pub evicted: u64,
    /// `/proc/<pid>` reads that failed, by reason: `gone` (the process exited
    /// first), `permission`, `other`.
    pub unreadable: BTreeMap<String, u64>,
}

/// `stats.dns`: what the DNS path saw and what it could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    /// DNS packets received from the kernel.
    pub packets: u64,
    /// Packets that did not parse as a DNS message (garbage, or cut short on the wire).
    pub malformed: u64,
    /// Messages longer than netmon captures (512 bytes): counted, not parsed.
    pub truncated: u64,
    /// Responses without a matching query on the same socket.
    pub unmatched: u64,
    /// Queries that got no response in time (reported with a null `rcode`).
    pub unanswered: u64,
    /// Packets the kernel did not copy because their process was over its DNS rate
    /// (`[dns] rate_limit`, `rate_burst`).
    #[serde(default)]
    pub rate_limited: u64,
}

/// `stats.rules`: alerts written and hits held back by cooldowns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    pub alerts: u64,
    /// Hits of a condition inside its cooldown (counted in the next alert's `hits`).
    pub suppressed: u64,
    /// Per rule, alerts written.
    #[serde(default)]
    pub by_rule: BTreeMap<String, u64>,
}

/// `dns`: one DNS transaction on one socket: the query, and the response when one came.
///
/// `src` is the side that asked and `dst` the side that answered. `role` says which
/// of them is the local process: `client` (it asked: `dig`, a resolver library) or
/// `server` (it answered: a local DNS server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    pub proto: Proto,
    pub family: Family,
    pub role: DnsRole,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// The DNS message id.
    pub id: u16,
    /// The queried name, lower case, without the trailing dot (`.` for the root).
    pub query: String,
    /// The query type: `A`, `AAAA`, `TXT`, `NULL`, … (`TYPE65280` when unnamed).
    pub qtype: String,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, …; null when no response was seen.
    pub rcode: Option<String>,
    /// Records of the response's answer section.
    #[serde(default)]
    pub answers: Vec<DnsAnswer>,
    /// From the query to the response on this socket; null without a response.
    pub latency_ms: Option<f64>,
    /// Null when the kernel could not attribute the socket to a process.
    pub process: Option<ProcessInfo>,
    /// The response had the TC (truncated) bit set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRole {
    Client,
    Server,
}

/// One answer record: `A`/`AAAA` carry an address, `CNAME`/`PTR`/`NS` a name, `TXT`
/// its text, anything else a presentation form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    pub data: String,
}

/// How bad an alert is; ordered, `low` < `medium` < `high` < `critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// `alert`: a detection rule fired.
///
/// The same condition (`key`) does not alert again within the rule's cooldown; hits in
/// between are counted and reported in the next alert's `hits`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `SUSPICIOUS_PORT`, `HIGH_CONNECTION_COUNT`, … or a custom rule's name.
    pub rule: String,
    pub severity: Severity,
    /// One sentence: what happened.
    pub summary: String,
    /// What to do about it.
    pub recommendation: String,
    /// The process the alert is about; null when unknown.
    pub process: Option<ProcessInfo>,
    /// Up to five of the flows that made the rule fire, most recent last.
    #[serde(default)]
    pub flows: Vec<FlowSample>,
    /// The condition that fired (rule plus what it is about), the cooldown's key.
    pub key: String,
    /// Hits of this condition since its previous alert, this one included (1 the first time).
    pub hits: u64,
    /// `PORT_RISK`: the service's risk score (0 to 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
    /// Rule-specific facts (counts, thresholds, sample names), see `docs/events.md`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// A flow an alert refers to: the event type, its time and its endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowSample {
    #[serde(serialize_with = "ser_ts", deserialize_with = "de_ts")]
    pub ts: DateTime<Utc>,
    /// `connect`, `accept`, `udp`, `listen` or `dns` (borrowed from the event type's
    /// name: the rules take a sample of every connection).
    #[serde(rename = "type")]
    pub kind: std::borrow::Cow<'static, str>,
    pub proto: Proto,
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    pub dst: Endpoint,
}

/// `probe`: per capability, the hook that was attached and why others were skipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// `auto`, `fentry`, `kprobe` or `tracepoint`: what the user asked for.
    pub requested: String,
    pub kernel: String,
    pub capabilities: Vec<CapabilityReport>,
    /// Problems that did not stop netmon (a hook that failed in `auto`, a missing offset).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// `tcp_connect`, `tcp_accept`, `tcp_listen`, `tcp_close`, `udp_send`.
    pub capability: String,
    /// The backend in use, null when nothing could be attached.
    pub backend: Option<String>,
    /// The kernel hooks attached for it.
    pub hooks: Vec<String>,
    /// Backends tried before and why they were not used.
    pub skipped: Vec<SkippedBackend>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedBackend {
    pub backend: String,
    pub reason: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn ser_ts<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests;
