//! Wire types shared by netmon's eBPF programs and its userspace: the events that
//! cross the ring buffer, the keys and values of shared maps, and the map names.
//!
//! Everything here is `#[repr(C)]`, `Copy`, has explicit padding, and uses no `bool`,
//! Rust enum or `Option`: the kernel side writes raw bytes, userspace reads them back.
//! A `kind: u32` plus constants replaces enums; userspace converts with `TryFrom`.
//! Compile-time asserts pin every size so a layout change cannot slip through.
#![no_std]

/// Map names, kept beside the types they carry so both sides agree.
pub mod maps {
    /// `BPF_MAP_TYPE_RINGBUF`: every event.
    pub const EVENTS: &str = "EVENTS";
    /// `PERCPU_ARRAY<u64>` indexed by event kind: ring-buffer reservations that failed.
    pub const LOST: &str = "LOST";
    /// `ARRAY<KernelConfig>` with one entry: struct offsets resolved from BTF by userspace.
    pub const CONFIG: &str = "CONFIG";
    /// `LRU_HASH<u64 sock ptr, Process>`: TCP sockets between `connect()` and the handshake's end.
    pub const CONNECTING: &str = "CONNECTING";
    /// `LRU_HASH<u64 sock ptr, FlowStart>`: established TCP flows netmon saw begin.
    pub const TCP_FLOWS: &str = "TCP_FLOWS";
    /// `HASH<ListenerKey, Process>`: who owns each listening TCP port.
    pub const LISTENERS: &str = "LISTENERS";
    /// `LRU_HASH<u64 socket cookie, Process>`: the last process that used a UDP socket.
    pub const SOCKET_OWNERS: &str = "SOCKET_OWNERS";
    /// `LRU_HASH<UdpPeerKey, UdpPeerStats>`: UDP peers already reported, with counters.
    pub const UDP_PEERS: &str = "UDP_PEERS";
    /// `ARRAY<u32>` of [`DNS_PORT_WORDS`](super::DNS_PORT_WORDS) entries, a bitmap of
    /// ports (host byte order; bit `port % 32` of entry `port / 32`) whose traffic is DNS
    /// (53 plus the configured `dns.ports`); userspace fills it before attaching the
    /// `dns` programs.
    pub const DNS_PORTS: &str = "DNS_PORTS";
    /// Global (`u64`, set by the loader before the programs load): unread bytes in
    /// `EVENTS` from which a submit wakes the reader; 0 = the ring buffer's default.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// `PERCPU_ARRAY<u64>` of [`kmap::SLOTS`](super::kmap::SLOTS) counters: what each
    /// map above did that can hide an event or lose its process (see [`kmap`](super::kmap)).
    pub const MAP_COUNTERS: &str = "MAP_COUNTERS";
    /// `LRU_HASH<u32 tgid, u64>`: per process, the DNS rate limiter's theoretical
    /// arrival time (GCRA, `bpf_ktime_get_ns` nanoseconds).
    pub const DNS_RATE: &str = "DNS_RATE";
    /// `ARRAY<u64>` of `2 * kmap::COUNT`: entry `m` is the number of entries the
    /// programs believe LRU map `m` holds (added to atomically), entry `COUNT + m` the
    /// entries userspace removed from it (written only by userspace).
    pub const MAP_LIVE: &str = "MAP_LIVE";
    /// Global (`u64`): nanoseconds between two DNS packets a process may have copied
    /// at its sustained rate; 0 = no limit.
    pub const DNS_RATE_INTERVAL_NS: &str = "DNS_RATE_INTERVAL_NS";
    /// Global (`u64`): how far (ns) a process may run ahead of its sustained rate, i.e.
    /// `(burst - 1) * interval`.
    pub const DNS_RATE_TOLERANCE_NS: &str = "DNS_RATE_TOLERANCE_NS";
}

/// The kernel maps whose failures are counted in `MAP_COUNTERS`, and the counters.
///
/// Counter `c` of map `m` is slot [`slot(m, c)`](slot). All counters are per CPU and
/// only ever grow; userspace sums them. An LRU map evicts silently, so the programs
/// keep the number of entries they put in and took out (`MAP_LIVE`) and count an
/// eviction for each new key that arrives while the map is full. The LRU may start
/// evicting a little before it is full (it keeps up to 128 free entries per CPU), so
/// `EVICTED` may run behind by that much.
pub mod kmap {
    pub const CONNECTING: u32 = 0;
    pub const TCP_FLOWS: u32 = 1;
    pub const LISTENERS: u32 = 2;
    pub const SOCKET_OWNERS: u32 = 3;
    pub const UDP_PEERS: u32 = 4;
    pub const DNS_RATE: u32 = 5;
    /// Number of counted maps.
    pub const COUNT: u32 = 6;

    /// New keys the programs inserted.
    pub const INSERTED: u32 = 0;
    /// Keys the programs removed (a remove that found its key).
    pub const REMOVED: u32 = 1;
    /// Inserts the kernel refused (a full `HASH`, no memory): the entry is missing.
    pub const INSERT_FAILED: u32 = 2;
    /// New keys of an LRU map that arrived while it was full: each pushed out another.
    pub const EVICTED: u32 = 3;
    /// Lookups that found no entry where one was needed: an event sent without its
    /// process, or with less than the kernel knew (see each map's notes in `docs/events.md`).
    pub const MISSED: u32 = 4;
    /// Counters per map.
    pub const PER_MAP: u32 = 5;

    /// The slot of counter `counter` of map `map`.
    pub const fn slot(map: u32, counter: u32) -> u32 {
        map * PER_MAP + counter
    }

    /// DNS packets not copied because their process was over its rate.
    pub const DNS_RATE_LIMITED: u32 = COUNT * PER_MAP;
    /// Entries of `MAP_COUNTERS`.
    pub const SLOTS: u32 = DNS_RATE_LIMITED + 1;
}

/// Event kinds (`EventHeader::kind`).
pub mod kind {
    pub const CONNECT: u32 = 1;
    pub const ACCEPT: u32 = 2;
    pub const UDP: u32 = 3;
    pub const LISTEN: u32 = 4;
    pub const CLOSE: u32 = 5;
    /// A process exited (`sched:sched_process_exit`, thread-group leader only): a bare
    /// [`EventHeader`](super::EventHeader) whose `process` is the exiting process.
    /// Userspace evicts its per-pid context cache; it is not written as an event.
    pub const EXIT: u32 = 6;
    /// A DNS message seen on a socket ([`DnsEvent`](super::DnsEvent)).
    pub const DNS: u32 = 7;
    /// A process called `execve` successfully (`sched:sched_process_exec`): an
    /// [`ExecEvent`](super::ExecEvent) with what it now runs. Feeds the process table.
    pub const EXEC: u32 = 8;
    /// A new process (not a thread) was created (`sched_process_fork`): a
    /// [`ForkEvent`](super::ForkEvent); the child runs its parent's program until it execs.
    pub const FORK: u32 = 9;
    /// One past the largest kind: the length of the `LOST` array.
    pub const COUNT: u32 = 10;
}

/// Which hook family produced an event (`EventHeader::backend`).
pub mod backend {
    pub const TRACEPOINT: u32 = 1;
    pub const KPROBE: u32 = 2;
    pub const FENTRY: u32 = 3;
}

/// Bits of `ConnEvent::flags`.
pub mod flags {
    /// The flow was initiated by the remote side (`accept`, or `close` of an accepted flow).
    pub const INBOUND: u32 = 1 << 0;
    /// The kernel could not attribute the event to a process; `process` fields are zero.
    pub const PROCESS_UNKNOWN: u32 = 1 << 1;
    /// `bytes_sent` / `bytes_received` hold real counters.
    pub const BYTES_KNOWN: u32 = 1 << 2;
    /// `duration_ns` is real (netmon saw the flow start).
    pub const DURATION_KNOWN: u32 = 1 << 3;
    /// netmon did not see the flow start, so which side initiated it is unknown;
    /// `src` is the local side.
    pub const DIRECTION_UNKNOWN: u32 = 1 << 4;
    /// A TCP connect that never reached ESTABLISHED (refused, timed out, reset).
    pub const CONNECT_FAILED: u32 = 1 << 5;
}

/// Bits of `DnsEvent::flags`.
pub mod dns_flags {
    /// The packet was leaving the host (cgroup egress); otherwise it was arriving.
    pub const EGRESS: u32 = 1 << 0;
    /// No process was known for the socket; `process` fields are zero.
    pub const PROCESS_UNKNOWN: u32 = 1 << 1;
}

/// Bytes of a DNS message a [`DnsEvent`] carries at most. Longer messages are cut
/// (`payload_len` still says how long they were) and userspace counts them as truncated.
pub const DNS_PAYLOAD_MAX: usize = 512;

/// Bytes of the path passed to `execve` an [`ExecEvent`] carries (NUL-terminated).
pub const EXEC_FILENAME_MAX: usize = 256;
/// Bytes of the new program's argument block (`mm->arg_start..arg_end`, NUL-separated)
/// an [`ExecEvent`] carries; longer argument lists are cut.
pub const EXEC_ARGS_MAX: usize = 1024;

/// Entries of the `DNS_PORTS` bitmap: 32 ports each.
pub const DNS_PORT_WORDS: u32 = 65536 / 32;

/// `AF_INET` / `AF_INET6` as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
pub const COMM_LEN: usize = 16;

/// The process an event belongs to, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Thread-group id (what userspace calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// `task->comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl Process {
    pub const EMPTY: Process = Process {
        pid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        cgroup_id: 0,
        comm: [0; COMM_LEN],
    };
}

/// First field of every event, so the decoder can read it before it knows the kind.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// One of [`backend`].
    pub backend: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    pub process: Process,
}

/// A connection event: connect, accept, udp, listen or close.
///
/// `src` is the initiator and `dst` the responder (for `accept`, `src` is the remote
/// client); the kernel side does the swap so userspace never has to guess.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// Network byte order. IPv4 uses the first 4 bytes; the rest are zero.
    pub src_addr: [u8; 16],
    /// Network byte order, as `src_addr`.
    pub dst_addr: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// [`AF_INET`] or [`AF_INET6`] (v4-mapped IPv6 is normalised by userspace).
    pub family: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u16,
    /// Bits of [`flags`].
    pub flags: u32,
    /// Inode number of the socket's network namespace, 0 when unknown.
    pub netns: u32,
    /// For `close`: time since the flow was established.
    pub duration_ns: u64,
    /// For `close`: payload bytes sent and acknowledged by the peer (SYN and FIN taken
    /// out), see [`flags::BYTES_KNOWN`].
    /// For `udp`: bytes of the first datagram.
    pub bytes_sent: u64,
    /// For `close`: payload bytes received.
    pub bytes_received: u64,
}

/// One DNS packet (UDP datagram or TCP segment to or from a DNS port), copied from a
/// cgroup skb hook with the socket it belongs to. Userspace parses the message; the
/// kernel side never interprets it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    pub header: EventHeader,
    /// Network byte order. IPv4 uses the first 4 bytes; the rest are zero.
    pub src_addr: [u8; 16],
    /// Network byte order, as `src_addr`.
    pub dst_addr: [u8; 16],
    /// Host byte order: the packet's own source port.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// [`IPPROTO_TCP`] (the payload starts with DNS's two-byte length) or [`IPPROTO_UDP`].
    pub protocol: u16,
    /// Bits of [`dns_flags`].
    pub flags: u32,
    pub _pad: u32,
    /// `bpf_get_socket_cookie`: the same socket for a query and its response.
    pub socket_cookie: u64,
    /// Length of the transport payload in the packet (what the wire said).
    pub payload_len: u32,
    /// Bytes copied into `payload`: `min(payload_len, DNS_PAYLOAD_MAX)`.
    pub captured_len: u32,
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

/// A successful exec, from the exec'ing task after the new program is in place.
/// `header.process` is the process as it is now (`comm` is the new program's name,
/// `pid == tid`: exec makes the caller the thread-group leader).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Thread-group id of `task->real_parent`; 0 when the offsets are unknown.
    pub ppid: u32,
    /// Bytes in `filename` before its NUL (0: unknown).
    pub filename_len: u32,
    /// `task->start_time` (CLOCK_MONOTONIC ns): with the pid, names this process
    /// apart from any later one that reuses the pid. 0 when unknown.
    pub start_time_ns: u64,
    /// Bytes copied into `args`.
    pub args_len: u32,
    /// `args_len` was cut at [`EXEC_ARGS_MAX`] (1) or not (0).
    pub args_truncated: u32,
    /// The path given to `execve` (`bprm->filename`), NUL-terminated.
    pub filename: [u8; EXEC_FILENAME_MAX],
    /// The argument block, NUL-separated.
    pub args: [u8; EXEC_ARGS_MAX],
}

/// A new process: `header.process` is the parent thread that forked.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Pid of the new process.
    pub child_pid: u32,
    pub _pad: u32,
    /// The child's `start_time` (CLOCK_MONOTONIC ns), 0 when unknown.
    pub child_start_time_ns: u64,
}

/// Capability indexes into `KernelConfig::cap_backend`.
pub mod cap {
    pub const TCP_CONNECT: usize = 0;
    pub const TCP_ACCEPT: usize = 1;
    pub const TCP_LISTEN: usize = 2;
    pub const TCP_CLOSE: usize = 3;
    pub const UDP_SEND: usize = 4;
    /// DNS has one backend (cgroup); non-zero once its programs are attached, which
    /// tells the shared egress program to look for DNS.
    pub const DNS: usize = 5;
    /// `sched_process_exit` does not consult `cap_backend` (one backend, one program).
    pub const PROCESS_EXIT: usize = 6;
    pub const COUNT: usize = 8;
}

/// An offset this kernel's BTF did not have: the program leaves the field out.
pub const NO_OFFSET: u32 = u32::MAX;

/// Struct offsets resolved from the running kernel's BTF by userspace and handed to the
/// programs, so no offset from one kernel's headers is ever compiled in. [`NO_OFFSET`]
/// means "unknown on this kernel" (0 is a real offset: `skc_daddr` is at 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelConfig {
    /// `offsetof(struct tcp_sock, bytes_acked)`.
    pub tcp_sock_bytes_acked: u32,
    /// `offsetof(struct tcp_sock, bytes_received)`.
    pub tcp_sock_bytes_received: u32,
    /// `offsetof(struct sock, __sk_common.skc_net)`.
    pub sock_net: u32,
    /// `offsetof(struct net, ns.inum)`.
    pub net_ns_inum: u32,
    /// Pid of netmon itself: its own sockets are not reported.
    pub self_pid: u32,
    /// `offsetof(struct sock, sk_flags)`: bit `SOCK_DONE` says the peer's FIN arrived.
    pub sock_flags: u32,
    /// `struct sock_common` fields, for backends that read the tuple from the socket.
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `offsetof(struct sk_buff, head)` and `…, network_header)`: the datagram an
    /// `ip_send_skb()` hook reads.
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// Index of the return value in the fexit context of `inet_csk_accept` (its
    /// argument count: 4 before 6.10, 2 since).
    pub accept_ret_index: u32,
    /// `struct task_struct` and `struct mm_struct` fields, for exec/fork tracking.
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_start_time: u32,
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// Per capability ([`cap`]), the [`backend`] that reports it; 0 = none. Programs of
    /// other backends that see the same activity stay silent, so `auto` can mix
    /// backends without duplicate events.
    pub cap_backend: [u8; cap::COUNT],
}

impl KernelConfig {
    /// Nothing known: every offset missing, no capability enabled.
    pub const UNKNOWN: KernelConfig = KernelConfig {
        tcp_sock_bytes_acked: NO_OFFSET,
        tcp_sock_bytes_received: NO_OFFSET,
        sock_net: NO_OFFSET,
        net_ns_inum: NO_OFFSET,
        self_pid: 0,
        sock_flags: NO_OFFSET,
        skc_family: NO_OFFSET,
        skc_state: NO_OFFSET,
        skc_daddr: NO_OFFSET,
        skc_rcv_saddr: NO_OFFSET,
        skc_dport: NO_OFFSET,
        skc_num: NO_OFFSET,
        skc_v6_daddr: NO_OFFSET,
        skc_v6_rcv_saddr: NO_OFFSET,
        skb_head: NO_OFFSET,
        skb_network_header: NO_OFFSET,
        accept_ret_index: 0,
        task_real_parent: NO_OFFSET,
        task_tgid: NO_OFFSET,
        task_pid: NO_OFFSET,
        task_start_time: NO_OFFSET,
        task_mm: NO_OFFSET,
        mm_arg_start: NO_OFFSET,
        mm_arg_end: NO_OFFSET,
        cap_backend: [0; cap::COUNT],
    };
}

/// State stored for an established TCP flow, keyed by the kernel socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowStart {
    pub ktime_ns: u64,
    /// [`flags::INBOUND`] or 0.
    pub flags: u32,
    /// Network-namespace inode of the socket, read once when the flow began (0 =
    /// unknown), so that its close need not read it again.
    pub netns: u32,
    pub process: Process,
}

/// Key of the listener registry: a port of one address family inside one network
/// namespace (an IPv4 and an IPv6 listener on one port are two owners; a dual-stack
/// IPv6 listener's IPv4 clients arrive as IPv6 sockets, so they find it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

/// Key of the UDP peer table: one process talking to one remote endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPeerKey {
    pub pid: u32,
    pub family: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// Network byte order.
    pub dst_addr: [u8; 16],
}

/// Counters of one UDP peer, updated for every datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpPeerStats {
    pub first_ktime_ns: u64,
    pub last_ktime_ns: u64,
    pub datagrams: u64,
    /// IP payload bytes (UDP header included).
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Process>() == 40);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 128);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 104);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 80 + EXEC_FILENAME_MAX + EXEC_ARGS_MAX);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 72);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 120 + DNS_PAYLOAD_MAX);
const _: () = assert!(core::mem::size_of::<FlowStart>() == 56);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<UdpPeerKey>() == 24);
const _: () = assert!(core::mem::size_of::<UdpPeerStats>() == 32);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `repr(C)`, `Copy`, with explicit padding and no
    // invalid bit patterns, which is what `Pod` requires.
    unsafe impl aya::Pod for Process {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ConnEvent {}
    unsafe impl aya::Pod for DnsEvent {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for ForkEvent {}
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for FlowStart {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for UdpPeerKey {}
    unsafe impl aya::Pod for UdpPeerStats {}
}
