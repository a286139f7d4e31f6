//! `netmon run`: attach, then move events from the ring buffer to the sink until a
//! signal arrives or the reader of stdout goes away.
//!
//! One task owns everything (ring buffer, counters, sink): no locks and no userspace
//! queue that could drop. The ring buffer is the bounded queue; when userspace falls
//! behind the kernel counts each event it could not hand over, and `stats` reports it.
use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use chrono::Utc;
use clap::Args;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock::BootClock,
    decode::{self, kind_name},
    event::{Event, EventBody, Stats},
    output::{Format, Sink},
    probe::{BackendChoice, LoadOptions, LossCounters, Tracer},
    system,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Output format: `json` (JSON Lines, for log shippers) or `text` (for people).
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Append events to FILE instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Which kernel hooks to use: `auto` picks the best the kernel accepts, per capability.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Seconds between `stats` lines.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stats_interval: u64,
    /// Ring buffer size in KiB: a power of two, at least 4. Bigger absorbs longer bursts.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: must be a power of two between 4 and 1048576"
        ));
    }
    Ok(kib)
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    // Open the output before touching the kernel: a bad path fails with nothing attached.
    let sink = match &args.output {
        Some(path) => Sink::append_to(args.format, path)
            .with_context(|| format!("cannot open --output {} for appending", path.display()))?,
        None => Sink::stdout(args.format),
    };
    let mut tracer = Tracer::start(&LoadOptions {
        backend: args.backend,
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
    })?;
    for w in &tracer.report.warnings {
        eprintln!("netmon: warning: {w}");
    }
    let ring = tracer.take_ring_buffer()?;
    let losses = tracer.take_loss_counters()?;
    let host = system::hostname();
    let probe = Event {
        ts: Utc::now(),
        host: host.clone(),
        body: EventBody::Probe(tracer.report.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut pump = Pump {
        sink,
        host,
        clock: BootClock::sample(),
        counts: BTreeMap::new(),
        malformed: 0,
        losses,
        started: Instant::now(),
    };
    let outcome =
        runtime.block_on(pump.event_loop(ring, probe, Duration::from_secs(args.stats_interval)));
    // `tracer` (and every link it owns) is dropped here: all programs are detached.
    drop(tracer);
    outcome.map(|()| ExitCode::SUCCESS)
}

/// Owns the sink and every counter; moves records from the kernel to the output.
struct Pump {
    sink: Sink,
    host: String,
    clock: BootClock,
    counts: BTreeMap<&'static str, u64>,
    malformed: u64,
    losses: LossCounters,
    started: Instant,
}

impl Pump {
    async fn event_loop(
        &mut self,
        ring: RingBuf<MapData>,
        probe: Event,
        interval: Duration,
    ) -> Result<()> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as
        // long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("cannot poll the ring buffer")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        // Announce only once signals are handled: whoever reacts to the probe line by
        // stopping netmon must get the orderly shutdown and the final stats.
        if !self.write(&probe)? {
            return Ok(());
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("polling the ring buffer")?;
                    if !self.drain(guard.get_inner_mut())? {
                        return Ok(()); // the reader of our output went away
                    }
                    guard.clear_ready();
                }
                _ = ticker.tick() => {
                    self.clock = BootClock::sample();
                    if !self.write_stats(false)? {
                        return Ok(());
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        // Whatever the kernel handed over before the signal is still written.
        if self.drain(ring.get_mut())? {
            self.write_stats(true)?;
        }
        Ok(())
    }

    /// Writes every record in the ring buffer. `false` when the output is closed.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<bool> {
        while let Some(record) = ring.next() {
            match decode::decode(&record, &self.clock, &self.host) {
                Ok(event) => {
                    *self.counts.entry(event.body.type_name()).or_default() += 1;
                    if !self.write_unflushed(&event)? {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    self.malformed += 1;
                    if self.malformed <= 5 {
                        eprintln!("netmon: warning: skipped a malformed kernel record: {e}");
                    }
                }
            }
        }
        self.flush()
    }

    fn write_stats(&mut self, last: bool) -> Result<bool> {
        let mut lost_by_type = BTreeMap::new();
        let mut lost = 0;
        for (kind, n) in self.losses.read() {
            if let Some(name) = kind_name(kind) {
                lost_by_type.insert(name.to_owned(), n);
            }
            lost += n;
        }
        let mut events: BTreeMap<String, u64> = ["connect", "accept", "udp", "listen", "close"]
            .iter()
            .map(|k| (k.to_string(), 0))
            .collect();
        for (k, v) in &self.counts {
            events.insert(k.to_string(), *v);
        }
        let stats = Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Stats(Stats {
                uptime_s: self.started.elapsed().as_secs_f64(),
                events,
                lost,
                lost_by_type,
                malformed: self.malformed,
                r#final: last,
            }),
        };
        self.write(&stats)
    }

    /// Writes and flushes one event; `false` when the output is closed.
    fn write(&mut self, event: &Event) -> Result<bool> {
        Ok(self.write_unflushed(event)? && self.flush()?)
    }

    fn write_unflushed(&mut self, event: &Event) -> Result<bool> {
        output_result(self.sink.write(event))
    }

    fn flush(&mut self) -> Result<bool> {
        output_result(self.sink.flush())
    }
}

/// A broken pipe (the shipper died, `| head` finished) ends netmon quietly; any other
/// write error is reported.
fn output_result(r: io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => bail!("cannot write events: {e}"),
    }
}
