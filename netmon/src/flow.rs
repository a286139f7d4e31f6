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
//!   (either protocol; in the order netmon saw activity, see `idle.rs`), and every
//!   eviction is counted.
//! - **Memory**: a slab of compact entries (104 bytes) plus a key index that holds
//!   slot numbers only (4-byte buckets: the key is the slot's, hashed again when the
//!   index grows) and the idle order, lists threaded through the slots (8 bytes each,
//!   `idle.rs`): about 122 bytes per flow with the maps' overhead
//!   (`tests/flow_memory.rs`); process context is shared (`Arc`), never copied per
//!   flow. `tests::sizes_the_comments_state` keeps these figures true.
//!
//! Over 600 lines on purpose: one data structure whose slab and key indexes must change
//! together (split, its invariants would cross files). The idle order, which needs
//! only slot numbers, is `idle.rs`; the tests are `tests.rs`.
use std::{
    hash::BuildHasher as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use hashbrown::HashTable;

use self::idle::IdleOrder;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Four writes that hold every field: the derived `Hash` made eight calls into the
/// hasher (each array with its length), and the table hashes a key per event.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.local_ip));
        state.write_u128(u128::from_ne_bytes(self.remote_ip));
        state.write_u64(
            u64::from(self.netns) << 32
                | u64::from(self.local_port) << 16
                | u64::from(self.remote_port),
        );
        state.write_u8(self.proto as u8);
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

/// [`Counters`] as stored in a flow: four values, `u64::MAX` for one not known (32
/// bytes instead of 64; a flow is paid for 100,000 times). No counter of a real flow
/// reaches 2^64 - 1 bytes or packets; one that did would read as not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    values: [u64; 4],
}

impl Default for Packed {
    fn default() -> Packed {
        Packed {
            values: [UNKNOWN; 4],
        }
    }
}

const UNKNOWN: u64 = u64::MAX;

impl Packed {
    fn of(c: Counters) -> Packed {
        let known = |v: Option<u64>| v.unwrap_or(UNKNOWN);
        Packed {
            values: [
                known(c.bytes_sent),
                known(c.bytes_received),
                known(c.packets_sent),
                known(c.packets_received),
            ],
        }
    }

    fn get(&self) -> Counters {
        let v = |i: usize| Some(self.values[i]).filter(|&v| v != UNKNOWN);
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
            backend: backend.to_owned().into(),
            netns: (self.key.netns != 0).then_some(self.key.netns),
            failed: false,
            bytes: None,
            existing: self.existing,
        }
    }

    fn proto_index(&self) -> usize {
        proto_index(self.key.proto)
    }

    /// The process and remote endpoint of a UDP flow with a process: its name in
    /// the kernel's `UDP_PEERS` map.
    fn peer(&self) -> Option<(u32, SocketAddr)> {
        let process = self
            .process
            .as_ref()
            .filter(|_| self.key.proto == Proto::Udp)?;
        Some((process.pid, self.key.remote()))
    }

    fn is_peer(&self, pid: u32, remote: SocketAddr) -> bool {
        self.peer() == Some((pid, remote))
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
    /// Slot numbers by their flow's key. A `HashMap<FlowKey, u32>` would keep a second
    /// copy of every 44-byte key (48-byte buckets: 6 MB at 100,000 flows); the key is
    /// already in the slot.
    index: HashTable<u32>,
    /// The hasher of `index`.
    key_seed: foldhash::fast::RandomState,
    /// Slots of UDP flows by (pid, remote endpoint), the key of the kernel's
    /// `UDP_PEERS` map, which the slot's flow holds (4-byte buckets); the newest flow
    /// of a pair when several share it.
    udp_peers: HashTable<u32>,
    /// Per protocol, slots by last activity (least recent first).
    idle: IdleOrder<2>,
    stats: FlowStats,
    /// The seed of the `udp_peers` ids: fixed for the table's life, unknown outside it
    /// (remote ports are chosen by others; a known seed would let them collide ids).
    peer_seed: foldhash::fast::RandomState,
}

/// The `udp_peers` key of a process and a remote endpoint.
fn peer_id(seed: &foldhash::fast::RandomState, pid: u32, remote: SocketAddr) -> u64 {
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
            index: HashTable::new(),
            key_seed: foldhash::fast::RandomState::default(),
            udp_peers: HashTable::new(),
            idle: IdleOrder::new(),
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
        let slot = self.find(key)?;
        self.slots[slot as usize].as_ref()
    }

    /// The slot of the flow with `key`.
    fn find(&self, key: &FlowKey) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.key_seed.hash_one(key), |&s| {
                slots[s as usize].as_ref().is_some_and(|f| f.key == *key)
            })
            .copied()
    }

    /// Indexes `slot`, whose flow is in place and whose key is not indexed yet.
    fn index_slot(&mut self, slot: u32) {
        let (slots, seed) = (&self.slots, &self.key_seed);
        let key_hash = |s: &u32| {
            let flow = slots[*s as usize].as_ref().expect("indexed slot");
            seed.hash_one(flow.key)
        };
        self.index.insert_unique(key_hash(&slot), slot, key_hash);
    }

    /// The slot of the UDP flow of process `pid` with `remote`, as the kernel's
    /// `UDP_PEERS` map names it.
    fn find_peer(&self, pid: u32, remote: SocketAddr) -> Option<u32> {
        let slots = &self.slots;
        self.udp_peers
            .find(peer_id(&self.peer_seed, pid, remote), |&s| {
                slots[s as usize]
                    .as_ref()
                    .is_some_and(|f| f.is_peer(pid, remote))
            })
            .copied()
    }

    /// Points the `udp_peers` entry of `slot`'s process and remote at `slot` (a UDP
    /// flow in place, with its process): the newest flow of a peer pair wins.
    fn index_peer(&mut self, slot: u32) {
        let (slots, seed) = (&self.slots, &self.peer_seed);
        let Some((pid, remote)) = slots[slot as usize].as_ref().and_then(Flow::peer) else {
            return;
        };
        let hash = peer_id(seed, pid, remote);
        let same_peer = |&s: &u32| {
            slots[s as usize]
                .as_ref()
                .is_some_and(|f| f.is_peer(pid, remote))
        };
        let peer_hash = |s: &u32| {
            let (pid, remote) = slots[*s as usize]
                .as_ref()
                .and_then(Flow::peer)
                .expect("a peer-indexed slot holds a UDP flow with a process");
            peer_id(seed, pid, remote)
        };
        match self.udp_peers.find_mut(hash, same_peer) {
            Some(entry) => *entry = slot,
            None => {
                self.udp_peers.insert_unique(hash, slot, peer_hash);
            }
        }
    }

    /// Forgets the `udp_peers` entry of (`pid`, `remote`) if it points at `slot`.
    fn unindex_peer(&mut self, slot: u32, pid: u32, remote: SocketAddr) {
        if let Ok(entry) = self
            .udp_peers
            .find_entry(peer_id(&self.peer_seed, pid, remote), |&s| s == slot)
        {
            entry.remove();
        }
    }

    /// Forgets `slot` in the key index (its flow still in place, with that key).
    fn unindex_slot(&mut self, slot: u32, key: &FlowKey) {
        if let Ok(entry) = self
            .index
            .find_entry(self.key_seed.hash_one(key), |&s| s == slot)
        {
            entry.remove();
        }
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
        if let Some(slot) = self.find(&open.key) {
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
            if new_active != old_active {
                self.idle.touch(proto, slot);
            }
            if open.key.proto == Proto::Udp {
                let remote = open.key.remote();
                if let Some(old) = old_pid.filter(|&o| Some(o) != pid) {
                    self.unindex_peer(slot, old, remote);
                }
                if pid.is_some() {
                    self.index_peer(slot);
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
        self.index_slot(slot);
        self.idle.push_back(proto_index(open.key.proto), slot);
        self.index_peer(slot);
        self.stats.opened += 1;
        if open.existing {
            self.stats.existing += 1;
        }
        Opened { new: true, evicted }
    }

    /// The flow ended (a `close` from the kernel): removes and returns it.
    pub fn close(&mut self, key: &FlowKey) -> Option<Flow> {
        let slot = self.find(key)?;
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
        let Some(slot) = self.find_peer(pid, remote) else {
            return false;
        };
        let Some(flow) = self.slots[slot as usize].as_mut() else {
            return false;
        };
        let mut c = flow.counters.get();
        c.packets_sent = Some(datagrams);
        // Payload, as for TCP: the 8-byte UDP header of each datagram comes out.
        c.bytes_sent = Some(bytes.saturating_sub(8 * datagrams));
        flow.counters = Packed::of(c);
        if last_ns > flow.last_active_ns {
            flow.last_active_ns = last_ns;
            self.idle.touch(1, slot);
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
        let Some(slot) = self.find(key) else {
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
            flow.last_active_ns = now_ns;
            let proto = flow.proto_index();
            self.idle.touch(proto, slot);
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
            && let Some(slot) = self.idle.front(1)
        {
            let last = self.slots[slot as usize]
                .as_ref()
                .expect("idle slot")
                .last_active_ns;
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
        let oldest = |proto| {
            let slot = self.idle.front(proto)?;
            let flow = self.slots[slot as usize].as_ref().expect("idle slot");
            Some((flow.last_active_ns, slot))
        };
        let (_, slot) = match (oldest(0), oldest(1)) {
            (Some(t), Some(u)) => t.min(u),
            (Some(t), None) => t,
            (None, Some(u)) => u,
            (None, None) => return None,
        };
        self.stats.evicted += 1;
        Some(self.remove(slot))
    }

    fn remove(&mut self, slot: u32) -> Flow {
        let key = self.slots[slot as usize]
            .as_ref()
            .expect("indexed slot")
            .key;
        self.unindex_slot(slot, &key);
        let flow = self.slots[slot as usize].take().expect("indexed slot");
        self.idle.remove(flow.proto_index(), slot);
        if flow.key.proto == Proto::Udp
            && let Some(p) = &flow.process
        {
            self.unindex_peer(slot, p.pid, flow.key.remote());
        }
        self.free.push(slot);
        flow
    }
}

mod idle;
#[cfg(test)]
mod tests;
