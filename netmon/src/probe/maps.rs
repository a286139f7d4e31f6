//! Userspace handles on the programs' maps and run counters: the configuration the
//! loader writes (`CONFIG`, `DNS_PORTS`), and what `netmon run` reads back (`EVENTS`,
//! `LOST`, `MAP_COUNTERS`, `UDP_PEERS`, the kernel's `recursion_misses` per program).
use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::ProgramFd,
};
use netmon_common::{KernelConfig, UdpPeerKey, UdpPeerStats, kind, kmap, maps};

use super::{Error, Tracer};
use crate::event::KernelMapStats;

/// The counted maps: (`kmap` id, map name in the object, name in `stats.kernel_maps`).
const COUNTED_MAPS: [(u32, &str, &str); kmap::COUNT as usize] = [
    (kmap::CONNECTING, maps::CONNECTING, "connecting"),
    (kmap::TCP_FLOWS, maps::TCP_FLOWS, "tcp_flows"),
    (kmap::LISTENERS, maps::LISTENERS, "listeners"),
    (kmap::SOCKET_OWNERS, maps::SOCKET_OWNERS, "socket_owners"),
    (kmap::UDP_PEERS, maps::UDP_PEERS, "udp_peers"),
    (kmap::DNS_RATE, maps::DNS_RATE, "dns_rate"),
];

impl Tracer {
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

    /// A handle that reads the kernel's per-kind loss counters and the counters of
    /// its maps (`MAP_COUNTERS`).
    pub fn take_loss_counters(&mut self) -> Result<LossCounters, Error> {
        let map = self
            .ebpf
            .take_map(maps::LOST)
            .ok_or(Error::MissingMap { name: maps::LOST })?;
        let array = PerCpuArray::try_from(map).map_err(|source| Error::Map {
            name: maps::LOST,
            source,
        })?;
        let capacities = COUNTED_MAPS.map(|(_, name, _)| {
            let data = match self.ebpf.map(name) {
                Some(Map::HashMap(d) | Map::LruHashMap(d)) => Some(d),
                _ => None,
            };
            data.and_then(|d| d.info().ok())
                .map_or(0, |i| u64::from(i.max_entries()))
        });
        let map = self
            .ebpf
            .take_map(maps::MAP_COUNTERS)
            .ok_or(Error::MissingMap {
                name: maps::MAP_COUNTERS,
            })?;
        let map_counters = PerCpuArray::try_from(map).map_err(|source| Error::Map {
            name: maps::MAP_COUNTERS,
            source,
        })?;
        Ok(LossCounters {
            array,
            map_counters,
            capacities,
        })
    }

    /// Handles on every loaded program, for the kernel's count of the runs it skipped.
    pub fn skipped_runs(&self) -> SkippedRuns {
        let programs = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_owned(), p.fd().ok()?.try_clone().ok()?)))
            .collect();
        SkippedRuns { programs }
    }

    /// A handle on `UDP_PEERS`, the kernel's per-(process, peer) UDP counters.
    pub fn take_udp_peers(&mut self) -> Result<UdpPeers, Error> {
        let map = self
            .ebpf
            .take_map(maps::UDP_PEERS)
            .ok_or(Error::MissingMap {
                name: maps::UDP_PEERS,
            })?;
        let map = BpfHashMap::try_from(map).map_err(|source| Error::Map {
            name: maps::UDP_PEERS,
            source,
        })?;
        let live = self
            .ebpf
            .take_map(maps::MAP_LIVE)
            .ok_or(Error::MissingMap {
                name: maps::MAP_LIVE,
            })?;
        let live = Array::try_from(live).map_err(|source| Error::Map {
            name: maps::MAP_LIVE,
            source,
        })?;
        Ok(UdpPeers {
            map,
            live,
            removed: 0,
        })
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

/// Reads and prunes `UDP_PEERS` (LRU hash of [`UdpPeerKey`] → [`UdpPeerStats`]).
pub struct UdpPeers {
    map: BpfHashMap<MapData, UdpPeerKey, UdpPeerStats>,
    /// `MAP_LIVE`, where the programs learn how many entries userspace removed (they
    /// count evictions from how full they believe the map is).
    live: Array<MapData, u64>,
    /// Entries this handle removed.
    removed: u64,
}

impl UdpPeers {
    /// Every entry now. Entries the kernel evicts meanwhile are skipped.
    pub fn read_all(&self) -> Vec<(UdpPeerKey, UdpPeerStats)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Forgets a peer, so the kernel reports its next datagram as a new `udp` event.
    pub fn remove(&mut self, key: &UdpPeerKey) {
        if self.map.remove(key).is_ok() {
            self.removed += 1;
            // Only userspace writes this slot; the programs read it.
            let _ = self
                .live
                .set(kmap::COUNT + kmap::UDP_PEERS, self.removed, 0);
        }
    }
}

/// Reads `LOST` (events the kernel could not reserve ring-buffer space for) and
/// `MAP_COUNTERS` (what the maps could not do).
pub struct LossCounters {
    array: PerCpuArray<MapData, u64>,
    map_counters: PerCpuArray<MapData, u64>,
    /// `max_entries` of each of [`COUNTED_MAPS`], in order.
    capacities: [u64; kmap::COUNT as usize],
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

    /// `stats.kernel_maps` by map name, and the DNS packets the rate limit held back.
    pub fn kernel_maps(&self) -> (BTreeMap<String, KernelMapStats>, u64) {
        let sum = |slot: u32| -> u64 {
            self.map_counters
                .get(&slot, 0)
                .map(|values| values.iter().fold(0u64, |a, v| a.saturating_add(*v)))
                .unwrap_or(0)
        };
        let out = COUNTED_MAPS
            .iter()
            .zip(self.capacities)
            .map(|((id, _, name), capacity)| {
                let stats = KernelMapStats {
                    capacity,
                    inserted: sum(kmap::slot(*id, kmap::INSERTED)),
                    removed: sum(kmap::slot(*id, kmap::REMOVED)),
                    insert_failed: sum(kmap::slot(*id, kmap::INSERT_FAILED)),
                    evicted: sum(kmap::slot(*id, kmap::EVICTED)),
                    missed: sum(kmap::slot(*id, kmap::MISSED)),
                };
                ((*name).to_owned(), stats)
            })
            .collect();
        (out, sum(kmap::DNS_RATE_LIMITED))
    }
}

/// Writes the programs' one `CONFIG` entry.
pub(super) fn write_config(ebpf: &mut Ebpf, config: KernelConfig) -> Result<(), Error> {
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

/// Fills the `DNS_PORTS` bitmap before the `dns` programs attach.
pub(super) fn fill_dns_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), String> {
    let map = ebpf
        .map_mut(maps::DNS_PORTS)
        .ok_or_else(|| format!("map {} is missing from the eBPF object", maps::DNS_PORTS))?;
    let mut map: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|e| format!("map {}: {e}", maps::DNS_PORTS))?;
    for (word, bits) in port_bitmap(ports) {
        map.set(word, bits, 0)
            .map_err(|e| format!("map {}: {e}", maps::DNS_PORTS))?;
    }
    Ok(())
}

/// The non-zero words of the `DNS_PORTS` bitmap for `ports`: (index, bits).
fn port_bitmap(ports: &[u16]) -> BTreeMap<u32, u32> {
    let mut words = BTreeMap::new();
    for &port in ports {
        *words.entry(u32::from(port) / 32).or_default() |= 1u32 << (port % 32);
    }
    words
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
    fn dns_ports_become_bitmap_words() {
        let words = port_bitmap(&[53, 5353, 63, 32]);
        assert_eq!(words.len(), 2);
        assert_eq!(words[&1], (1 << (53 - 32)) | (1 << 31) | 1);
        assert_eq!(words[&(5353 / 32)], 1 << (5353 % 32));
        assert!(u32::from(u16::MAX) / 32 < netmon_common::DNS_PORT_WORDS);
    }

    #[test]
    fn every_counted_map_has_its_slots() {
        let mut ids: Vec<u32> = COUNTED_MAPS.iter().map(|(id, _, _)| *id).collect();
        ids.sort();
        assert_eq!(ids, (0..kmap::COUNT).collect::<Vec<_>>());
        const {
            assert!(kmap::slot(kmap::COUNT - 1, kmap::PER_MAP - 1) < kmap::DNS_RATE_LIMITED);
            assert!(kmap::DNS_RATE_LIMITED < kmap::SLOTS);
        }
    }

    #[test]
    fn a_process_without_programs_reports_nothing_skipped() {
        let none = SkippedRuns {
            programs: Vec::new(),
        };
        assert_eq!(none.read(), None);
    }
}
