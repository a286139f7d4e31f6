//! The history writer under load, driven as `netmon run` drives it: events through a
//! bounded `mpsc` queue (the hub's), one writer thread committing in batches. No
//! kernel, no root. `cargo xtask bench history` runs it; by hand:
//!
//! - `cargo bench -p netmon --bench history -- fill DB N [REMOTES]`: N events as fast
//!   as the writer takes them (the producer waits when the queue is full), timestamps
//!   spread evenly over the last 24 hours; prints one JSON line (events/s, file size).
//!   REMOTES (default 20) is the remote services per process: 200 makes the 10,000
//!   flow keys of `cargo xtask bench report`.
//! - `cargo bench -p netmon --bench history -- paced DB RATE SECONDS`: RATE events/s
//!   offered without ever waiting (a full queue drops, as in the hub), stamped as a
//!   live stream at that rate is (from now on, RATE a second); through a queue of
//!   netmon's own size (`[history] queue`); prints the events written and dropped.
//!
//! The stream: 50 processes × 20 remote services each (1,000 flow keys), TCP connect +
//! close pairs with byte counts, 1 in 10 a DNS transaction, 1 in 20 a UDP flow.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use netmon::{
    event::{
        Close, Connection, Direction, Dns, DnsAnswer, DnsRole, Endpoint, Event, EventBody, Family,
        ProcessDetail, ProcessInfo, Proto,
    },
    history::{HistoryConfig, Writer},
};

const PROCESSES: u32 = 50;
const REMOTES: u32 = 20;

struct Stream {
    processes: Vec<ProcessInfo>,
    /// Remote services per process (at most 254: the last octet of their address).
    remotes: u32,
    start_ns: i64,
    step_ns: i64,
    n: u64,
}

impl Stream {
    /// `total` events with timestamps spread evenly over the last 24 hours (the fill:
    /// what `history flows --since 24h` then reads).
    fn new(total: u64, remotes: u32) -> Stream {
        let day = 86_400_000_000_000i64;
        Stream::timed(
            Utc::now().timestamp_nanos_opt().unwrap_or_default() - day,
            (day / total.max(1) as i64).max(1),
            remotes,
        )
    }

    /// Events `rate` a second from now on, as a live stream at that rate is stamped
    /// (the paced run: its per-minute totals are those of one live minute, not of a
    /// day squeezed into seconds).
    fn live(rate: u64, remotes: u32) -> Stream {
        Stream::timed(
            Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            (1_000_000_000 / rate.max(1)) as i64,
            remotes,
        )
    }

    fn timed(start_ns: i64, step_ns: i64, remotes: u32) -> Stream {
        assert!((1..=254).contains(&remotes), "REMOTES is 1 to 254");
        let processes = (0..PROCESSES)
            .map(|i| ProcessInfo {
                pid: 1000 + i,
                tid: 1000 + i,
                comm: format!("worker-{i}").into(),
                thread: None,
                uid: 1000 + i % 5,
                gid: 1000,
                cgroup_id: 1,
                detail: Arc::new(ProcessDetail {
                    exe: Some(format!("/usr/bin/worker-{i}")),
                    cmdline: Some(format!(
                        "/usr/bin/worker-{i} --serve --threads 4 --config /etc/worker-{i}.toml"
                    )),
                    user: Some(format!("svc{}", i % 5)),
                    ppid: Some(1),
                    container: None,
                    ..Default::default()
                }),
            })
            .collect();
        Stream {
            processes,
            remotes,
            start_ns,
            step_ns: step_ns.max(1),
            n: 0,
        }
    }

    fn next(&mut self) -> Event {
        let n = self.n;
        self.n += 1;
        let ts = DateTime::from_timestamp_nanos(self.start_ns + n as i64 * self.step_ns);
        let p = (n / 2 % PROCESSES as u64) as u32;
        let r = (n / 2 / PROCESSES as u64 % u64::from(self.remotes)) as u32;
        let process = self.processes[p as usize].clone();
        let remote: IpAddr = format!("10.{}.{}.{}", 1 + p / 200, p % 200, 1 + r)
            .parse()
            .unwrap();
        let sport = 32768 + (n / 2 % 28000) as u16;
        let mut conn = Connection {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            direction: Some(Direction::Outbound),
            src: Some(Endpoint::new("10.0.0.1".parse().unwrap(), sport)),
            dst: Endpoint {
                ip: remote,
                port: 443 + (r % 4) as u16,
                name: Some(format!("svc{r}.example.internal")),
            },
            process: Some(process.clone()),
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        };
        let body = if n % 10 == 9 {
            EventBody::Dns(Dns {
                proto: Proto::Udp,
                family: Family::Ipv4,
                role: DnsRole::Client,
                src: Endpoint::new("10.0.0.1".parse().unwrap(), sport),
                dst: Endpoint::new("10.0.0.53".parse().unwrap(), 53),
                id: n as u16,
                query: format!("svc{r}.example.internal"),
                qtype: "A".into(),
                rcode: Some("NOERROR".into()),
                answers: vec![DnsAnswer {
                    name: format!("svc{r}.example.internal"),
                    rtype: "A".into(),
                    ttl: 60,
                    data: remote.to_string(),
                }],
                latency_ms: Some(0.4),
                process: Some(process),
                truncated: false,
            })
        } else {
            if n % 20 == 4 || n % 20 == 5 {
                conn.proto = Proto::Udp;
            }
            if n.is_multiple_of(2) {
                if conn.proto == Proto::Udp {
                    conn.bytes = Some(120);
                    EventBody::Udp(conn)
                } else {
                    EventBody::Connect(conn)
                }
            } else {
                EventBody::Close(Close {
                    conn,
                    duration_ms: Some(12.5),
                    bytes_sent: Some(512 + n % 1000),
                    bytes_received: Some(4096 + n % 5000),
                    packets_sent: Some(4),
                    packets_received: Some(6),
                    reason: None,
                })
            }
        };
        Event {
            ts,
            host: "bench-host".into(),
            body,
        }
    }
}

/// Nanoseconds of CPU used so far by the history's threads (the writer and its
/// checkpointer: `netmon-history*`), from `/proc/self/task/*/schedstat`. CPU, not wall
/// time: what the writer costs whatever else the shared machine runs.
fn history_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("netmon-history"))
        })
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits until the writer has committed or dropped `total` events (it commits at
/// least every 0.5 s), so that its CPU can be read while its threads still run.
fn wait_written(counters: &netmon::history::Counters, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let s = counters.snapshot();
        if s.written + s.dropped >= total {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config(db: PathBuf) -> HistoryConfig {
    HistoryConfig {
        path: db,
        // The stream spans a day: nothing is old enough to prune.
        ..HistoryConfig::default()
    }
}

fn fill(db: PathBuf, total: u64, remotes: u32) {
    let (tx, rx) = netmon::pipeline::hub::direct(65_536);
    let writer = Writer::spawn(config(db.clone()), rx, None).expect("writer starts");
    let counters = writer.counters();
    let mut stream = Stream::new(total, remotes);
    let started = Instant::now();
    for _ in 0..total {
        if tx.blocking_send(Arc::new(stream.next())).is_err() {
            break;
        }
    }
    wait_written(&counters, total);
    let secs = started.elapsed().as_secs_f64();
    let cpu_ns = history_cpu_ns();
    drop(tx);
    writer.finish();
    let s = counters.snapshot();
    let size = file_size(&db);
    println!(
        "{}",
        serde_json::json!({
            "mode": "fill", "events": total, "seconds": secs,
            "events_per_s": s.written as f64 / secs, "written": s.written,
            "cpu_ns_per_event": cpu_ns as f64 / s.written.max(1) as f64,
            "events_per_cpu_s": s.written as f64 * 1e9 / cpu_ns.max(1) as f64,
            "batches": s.batches, "errors": s.errors, "dropped": s.dropped,
            "bytes": size, "bytes_per_million_events": size as f64 * 1e6 / total.max(1) as f64,
        })
    );
}

fn file_size(db: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn paced(db: PathBuf, rate: u64, seconds: u64) {
    // The queue `netmon run` gives the writer: what it must keep up with.
    let (tx, rx) = netmon::pipeline::hub::direct(HistoryConfig::default().queue);
    let writer = Writer::spawn(config(db), rx, None).expect("writer starts");
    let counters = writer.counters();
    let total = rate * seconds;
    let mut stream = Stream::live(rate, REMOTES);
    let mut full = 0u64;
    let started = Instant::now();
    // Offered in slices of 1 ms, each slice's events made and sent at once.
    let per_ms = (rate / 1000).max(1);
    let mut sent = 0u64;
    while sent < total {
        let due = Duration::from_nanos(sent * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        for _ in 0..per_ms.min(total - sent) {
            if tx.try_send(Arc::new(stream.next())).is_err() {
                full += 1;
            }
            sent += 1;
        }
    }
    let offered_s = started.elapsed().as_secs_f64();
    wait_written(&counters, total - full);
    let cpu_ns = history_cpu_ns();
    drop(tx);
    writer.finish();
    let s = counters.snapshot();
    println!(
        "{}",
        serde_json::json!({
            "mode": "paced", "rate": rate, "seconds": offered_s, "offered": total,
            "queue": HistoryConfig::default().queue,
            "written": s.written, "queue_full": full, "batches": s.batches,
            "errors": s.errors, "dropped": s.dropped + full,
            "events_per_s": s.written as f64 / offered_s,
            "cpu_ns_per_event": cpu_ns as f64 / s.written.max(1) as f64,
            "events_per_cpu_s": s.written as f64 * 1e9 / cpu_ns.max(1) as f64,
        })
    );
}

fn main() {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or("") };
    match arg(0) {
        "fill" => fill(
            PathBuf::from(arg(1)),
            arg(2).parse().expect("fill DB N [REMOTES]"),
            match arg(3) {
                "" => REMOTES,
                r => r.parse().expect("fill DB N [REMOTES]"),
            },
        ),
        "paced" => paced(
            PathBuf::from(arg(1)),
            arg(2).parse().expect("paced DB RATE SECONDS"),
            arg(3).parse().expect("paced DB RATE SECONDS"),
        ),
        _ => {
            eprintln!("usage: history fill DB N [REMOTES] | history paced DB RATE SECONDS");
        }
    }
}
