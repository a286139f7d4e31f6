//! Every map the programs share, named after `netmon_common::maps`, and the counters
//! of what those maps could not do (`MAP_COUNTERS`, see `netmon_common::kmap`).
//! Sizes here are defaults; userspace may resize `EVENTS` before loading.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netmon_common::{
    DNS_PORT_WORDS, FlowStart, KernelConfig, ListenerKey, Process, UdpPeerKey, UdpPeerStats, kind,
    kmap,
};

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

pub const CONNECTING_MAX: u32 = 16384;
pub const TCP_FLOWS_MAX: u32 = 131072;
pub const SOCKET_OWNERS_MAX: u32 = 65536;
pub const UDP_PEERS_MAX: u32 = 65536;
pub const DNS_RATE_MAX: u32 = 8192;

#[map(name = "CONNECTING")]
pub static CONNECTING: LruHashMap<u64, Process> = LruHashMap::with_max_entries(CONNECTING_MAX, 0);

#[map(name = "TCP_FLOWS")]
pub static TCP_FLOWS: LruHashMap<u64, FlowStart> = LruHashMap::with_max_entries(TCP_FLOWS_MAX, 0);

/// A plain hash: a full map refuses new listeners (counted) rather than evicting the
/// owners of live ones.
#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, Process> = HashMap::with_max_entries(8192, 0);

#[map(name = "SOCKET_OWNERS")]
pub static SOCKET_OWNERS: LruHashMap<u64, Process> =
    LruHashMap::with_max_entries(SOCKET_OWNERS_MAX, 0);

#[map(name = "UDP_PEERS")]
pub static UDP_PEERS: LruHashMap<UdpPeerKey, UdpPeerStats> =
    LruHashMap::with_max_entries(UDP_PEERS_MAX, 0);

/// Per process (tgid), the DNS rate limiter's state (`cgroup_dns.rs`).
#[map(name = "DNS_RATE")]
pub static DNS_RATE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(DNS_RATE_MAX, 0);

#[map(name = "MAP_COUNTERS")]
pub static MAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kmap::SLOTS, 0);

#[map(name = "MAP_LIVE")]
pub static MAP_LIVE: Array<u64> = Array::with_max_entries(2 * kmap::COUNT, 0);

/// A new key went into LRU map `map` of `capacity` entries: counted as inserted, and
/// as an eviction when the map was already full (the LRU made room by dropping one).
/// Two CPUs may both see room for one; the count then runs an eviction late.
#[inline(always)]
pub fn entered(map: u32, capacity: u32) {
    count(map, kmap::INSERTED);
    let (Some(live), Some(gone)) = (MAP_LIVE.get_ptr_mut(map), MAP_LIVE.get(kmap::COUNT + map))
    else {
        return;
    };
    // SAFETY: valid map values; the add is atomic (BPF_ATOMIC_ADD), the read need not be.
    unsafe {
        let held = (*live).saturating_sub(*gone);
        if held >= u64::from(capacity) {
            count(map, kmap::EVICTED);
        } else {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(live, 1);
        }
    }
}

/// A key of LRU map `map` was removed by a program.
#[inline(always)]
pub fn left(map: u32) {
    count(map, kmap::REMOVED);
    if let Some(live) = MAP_LIVE.get_ptr_mut(map) {
        // SAFETY: a valid map value; adding u64::MAX is an atomic decrement.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(live, u64::MAX) };
    }
}

/// Adds one to counter `counter` (`kmap::INSERTED`…) of map `map` (`kmap::CONNECTING`…).
#[inline(always)]
pub fn count(map: u32, counter: u32) {
    bump(kmap::slot(map, counter));
}

/// Adds one to slot `slot` of `MAP_COUNTERS`.
#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(c) = MAP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
}

/// `-EEXIST` as map helpers return it.
pub const EEXIST: i32 = -17;

/// Inserts `$value` under `$key` into `$map`, counted as map `$id`: a new key is
/// `INSERTED` (for an LRU map of `$lru_capacity` entries, 0 for a plain hash, also
/// checked for eviction), an existing one is replaced (not new), a refusal is
/// `INSERT_FAILED` (the `Err` is returned). A macro because the map types differ.
macro_rules! put {
    ($map:expr, $id:expr, $lru_capacity:expr, $key:expr, $value:expr) => {{
        let key = $key;
        let value = $value;
        match $map.insert(&key, &value, aya_ebpf::bindings::BPF_NOEXIST as u64) {
            Ok(()) => {
                if $lru_capacity == 0 {
                    $crate::maps::count($id, netmon_common::kmap::INSERTED);
                } else {
                    $crate::maps::entered($id, $lru_capacity);
                }
                Ok(())
            }
            Err($crate::maps::EEXIST) => {
                $map.insert(&key, &value, aya_ebpf::bindings::BPF_ANY as u64)
            }
            Err(e) => {
                $crate::maps::count($id, netmon_common::kmap::INSERT_FAILED);
                Err(e)
            }
        }
    }};
}
pub(crate) use put;

/// Removes `$key` from LRU map `$map`, counted as `REMOVED` of map `$id` when it was there.
macro_rules! take {
    ($map:expr, $id:expr, $key:expr) => {{
        if $map.remove($key).is_ok() {
            $crate::maps::left($id);
        }
    }};
}
pub(crate) use take;

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
