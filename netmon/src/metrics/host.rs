//! Host statistics of the monitored machine, read from `/proc` through the `procfs`
//! crate at scrape time (no parsers of our own; `statvfs(3)` for filesystem sizes):
//! CPU seconds by mode, load, memory and swap, space per mounted filesystem, I/O per
//! disk, bytes/packets/errors/drops per interface (of netmon's network namespace).
//!
//! `procfs` rather than `sysinfo`: it exposes the kernel's own counters unchanged (what
//! node-exporter reports, so the two agree), where `sysinfo` keeps its own refreshed
//! snapshots and deltas. A part that cannot be read is left out of that scrape.
use std::{collections::HashSet, ffi::CString, sync::Mutex};

use procfs::{Current as _, CurrentSI as _};
use prometheus::{CounterVec, GaugeVec, Opts, core::Desc, proto::MetricFamily};

/// Filesystem types that hold no user data (not reported).
const PSEUDO_FS: [&str; 24] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];
/// Most filesystems, disks and interfaces reported each (bounds the series).
const MAX_ITEMS: usize = 64;

/// The host families, filled at each scrape.
pub struct HostStats {
    cpu: CounterVec,
    load: [GaugeVec; 3],
    memory_total: GaugeVec,
    memory_available: GaugeVec,
    swap_total: GaugeVec,
    swap_free: GaugeVec,
    fs_size: GaugeVec,
    fs_avail: GaugeVec,
    fs_free: GaugeVec,
    disk_read_bytes: CounterVec,
    disk_written_bytes: CounterVec,
    disk_reads: CounterVec,
    disk_writes: CounterVec,
    disk_io_time: CounterVec,
    net: [CounterVec; 8],
    render: Mutex<()>,
}

fn g(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid family")
}

fn c(name: &str, help: &str, labels: &[&str]) -> CounterVec {
    CounterVec::new(Opts::new(name, help), labels).expect("valid family")
}

const NO_LABELS: &[&str] = &[];
const FS: [&str; 3] = ["device", "mountpoint", "fstype"];

impl Default for HostStats {
    fn default() -> Self {
        Self::new()
    }
}

impl HostStats {
    pub fn new() -> HostStats {
        let net = |dir: &str, what: &str, help: &str| {
            c(
                &format!("netmon_host_network_{dir}_{what}_total"),
                help,
                &["device"],
            )
        };
        HostStats {
            cpu: c(
                "netmon_host_cpu_seconds_total",
                "Seconds the CPUs spent in each mode, all CPUs summed (/proc/stat).",
                &["mode"],
            ),
            load: [
                g("netmon_host_load1", "1-minute load average.", &[]),
                g("netmon_host_load5", "5-minute load average.", &[]),
                g("netmon_host_load15", "15-minute load average.", &[]),
            ],
            memory_total: g(
                "netmon_host_memory_total_bytes",
                "MemTotal of /proc/meminfo.",
                &[],
            ),
            memory_available: g(
                "netmon_host_memory_available_bytes",
                "MemAvailable of /proc/meminfo.",
                &[],
            ),
            swap_total: g(
                "netmon_host_swap_total_bytes",
                "SwapTotal of /proc/meminfo.",
                &[],
            ),
            swap_free: g(
                "netmon_host_swap_free_bytes",
                "SwapFree of /proc/meminfo.",
                &[],
            ),
            fs_size: g(
                "netmon_host_filesystem_size_bytes",
                "Size of a mounted filesystem.",
                &FS,
            ),
            fs_avail: g(
                "netmon_host_filesystem_avail_bytes",
                "Space available to unprivileged users on a mounted filesystem.",
                &FS,
            ),
            fs_free: g(
                "netmon_host_filesystem_free_bytes",
                "Free space on a mounted filesystem.",
                &FS,
            ),
            disk_read_bytes: c(
                "netmon_host_disk_read_bytes_total",
                "Bytes read from a disk.",
                &["device"],
            ),
            disk_written_bytes: c(
                "netmon_host_disk_written_bytes_total",
                "Bytes written to a disk.",
                &["device"],
            ),
            disk_reads: c(
                "netmon_host_disk_reads_completed_total",
                "Reads completed.",
                &["device"],
            ),
            disk_writes: c(
                "netmon_host_disk_writes_completed_total",
                "Writes completed.",
                &["device"],
            ),
            disk_io_time: c(
                "netmon_host_disk_io_time_seconds_total",
                "Seconds the disk spent doing I/O.",
                &["device"],
            ),
            net: [
                net("receive", "bytes", "Bytes received on an interface."),
                net("transmit", "bytes", "Bytes sent on an interface."),
                net("receive", "packets", "Packets received on an interface."),
                net("transmit", "packets", "Packets sent on an interface."),
                net("receive", "errs", "Receive errors on an interface."),
                net("transmit", "errs", "Transmit errors on an interface."),
                net(
                    "receive",
                    "drop",
                    "Received packets dropped on an interface.",
                ),
                net(
                    "transmit",
                    "drop",
                    "Packets to send dropped on an interface.",
                ),
            ],
            render: Mutex::new(()),
        }
    }

    fn gauges(&self) -> Vec<&GaugeVec> {
        let mut v: Vec<&GaugeVec> = self.load.iter().collect();
        v.extend([
            &self.memory_total,
            &self.memory_available,
            &self.swap_total,
            &self.swap_free,
            &self.fs_size,
            &self.fs_avail,
            &self.fs_free,
        ]);
        v
    }

    fn counters(&self) -> Vec<&CounterVec> {
        let mut v = vec![
            &self.cpu,
            &self.disk_read_bytes,
            &self.disk_written_bytes,
            &self.disk_reads,
            &self.disk_writes,
            &self.disk_io_time,
        ];
        v.extend(self.net.iter());
        v
    }

    fn read(&self) {
        if let Ok(stat) = procfs::KernelStats::current() {
            let tps = procfs::ticks_per_second() as f64;
            let t = &stat.total;
            for (mode, ticks) in [
                ("user", Some(t.user)),
                ("nice", Some(t.nice)),
                ("system", Some(t.system)),
                ("idle", Some(t.idle)),
                ("iowait", t.iowait),
                ("irq", t.irq),
                ("softirq", t.softirq),
                ("steal", t.steal),
            ] {
                if let Some(ticks) = ticks {
                    self.cpu
                        .with_label_values(&[mode])
                        .inc_by(ticks as f64 / tps);
                }
            }
        }
        if let Ok(l) = procfs::LoadAverage::current() {
            for (g, v) in self.load.iter().zip([l.one, l.five, l.fifteen]) {
                g.with_label_values(NO_LABELS).set(f64::from(v));
            }
        }
        if let Ok(m) = procfs::Meminfo::current() {
            self.memory_total
                .with_label_values(NO_LABELS)
                .set(m.mem_total as f64);
            if let Some(a) = m.mem_available {
                self.memory_available
                    .with_label_values(NO_LABELS)
                    .set(a as f64);
            }
            self.swap_total
                .with_label_values(NO_LABELS)
                .set(m.swap_total as f64);
            self.swap_free
                .with_label_values(NO_LABELS)
                .set(m.swap_free as f64);
        }
        self.filesystems();
        if let Ok(disks) = procfs::diskstats() {
            for d in disks
                .iter()
                .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
                .take(MAX_ITEMS)
            {
                let l = [d.name.as_str()];
                // Sectors of /proc/diskstats are 512 bytes whatever the device's.
                self.disk_read_bytes
                    .with_label_values(&l)
                    .inc_by(d.sectors_read as f64 * 512.0);
                self.disk_written_bytes
                    .with_label_values(&l)
                    .inc_by(d.sectors_written as f64 * 512.0);
                self.disk_reads.with_label_values(&l).inc_by(d.reads as f64);
                self.disk_writes
                    .with_label_values(&l)
                    .inc_by(d.writes as f64);
                self.disk_io_time
                    .with_label_values(&l)
                    .inc_by(d.time_in_progress as f64 / 1000.0);
            }
        }
        if let Ok(devs) = procfs::net::dev_status() {
            let mut devs: Vec<_> = devs.into_values().collect();
            devs.sort_by(|a, b| a.name.cmp(&b.name));
            for d in devs.iter().take(MAX_ITEMS) {
                let values = [
                    d.recv_bytes,
                    d.sent_bytes,
                    d.recv_packets,
                    d.sent_packets,
                    d.recv_errs,
                    d.sent_errs,
                    d.recv_drop,
                    d.sent_drop,
                ];
                for (family, v) in self.net.iter().zip(values) {
                    family
                        .with_label_values(&[d.name.as_str()])
                        .inc_by(v as f64);
                }
            }
        }
    }

    fn filesystems(&self) {
        let Ok(mounts) = procfs::mounts() else {
            return;
        };
        let mut seen = HashSet::new();
        for m in mounts
            .iter()
            .filter(|m| !PSEUDO_FS.contains(&m.fs_vfstype.as_str()))
            .filter(|m| {
                !["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|p| under(&m.fs_file, p))
            })
        {
            if seen.len() >= MAX_ITEMS || !seen.insert(m.fs_file.clone()) {
                continue;
            }
            let Some((size, free, avail)) = statvfs(&m.fs_file) else {
                continue;
            };
            let l = [
                m.fs_spec.as_str(),
                m.fs_file.as_str(),
                m.fs_vfstype.as_str(),
            ];
            self.fs_size.with_label_values(&l).set(size);
            self.fs_free.with_label_values(&l).set(free);
            self.fs_avail.with_label_values(&l).set(avail);
        }
    }
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// Size, free and available bytes of the filesystem mounted at `path`.
fn statvfs(path: &str) -> Option<(f64, f64, f64)> {
    let c = CString::new(path).ok()?;
    // SAFETY: `c` is a NUL-terminated path; `buf` is written by the call before use.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return None;
    }
    let unit = buf.f_frsize as f64;
    Some((
        buf.f_blocks as f64 * unit,
        buf.f_bfree as f64 * unit,
        buf.f_bavail as f64 * unit,
    ))
}

impl prometheus::core::Collector for HostStats {
    fn desc(&self) -> Vec<&Desc> {
        let mut d: Vec<&Desc> = self.gauges().into_iter().flat_map(|g| g.desc()).collect();
        d.extend(self.counters().into_iter().flat_map(|c| c.desc()));
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        for g in self.gauges() {
            g.reset();
        }
        for c in self.counters() {
            c.reset();
        }
        self.read();
        let mut out: Vec<MetricFamily> = self
            .gauges()
            .into_iter()
            .flat_map(|g| g.collect())
            .collect();
        out.extend(self.counters().into_iter().flat_map(|c| c.collect()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector as _;

    #[test]
    fn a_scrape_reports_memory_cpu_and_interfaces() {
        let h = HostStats::new();
        let families = h.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for want in [
            "netmon_host_memory_total_bytes",
            "netmon_host_cpu_seconds_total",
            "netmon_host_network_receive_bytes_total",
            "netmon_host_filesystem_size_bytes",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn mount_prefixes_match_whole_components() {
        assert!(under("/proc/sys", "/proc"));
        assert!(under("/proc", "/proc"));
        assert!(!under("/procedures", "/proc"));
    }
}
