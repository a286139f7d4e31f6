//! `netmon_ring_buffer_*`: the kernel ring buffer's fill, read at scrape time from the
//! ring's positions ([`crate::pipeline::reader::fill`]), so a scrape sees it even while
//! the event loop is stalled (that is when it matters).
use prometheus::{Gauge, IntGauge, core::Desc, proto::MetricFamily};

use crate::pipeline::reader::fill::{RingFill, ratio};

pub struct Collector {
    fill: RingFill,
    size: IntGauge,
    used: IntGauge,
    ratio: Gauge,
    peak: Gauge,
}

impl Collector {
    pub fn new(fill: RingFill) -> Collector {
        let g = |name: &str, help: &str| IntGauge::new(name, help).expect("valid family");
        let f = |name: &str, help: &str| Gauge::new(name, help).expect("valid family");
        Collector {
            fill,
            size: g(
                "netmon_ring_buffer_size_bytes",
                "Size of the kernel → netmon ring buffer (--ring-buffer-kib).",
            ),
            used: g(
                "netmon_ring_buffer_used_bytes",
                "Bytes of the ring buffer the kernel reserved that netmon has not read yet, now (record headers included).",
            ),
            ratio: f(
                "netmon_ring_buffer_fill_ratio",
                "netmon_ring_buffer_used_bytes / netmon_ring_buffer_size_bytes, now (1: full, the kernel loses events).",
            ),
            peak: f(
                "netmon_ring_buffer_peak_fill_ratio",
                "Highest fill ratio seen since the previous scrape (sampled at every drain step and at the scrape).",
            ),
        }
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.size.desc();
        d.extend(self.used.desc());
        d.extend(self.ratio.desc());
        d.extend(self.peak.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (now, peak) = self.fill.take_for_scrape();
        self.size.set(now.size.min(i64::MAX as u64) as i64);
        self.used.set(now.used.min(i64::MAX as u64) as i64);
        self.ratio.set(ratio(now.used, now.size));
        self.peak.set(ratio(peak, now.size));
        let mut out = self.size.collect();
        out.extend(self.used.collect());
        out.extend(self.ratio.collect());
        out.extend(self.peak.collect());
        out
    }
}
