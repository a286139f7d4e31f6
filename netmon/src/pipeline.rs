//! `netmon run`'s pipeline, one stage per file, in the order an event goes through them:
//!
//! `reader` (ring-buffer drain: records → typed records) → `enrich` (flows, process
//! context, DNS names) → `detect` (rules: alerts) → `hub` (one `emit` that counts
//! `stats.events` and fans out `Arc<Event>`) → consumers, each on its own bounded queue:
//! `sink` (JSON/text output, every event), `scanner` (peers to scan), and whatever
//! subscribes with [`hub::Hub::subscribe`] (the history writer, the HTTP API, the
//! metrics, `netmon top`'s UI given as [`Options::consumer`]).
//!
//! One task on one thread owns the stages and their state (no locks); the timers that
//! flush `stats`, `flow` summaries and UDP idle closes also live here. What netmon makes
//! itself (summaries, its own closes, scanner changes, `probe`, `stats`) goes through
//! the same `emit` as kernel events.
//!
//! Over 600 lines: `run` (start-up in its order: attach, drop privileges, start
//! consumers) and `Stages` (the one loop that moves an event through every stage); each
//! stage is its own module below.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use chrono::Utc;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    clock::BootClock,
    config::Config,
    event::{DnsStats, Event, EventBody, Stats},
    flow::FlowConfig,
    output::Format,
    privileges,
    probe::{BackendChoice, LoadOptions, LogQueue, LogTo, Tracer},
    process::Processes,
    scan::monitor::Monitor,
    system,
};

pub mod detect;
pub mod enrich;
pub mod hub;
pub mod reader;
pub mod scanner;
pub mod sink;
pub mod state;
pub mod watchdog;

use enrich::{Enricher, Record, flows::Summaries};
use hub::{ConsumerGone, Hub};

/// What `netmon run` was asked to do, checked (see `cli/run.rs`).
pub struct Options {
    pub format: Format,
    /// Append to this file instead of writing to stdout.
    pub output: Option<PathBuf>,
    pub backend: BackendChoice,
    pub ring_buffer_bytes: u32,
    pub stats_interval: Duration,
    /// The ring buffer's drain timer: the programs wake netmon only when the ring is
    /// filling (see `LoadOptions::batched_wakeup_bytes`), so this bounds the latency.
    pub max_latency: Duration,
    /// The eBPF programs' own diagnostics (`--ebpf-log`).
    pub ebpf_log: crate::probe::EbpfLog,
    /// Send them as `log` events on the stream instead of stderr (`--events log`).
    pub ebpf_log_events: bool,
    pub flows: FlowConfig,
    /// Between `flow` summaries of long-lived flows.
    pub flow_interval: Duration,
    /// Between looks for idle UDP flows.
    pub udp_interval: Duration,
    pub config: Config,
    /// Test only: a consumer of this queue size that never reads, to show that a stalled
    /// consumer loses only its own events (`stats.consumers.stalled`).
    pub stalled_consumer: Option<usize>,
    /// `--keep-privileges`: skip the drop after start (see `privileges.rs`).
    pub keep_privileges: bool,
    /// The history to keep (`[history]`, `--history`), or none (`--no-history`).
    pub history: Option<crate::history::HistoryConfig>,
    /// The history's file was named (`--history FILE`, `[history] path`): when it
    /// cannot be opened the writer warns and retries. The default file instead turns
    /// the history off with one warning (a user who cannot write /var/lib/netmon).
    pub history_named: bool,
    /// Write every event to `format`/`output` (`netmon run`); off when the consumer
    /// below is the only face (`netmon top`).
    pub sink: bool,
    /// A consumer on a thread of its own, started once privileges are dropped (so it
    /// holds none); the pipeline stops when it returns, and returns its result.
    pub consumer: Option<Consumer>,
    /// Serve Prometheus metrics on this address (`--metrics ADDR`, see `metrics.rs`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The HTTP API to serve (`--api`), or none (`--api off`).
    pub api: Option<crate::api::ApiConfig>,
}

/// A face that runs on the pipeline's events ([`Options::consumer`]): its function
/// gets its own lossy hub subscription of `capacity` events.
pub struct Consumer {
    pub name: &'static str,
    pub capacity: usize,
    pub run: Box<dyn FnOnce(hub::Subscription) -> Result<()> + Send>,
}

/// Types `stats.events` always lists, 0 included.
const ALWAYS_COUNTED: [&str; 6] = ["connect", "accept", "udp", "listen", "close", "dns"];
/// Records read from the ring buffer per step, between which the loop emits.
const READ_BATCH: usize = 1024;

/// Attaches, runs the pipeline until SIGINT/SIGTERM or until the reader of the output
/// goes away ([`crate::output::OutputClosed`]), and detaches.
pub fn run(mut opts: Options) -> Result<()> {
    // Read the configuration and open the output before touching the kernel: a bad
    // file fails with nothing attached.
    let config = &opts.config;
    let monitor = Monitor::new(&config.scan)?;
    let sink = match opts.sink {
        true => Some(sink::open(opts.format, opts.output.as_deref())?),
        false => None,
    };
    // Bound before attaching (a taken port fails with nothing attached) and before the
    // privilege drop (a port below 1024 needs CAP_NET_BIND_SERVICE); served later.
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| {
            format!("cannot listen for --metrics on {addr} (give a free address and port)")
        })?),
        None => None,
    };
    // The API's ports and token too: a port in use fails before anything is attached.
    let api = opts
        .api
        .as_ref()
        .map(crate::api::bind)
        .transpose()?
        .flatten();
    let mut tracer = Tracer::start(&LoadOptions {
        backend: opts.backend,
        ring_buffer_bytes: opts.ring_buffer_bytes,
        dns_ports: if config.dns.enabled {
            config.dns.all_ports()
        } else {
            Vec::new()
        },
        wakeup_bytes: Some(LoadOptions::batched_wakeup_bytes(opts.ring_buffer_bytes)),
        ebpf_log: opts.ebpf_log,
        ebpf_log_to: if opts.ebpf_log_events {
            LogTo::Queue
        } else {
            LogTo::Stderr
        },
        dns_rate: config.dns.rate(),
    })?;
    for w in &tracer.report.warnings {
        eprintln!("netmon: warning: {w}");
    }
    let ring = tracer.take_ring_buffer()?;
    let ebpf_log = tracer.take_log_queue();
    let ring_fill =
        reader::fill::RingFill::new(std::os::fd::AsFd::as_fd(&ring), opts.ring_buffer_bytes)
            .context("cannot map the ring buffer's positions")?;
    let losses = tracer.take_loss_counters()?;
    let skipped = tracer.skipped_runs();
    release_free_memory();
    let host: std::sync::Arc<str> = system::hostname().into();
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
    let processes = Processes::default();
    let mut flows = enrich::flows::Tracker::new(
        opts.flows,
        processes.clone(),
        udp_peers,
        tracer.netns_known,
        (backend_of("tcp_close"), backend_of("udp_send")),
        host.clone(),
    );
    // Sockets that were open before netmon: seeded after attaching, so a flow that
    // begins in between is in both the dump and the ring buffer, and the kernel's
    // report (processed next) wins. Before the probe line, so that whatever happens
    // after that line (a listener closing, say) happens after the seed.
    flows.seed(BootClock::monotonic_now_ns());
    // Every process that runs now, so the kernel's exec/fork records (flowing since
    // the attach) have parents to hang lineage on. Reads other users' /proc entries:
    // before the drop.
    processes.get().seed();
    flows.set_exec_events(config.events.exec);
    // The last step that needs more than reading /proc (the seed reads every
    // process's fds): drop the rest. Before any thread starts: capabilities belong to
    // a thread, and one started earlier (the sink's, the watchdog's) would keep them.
    if !opts.keep_privileges {
        let keep = privileges::kept_after_start(monitor.enabled());
        if let Err(e) = privileges::drop_after_start(&keep) {
            eprintln!("netmon: warning: still running with every privilege it started with: {e}");
        }
    }
    let probe = Event {
        ts: Utc::now(),
        host: host.clone(),
        body: EventBody::Probe(tracer.report.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The reader registers the ring buffer with the runtime's reactor.
    let _runtime_context = runtime.enter();
    // Numbered on from the history's newest event, so that the API's ids never
    // repeat across runs that share a history (`history/replay.rs`).
    let mut hub = Hub::numbered_after(
        opts.history
            .as_ref()
            .map_or(0, |h| crate::history::replay::last_seq(&h.path)),
    );
    let sink_thread = match sink {
        Some(sink) => Some(
            sink::spawn(sink, hub.subscribe_lossless("sink", sink::QUEUE))
                .context("cannot start the output thread")?,
        ),
        None => None,
    };
    let (consumer_thread, consumer_done) = match opts.consumer.take() {
        Some(c) => {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let events = hub.subscribe(c.name, c.capacity);
            let run = c.run;
            let thread = std::thread::Builder::new()
                .name(c.name.into())
                .spawn(move || {
                    let result = run(events);
                    let _ = done_tx.send(());
                    result
                })
                .with_context(|| format!("cannot start the {} thread", c.name))?;
            (Some(thread), Some(done_rx))
        }
        None => (None, None),
    };
    let _stalled = opts.stalled_consumer.map(|n| hub.subscribe("stalled", n));
    // The history writer: its own thread and queue; a full queue drops for it alone
    // (`stats.consumers.history`), a failing disk only costs `stats.history.errors`.
    // The default file, when this user cannot make or write it: one warning, no
    // history (the writer would otherwise retry and count every event as dropped).
    // Checked after the privilege drop, as the writer will write.
    if !opts.history_named
        && let Some(h) = &opts.history
        && let Err(e) = crate::history::create(&h.path)
    {
        eprintln!(
            "netmon: warning: the history is off: {e}; give a writable --history FILE, or --no-history"
        );
        opts.history = None;
    }
    let history = match &opts.history {
        Some(h) => Some(
            crate::history::Writer::spawn(
                h.clone(),
                hub.subscribe("history", h.queue),
                Some(config.scan.state_file.clone()),
            )
            .context("cannot start the history writer thread")?,
        ),
        None => None,
    };
    // The metrics consumer: its own thread (after the drop), its own queue; a slow
    // scrape costs it events (`stats.consumers.metrics`), never the event loop. It runs
    // for `--metrics` and for the API's `/metrics`.
    let (metrics_registry, metrics) = if metrics_listener.is_some() || api.is_some() {
        let (registry, thread) = crate::metrics::spawn(
            metrics_listener,
            hub.subscribe("metrics", crate::metrics::QUEUE),
            crate::metrics::Sources {
                ring: Some(ring_fill.clone()),
                config: config.metrics.clone(),
                port_risk: config.rules.port_risk.ports.clone(),
                state_file: monitor.enabled().then(|| config.scan.state_file.clone()),
            },
        )
        .context("cannot start the metrics thread")?;
        (Some(registry), Some(thread))
    } else {
        (None, None)
    };
    // The API: its own thread and runtime, fed like the history writer; it asks the
    // loop for the flow table on `requests`.
    let (ask, requests) = state::channel();
    let api = match api {
        Some(bound) => Some(
            bound
                .spawn(
                    hub.subscribe("api", crate::api::QUEUE),
                    config.scan.state_file.clone(),
                    opts.history.as_ref().zip(history.as_ref()).map(|(h, w)| {
                        crate::api::HistoryLink {
                            path: h.path.clone(),
                            writer: w.counters(),
                        }
                    }),
                    ask,
                    metrics_registry,
                )
                .context("cannot start the API")?,
        ),
        None => None,
    };
    let mut stages = Stages {
        reader: Reader::new(ring, losses, skipped, host.clone(), ring_fill)?,
        enrich: Enricher::new(flows, host.clone()),
        detect: detect::Detector::new(&config.rules, Box::new(processes)),
        hub,
        host,
        started: Instant::now(),
        scanner: None,
        history: history.as_ref().map(crate::history::Writer::counters),
        requests,
        ebpf_log,
        records: Vec::new(),
        enriched: Vec::new(),
        alerts: Vec::new(),
    };
    let monitor = monitor.enabled().then_some(monitor);
    let outcome = runtime.block_on(stages.event_loop(probe, &opts, monitor, consumer_done));
    // Closing the hub ends the sink once it has written what it holds; its own error
    // (a broken pipe, a full disk) is the one to report.
    stages.hub.close();
    let written = sink_thread.map_or(Ok(()), sink::join);
    let consumed = match consumer_thread.map(|t| t.join()) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(_)) => Err(anyhow::anyhow!("the consumer thread panicked")),
    };
    // The writer commits what it holds once its queue is closed.
    if let Some(history) = history {
        history.finish();
    }
    if let Some(metrics) = metrics {
        let _ = metrics.join();
    }
    // The API's pump ends with its subscription; open streams end with it.
    if let Some(api) = api {
        api.join();
    }
    // The reader holds duplicates of the program fds (for `skipped_runs`): closed
    // first, so that dropping `tracer` (and every link it owns) unloads every program.
    drop(stages);
    drop(tracer);
    // When the sink stopped (`ConsumerGone`), its error says why.
    written.and(consumed).and(outcome)
}

use reader::Reader;

/// Every stage and its state; driven by [`Stages::event_loop`].
struct Stages {
    reader: Reader,
    enrich: Enricher,
    detect: detect::Detector,
    hub: Hub,
    host: std::sync::Arc<str>,
    started: Instant,
    scanner: Option<scanner::Scanner>,
    /// The history writer's counters (`stats.history`), when it runs.
    history: Option<std::sync::Arc<crate::history::Counters>>,
    /// Questions from the API about the flow table (see `state.rs`).
    requests: tokio::sync::mpsc::Receiver<state::FlowsRequest>,
    /// The programs' messages, to become `log` events (`--events log`).
    ebpf_log: Option<LogQueue>,
    /// Scratch buffers, reused: records read, events enriched, alerts of one event.
    records: Vec<Record>,
    enriched: Vec<std::sync::Arc<Event>>,
    alerts: Vec<Event>,
}

impl Stages {
    async fn event_loop(
        &mut self,
        probe: Event,
        opts: &Options,
        monitor: Option<Monitor>,
        consumer_done: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<()> {
        let mut consumer_done = consumer_done;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        // logrotate's way: rename the `--output` file, then SIGHUP (see sink.rs).
        let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        // A stop must work even when the reader of the output stalls (see watchdog.rs).
        watchdog::install().context("cannot start the stop watchdog")?;
        if let Some(monitor) = monitor {
            self.scanner = Some(scanner::Scanner::start(monitor, &mut self.hub));
        }
        // Announce only once signals are handled: whoever reacts to the probe line by
        // stopping netmon must get the orderly shutdown and the final stats.
        self.hub.emit(probe).await?;
        self.summaries(Summaries::Existing).await?;
        self.hub.flush().await?;
        let start = tokio::time::Instant::now();
        let every = |d| tokio::time::interval_at(start + d, d);
        let mut stats_ticker = every(opts.stats_interval);
        let mut flow_ticker = every(opts.flow_interval);
        let mut udp_ticker = every(opts.udp_interval);
        let mut drain_ticker = every(opts.max_latency);
        drain_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain_ticker.tick() => {
                    self.drain().await?;
                }
                ready = self.reader.wait() => {
                    ready?;
                    self.drain().await?;
                }
                _ = stats_ticker.tick() => {
                    self.reader.resample_clock();
                    // The flow table's maps leave their old arrays behind when they
                    // grow; hand those pages back (about 10 MB at 100,000 flows).
                    release_free_memory();
                    self.dns_timeouts().await?;
                    self.stats(false).await?;
                }
                _ = udp_ticker.tick() => {
                    self.enrich.flows.read_udp_counters();
                    let now_ns = BootClock::monotonic_now_ns();
                    loop {
                        let closes = self.enrich.flows.expire_udp(now_ns, 4096);
                        if closes.is_empty() {
                            break;
                        }
                        self.hub.emit_all(closes).await?;
                    }
                }
                _ = flow_ticker.tick() => {
                    let seen = self.enrich.flows.refresh_tcp_counters(BootClock::monotonic_now_ns());
                    // Closes reported before the dump are handled before the sweep.
                    self.drain().await?;
                    let missed = self.enrich.flows.sweep_missed(seen, BootClock::monotonic_now_ns());
                    self.hub.emit_all(missed).await?;
                    self.summaries(Summaries::LongLived).await?;
                }
                Some(change) = next_change(&mut self.scanner) => {
                    self.hub.emit(change).await?;
                }
                _ = sighup.recv() => {
                    sink::request_reopen();
                    crate::api::tls::request_reload();
                }
                _ = consumer_ended(&mut consumer_done) => break,
                Some(req) = self.requests.recv() => {
                    // One step of the table, then the ring buffer's turn again.
                    let clock = *self.reader.clock();
                    let (flows, next) = self.enrich.flows.flow_chunk(
                        req.from,
                        state::CHUNK,
                        BootClock::monotonic_now_ns(),
                        &clock,
                    );
                    let flows = flows.into_iter().map(std::sync::Arc::new).collect();
                    let _ = req.reply.send(state::FlowsChunk { flows, next });
                }
                Some(log) = next_log(&mut self.ebpf_log) => {
                    self.emit_log(log).await?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
            // What this step emitted reaches the consumers now: one hand-over per
            // consumer and step, not one wake-up per event (hub.rs).
            self.hub.flush().await?;
        }
        if let Some(scanner) = &mut self.scanner {
            let left = scanner.stop();
            self.hub.emit_all(left).await?;
        }
        // Whatever the kernel handed over before the signal is still written.
        self.drain().await?;
        while let Some(log) = self
            .ebpf_log
            .as_mut()
            .and_then(|q| q.messages.try_recv().ok())
        {
            self.emit_log(log).await?;
        }
        self.stats(true).await?;
        self.hub.flush().await?;
        Ok(())
    }

    /// One of the programs' messages as a `log` event (not through the rules: it is
    /// about netmon, not the host).
    async fn emit_log(&mut self, log: crate::event::log::KernelLog) -> Result<(), ConsumerGone> {
        let event = Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Log(log),
        };
        self.hub.emit(event).await
    }

    /// Every record in the ring buffer, through every stage.
    async fn drain(&mut self) -> Result<(), ConsumerGone> {
        loop {
            let mut records = std::mem::take(&mut self.records);
            let n = self.reader.read(READ_BATCH, &mut records);
            let now_ns = BootClock::monotonic_now_ns();
            for record in records.drain(..) {
                self.enrich.record(record, now_ns, &mut self.enriched);
            }
            self.records = records;
            self.detect_and_emit().await?;
            self.hub.flush().await?;
            if n < READ_BATCH {
                break;
            }
        }
        self.dns_timeouts().await
    }

    /// Queries that waited too long: their `dns` events, through the rules.
    async fn dns_timeouts(&mut self) -> Result<(), ConsumerGone> {
        self.enrich.tick(Utc::now(), &mut self.enriched);
        self.detect_and_emit().await
    }

    /// The enriched events, each followed by its alerts, into the hub.
    async fn detect_and_emit(&mut self) -> Result<(), ConsumerGone> {
        let mut enriched = std::mem::take(&mut self.enriched);
        let result = self.detect_all(&mut enriched).await;
        enriched.clear();
        self.enriched = enriched;
        result
    }

    async fn detect_all(
        &mut self,
        enriched: &mut Vec<std::sync::Arc<Event>>,
    ) -> Result<(), ConsumerGone> {
        for event in enriched.drain(..) {
            self.detect.check(&event, &mut self.alerts);
            self.hub.emit_shared(event).await?;
            for alert in self.alerts.drain(..) {
                self.hub.emit(alert).await?;
            }
        }
        Ok(())
    }

    /// `flow` summaries, made one at a time so 100,000 of them never sit in memory
    /// together.
    async fn summaries(&mut self, which: Summaries) -> Result<(), ConsumerGone> {
        let now_ns = BootClock::monotonic_now_ns();
        let mut written = 0;
        let flows = &self.enrich.flows;
        let clock = *self.reader.clock();
        for event in flows.summaries(which, now_ns, &clock) {
            self.hub.emit(event).await?;
            written += 1;
        }
        self.enrich.flows.count_summaries(written);
        Ok(())
    }

    async fn stats(&mut self, last: bool) -> Result<(), ConsumerGone> {
        let (lost, lost_by_type) = self.reader.lost();
        let skipped = self.reader.skipped_runs();
        let (kernel_maps, dns_rate_limited) = self.reader.kernel_maps();
        let stats = Event {
            ts: Utc::now(),
            host: self.host.clone(),
            body: EventBody::Stats(Box::new(Stats {
                uptime_s: self.started.elapsed().as_secs_f64(),
                events: self.hub.event_counts(&ALWAYS_COUNTED),
                lost,
                lost_by_type,
                malformed: self.reader.malformed(),
                skipped_runs: skipped.as_ref().map(|m| m.values().sum()),
                skipped_runs_by_program: skipped.unwrap_or_default(),
                kernel_maps,
                r#final: last,
                flows: Some(self.enrich.flows.flow_stats()),
                processes: Some(self.enrich.flows.process_stats()),
                dns: with_rate_limited(self.enrich.dns_stats(), dns_rate_limited),
                rules: self.detect.stats(),
                scan: self.scanner.as_ref().map(scanner::Scanner::counters),
                history: self.history.as_ref().map(|c| c.snapshot()),
                consumers: self.hub.consumer_stats(),
                ebpf_log: self
                    .ebpf_log
                    .as_ref()
                    .map(|q| crate::event::log::EbpfLogStats {
                        dropped: q.dropped.load(std::sync::atomic::Ordering::Relaxed),
                    }),
                ring_buffer: Some(self.reader.ring_buffer()),
            })),
        };
        self.hub.emit(stats).await
    }
}

/// `stats.dns` with the kernel's count of rate-limited packets (present once either
/// the DNS path saw a packet or the kernel held one back).
fn with_rate_limited(dns: Option<DnsStats>, rate_limited: u64) -> Option<DnsStats> {
    match (dns, rate_limited) {
        (None, 0) => None,
        (dns, n) => Some(DnsStats {
            rate_limited: n,
            ..dns.unwrap_or_default()
        }),
    }
}

/// Resolves when the consumer's thread returned; never when there is none.
async fn consumer_ended(done: &mut Option<tokio::sync::oneshot::Receiver<()>>) {
    match done {
        Some(rx) => {
            let _ = rx.await;
            *done = None;
        }
        None => std::future::pending().await,
    }
}

/// The programs' next message; never ready without `--events log`.
async fn next_log(queue: &mut Option<LogQueue>) -> Option<crate::event::log::KernelLog> {
    match queue {
        Some(q) => q.messages.recv().await,
        None => std::future::pending().await,
    }
}

/// The scanner's next change event; never ready when there is no scanner.
async fn next_change(scanner: &mut Option<scanner::Scanner>) -> Option<Event> {
    match scanner {
        Some(s) => s.next_change().await,
        None => std::future::pending().await,
    }
}

/// Loading parsed the kernel's BTF and the eBPF object, and growing maps free their
/// old arrays; glibc keeps freed memory in the heap. `malloc_trim` hands every free
/// page back, so the resident set is what netmon uses (when added, it took a start on
/// 6.18 from 39 to 14 MiB). Cheap enough for every `stats` tick.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
