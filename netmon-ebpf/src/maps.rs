//! Every map the programs share, named after `netmon_common::maps`.
//! Sizes here are defaults; userspace may resize `EVENTS` before loading.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netmon_common::{
    DNS_PORT_WORDS, FlowStart, KernelConfig, ListenerKey, Process, UdpPeerKey, UdpPeerStats, kind,
};

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

#[map(name = "CONNECTING")]
pub static CONNECTING: LruHashMap<u64, Process> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "TCP_FLOWS")]
pub static TCP_FLOWS: LruHashMap<u64, FlowStart> = LruHashMap::with_max_entries(131072, 0);

#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, Process> = HashMap::with_max_entries(8192, 0);

#[map(name = "SOCKET_OWNERS")]
pub static SOCKET_OWNERS: LruHashMap<u64, Process> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "UDP_PEERS")]
pub static UDP_PEERS: LruHashMap<UdpPeerKey, UdpPeerStats> = LruHashMap::with_max_entries(65536, 0);

/// A bitmap of the 65,536 ports: bit `port % 32` of entry `port / 32`. An array, not a
/// hash: the verifier inlines array lookups, and the packet programs ask it about
/// every TCP packet when DNS is on.
#[map(name = "DNS_PORTS")]
pub static DNS_PORTS: Array<u32> = Array::with_max_entries(DNS_PORT_WORDS, 0);

/// Whether `port` (host byte order) carries DNS.
#[inline(always)]
pub fn is_dns_port(port: u16) -> bool {
    match DNS_PORTS.get((port >> 5) as u32) {
        Some(word) => (*word >> (port & 31)) & 1 != 0,
        None => false,
    }
}
