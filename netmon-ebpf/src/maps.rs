//! Every map the programs share, named after `netmon_common::maps`.
//! Sizes here are defaults; userspace may resize `EVENTS` before loading.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netmon_common::{
    FlowStart, KernelConfig, ListenerKey, Process, UdpPeerKey, UdpPeerStats, kind,
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

#[map(name = "DNS_PORTS")]
pub static DNS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
