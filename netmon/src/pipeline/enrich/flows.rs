//! The flow side of `netmon run`: routes decoded events through the flow table and the
//! process-context cache, and produces what they add to the stream (the `close` of
//! every ended flow with its process filled in, UDP idle closes, `flow` summaries).
//!
//! Owned by the enrichment stage (`pipeline/enrich.rs`) on the pipeline's one thread:
//! no locks. It reads `/proc`, sock_diag and the kernel's `UDP_PEERS` map; the
//! decisions themselves are the pure [`FlowTable`]'s.
//!
//! Over 600 lines: about 500 of code around one piece of state (the flows and what
//! attributes them: listeners, interned processes) and 300 of tests; split further it
//! would spread that state over files.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use netmon_common::{AF_INET, AF_INET6, UdpPeerKey, UdpPeerStats};

use crate::{
    clock::BootClock,
    event::{
        Close, Direction, Event, EventBody, FlowStats, FlowSummary, ProcessInfo, ProcessStats,
        Proto,
    },
    flow::{Counters, Flow, FlowConfig, FlowKey, FlowState, FlowTable, Open},
    probe::UdpPeers,
    process::Processes,
    sockets::{self, DumpOptions, SocketInfo, TCP_LISTEN},
};

/// The TCP sockets a dump found, and in which network namespaces it looked.
pub struct TcpSeen {
    seen: HashSet<FlowKey>,
    dumped: HashSet<u32>,
}

/// Which flows get a `flow` summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summaries {
    /// Every interval: flows at least one interval old.
    LongLived,
    /// At start: flows that were open before netmon.
    Existing,
}

/// Flow tracking state of `netmon run`.
pub struct Tracker {
    flows: FlowTable,
    /// The run's one process-context cache (the rules share it).
    procs: Processes,
    udp_peers: Option<UdpPeers>,
    /// This process's network namespace: the one plain sock_diag dumps read.
    own_netns: Option<u32>,
    /// Whether events carry `netns`; when not, flows are keyed with netns 0.
    netns_known: bool,
    cgroup2: Option<PathBuf>,
    /// Backend names for events netmon makes itself (`close` of an idle UDP flow, `flow`).
    tcp_backend: String,
    udp_backend: String,
    host: std::sync::Arc<str>,
    /// The last process seen per pid, shared by its flows so each flow costs a pointer.
    interned: foldhash::HashMap<u32, Arc<ProcessInfo>>,
    /// Owner of each TCP listening port by (netns, port): from the sockets found at
    /// start and from `listen` events. The kernel cannot attribute an `accept` on a
    /// port that was listening before netmon started; this can.
    listeners: foldhash::HashMap<(u32, u16), Arc<ProcessInfo>>,
    /// Whether execs become `exec` events.
    exec_events: bool,
}

impl Tracker {
    pub fn new(
        cfg: FlowConfig,
        procs: Processes,
        udp_peers: Option<UdpPeers>,
        netns_known: bool,
        backends: (String, String),
        host: std::sync::Arc<str>,
    ) -> Tracker {
        Tracker {
            flows: FlowTable::new(cfg),
            procs,
            udp_peers,
            own_netns: sockets::own_netns(),
            netns_known,
            cgroup2: crate::system::cgroup2_mount().ok(),
            tcp_backend: backends.0,
            udp_backend: backends.1,
            host,
            interned: Default::default(),
            listeners: Default::default(),
            exec_events: false,
        }
    }

    #[cfg(test)]
    fn with_cache(cfg: FlowConfig, procs: crate::process::ProcessCache) -> Tracker {
        Tracker {
            flows: FlowTable::new(cfg),
            procs: Processes::new(procs),
            udp_peers: None,
            own_netns: Some(7),
            netns_known: true,
            cgroup2: None,
            tcp_backend: "tracepoint".into(),
            udp_backend: "tracepoint".into(),
            host: "h".into(),
            interned: Default::default(),
            listeners: Default::default(),
            exec_events: false,
        }
    }

    pub fn flow_stats(&self) -> FlowStats {
        self.flows.stats()
    }

    pub fn process_stats(&self) -> ProcessStats {
        self.procs.get().stats()
    }

    pub fn process_exited(&mut self, pid: u32, now_ns: u64) {
        self.procs.get().exited(pid, now_ns);
        self.interned.remove(&pid);
    }

    /// An exec for the process table; the `exec` event it makes when those are on.
    pub fn process_exec(
        &mut self,
        x: crate::process::Exec,
        host: &std::sync::Arc<str>,
    ) -> Option<Event> {
        let (pid, ts) = (x.pid, x.ts);
        let mut process = ProcessInfo::kernel(pid, pid, x.comm.clone(), x.uid, x.gid, x.cgroup_id);
        self.procs.get().exec(x);
        self.interned.remove(&pid);
        if !self.exec_events {
            return None;
        }
        self.procs.get().enrich(&mut process);
        Some(Event {
            ts,
            host: host.clone(),
            body: EventBody::Exec(crate::event::Exec { process }),
        })
    }

    /// A new process for the process table.
    pub fn process_fork(&mut self, f: crate::process::Fork) {
        self.interned.remove(&f.child_pid);
        self.procs.get().fork(f);
    }

    /// Fills in a process from the process table (for events that have no flow: `dns`).
    pub fn enrich_process(&mut self, p: &mut ProcessInfo) {
        self.procs.get().enrich(p);
    }

    /// Whether execs become `exec` events (off by default).
    pub fn set_exec_events(&mut self, on: bool) {
        self.exec_events = on;
    }

    /// One shared copy per process (its flows keep theirs after it exits).
    fn intern(&mut self, p: &ProcessInfo) -> Arc<ProcessInfo> {
        match self.interned.get(&p.pid) {
            Some(a) if **a == *p => a.clone(),
            _ => {
                let a = Arc::new(p.clone());
                self.interned.insert(p.pid, a.clone());
                a
            }
        }
    }

    /// Seeds the table with the TCP connections and connected UDP sockets that exist
    /// now, marked `existing` (the caller then writes a `flow` event for each, see
    /// [`Tracker::summaries`], so they are visible at once). Listeners decide the
    /// direction of seeded TCP flows: a socket whose local port is a listener's was
    /// accepted (inbound), any other was connected.
    pub fn seed(&mut self, now_ns: u64) {
        let (found, errors) = sockets::dump_partial(DumpOptions::ALL);
        for e in &errors {
            eprintln!("netmon: warning: sockets open before start are partly unknown: {e}");
            self.flows.count_sock_diag_error();
        }
        let inodes: HashSet<u32> = found.iter().map(|s| s.inode).filter(|&i| i != 0).collect();
        let owners = sockets::socket_owners(Path::new("/proc"), Some(&inodes));
        let mut by_pid: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
        let listeners = listener_ports(&found);
        let tcp_netns = self.seed_netns();
        for s in found
            .iter()
            .filter(|s| s.proto == Proto::Tcp && s.state == TCP_LISTEN)
        {
            let Some(&pid) = owners.by_inode.get(&s.inode).and_then(|p| p.first()) else {
                continue;
            };
            let owner = by_pid
                .entry(pid)
                .or_insert_with(|| self.procs.get().from_proc(pid, self.cgroup2.as_deref()))
                .clone();
            if let Some(owner) = owner {
                let owner = self.intern(&owner);
                self.listeners.insert((tcp_netns, s.local.port()), owner);
            }
        }
        for s in &found {
            let Some(state) = seed_state(s) else {
                continue;
            };
            let process = owners
                .by_inode
                .get(&s.inode)
                .and_then(|pids| pids.first())
                .and_then(|&pid| {
                    by_pid
                        .entry(pid)
                        .or_insert_with(|| self.procs.get().from_proc(pid, self.cgroup2.as_deref()))
                        .clone()
                });
            let direction = match s.proto {
                Proto::Udp => Some(Direction::Outbound),
                Proto::Tcp
                    if listeners.contains(&(s.local.ip(), s.local.port()))
                        || listeners.contains(&(unspecified(s.local.ip()), s.local.port()))
                        || listeners.contains(&(IpAddr::from([0u16; 8]), s.local.port())) =>
                {
                    Some(Direction::Inbound)
                }
                Proto::Tcp => Some(Direction::Outbound),
            };
            // UDP events carry no netns (no backend reads it for UDP), so neither do
            // UDP flows, or a seeded flow would never meet its socket's events.
            let netns = match s.proto {
                Proto::Tcp => self.seed_netns(),
                Proto::Udp => 0,
            };
            let key = FlowKey::new(s.proto, netns, s.local, s.remote);
            let process = process.map(|p| self.intern(&p));
            let opened = self.flows.open(Open {
                key,
                direction,
                process,
                existing: true,
                now_ns,
            });
            self.forget_evicted(opened.evicted);
            if let Some(tcp) = s.tcp {
                let counters = tcp_counters(tcp, direction, s.state);
                self.flows.set_counters(&key, counters, state, now_ns);
            }
        }
    }

    fn seed_netns(&self) -> u32 {
        if self.netns_known {
            self.own_netns.unwrap_or(0)
        } else {
            0
        }
    }

    /// Routes one decoded event: enriches its process, opens or closes its flow, and
    /// fills in what the kernel did not know (the process and direction of a flow that
    /// began before netmon, the context of a process already gone).
    pub fn on_event(&mut self, event: &mut Event, now_ns: u64) {
        let kind = event.body.type_name();
        let Some(conn) = event.body.connection_mut() else {
            return;
        };
        let key = FlowKey::of_connection(conn);
        match (kind, key) {
            ("close", Some(key)) => {
                let flow = self.flows.close(&key);
                if let Some(p) = conn.process.as_mut() {
                    match flow.as_ref().and_then(|f| f.process.as_ref()) {
                        // The context read when the flow began (the process may be gone).
                        Some(fp) if fp.pid == p.pid => {
                            p.detail = fp.detail.clone();
                            // The process's name as the flow knew it; the kernel's is
                            // the acting thread's.
                            if p.comm != fp.comm {
                                p.thread = Some(
                                    std::mem::replace(&mut p.comm, fp.comm.clone()).to_string(),
                                );
                            } else {
                                p.thread = None;
                            }
                        }
                        _ => self.procs.get().enrich(p),
                    }
                }
                let Some(flow) = flow else {
                    return;
                };
                if conn.process.is_none() {
                    conn.process = flow.process.as_deref().cloned();
                }
                let mut outbound_fixed = false;
                if conn.direction.is_none() && flow.direction.is_some() {
                    // The kernel put the local side in `src`; the contract wants the
                    // initiator there.
                    conn.direction = flow.direction;
                    match flow.direction {
                        Some(Direction::Inbound) => {
                            if let Some(src) = conn.src.take() {
                                conn.src = Some(std::mem::replace(&mut conn.dst, src));
                            }
                        }
                        _ => outbound_fixed = true,
                    }
                }
                conn.existing = flow.existing;
                // Not knowing the direction, the kernel left the active opener's SYN
                // in `bytes_sent` (it is acknowledged like a byte); now it is known.
                if outbound_fixed && let EventBody::Close(c) = &mut event.body {
                    c.bytes_sent = c.bytes_sent.map(|n| n.saturating_sub(1));
                }
            }
            ("connect" | "accept" | "udp", Some(key)) => {
                if kind == "accept" && conn.process.is_none() {
                    // A port that was listening before netmon: its owner from the start.
                    let port = (conn.netns.unwrap_or(0), conn.dst.port);
                    conn.process = self.listeners.get(&port).map(|p| (**p).clone());
                }
                if let Some(p) = conn.process.as_mut() {
                    self.procs.get().enrich(p);
                }
                if conn.failed {
                    return;
                }
                let process = conn.process.as_ref().map(|p| self.intern(p));
                let opened = self.flows.open(Open {
                    key,
                    direction: conn.direction,
                    process,
                    existing: false,
                    now_ns,
                });
                self.forget_evicted(opened.evicted);
            }
            _ => {
                if let Some(p) = conn.process.as_mut() {
                    self.procs.get().enrich(p);
                }
                if kind == "listen"
                    && let Some(p) = conn.process.as_ref()
                {
                    let owner = self.intern(p);
                    self.listeners
                        .insert((conn.netns.unwrap_or(0), conn.dst.port), owner);
                }
            }
        }
    }

    /// Reads the kernel's UDP counters (`UDP_PEERS`) into the table: bytes so far and
    /// the last datagram's time, which decides expiry.
    pub fn read_udp_counters(&mut self) {
        let entries: Vec<(UdpPeerKey, UdpPeerStats)> = self
            .udp_peers
            .as_ref()
            .map(UdpPeers::read_all)
            .unwrap_or_default();
        for (key, stats) in &entries {
            if let Some(remote) = peer_addr(key) {
                self.flows.observe_udp(
                    key.pid,
                    remote,
                    stats.last_ktime_ns,
                    stats.datagrams,
                    stats.bytes,
                );
            }
        }
    }

    /// Closes up to `limit` UDP flows idle past the timeout: their `close` events.
    pub fn expire_udp(&mut self, now_ns: u64, limit: usize) -> Vec<Event> {
        let ended = self.flows.expire_udp(now_ns, limit);
        let mut out = Vec::with_capacity(ended.len());
        for flow in ended {
            self.forget_udp_peer(&flow);
            out.push(self.own_close(&flow, flow.last_active_ns, "udp_idle"));
        }
        out
    }

    /// `flow` summaries, made one at a time so 100,000 of them never sit in memory
    /// together: of flows at least one interval old, or of the flows found at start.
    pub fn summaries<'a>(
        &'a self,
        which: Summaries,
        now_ns: u64,
        clock: &'a BootClock,
    ) -> impl Iterator<Item = Event> + 'a {
        let flows: Box<dyn Iterator<Item = &Flow>> = match which {
            Summaries::LongLived => Box::new(self.flows.long_lived(now_ns)),
            Summaries::Existing => Box::new(self.flows.iter().filter(|f| f.existing)),
        };
        flows.map(move |f| self.summary_event(f, now_ns, clock))
    }

    /// The live flow table in steps (`/api/v1/flows`): up to `max` flows from slot
    /// `from`, each as a `flow` event (bytes so far), and where to go on.
    pub fn flow_chunk(
        &self,
        from: usize,
        max: usize,
        now_ns: u64,
        clock: &BootClock,
    ) -> (Vec<Event>, Option<usize>) {
        let (flows, next) = self.flows.chunk(from, max);
        let events = flows
            .into_iter()
            .map(|f| self.summary_event(f, now_ns, clock))
            .collect();
        (events, next)
    }

    /// Counts summaries written (for `stats.flows.summaries`).
    pub fn count_summaries(&mut self, n: u64) {
        self.flows.count_summaries(n);
    }

    /// Refreshes TCP byte counters from sock_diag's `tcp_info`, in every network
    /// namespace that has flows, before summaries are written. Returns which sockets
    /// exist, for [`Tracker::sweep_missed`].
    pub fn refresh_tcp_counters(&mut self, now_ns: u64) -> TcpSeen {
        let own = self.seed_netns();
        // One pid per other namespace, to enter it for the dump.
        let mut others: HashMap<u32, u32> = HashMap::new();
        let mut any_own = false;
        for f in self.flows.iter().filter(|f| f.key.proto == Proto::Tcp) {
            if f.key.netns == own || !self.netns_known {
                any_own = true;
            } else if let Some(p) = &f.process {
                others.entry(f.key.netns).or_insert(p.pid);
            }
        }
        let opts = DumpOptions {
            tcp_info: true,
            tcp: true,
            udp: false,
        };
        let mut dumps: Vec<(u32, Vec<SocketInfo>)> = Vec::new();
        if any_own {
            match sockets::dump(opts) {
                Ok(s) => dumps.push((own, s)),
                Err(_) => self.flows.count_sock_diag_error(),
            }
        }
        for (netns, pid) in others {
            // The pid may have left that namespace or exited: check before trusting.
            if sockets::netns_of(pid) != Some(netns) {
                continue;
            }
            match sockets::dump_in_netns_of(pid, opts) {
                Ok(s) => dumps.push((netns, s)),
                Err(_) => self.flows.count_sock_diag_error(),
            }
        }
        let mut seen: HashSet<FlowKey> = HashSet::new();
        let dumped: HashSet<u32> = dumps.iter().map(|(n, _)| *n).collect();
        for (netns, socks) in dumps {
            for s in socks {
                let key = FlowKey::new(Proto::Tcp, netns, s.local, s.remote);
                seen.insert(key);
                let Some(tcp) = s.tcp else { continue };
                let Some(flow) = self.flows.get(&key) else {
                    continue;
                };
                let counters = tcp_counters(tcp, flow.direction, s.state);
                let state = seed_state(&s).unwrap_or(FlowState::Closing);
                self.flows.set_counters(&key, counters, state, now_ns);
            }
        }
        TcpSeen { seen, dumped }
    }

    /// A TCP flow at least one interval old whose socket was not in the dump ended
    /// without netmon seeing its `close` (lost to a full ring buffer): it leaves the
    /// table and its `close` (`reason: "missed"`, last known counters) is returned.
    /// The caller drains the ring buffer between the dump and this call: the kernel
    /// reports a close before the socket leaves its tables, so every close of a socket
    /// missing from the dump has been handled by then, unless it was lost.
    pub fn sweep_missed(&mut self, seen: TcpSeen, now_ns: u64) -> Vec<Event> {
        if !self.netns_known {
            // Keys carry no namespace: a flow missing here may live in another one.
            return Vec::new();
        }
        let min_age = self.flows.config().summary_interval_ns;
        let vanished: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|f| {
                f.key.proto == Proto::Tcp
                    && seen.dumped.contains(&f.key.netns)
                    && now_ns.saturating_sub(f.start_ns) >= min_age
                    && !seen.seen.contains(&f.key)
            })
            .map(|f| f.key)
            .collect();
        let mut out = Vec::with_capacity(vanished.len());
        for key in vanished {
            if let Some(flow) = self.flows.close(&key) {
                // An upper bound: the socket went away since the last look.
                out.push(self.own_close(&flow, now_ns, "missed"));
            }
        }
        out
    }

    /// A `close` netmon makes itself: `reason` says why, `end_ns` is when the flow was
    /// last known to be alive (its duration's end; none for flows older than netmon).
    fn own_close(&self, flow: &Flow, end_ns: u64, reason: &str) -> Event {
        let c = flow.counters();
        Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Close(Close {
                conn: flow.connection(self.backend_of(flow)),
                duration_ms: (!flow.existing)
                    .then(|| end_ns.saturating_sub(flow.start_ns) as f64 / 1e6),
                bytes_sent: c.bytes_sent,
                bytes_received: c.bytes_received,
                packets_sent: c.packets_sent,
                packets_received: c.packets_received,
                reason: Some(reason.into()),
            }),
        }
    }

    fn summary_event(&self, flow: &Flow, now_ns: u64, clock: &BootClock) -> Event {
        let backend = self.backend_of(flow);
        let start: DateTime<Utc> = clock.to_wall(flow.start_ns);
        let c = flow.counters();
        Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Flow(FlowSummary {
                conn: flow.connection(backend),
                state: flow.state.name().into(),
                start,
                duration_ms: now_ns.saturating_sub(flow.start_ns) as f64 / 1e6,
                bytes_sent: c.bytes_sent,
                bytes_received: c.bytes_received,
                packets_sent: c.packets_sent,
                packets_received: c.packets_received,
            }),
        }
    }

    fn backend_of(&self, flow: &Flow) -> &str {
        match flow.key.proto {
            Proto::Tcp => &self.tcp_backend,
            Proto::Udp => &self.udp_backend,
        }
    }

    /// A UDP flow left the table (evicted): forget the kernel's entry too, so the next
    /// datagram to that peer is reported and the flow comes back.
    fn forget_evicted(&mut self, evicted: Option<Flow>) {
        if let Some(flow) = evicted
            && flow.key.proto == Proto::Udp
        {
            self.forget_udp_peer(&flow);
        }
    }

    fn forget_udp_peer(&mut self, flow: &Flow) {
        let (Some(map), Some(p)) = (self.udp_peers.as_mut(), flow.process.as_ref()) else {
            return;
        };
        map.remove(&udp_peer_key(p.pid, flow.key.remote()));
    }
}

/// The flow state of a socket found by sock_diag; `None` when it is no flow (listeners,
/// unconnected UDP, TIME_WAIT leftovers, handshakes not done).
fn seed_state(s: &SocketInfo) -> Option<FlowState> {
    match s.proto {
        Proto::Udp => (s.remote.port() != 0).then_some(FlowState::Active),
        Proto::Tcp => match s.state {
            1 => Some(FlowState::Established),
            // FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING: still a flow, ending.
            4 | 5 | 8 | 9 | 11 => Some(FlowState::Closing),
            _ => None,
        },
    }
}

/// TCP listeners by (local address, port).
fn listener_ports(found: &[SocketInfo]) -> HashSet<(IpAddr, u16)> {
    found
        .iter()
        .filter(|s| s.proto == Proto::Tcp && s.state == TCP_LISTEN)
        .map(|s| (s.local.ip(), s.local.port()))
        .collect()
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// Payload bytes from `tcp_info`'s sequence-space counters, with SYN and FIN taken out
/// the way the kernel side does at close: the active opener's SYN is counted in its
/// `bytes_acked`; our FIN once it was acked (FIN_WAIT2, TIME_WAIT); the peer's FIN once
/// it arrived (CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT).
fn tcp_counters(tcp: sockets::TcpCounters, direction: Option<Direction>, state: u8) -> Counters {
    let syn = (direction == Some(Direction::Outbound)) as u64;
    let fin_acked = matches!(state, 5 | 6) as u64;
    let fin_received = matches!(state, 6 | 8 | 9 | 11) as u64;
    Counters {
        bytes_sent: Some(tcp.bytes_acked.saturating_sub(syn + fin_acked)),
        bytes_received: Some(tcp.bytes_received.saturating_sub(fin_received)),
        packets_sent: Some(tcp.data_segs_out as u64),
        packets_received: Some(tcp.data_segs_in as u64),
    }
}

/// The peer of a `UDP_PEERS` key, as events spell it.
fn peer_addr(key: &UdpPeerKey) -> Option<SocketAddr> {
    let ip = match key.family {
        AF_INET => IpAddr::from([
            key.dst_addr[0],
            key.dst_addr[1],
            key.dst_addr[2],
            key.dst_addr[3],
        ]),
        AF_INET6 => IpAddr::from(key.dst_addr).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, key.dst_port))
}

/// The `UDP_PEERS` key of a process and peer (the inverse of [`peer_addr`]).
fn udp_peer_key(pid: u32, remote: SocketAddr) -> UdpPeerKey {
    let mut dst_addr = [0u8; 16];
    let family = match remote.ip() {
        IpAddr::V4(v4) => {
            dst_addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            dst_addr = v6.octets();
            AF_INET6
        }
    };
    UdpPeerKey {
        pid,
        family,
        dst_port: remote.port(),
        dst_addr,
    }
}

#[cfg(test)]
mod tests;
