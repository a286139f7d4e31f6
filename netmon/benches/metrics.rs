//! What the Prometheus metrics cost (`cargo bench -p netmon --bench metrics -- [EVENTS]
//! [ROUNDS]`; `cargo xtask bench metrics` runs it and writes its section of
//! docs/benchmarks.md): a driver, its result one JSON line on stdout.
//!
//! 1. **The event loop's cost per event**: the hub's `emit` of a stream of connect and
//!    close events (500 processes, 10,000 peers) with the sink alone, and with the sink
//!    plus the `metrics` consumer (its real queue, drained by a thread applying each
//!    event with the real `Families::observe`, as `netmon-metrics` does).
//!
//! The hub hands events over in batches, once per loop step (1024 ring records at
//! most), as `netmon run` does: a consumer thread is woken once per step, not once per
//! event (measured 2026-12-03 with one hand-over per event: metrics added ~113 ns).
//! Time is the emitting thread's CPU
//!    time; rounds are interleaved; the difference of the medians is what metrics add.
//! 2. **A scrape of the full label set**: `Metrics::render` (host statistics included)
//!    after the whole stream was observed, median of 20.
mod cpu_time;

use std::{
    thread,
    time::{Duration, Instant},
};

use cpu_time::thread_cpu_ns;
use netmon::{
    event::Event,
    metrics::{self, Metrics, Sources},
    pipeline::hub::Hub,
};

/// `n` events: connect then close pairs of 500 exe names to 10,000 peers.
fn stream(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let flow = i / 2;
            let pid = 1000 + (flow % 500) as u32;
            let peer = flow % 10_000;
            let (a, b) = (peer / 250, peer % 250 + 1);
            let head = format!(
                r#""ts":"2026-12-03T12:00:00.{:09}Z","host":"bench","proto":"tcp","family":"ipv4","direction":"outbound","src":{{"ip":"10.0.0.5","port":{}}},"dst":{{"ip":"10.{a}.{b}.9","port":443}},"process":{{"pid":{pid},"tid":{pid},"comm":"proc-{:03}","uid":1000,"gid":1000,"cgroup_id":1}},"backend":"tracepoint","netns":4026531840"#,
                i % 1_000_000_000,
                20000 + flow % 40000,
                pid - 1000
            );
            let line = if i % 2 == 0 {
                format!(r#"{{"type":"connect",{head}}}"#)
            } else {
                format!(
                    r#"{{"type":"close",{head},"duration_ms":2.5,"bytes_sent":517,"bytes_received":10485}}"#
                )
            };
            serde_json::from_str(&line).expect("a valid event")
        })
        .collect()
}

/// Emits `events` through a hub with a draining sink, and a metrics consumer when
/// `with_metrics`; the emitting thread's CPU ns per event.
fn emit_round(events: &[Event], with_metrics: bool) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut hub = Hub::new();
    let mut sink = hub.subscribe_lossless("sink", 4096);
    let sink_thread = thread::spawn(move || while sink.blocking_recv().is_some() {});
    let metrics_thread = with_metrics.then(|| {
        let mut rx = hub.subscribe("metrics", metrics::QUEUE);
        let (_metrics, mut families) = Metrics::new(false, &Sources::default());
        thread::spawn(move || {
            while let Some(e) = rx.blocking_recv() {
                families.observe(&e);
            }
        })
    });
    let started = thread_cpu_ns();
    rt.block_on(async {
        // As `netmon run`: the loop hands events over after each step of at most
        // READ_BATCH (1024) ring records.
        for step in events.chunks(1024) {
            for e in step {
                hub.emit(e.clone()).await.expect("consumers alive");
            }
            hub.flush().await.expect("consumers alive");
        }
    });
    let took = thread_cpu_ns() - started;
    let dropped: u64 = hub.consumer_stats().values().map(|c| c.dropped).sum();
    hub.close();
    drop(hub);
    sink_thread.join().expect("sink thread");
    if let Some(t) = metrics_thread {
        t.join().expect("metrics thread");
    }
    if dropped > 0 {
        eprintln!("bench metrics: the metrics consumer missed {dropped} events this round");
    }
    took as f64 / events.len() as f64
}

/// The middle value (each round's event clone is in both modes alike, as `netmon run`
/// builds each event once too).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let events = stream(n);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        without.push(emit_round(&events, false));
        with.push(emit_round(&events, true));
        eprintln!(
            "bench metrics: round {round}/{rounds}: sink only {:.0} ns/event, sink + metrics {:.0} ns/event",
            without[round - 1],
            with[round - 1]
        );
    }
    let (a, b) = (median(&mut without.clone()), median(&mut with.clone()));
    eprintln!(
        "bench metrics: event loop, ns per event (median of {rounds}, {n} events): sink only {a:.0}, sink + metrics {b:.0}, metrics add {:.0} (target <= 50)",
        b - a
    );

    let (metrics, mut families) = Metrics::new(true, &Sources::default());
    for e in &events {
        families.observe(e);
    }
    let mut scrapes = Vec::new();
    let mut series = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let text = metrics.render().expect("render");
        scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
        series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        thread::sleep(Duration::from_millis(10));
    }
    let scrape_ms = median(&mut scrapes);
    eprintln!(
        "bench metrics: scrape of the full label set ({series} series, host statistics included): median {scrape_ms:.2} ms of 20 (target < 50 ms)"
    );
    println!(
        "{}",
        serde_json::json!({
            "events": n, "rounds": rounds,
            "sink_only_ns": a, "with_metrics_ns": b, "metrics_add_ns": b - a,
            "sink_only_rounds": without, "with_metrics_rounds": with,
            "scrape_ms": scrape_ms, "series": series,
        })
    );
}
