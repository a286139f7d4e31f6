//! Userspace pipeline throughput on one core: raw ring-buffer records → decode →
//! enrichment (flow table, process-context cache, DNS names) → rules → JSON Lines,
//! in-process, with netmon's real stages (`netmon::pipeline`), over a recorded stream of
//! realistic `ConnEvent` records. No kernel, no root.
//!
//! `cargo bench -p netmon --bench pipeline`; `cargo xtask bench pipeline` runs it and
//! reports events per second. Each benchmark processes the whole stream per iteration
//! and declares its length as the throughput, so criterion reports elements/s.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! on a machine shared with other work, wall time counts the slices other processes got;
//! CPU time is what "events per second on one core" means.
//!
//! With `NETMON_PIPELINE_PASS=setup|decode|render_json|pipeline` the binary skips
//! criterion and runs that benchmark's body [`PASSES`] times (`setup`: only builds the
//! stream and checks the sink's bytes): under `valgrind --tool=cachegrind` the instruction count per event is exact
//! and repeatable, which wall or CPU time on a shared machine is not.
//!
//! The process-context cache reads a private, empty `/proc` (the stream's pids are
//! made up): each pid costs one failed read, then is served from the cache, as a
//! busy process is in `netmon run`. Not in the figure: the hub's fan-out and the
//! sink's thread (a second core), and DNS packets (the stream's UDP to port 53 is
//! flows; names are looked up for every connect and UDP flow).
mod cpu_time;

use std::{
    hint::black_box,
    io,
    sync::{Arc, Mutex},
};

use cpu_time::thread_cpu_ns;
use criterion::{
    Criterion, Throughput, criterion_group,
    measurement::{Measurement, ValueFormatter, WallTime},
};
use netmon::{
    clock::BootClock,
    decode,
    event::Event,
    flow::FlowConfig,
    output::{Format, Sink},
    pipeline::{
        detect::Detector,
        enrich::{Enricher, Record, flows},
    },
    process::{ProcessCache, Processes},
    rules::RulesConfig,
};
use netmon_common::{
    AF_INET, AF_INET6, ConnEvent, EventHeader, IPPROTO_TCP, IPPROTO_UDP, Process, backend, flags,
    kind,
};

/// Records in the recorded stream.
const RECORDS: usize = 20_000;
const HOST: &str = "web-1.example.internal";
/// [`HOST`] as events hold it (shared, not copied per event).
static HOST_NAME: std::sync::LazyLock<std::sync::Arc<str>> =
    std::sync::LazyLock::new(|| HOST.into());

/// The stages of `netmon run` between decode and output, in order: the real ones.
struct Stages {
    enrich: Enricher,
    detect: Detector,
    enriched: Vec<std::sync::Arc<Event>>,
    alerts: Vec<Event>,
}

fn stages() -> Stages {
    let root = std::env::temp_dir().join(format!("netmon-bench-proc-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&root);
    let processes = Processes::new(ProcessCache::new(&root, &root.join("passwd")));
    let flows = flows::Tracker::new(
        FlowConfig::default(),
        processes.clone(),
        None,
        true,
        ("tracepoint".into(), "tracepoint".into()),
        HOST.into(),
    );
    Stages {
        enrich: Enricher::new(flows, HOST.into()),
        detect: Detector::new(&RulesConfig::default(), Box::new(processes)),
        enriched: Vec::new(),
        alerts: Vec::new(),
    }
}

impl Stages {
    /// One record through every stage into `sink`, as `netmon run` does.
    fn run(&mut self, record: &[u8], clock: &BootClock, now_ns: u64, sink: &mut Sink) {
        self.each(record, clock, now_ns, |e| sink.write(e).unwrap());
    }

    /// One record through every stage; `out` gets each event the sink would write.
    fn each(&mut self, record: &[u8], clock: &BootClock, now_ns: u64, mut out: impl FnMut(&Event)) {
        let event = decode::decode(black_box(record), clock, &HOST_NAME).unwrap();
        self.enrich
            .record(Record::Event(event), now_ns, &mut self.enriched);
        for e in self.enriched.drain(..) {
            self.detect.check(&e, &mut self.alerts);
            out(&e);
            for a in self.alerts.drain(..) {
                out(&a);
            }
        }
    }
}

/// xorshift64*: a deterministic stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

fn process(pid: u32, name: &str, uid: u32) -> Process {
    Process {
        pid,
        tid: pid + 3,
        uid,
        gid: uid,
        cgroup_id: 4242 + pid as u64,
        comm: comm(name),
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&[a, b, c, d]);
    x
}

fn v6(last: u16) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    x[14..].copy_from_slice(&last.to_be_bytes());
    x
}

fn event(k: u32, ktime_ns: u64, p: Process) -> ConnEvent {
    ConnEvent {
        header: EventHeader {
            kind: k,
            backend: backend::TRACEPOINT,
            ktime_ns,
            process: p,
        },
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        flags: 0,
        netns: 4026531840,
        duration_ns: 0,
        bytes_sent: 0,
        bytes_received: 0,
    }
}

/// A web server's day in miniature: inbound HTTPS (accept … close) from many clients
/// (10% IPv6), outbound connections to a database and upstreams (connect … close, a
/// few failed), DNS over UDP from several processes, the odd listener, and closes of
/// flows that began before netmon. Every close matches an earlier accept or connect,
/// so a flow table sees real flows.
fn recorded_stream(n: usize) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let nginx = process(812, "nginx", 33);
    let clients = [
        process(2201, "python3", 1000),
        process(2302, "curl", 1000),
        process(1505, "postgres", 112),
        process(3001, "java", 1001),
    ];
    let mut open: Vec<ConnEvent> = Vec::new();
    let mut out = Vec::with_capacity(n * size_of::<ConnEvent>());
    let mut ktime: u64 = 3_600_000_000_000;
    let mut port: u16 = 32768;
    for _ in 0..n {
        ktime += 1 + rng.below(20_000);
        port = if port == u16::MAX { 32768 } else { port + 1 };
        let roll = rng.below(100);
        let ev = if roll < 40 && open.len() > 64 || open.len() > 2000 {
            // close a random open flow
            let i = rng.below(open.len() as u64) as usize;
            let start = open.swap_remove(i);
            let mut ev = start;
            ev.header.kind = kind::CLOSE;
            ev.header.ktime_ns = ktime;
            ev.flags = (start.flags & flags::INBOUND) | flags::DURATION_KNOWN | flags::BYTES_KNOWN;
            ev.duration_ns = ktime - start.header.ktime_ns;
            ev.bytes_sent = rng.below(2_000_000);
            ev.bytes_received = rng.below(20_000);
            ev
        } else if roll < 70 {
            let mut ev = event(kind::ACCEPT, ktime, nginx);
            ev.flags = flags::INBOUND;
            if rng.below(10) == 0 {
                ev.family = AF_INET6;
                ev.src_addr = v6(rng.below(65536) as u16);
                ev.dst_addr = v6(1);
            } else {
                let h = rng.next();
                ev.src_addr = v4(10, (h >> 8) as u8, (h >> 16) as u8, h as u8);
                ev.dst_addr = v4(10, 0, 0, 5);
            }
            ev.src_port = port;
            ev.dst_port = 443;
            open.push(ev);
            ev
        } else if roll < 88 {
            let p = clients[rng.below(clients.len() as u64) as usize];
            let mut ev = event(kind::CONNECT, ktime, p);
            ev.src_addr = v4(10, 0, 0, 5);
            ev.src_port = port;
            ev.dst_addr = v4(10, 0, 1, 1 + rng.below(8) as u8);
            ev.dst_port = [5432, 443, 8080, 6379][rng.below(4) as usize];
            if rng.below(50) == 0 {
                ev.flags |= flags::CONNECT_FAILED;
            } else {
                open.push(ev);
            }
            ev
        } else if roll < 97 {
            let p = clients[rng.below(clients.len() as u64) as usize];
            let mut ev = event(kind::UDP, ktime, p);
            ev.protocol = IPPROTO_UDP;
            ev.netns = 0;
            ev.src_addr = v4(10, 0, 0, 5);
            ev.src_port = port;
            ev.dst_addr = v4(10, 0, 0, 2);
            ev.dst_port = 53;
            ev.bytes_sent = 40 + rng.below(60);
            ev
        } else if roll < 98 {
            let mut ev = event(kind::LISTEN, ktime, clients[rng.below(4) as usize]);
            ev.dst_addr = v4(0, 0, 0, 0);
            ev.dst_port = 8000 + rng.below(100) as u16;
            ev
        } else {
            // a flow that began before netmon started
            let mut ev = event(kind::CLOSE, ktime, Process::EMPTY);
            ev.flags = flags::PROCESS_UNKNOWN | flags::DIRECTION_UNKNOWN | flags::BYTES_KNOWN;
            ev.src_addr = v4(10, 0, 0, 5);
            ev.src_port = 22;
            ev.dst_addr = v4(10, 9, 8, 7);
            ev.dst_port = port;
            ev.bytes_sent = rng.below(100_000);
            ev.bytes_received = rng.below(100_000);
            ev
        };
        out.extend_from_slice(bytes_of(&ev));
    }
    out
}

fn bytes_of(ev: &ConnEvent) -> &[u8] {
    // SAFETY: ConnEvent is a repr(C) plain-old-data wire type without padding holes.
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const ConnEvent).cast::<u8>(),
            size_of::<ConnEvent>(),
        )
    }
}

fn records(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    stream.chunks_exact(size_of::<ConnEvent>())
}

fn json_sink() -> Sink {
    // The real sink (64 KiB buffer, its JSON writer), writing to nowhere.
    Sink::new(Format::Json, Box::new(io::sink()))
}

/// The calling thread's CPU time, formatted like wall time.
struct ThreadCpuTime {
    wall: WallTime,
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// The recorded stream, its clock, and the stream decoded once (for `render_json`).
struct Fixture {
    stream: Vec<u8>,
    clock: BootClock,
    events: Vec<Event>,
}

fn fixture() -> Fixture {
    let stream = recorded_stream(RECORDS);
    let clock = BootClock::from_offset_ns(1_795_000_000_000_000_000);
    let events: Vec<Event> = records(&stream)
        .map(|r| decode::decode(r, &clock, &HOST_NAME).expect("the recorded stream decodes"))
        .map(std::sync::Arc::unwrap_or_clone)
        .collect();
    // What the sink writes in the `pipeline` benchmark: enriched events and alerts.
    let mut written = Vec::new();
    let mut stages = stages();
    let now_ns = BootClock::monotonic_now_ns();
    for r in records(&stream) {
        stages.each(r, &clock, now_ns, |e| written.push(e.clone()));
    }
    check_sink_matches_serde_json(&written);
    check_sink_matches_serde_json(&events);
    Fixture {
        stream,
        clock,
        events,
    }
}

/// The sink's JSON lines (written by hand for the hot types, `output/json.rs`) must be
/// exactly serde_json's, over the whole stream.
fn check_sink_matches_serde_json(events: &[Event]) {
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let ours = Arc::new(Mutex::new(Vec::new()));
    let mut sink = Sink::new(Format::Json, Box::new(Shared(ours.clone())));
    let mut expected = Vec::new();
    for e in events {
        sink.write(e).unwrap();
        serde_json::to_writer(&mut expected, e).unwrap();
        expected.push(b'\n');
    }
    sink.flush().unwrap();
    assert!(
        *ours.lock().unwrap() == expected,
        "the sink's JSON differs from serde_json's"
    );
}

/// Passes over the stream in `NETMON_PIPELINE_PASS` mode.
const PASSES: usize = 5;

fn one_pass_mode(pass: &str) {
    let Fixture {
        stream,
        clock,
        events,
    } = fixture();
    let mut sink = json_sink();
    let mut stages = stages();
    for _ in 0..PASSES {
        match pass {
            "setup" => {}
            "decode" => {
                for r in records(&stream) {
                    black_box(decode::decode(black_box(r), &clock, &HOST_NAME).unwrap());
                }
            }
            "render_json" => {
                for e in &events {
                    sink.write(black_box(e)).unwrap();
                }
                sink.flush().unwrap();
            }
            "pipeline" => {
                let now_ns = BootClock::monotonic_now_ns();
                for r in records(&stream) {
                    stages.run(r, &clock, now_ns, &mut sink);
                }
                sink.flush().unwrap();
            }
            other => panic!("unknown NETMON_PIPELINE_PASS {other}"),
        }
    }
    println!("{} events per pass, {PASSES} passes", RECORDS);
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let Fixture {
        stream,
        clock,
        events,
    } = fixture();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for r in records(&stream) {
                black_box(decode::decode(black_box(r), &clock, &HOST_NAME).unwrap());
            }
        })
    });
    g.bench_function("render_json", |b| {
        let mut sink = json_sink();
        b.iter(|| {
            for e in &events {
                sink.write(black_box(e)).unwrap();
            }
            sink.flush().unwrap();
        })
    });
    g.bench_function("pipeline", |b| {
        let mut sink = json_sink();
        let mut stages = stages();
        b.iter(|| {
            let now_ns = BootClock::monotonic_now_ns();
            for r in records(&stream) {
                stages.run(r, &clock, now_ns, &mut sink);
            }
            sink.flush().unwrap();
        })
    });
    g.finish();
}

fn main() {
    if let Ok(pass) = std::env::var("NETMON_PIPELINE_PASS") {
        one_pass_mode(&pass);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime { wall: WallTime })
        .measurement_time(std::time::Duration::from_secs(8));
    targets = bench
}
