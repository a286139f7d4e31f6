//! The kernel reader: waits for the ring buffer and turns its records into typed
//! [`Record`]s (exit, exec, fork, DNS packet, event). Owns the ring buffer, the boot clock that
//! dates records, and the kernel's loss and skipped-run counters; counts (and warns
//! about the first few) records that do not decode. Never waits for a consumer: what
//! it reads goes to the enrichment stage on the same thread.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use netmon_common::kind;

pub mod fill;

use super::enrich::Record;
use crate::{
    clock::BootClock,
    decode::{self, kind_name},
    dns,
    probe::{LossCounters, SkippedRuns},
    process,
};

pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    clock: BootClock,
    host: std::sync::Arc<str>,
    malformed: u64,
    losses: LossCounters,
    /// The kernel's count of runs of our programs it skipped.
    skipped: SkippedRuns,
    /// How full the ring is (`stats.ring_buffer`), sampled at each drain step.
    fill: fill::RingFill,
}

impl Reader {
    pub fn new(
        ring: RingBuf<MapData>,
        losses: LossCounters,
        skipped: SkippedRuns,
        host: std::sync::Arc<str>,
        fill: fill::RingFill,
    ) -> Result<Reader> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as
        // long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("cannot poll the ring buffer")?;
        Ok(Reader {
            ring,
            clock: BootClock::sample(),
            host,
            malformed: 0,
            losses,
            skipped,
            fill,
        })
    }

    /// Waits until the kernel has submitted records. Readiness is cleared before the
    /// caller drains (with [`Reader::read`] until it returns 0), so a record submitted
    /// meanwhile wakes the next wait.
    pub async fn wait(&mut self) -> Result<()> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("polling the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads up to `max` records into `out`; the number read (0: the ring is empty).
    pub fn read(&mut self, max: usize, out: &mut Vec<Record>) -> usize {
        self.fill.sample();
        let mut n = 0;
        while n < max {
            let Some(bytes) = self.ring.get_mut().next() else {
                break;
            };
            n += 1;
            let record = if let Some(pid) = process::exit_pid(&bytes) {
                Ok(Record::Exit(pid))
            } else {
                match decode::record_kind(&bytes) {
                    Ok(kind::DNS) => dns::decode_packet(&bytes, &self.clock).map(Record::Dns),
                    Ok(kind::EXEC) => decode::decode_exec(&bytes, &self.clock).map(Record::Exec),
                    Ok(kind::FORK) => decode::decode_fork(&bytes, &self.clock).map(Record::Fork),
                    _ => decode::decode(&bytes, &self.clock, &self.host).map(Record::Event),
                }
            };
            drop(bytes);
            match record {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.malformed += 1;
                    if self.malformed <= 5 {
                        eprintln!("netmon: warning: skipped a malformed kernel record: {e}");
                    }
                }
            }
        }
        n
    }

    /// Samples the boot clock again (it drifts against wall time, e.g. under NTP).
    pub fn resample_clock(&mut self) {
        self.clock = BootClock::sample();
    }

    pub fn clock(&self) -> &BootClock {
        &self.clock
    }

    /// `stats.ring_buffer`: the fill now and its peak since the previous `stats`.
    pub fn ring_buffer(&self) -> crate::event::RingBufferStats {
        let (now, peak) = self.fill.take_for_stats();
        crate::event::RingBufferStats {
            size_bytes: now.size,
            used_bytes: now.used,
            peak_used_bytes: peak,
        }
    }

    /// Records that did not decode.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Events the kernel could not hand over: in total and per type.
    pub fn lost(&self) -> (u64, BTreeMap<String, u64>) {
        let mut by_type = BTreeMap::new();
        let mut lost = 0;
        for (kind, n) in self.losses.read() {
            if let Some(name) = kind_name(kind) {
                by_type.insert(name.to_owned(), n);
            }
            lost += n;
        }
        (lost, by_type)
    }

    /// `stats.kernel_maps`, and DNS packets the kernel's rate limit held back.
    pub fn kernel_maps(&self) -> (BTreeMap<String, crate::event::KernelMapStats>, u64) {
        self.losses.kernel_maps()
    }

    /// Runs of our programs the kernel skipped, per program; `None` on kernels that
    /// do not count them.
    pub fn skipped_runs(&self) -> Option<BTreeMap<String, u64>> {
        self.skipped.read()
    }
}
