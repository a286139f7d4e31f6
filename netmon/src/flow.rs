//! The flow table: one entry per TCP connection or UDP peer pair, from the moment
//! netmon sees it begin (or finds it already open at start) until it ends.
//!
//! Pure: connection events, seeded sockets and counter readings go in; ended flows,
//! evictions and summaries come out. No aya, no I/O, no clock of its own: every call
//! takes `now_ns`, kernel monotonic nanoseconds (what `bpf_ktime_get_ns` returns), so
//! tests drive time by hand. `cli::run`'s single-owner loop owns the one table.
//!
//! - **Key**: protocol, network namespace, local endpoint, remote endpoint. A loopback
//!   connection on one host is two sockets and so two flows (the client's, whose local
//!   port is ephemeral, and the accepted socket, whose local port is the listener's);
//!   each meets its own `close`.
//! - **UDP**: the kernel reports one `udp` event per (process, peer) and counts the
//!   rest in its `UDP_PEERS` map; [`FlowTable::observe_udp`] feeds those counters in,
//!   and [`FlowTable::expire_udp`] ends UDP flows idle for longer than the timeout.
//! - **Cap**: at most `cap` flows; opening one more evicts the flow idle the longest
//!   (either protocol), and every eviction is counted.
//! - **Memory**: a slab of compact entries (112 bytes) plus a key index (48-byte
//!   buckets) and an idle-order index (16-byte entries): about 200 bytes per flow with
//!   the maps' overhead; process context is shared (`Arc`), never copied per flow.
//!   `tests::sizes_the_comments_state` keeps these figures true.
//!
//! Over 600 lines on purpose: about 580 of code for one data structure whose slab and
//! two indexes must change together (split, its invariants would cross files), and
//! its unit tests below.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use foldhash::HashMap;

use crate::event::{Connection, Direction, Endpoint, Family, FlowStats, ProcessInfo, Proto};

/// Limits and intervals of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Most flows kept at once.
    pub cap: usize,
    /// A UDP flow without a datagram for this long is closed.
    pub udp_idle_ns: u64,
    /// Flows at least this old get a `flow` summary every interval.
    pub summary_interval_ns: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            cap: 100_000,
            udp_idle_ns: 60 * NS_PER_S,
            summary_interval_ns: 60 * NS_PER_S,
        }
    }
}

pub const NS_PER_S: u64 = 1_000_000_000;

/// Identity of a flow: protocol, network namespace, local and remote endpoints.
///
/// Addresses are kept as 16 bytes (IPv4 as v4-mapped IPv6) so a key is 44 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    local_ip: [u8; 16],
    remote_ip: [u8; 16],
    /// Network-namespace inode; 0 when unknown.
    pub netns: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: Proto,
}

impl FlowKey {
    pub fn new(proto: Proto, netns: u32, local: SocketAddr, remote: SocketAddr) -> FlowKey {
        FlowKey {
            local_ip: ip_bytes(local.ip()),
            remote_ip: ip_bytes(remote.ip()),
            netns,
            local_port: local.port(),
            remote_port: remote.port(),
            proto,
        }
    }

    /// The flow a connection event belongs to; `None` for `listen` (no remote side).
    ///
    /// `src` is the initiator, so the local side is `dst` for inbound flows and `src`
    /// otherwise (the kernel puts the local side in `src` when the direction is unknown).
    pub fn of_connection(c: &Connection) -> Option<FlowKey> {
        let src = c.src.as_ref()?;
        let (local, remote) = match c.direction {
            Some(Direction::Inbound) => (&c.dst, src),
            _ => (src, &c.dst),
        };
        Some(FlowKey::new(
            c.proto,
            c.netns.unwrap_or(0),
            SocketAddr::new(local.ip, local.port),
            SocketAddr::new(remote.ip, remote.port),
        ))
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.local_ip), self.local_port)
    }

    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.remote_ip), self.remote_port)
    }
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Where a flow is in its life, as far as netmon knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP, established (or in a state sock_diag has not told otherwise).
    Established,
    /// TCP, our side or the peer's side has begun closing (`FIN_WAIT*`, `CLOSE_WAIT`, …).
    Closing,
    /// UDP, datagrams seen within the idle timeout.
    Active,
}

impl FlowState {
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Active => "active",
        }
    }
}

/// Byte and packet counters each way; `None` where nothing reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub packets_sent: Option<u64>,
    pub packets_received: Option<u64>,
}

/// [`Counters`] as stored in a flow: four values and a bit per known value (40 bytes
/// with padding, instead of 64; a flow is paid for 100,000 times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Packed {
    values: [u64; 4],
    known: u8,
}

impl Packed {
    fn of(c: Counters) -> Packed {
        let mut p = Packed::default();
        for (i, v) in [
            c.bytes_sent,
            c.bytes_received,
            c.packets_sent,
            c.packets_received,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                p.values[i] = v;
                p.known |= 1 << i;
            }
        }
        p
    }

    fn get(&self) -> Counters {
        let v = |i: usize| (self.known & (1 << i) != 0).then_some(self.values[i]);
        Counters {
            bytes_sent: v(0),
            bytes_received: v(1),
            packets_sent: v(2),
            packets_received: v(3),
        }
    }
}

/// One flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub key: FlowKey,
    /// Null when netmon knows neither who initiated nor a listener to infer it from.
    pub direction: Option<Direction>,
    /// Shared between the flows of one process (8 bytes per flow, not a copy).
    pub process: Option<Arc<ProcessInfo>>,
    /// Open before netmon started (seeded from sock_diag).
    pub existing: bool,
    /// When netmon saw it begin (for existing flows: when netmon found it).
    pub start_ns: u64,
    /// Last sign of life: start, a datagram, counters that moved.
    pub last_active_ns: u64,
    pub state: FlowState,
    counters: Packed,
}

impl Flow {
    /// Bytes and packets each way, as far as known.
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    /// The flow as the connection part of an event: `src` is the initiator.
    pub fn connection(&self, backend: &str) -> Connection {
        let local = self.key.local();
        let remote = self.key.remote();
        let (src, dst) = match self.direction {
            Some(Direction::Inbound) => (remote, local),
            _ => (local, remote),
        };
        Connection {
            proto: self.key.proto,
            family: Family::of(&dst.ip()),
            direction: self.direction,
            src: Some(Endpoint::new(src.ip(), src.port())),
            dst: Endpoint::new(dst.ip(), dst.port()),
            process: self.process.as_deref().cloned(),
            backend: backend.to_owned(),
            netns: (self.key.netns != 0).then_some(self.key.netns),
            failed: false,
            bytes: None,
            existing: self.existing,
        }
    }

    fn proto_index(&self) -> usize {
        proto_index(self.key.proto)
    }
}

fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

/// What [`FlowTable::open`] needs to know about a new flow.
#[derive(Clone, Debug)]
pub struct Open {
    pub key: FlowKey,
    pub direction: Option<Direction>,
    pub process: Option<Arc<ProcessInfo>>,
    pub existing: bool,
    pub now_ns: u64,
}

/// The table. See the module documentation.
pub struct FlowTable {
    cfg: FlowConfig,
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    index: HashMap<FlowKey, u32>,
    /// UDP flows by (pid, remote endpoint), the key of the kernel's `UDP_PEERS` map,
    /// hashed to 64 bits (16 bytes a bucket instead of 40); a hit is checked against
    /// the flow itself, so a collision can only miss, never mix flows up.
    udp_peers: HashMap<u64, u32>,
    /// Per protocol, slots ordered by last activity (oldest first).
    idle: [BTreeSet<(u64, u32)>; 2],
    stats: FlowStats,
    /// The seed of the `udp_peers` ids: fixed for the table's life, unknown outside it
    /// (remote ports are chosen by others; a known seed would let them collide ids).
    peer_seed: foldhash::fast::RandomState,
}

/// The `udp_peers` key of a process and a remote endpoint.
fn peer_id(seed: &foldhash::fast::RandomState, pid: u32, remote: SocketAddr) -> u64 {
    use std::hash::BuildHasher as _;
    seed.hash_one((pid, ip_bytes(remote.ip()), remote.port()))
}

/// What happened to an [`Open`].
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// False when the key was already in the table and the flow was updated.
    pub new: bool,
    /// The flow evicted to make room, if the table was full.
    pub evicted: Option<Flow>,
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> FlowTable {
        FlowTable {
            cfg,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            udp_peers: HashMap::default(),
            idle: [BTreeSet::new(), BTreeSet::new()],
            stats: FlowStats {
                cap: cfg.cap as u64,
                ..FlowStats::default()
            },
            peer_seed: foldhash::fast::RandomState::default(),
        }
    }

    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Counters for `stats.flows`.
    pub fn stats(&self) -> FlowStats {
        FlowStats {
            active: self.index.len() as u64,
            ..self.stats.clone()
        }
    }

    /// Counts a `flow` summary written and a failed socket dump (the table does not
    /// write or dump, but owns the counters `stats` reports).
    pub fn count_summaries(&mut self, n: u64) {
        self.stats.summaries += n;
    }

    pub fn count_sock_diag_error(&mut self) {
        self.stats.sock_diag_errors += 1;
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        let slot = *self.index.get(key)?;
        self.slots[slot as usize].as_ref()
    }

    /// Every flow, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slots.iter().flatten()
    }

    /// Up to `max` flows from slot `from` on, and the slot to go on from (`None`: the
    /// end), so a reader can walk the table in steps between other work.
    pub fn chunk(&self, from: usize, max: usize) -> (Vec<&Flow>, Option<usize>) {
        let mut out = Vec::with_capacity(max.min(self.len()));
        for (i, slot) in self.slots.iter().enumerate().skip(from) {
            if out.len() == max {
                return (out, Some(i));
            }
            if let Some(f) = slot {
                out.push(f);
            }
        }
        (out, None)
    }

    /// A flow begins (a `connect`, `accept` or `udp` event, or a socket found at start).
    ///
    /// When the key is already there: a UDP flow is the same peer pair again (the kernel
    /// reports a peer anew after its map entry was evicted), so it is kept and touched;
    /// a TCP flow is a new connection on a reused tuple, or the kernel's report of a
    /// socket seeded just before, so the new information replaces the old.
    pub fn open(&mut self, open: Open) -> Opened {
        if let Some(&slot) = self.index.get(&open.key) {
            let flow = self.slots[slot as usize].as_mut().expect("indexed slot");
            let old_active = flow.last_active_ns;
            let old_pid = flow.process.as_ref().map(|p| p.pid);
            match open.key.proto {
                Proto::Udp => {
                    if open.process.is_some() {
                        flow.process = open.process;
                    }
                    flow.direction = flow.direction.or(open.direction);
                    flow.existing &= open.existing;
                }
                Proto::Tcp => {
                    flow.direction = open.direction.or(flow.direction);
                    if open.process.is_some() {
                        flow.process = open.process;
                    }
                    if !open.existing {
                        flow.existing = false;
                        flow.start_ns = open.now_ns;
                        flow.counters = Packed::default();
                        flow.state = FlowState::Established;
                    }
                }
            }
            let new_active = old_active.max(open.now_ns);
            flow.last_active_ns = new_active;
            let pid = flow.process.as_ref().map(|p| p.pid);
            let proto = flow.proto_index();
            self.reindex_idle(proto, slot, old_active, new_active);
            if open.key.proto == Proto::Udp {
                let remote = open.key.remote();
                if let Some(old) = old_pid.filter(|&o| Some(o) != pid)
                    && self.udp_peers.get(&peer_id(&self.peer_seed, old, remote)) == Some(&slot)
                {
                    self.udp_peers
                        .remove(&peer_id(&self.peer_seed, old, remote));
                }
                if let Some(pid) = pid {
                    self.udp_peers
                        .insert(peer_id(&self.peer_seed, pid, remote), slot);
                }
            }
            return Opened {
                new: false,
                evicted: None,
            };
        }
        let evicted = if self.index.len() >= self.cfg.cap {
            self.evict_oldest()
        } else {
            None
        };
        let flow = Flow {
            key: open.key,
            direction: open.direction,
            existing: open.existing,
            start_ns: open.now_ns,
            last_active_ns: open.now_ns,
            state: match open.key.proto {
                Proto::Tcp => FlowState::Established,
                Proto::Udp => FlowState::Active,
            },
            counters: Packed::default(),
            process: open.process,
        };
        let pid = flow.process.as_ref().map(|p| p.pid);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(flow);
                s
            }
            None => {
                self.slots.push(Some(flow));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(open.key, slot);
        self.idle[proto_index(open.key.proto)].insert((open.now_ns, slot));
        if open.key.proto == Proto::Udp
            && let Some(pid) = pid
        {
            self.udp_peers
                .insert(peer_id(&self.peer_seed, pid, open.key.remote()), slot);
        }
        self.stats.opened += 1;
        if open.existing {
            self.stats.existing += 1;
        }
        Opened { new: true, evicted }
    }

    /// The flow ended (a `close` from the kernel): removes and returns it.
    pub fn close(&mut self, key: &FlowKey) -> Option<Flow> {
        let slot = *self.index.get(key)?;
        let flow = self.remove(slot);
        self.stats.closed += 1;
        Some(flow)
    }

    /// The kernel's counters of one UDP peer (`UDP_PEERS`): `datagrams` sent and their
    /// `bytes` (UDP header included), the last at `last_ns`. Returns false when no UDP
    /// flow of that process and peer is in the table.
    pub fn observe_udp(
        &mut self,
        pid: u32,
        remote: SocketAddr,
        last_ns: u64,
        datagrams: u64,
        bytes: u64,
    ) -> bool {
        let Some(&slot) = self.udp_peers.get(&peer_id(&self.peer_seed, pid, remote)) else {
            return false;
        };
        let Some(flow) = self.slots[slot as usize].as_mut() else {
            return false;
        };
        if flow.key.remote() != remote || flow.process.as_ref().map(|p| p.pid) != Some(pid) {
            return false; // a 64-bit hash collision
        }
        let mut c = flow.counters.get();
        c.packets_sent = Some(datagrams);
        // Payload, as for TCP: the 8-byte UDP header of each datagram comes out.
        c.bytes_sent = Some(bytes.saturating_sub(8 * datagrams));
        flow.counters = Packed::of(c);
        let old = flow.last_active_ns;
        if last_ns > old {
            flow.last_active_ns = last_ns;
            self.reindex_idle(1, slot, old, last_ns);
        }
        true
    }

    /// New counters for a flow (TCP: from sock_diag's `tcp_info`). Counters that moved
    /// count as activity at `now_ns`. Returns false when the flow is not in the table.
    pub fn set_counters(
        &mut self,
        key: &FlowKey,
        counters: Counters,
        state: FlowState,
        now_ns: u64,
    ) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let Some(flow) = self.slots[slot as usize].as_mut() else {
            return false;
        };
        let counters = Packed::of(counters);
        let moved = flow.counters != counters;
        flow.counters = counters;
        flow.state = state;
        if moved && now_ns > flow.last_active_ns {
            let old = flow.last_active_ns;
            flow.last_active_ns = now_ns;
            let proto = flow.proto_index();
            self.reindex_idle(proto, slot, old, now_ns);
        }
        true
    }

    /// Ends up to `limit` UDP flows idle for at least the timeout, oldest first; they
    /// are returned so the caller writes their `close` (and forgets the kernel's entry
    /// for them, so the next datagram to that peer is reported as a new flow). Call
    /// again until it returns nothing: batches keep memory flat when many expire.
    pub fn expire_udp(&mut self, now_ns: u64, limit: usize) -> Vec<Flow> {
        let mut ended = Vec::new();
        while ended.len() < limit
            && let Some(&(last, slot)) = self.idle[1].first()
        {
            if last.saturating_add(self.cfg.udp_idle_ns) > now_ns {
                break;
            }
            ended.push(self.remove(slot));
            self.stats.udp_expired += 1;
            self.stats.closed += 1;
        }
        ended
    }

    /// Flows that have lived at least one summary interval: each gets a `flow` event.
    pub fn long_lived(&self, now_ns: u64) -> impl Iterator<Item = &Flow> {
        let min_age = self.cfg.summary_interval_ns;
        self.iter()
            .filter(move |f| now_ns.saturating_sub(f.start_ns) >= min_age)
    }

    /// Drops the flow idle the longest, of either protocol.
    fn evict_oldest(&mut self) -> Option<Flow> {
        let tcp = self.idle[0].first().copied();
        let udp = self.idle[1].first().copied();
        let (_, slot) = match (tcp, udp) {
            (Some(t), Some(u)) => t.min(u),
            (Some(t), None) => t,
            (None, Some(u)) => u,
            (None, None) => return None,
        };
        self.stats.evicted += 1;
        Some(self.remove(slot))
    }

    fn remove(&mut self, slot: u32) -> Flow {
        let flow = self.slots[slot as usize].take().expect("indexed slot");
        self.index.remove(&flow.key);
        self.idle[flow.proto_index()].remove(&(flow.last_active_ns, slot));
        if flow.key.proto == Proto::Udp
            && let Some(p) = &flow.process
        {
            let peer = peer_id(&self.peer_seed, p.pid, flow.key.remote());
            if self.udp_peers.get(&peer) == Some(&slot) {
                self.udp_peers.remove(&peer);
            }
        }
        self.free.push(slot);
        flow
    }

    fn reindex_idle(&mut self, proto: usize, slot: u32, old: u64, new: u64) {
        if old != new {
            self.idle[proto].remove(&(old, slot));
            self.idle[proto].insert((new, slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_the_comments_state() {
        use std::mem::size_of;
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(size_of::<Packed>(), 40);
        assert_eq!(size_of::<Counters>(), 64);
        assert_eq!(size_of::<(u64, u32)>(), 16);
        assert_eq!(size_of::<((u32, SocketAddr), u32)>(), 40);
        assert_eq!(size_of::<(FlowKey, u32)>(), 48);
        assert!(
            size_of::<Option<Flow>>() <= 112,
            "{}",
            size_of::<Option<Flow>>()
        );
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proc_(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::kernel(pid, pid, comm.into(), 1000, 1000, 1)
    }

    fn tcp(local: &str, remote: &str) -> FlowKey {
        FlowKey::new(Proto::Tcp, 7, addr(local), addr(remote))
    }

    fn udp(local: &str, remote: &str) -> FlowKey {
        FlowKey::new(Proto::Udp, 7, addr(local), addr(remote))
    }

    fn open(key: FlowKey, pid: u32, now_s: u64) -> Open {
        Open {
            key,
            direction: Some(Direction::Outbound),
            process: Some(Arc::new(proc_(pid, "curl"))),
            existing: false,
            now_ns: now_s * NS_PER_S,
        }
    }

    fn table(cap: usize) -> FlowTable {
        FlowTable::new(FlowConfig {
            cap,
            ..FlowConfig::default()
        })
    }

    fn conn(direction: Option<Direction>, src: &str, dst: &str) -> Connection {
        let src = addr(src);
        let dst = addr(dst);
        Connection {
            proto: Proto::Tcp,
            family: Family::of(&dst.ip()),
            direction,
            src: Some(Endpoint::new(src.ip(), src.port())),
            dst: Endpoint::new(dst.ip(), dst.port()),
            process: None,
            backend: "tracepoint".into(),
            netns: Some(7),
            failed: false,
            bytes: None,
            existing: false,
        }
    }

    #[test]
    fn the_two_sockets_of_a_loopback_connection_are_two_flows_that_meet_their_closes() {
        // Client 127.0.0.1:40000 -> server 127.0.0.1:80, seen from both sockets.
        let connect = conn(Some(Direction::Outbound), "127.0.0.1:40000", "127.0.0.1:80");
        let accept = conn(Some(Direction::Inbound), "127.0.0.1:40000", "127.0.0.1:80");
        let kc = FlowKey::of_connection(&connect).unwrap();
        let ka = FlowKey::of_connection(&accept).unwrap();
        assert_ne!(kc, ka);
        assert_eq!(kc.local(), addr("127.0.0.1:40000"));
        assert_eq!(ka.local(), addr("127.0.0.1:80"));
        // Closes from the kernel carry the same src/dst/direction as the opening event.
        let close_client = conn(Some(Direction::Outbound), "127.0.0.1:40000", "127.0.0.1:80");
        let close_server = conn(Some(Direction::Inbound), "127.0.0.1:40000", "127.0.0.1:80");
        assert_eq!(FlowKey::of_connection(&close_client), Some(kc));
        assert_eq!(FlowKey::of_connection(&close_server), Some(ka));
        // A close of a flow netmon did not see begin has the local side first.
        let unknown = conn(None, "127.0.0.1:80", "127.0.0.1:40000");
        assert_eq!(FlowKey::of_connection(&unknown), Some(ka));
        // Other namespaces, other flows.
        let mut elsewhere = connect.clone();
        elsewhere.netns = Some(8);
        assert_ne!(FlowKey::of_connection(&elsewhere), Some(kc));
    }

    #[test]
    fn ipv4_and_ipv6_keys_round_trip() {
        let k = FlowKey::new(Proto::Tcp, 0, addr("10.0.0.1:1"), addr("[2001:db8::1]:443"));
        assert_eq!(k.local(), addr("10.0.0.1:1"));
        assert_eq!(k.remote(), addr("[2001:db8::1]:443"));
        assert_eq!(std::mem::size_of::<FlowKey>(), 44);
    }

    #[test]
    fn listen_has_no_flow() {
        let mut listen = conn(Some(Direction::Inbound), "0.0.0.0:0", "0.0.0.0:80");
        listen.src = None;
        assert_eq!(FlowKey::of_connection(&listen), None);
    }

    #[test]
    fn open_then_close_returns_the_flow_with_its_process() {
        let mut t = table(10);
        let k = tcp("127.0.0.1:40000", "127.0.0.1:80");
        assert!(t.open(open(k, 42, 1)).new);
        assert_eq!(t.len(), 1);
        let f = t.close(&k).unwrap();
        assert_eq!(f.process.unwrap().pid, 42);
        assert_eq!(f.start_ns, NS_PER_S);
        assert!(t.is_empty());
        assert!(t.close(&k).is_none());
        let s = t.stats();
        assert_eq!((s.opened, s.closed, s.active), (1, 1, 0));
    }

    #[test]
    fn a_kernel_report_replaces_a_seeded_tcp_flow() {
        let mut t = table(10);
        let k = tcp("127.0.0.1:40000", "127.0.0.1:80");
        let mut seed = open(k, 42, 1);
        seed.existing = true;
        seed.direction = None;
        t.open(seed);
        let o = t.open(open(k, 43, 2));
        assert!(!o.new);
        let f = t.get(&k).unwrap();
        assert!(!f.existing);
        assert_eq!(f.process.as_ref().unwrap().pid, 43);
        assert_eq!(f.direction, Some(Direction::Outbound));
        assert_eq!(f.start_ns, 2 * NS_PER_S);
        assert_eq!(t.stats().existing, 1);
    }

    #[test]
    fn udp_flows_expire_after_the_idle_timeout_unless_datagrams_keep_coming() {
        let mut t = FlowTable::new(FlowConfig {
            udp_idle_ns: 60 * NS_PER_S,
            ..FlowConfig::default()
        });
        let quiet = udp("127.0.0.1:5000", "127.0.0.53:53");
        let busy = udp("127.0.0.1:5001", "127.0.0.1:443");
        let tcp_flow = tcp("127.0.0.1:40000", "127.0.0.1:80");
        t.open(open(quiet, 10, 0));
        t.open(open(busy, 11, 0));
        t.open(open(tcp_flow, 12, 0));
        // The busy peer sends at 50 s: 3 datagrams of 100 payload bytes each.
        assert!(t.observe_udp(11, addr("127.0.0.1:443"), 50 * NS_PER_S, 3, 324));
        assert!(!t.observe_udp(99, addr("127.0.0.1:443"), 50 * NS_PER_S, 1, 9));
        assert!(t.expire_udp(59 * NS_PER_S, 100).is_empty());
        let ended = t.expire_udp(60 * NS_PER_S, 100);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].key, quiet);
        assert!(t.get(&busy).is_some());
        let ended = t.expire_udp(110 * NS_PER_S, 100);
        assert_eq!(ended.len(), 1);
        let c = ended[0].counters();
        assert_eq!((c.packets_sent, c.bytes_sent), (Some(3), Some(300)));
        // TCP flows never expire, however idle.
        assert!(t.expire_udp(10_000 * NS_PER_S, 100).is_empty());
        assert!(t.get(&tcp_flow).is_some());
        let s = t.stats();
        assert_eq!((s.udp_expired, s.closed, s.active), (2, 2, 1));
        // The peer index is gone with the flow.
        assert!(!t.observe_udp(11, addr("127.0.0.1:443"), 200 * NS_PER_S, 4, 400));
    }

    #[test]
    fn expiry_comes_in_batches_oldest_first() {
        let mut t = table(100);
        for i in 0..10u16 {
            t.open(open(
                udp(&format!("127.0.0.1:{}", 5000 + i), "127.0.0.53:53"),
                10 + i as u32,
                i as u64,
            ));
        }
        let first = t.expire_udp(1000 * NS_PER_S, 4);
        let ports: Vec<u16> = first.iter().map(|f| f.key.local_port).collect();
        assert_eq!(ports, vec![5000, 5001, 5002, 5003]);
        assert_eq!(t.expire_udp(1000 * NS_PER_S, 4).len(), 4);
        assert_eq!(t.expire_udp(1000 * NS_PER_S, 4).len(), 2);
        assert!(t.expire_udp(1000 * NS_PER_S, 4).is_empty());
        assert_eq!(t.stats().udp_expired, 10);
    }

    #[test]
    fn a_udp_peer_reported_again_is_the_same_flow() {
        let mut t = table(10);
        let k = udp("127.0.0.1:5000", "127.0.0.53:53");
        t.open(open(k, 10, 0));
        let o = t.open(open(k, 10, 30));
        assert!(!o.new);
        assert_eq!(t.len(), 1);
        let f = t.get(&k).unwrap();
        assert_eq!((f.start_ns, f.last_active_ns), (0, 30 * NS_PER_S));
    }

    #[test]
    fn the_cap_evicts_the_flow_idle_longest_and_counts_it() {
        let mut t = table(3);
        let a = tcp("127.0.0.1:1", "127.0.0.1:80");
        let b = udp("127.0.0.1:2", "127.0.0.1:53");
        let c = tcp("127.0.0.1:3", "127.0.0.1:80");
        t.open(open(a, 1, 1));
        t.open(open(b, 2, 2));
        t.open(open(c, 3, 3));
        // `a` moves (bytes at 10 s), so `b` is now idle the longest.
        let moved = Counters {
            bytes_sent: Some(5),
            ..Counters::default()
        };
        assert!(t.set_counters(&a, moved, FlowState::Established, 10 * NS_PER_S));
        let d = tcp("127.0.0.1:4", "127.0.0.1:80");
        let o = t.open(open(d, 4, 11));
        assert_eq!(o.evicted.map(|f| f.key), Some(b));
        // Counters that did not move are not activity: `c` (3 s) goes before `a` (10 s).
        assert!(t.set_counters(&a, moved, FlowState::Established, 12 * NS_PER_S));
        let e = tcp("127.0.0.1:5", "127.0.0.1:80");
        assert_eq!(t.open(open(e, 5, 13)).evicted.map(|f| f.key), Some(c));
        let f = tcp("127.0.0.1:6", "127.0.0.1:80");
        assert_eq!(t.open(open(f, 6, 14)).evicted.map(|f| f.key), Some(a));
        assert_eq!(t.len(), 3);
        let s = t.stats();
        assert_eq!((s.evicted, s.opened, s.active, s.cap), (3, 6, 3, 3));
        // An evicted flow's close finds nothing; its UDP counters match nothing.
        assert!(t.close(&b).is_none());
        assert!(!t.observe_udp(2, addr("127.0.0.1:53"), 20 * NS_PER_S, 1, 9));
    }

    #[test]
    fn slots_are_reused_after_close() {
        let mut t = table(2);
        for i in 0..100u16 {
            let k = tcp(&format!("127.0.0.1:{}", 1000 + i), "127.0.0.1:80");
            t.open(open(k, 1, i as u64));
            t.close(&k).unwrap();
        }
        assert!(t.slots.len() <= 1);
        assert_eq!(t.stats().evicted, 0);
    }

    #[test]
    fn summaries_cover_flows_older_than_the_interval() {
        let mut t = FlowTable::new(FlowConfig {
            summary_interval_ns: 60 * NS_PER_S,
            ..FlowConfig::default()
        });
        let old = tcp("127.0.0.1:1", "127.0.0.1:80");
        let young = tcp("127.0.0.1:2", "127.0.0.1:80");
        t.open(open(old, 1, 0));
        t.open(open(young, 1, 30));
        let due: Vec<FlowKey> = t.long_lived(60 * NS_PER_S).map(|f| f.key).collect();
        assert_eq!(due, vec![old]);
        assert_eq!(t.long_lived(90 * NS_PER_S).count(), 2);
    }

    #[test]
    fn a_flow_renders_with_the_initiator_as_src() {
        let mut t = table(4);
        let k = tcp("127.0.0.1:80", "127.0.0.1:40000");
        let mut o = open(k, 9, 0);
        o.direction = Some(Direction::Inbound);
        o.existing = true;
        t.open(o);
        let c = t.get(&k).unwrap().connection("tracepoint");
        assert_eq!(c.src.unwrap().port, 40000);
        assert_eq!(c.dst.port, 80);
        assert!(c.existing);
        assert_eq!(c.netns, Some(7));
        assert_eq!(c.process.unwrap().comm, "curl");
        assert!(
            std::mem::size_of::<Flow>() <= 144,
            "{}",
            std::mem::size_of::<Flow>()
        );
    }
}
