//! `netmon run`: attach, then move events from the ring buffer to the sink until a
//! signal arrives or the reader of stdout goes away.
//!
//! One task owns everything (ring buffer, counters, sink): no locks and no userspace
//! queue that could drop. The ring buffer is the bounded queue; when userspace falls
//! behind the kernel counts each event it could not hand over, and `stats` reports it.
use std::{
    collections::{BTreeMap, HashSet},
    io,
    net::IpAddr,
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
    sync::{mpsc, watch},
};

use netmon_common::kind;

use crate::{
    analysis::Analyzer,
    clock::BootClock,
    decode::{self, kind_name},
    event::{Direction, Event, EventBody, Stats},
    flow::{FlowConfig, NS_PER_S},
    output::{Format, Sink},
    probe::{BackendChoice, LoadOptions, LossCounters, SkippedRuns, Tracer},
    process,
    procfs::ProcResolver,
    scan::monitor::{Monitor, MonitorCounters},
    system,
};

mod tracker;
mod watchdog;
use tracker::{Summaries, Tracker};

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
    /// Seconds between `flow` summaries of long-lived flows (bytes so far).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub flow_interval: u64,
    /// Seconds without a datagram after which a UDP flow is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub udp_timeout: u64,
    /// Most flows tracked at once; beyond it the flows idle the longest are dropped
    /// (and counted in `stats`).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_flows: u64,
    #[command(flatten)]
    pub config: super::ConfigArgs,
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
    // Read the configuration and open the output before touching the kernel: a bad
    // file fails with nothing attached.
    let config = args.config.load()?;
    let monitor = Monitor::new(&config.scan)?;
    // Counted: the stop watchdog needs to know whether output is still going out.
    let out: Box<dyn io::Write + Send> = match &args.output {
        Some(path) => Box::new(watchdog::Counted(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("cannot open --output {} for appending", path.display())
                })?,
        )),
        None => Box::new(watchdog::Counted(io::stdout())),
    };
    let sink = Sink::new(args.format, out);
    let mut tracer = Tracer::start(&LoadOptions {
        backend: args.backend,
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        dns_ports: if config.dns.enabled {
            config.dns.all_ports()
        } else {
            Vec::new()
        },
    })?;
    for w in &tracer.report.warnings {
        eprintln!("netmon: warning: {w}");
    }
    let ring = tracer.take_ring_buffer()?;
    let losses = tracer.take_loss_counters()?;
    let skipped = tracer.skipped_runs();
    release_free_memory();
    let host = system::hostname();
    let udp_peers = match tracer.take_udp_peers() {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("netmon: warning: UDP byte counters and idle expiry are off: {e}");
            None
        }
    };
    let backend_of = |cap: &str| {
        tracer
            .report
            .capabilities
            .iter()
            .find(|c| c.capability == cap)
            .and_then(|c| c.backend.clone())
            .unwrap_or_else(|| "unknown".into())
    };
    let tracker = Tracker::new(
        FlowConfig {
            cap: args.max_flows as usize,
            udp_idle_ns: args.udp_timeout * NS_PER_S,
            summary_interval_ns: args.flow_interval * NS_PER_S,
        },
        udp_peers,
        tracer.netns_known,
        (backend_of("tcp_close"), backend_of("udp_send")),
        host.clone(),
    );
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
        skipped,
        started: Instant::now(),
        tracker,
        analyzer: Analyzer::new(&config, Box::new(ProcResolver::default())),
        batch: Vec::new(),
        scan: None,
    };
    let intervals = Intervals {
        stats: Duration::from_secs(args.stats_interval),
        flow: Duration::from_secs(args.flow_interval),
        // Often enough that a UDP flow closes within a quarter of its timeout.
        udp: Duration::from_secs((args.udp_timeout / 4).clamp(1, 15)),
    };
    let monitor = monitor.enabled().then_some(monitor);
    let outcome = runtime.block_on(pump.event_loop(ring, probe, intervals, monitor));
    // The pump holds duplicates of the program fds (for `skipped_runs`): closed first, so
    // that dropping `tracer` (and every link it owns) unloads every program.
    drop(pump);
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
    /// The kernel's count of runs of our programs it skipped.
    skipped: SkippedRuns,
    started: Instant,
    /// DNS transactions, names of flows, detection rules.
    analyzer: Analyzer,
    /// Events (and alerts) made from the current record, in output order.
    batch: Vec<Event>,
    /// Flows and process context (see `tracker.rs`).
    tracker: Tracker,
    /// The scanner's side of the loop, when `[scan]` allows a network.
    scan: Option<ScanFeed>,
}

/// What the event loop keeps of the scanner task: where remote peers go and where its
/// counters come from. The task's change events arrive on a channel the loop polls.
struct ScanFeed {
    peers: mpsc::Sender<IpAddr>,
    /// Peers already handed over (the monitor ignores repeats anyway; this keeps the
    /// channel free of them). Cleared when it grows large.
    sent: HashSet<IpAddr>,
    counters: watch::Receiver<MonitorCounters>,
}

/// Peers remembered as handed over before the set is cleared.
const MAX_SENT_PEERS: usize = 65_536;

impl ScanFeed {
    /// Hands the event's remote address to the scanner, once. Never blocks: when the
    /// scanner is busy and its queue full, the peer is offered again with its next flow.
    fn offer(&mut self, event: &Event) {
        let Some(ip) = remote_address(event) else {
            return;
        };
        if self.sent.contains(&ip) {
            return;
        }
        if self.sent.len() >= MAX_SENT_PEERS {
            self.sent.clear();
        }
        if self.peers.try_send(ip).is_ok() {
            self.sent.insert(ip);
        }
    }
}

/// The remote end of a flow event: the peer this machine talked to.
fn remote_address(event: &Event) -> Option<IpAddr> {
    match &event.body {
        EventBody::Connect(c) | EventBody::Udp(c) => Some(c.dst.ip),
        EventBody::Accept(c) => c.src.as_ref().map(|s| s.ip),
        EventBody::Flow(f) => Some(if f.conn.direction == Some(Direction::Inbound) {
            f.conn.src.as_ref()?.ip
        } else {
            f.conn.dst.ip
        }),
        _ => None,
    }
}

/// Timers of the event loop.
struct Intervals {
    stats: Duration,
    flow: Duration,
    udp: Duration,
}

impl Pump {
    async fn event_loop(
        &mut self,
        ring: RingBuf<MapData>,
        probe: Event,
        intervals: Intervals,
        monitor: Option<Monitor>,
    ) -> Result<()> {
        let interval = intervals.stats;
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as
        // long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("cannot poll the ring buffer")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        // A stop must work even when the reader of the output stalls (see watchdog.rs).
        watchdog::install().context("cannot start the stop watchdog")?;
        // The scanner runs beside the loop on the same thread; it only awaits sockets
        // and timers, so the ring buffer is served between its steps.
        let mut scan_events: Option<mpsc::Receiver<Event>> = None;
        let mut scan_task = None;
        if let Some(monitor) = monitor {
            let (peers, peers_rx) = mpsc::channel(4096);
            let (events_tx, events_rx) = mpsc::channel(1024);
            let (counters_tx, counters) = watch::channel(MonitorCounters::default());
            scan_task = Some(tokio::spawn(monitor.run(peers_rx, events_tx, counters_tx)));
            scan_events = Some(events_rx);
            self.scan = Some(ScanFeed {
                peers,
                sent: HashSet::new(),
                counters,
            });
        }
        // Sockets that were open before netmon: seeded after attaching, so a flow that
        // begins in between is in both the dump and the ring buffer, and the kernel's
        // report (processed next) wins. Before the probe line, so that whatever
        // happens after that line (a listener closing, say) happens after the seed.
        self.tracker.seed(BootClock::monotonic_now_ns());
        // Announce only once signals are handled: whoever reacts to the probe line by
        // stopping netmon must get the orderly shutdown and the final stats.
        if !self.write(&probe)? {
            return Ok(());
        }
        if !self.write_summaries(Summaries::Existing)? {
            return Ok(());
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let start = tokio::time::Instant::now();
        let mut flow_ticker = tokio::time::interval_at(start + intervals.flow, intervals.flow);
        let mut udp_ticker = tokio::time::interval_at(start + intervals.udp, intervals.udp);
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
                    // The flow table's maps leave their old arrays behind when they
                    // grow; hand those pages back (about 10 MB at 100,000 flows).
                    release_free_memory();
                    self.analyzer.tick(Utc::now(), &self.host, &mut self.batch);
                    if !self.write_batch()? {
                        return Ok(());
                    }
                    if !self.write_stats(false)? {
                        return Ok(());
                    }
                }
                _ = udp_ticker.tick() => {
                    self.tracker.read_udp_counters();
                    let now_ns = BootClock::monotonic_now_ns();
                    loop {
                        let closes = self.tracker.expire_udp(now_ns, 4096);
                        if closes.is_empty() {
                            break;
                        }
                        if !self.write_all(&closes)? {
                            return Ok(());
                        }
                    }
                }
                _ = flow_ticker.tick() => {
                    let seen = self.tracker.refresh_tcp_counters(BootClock::monotonic_now_ns());
                    // Closes reported before the dump are handled before the sweep.
                    if !self.drain(ring.get_mut())? {
                        return Ok(());
                    }
                    let missed = self.tracker.sweep_missed(seen, BootClock::monotonic_now_ns());
                    if !self.write_all(&missed)? || !self.write_summaries(Summaries::LongLived)? {
                        return Ok(());
                    }
                }
                change = next_scan_event(&mut scan_events) => match change {
                    Some(event) => {
                        self.batch.push(event);
                        if !self.write_batch()? {
                            return Ok(());
                        }
                    }
                    None => {
                        // The scanner stopped on its own (it only does when it panics).
                        eprintln!("netmon: warning: the scanner stopped; flows are still monitored");
                        scan_events = None;
                    }
                },
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        if let Some(task) = scan_task {
            task.abort();
        }
        if let Some(rx) = &mut scan_events {
            while let Ok(event) = rx.try_recv() {
                self.batch.push(event);
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
        let now_ns = BootClock::monotonic_now_ns();
        while let Some(record) = ring.next() {
            if let Some(pid) = process::exit_pid(&record) {
                self.tracker.process_exited(pid);
                continue;
            }
            // Flows and process context first (they enrich the event), then DNS,
            // names and rules (which read the enriched event).
            let decoded = if decode::record_kind(&record) == Ok(kind::DNS) {
                self.analyzer
                    .dns_record(&record, &self.clock, &self.host, &mut self.batch)
            } else {
                decode::decode(&record, &self.clock, &self.host).map(|mut event| {
                    self.tracker.on_event(&mut event, now_ns);
                    self.analyzer.event(event, &mut self.batch)
                })
            };
            if let Err(e) = decoded {
                self.malformed += 1;
                if self.malformed <= 5 {
                    eprintln!("netmon: warning: skipped a malformed kernel record: {e}");
                }
            }
            drop(record);
            if !self.write_batch_unflushed()? {
                return Ok(false);
            }
        }
        self.analyzer.tick(Utc::now(), &self.host, &mut self.batch);
        Ok(self.write_batch_unflushed()? && self.flush()?)
    }

    /// Writes the pending batch; `false` when the output is closed.
    fn write_batch_unflushed(&mut self) -> Result<bool> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut open = true;
        for event in batch.drain(..) {
            if !matches!(event.body, EventBody::Alert(_)) {
                *self.counts.entry(event.body.type_name()).or_default() += 1;
            }
            if open {
                open = self.write_unflushed(&event)?;
            }
        }
        self.batch = batch;
        Ok(open)
    }

    fn write_batch(&mut self) -> Result<bool> {
        Ok(self.write_batch_unflushed()? && self.flush()?)
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
        let mut events: BTreeMap<String, u64> =
            ["connect", "accept", "udp", "listen", "close", "dns"]
                .iter()
                .map(|k| (k.to_string(), 0))
                .collect();
        for (k, v) in &self.counts {
            events.insert(k.to_string(), *v);
        }
        let skipped = self.skipped.read();
        let stats = Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Stats(Stats {
                uptime_s: self.started.elapsed().as_secs_f64(),
                events,
                lost,
                lost_by_type,
                malformed: self.malformed,
                skipped_runs: skipped.as_ref().map(|m| m.values().sum()),
                skipped_runs_by_program: skipped.unwrap_or_default(),
                r#final: last,
                flows: Some(self.tracker.flow_stats()),
                processes: Some(self.tracker.process_stats()),
                dns: self.analyzer.dns_stats(),
                rules: self.analyzer.rule_stats(),
                scan: self.scan.as_ref().map(|s| s.counters.borrow().clone()),
                history: None,
            }),
        };
        self.write(&stats)
    }

    /// Writes `flow` summaries as they are made; `false` when the output is closed.
    fn write_summaries(&mut self, which: Summaries) -> Result<bool> {
        let now_ns = BootClock::monotonic_now_ns();
        let mut written = 0;
        for event in self.tracker.summaries(which, now_ns, &self.clock) {
            if !output_result(self.sink.write(&event))? {
                return Ok(false);
            }
            written += 1;
        }
        self.tracker.count_summaries(written);
        self.flush()
    }

    /// Writes and flushes events; `false` when the output is closed.
    fn write_all(&mut self, events: &[Event]) -> Result<bool> {
        for event in events {
            if !self.write_unflushed(event)? {
                return Ok(false);
            }
        }
        self.flush()
    }

    /// Writes and flushes one event; `false` when the output is closed.
    fn write(&mut self, event: &Event) -> Result<bool> {
        Ok(self.write_unflushed(event)? && self.flush()?)
    }

    fn write_unflushed(&mut self, event: &Event) -> Result<bool> {
        if let Some(scan) = &mut self.scan {
            scan.offer(event);
        }
        output_result(self.sink.write(event))
    }

    fn flush(&mut self) -> Result<bool> {
        output_result(self.sink.flush())
    }
}

/// The scanner's next change event; never ready when there is no scanner.
async fn next_scan_event(rx: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Loading parsed the kernel's BTF and the eBPF object, and growing maps free their
/// old arrays; glibc keeps freed memory in the heap. `malloc_trim` hands every free
/// page back, so the resident set is what netmon uses (it took a 6.18 start from 39
/// to 14 MiB). Cheap enough for every `stats` tick.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
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
