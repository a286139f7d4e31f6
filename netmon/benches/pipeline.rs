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
//! `render_json_handwritten` measures a proposal that is not part of netmon (see
//! [`handwritten`]).
//!
//! With `NETMON_PIPELINE_PASS=setup|decode|render_json|pipeline|render_json_handwritten`
//! the binary skips
//! criterion and runs that benchmark's body [`PASSES`] times (`setup`: only builds the
//! stream): under `valgrind --tool=cachegrind` the instruction count per event is exact
//! and repeatable, which wall or CPU time on a shared machine is not.
//!
//! The process-context cache reads a private, empty `/proc` (the stream's pids are
//! made up): each pid costs one failed read, then is served from the cache, as a
//! busy process is in `netmon run`. Not in the figure: the hub's fan-out and the
//! sink's thread (a second core), and DNS packets (the stream's UDP to port 53 is
//! flows; names are looked up for every connect and UDP flow).
use std::{
    hint::black_box,
    io,
    sync::{Arc, Mutex},
};

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

/// The stages of `netmon run` between decode and output, in order: the real ones.
struct Stages {
    enrich: Enricher,
    detect: Detector,
    enriched: Vec<Event>,
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
        let event = decode::decode(black_box(record), clock, HOST).unwrap();
        self.enrich
            .record(Record::Event(event), now_ns, &mut self.enriched);
        for e in self.enriched.drain(..) {
            self.detect.check(&e, &mut self.alerts);
            sink.write(&e).unwrap();
            for a in self.alerts.drain(..) {
                sink.write(&a).unwrap();
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
    // The real sink (64 KiB buffer, serde_json), writing to nowhere.
    Sink::new(Format::Json, Box::new(io::sink()))
}

/// The calling thread's CPU time, formatted like wall time.
struct ThreadCpuTime {
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    /// The hand-written writer still matches serde_json (see [`handwritten`]).
    handwritten_current: bool,
}

fn fixture() -> Fixture {
    let stream = recorded_stream(RECORDS);
    let clock = BootClock::from_offset_ns(1_795_000_000_000_000_000);
    let events: Vec<Event> = records(&stream)
        .map(|r| decode::decode(r, &clock, HOST).expect("the recorded stream decodes"))
        .collect();
    check_sink_matches_serde_json(&events);
    let handwritten_current = handwritten_is_current(&events);
    Fixture {
        stream,
        clock,
        events,
        handwritten_current,
    }
}

/// A proposal measured here, not part of netmon: a hand-written JSON writer for the
/// connection events (the hot path), writing the same bytes as serde_json by writing
/// each event's fields and constant punctuation directly instead of walking serde's
/// data model (other events go through serde_json). [`handwritten_is_current`] checks it
/// against serde_json over the whole stream; when the event types change and it no
/// longer matches, its benchmark is skipped with a note instead of reporting numbers
/// for different output.
mod handwritten {
    use netmon::event::{Close, Connection, Direction, Endpoint, Event, EventBody, Family, Proto};
    use serde_json::ser::{CompactFormatter, Formatter};
    use std::net::IpAddr;

    pub fn write_event(out: &mut Vec<u8>, e: &Event) {
        let (ty, c, close): (&[u8], &Connection, Option<&Close>) = match &e.body {
            EventBody::Connect(c) => (b"connect", c, None),
            EventBody::Accept(c) => (b"accept", c, None),
            EventBody::Udp(c) => (b"udp", c, None),
            EventBody::Listen(c) => (b"listen", c, None),
            EventBody::Close(cl) => (b"close", &cl.conn, Some(cl)),
            _ => {
                serde_json::to_writer(&mut *out, e).unwrap();
                return;
            }
        };
        out.extend_from_slice(b"{\"ts\":\"");
        ts(out, e);
        out.extend_from_slice(b"\",\"host\":");
        string(out, &e.host);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(ty);
        out.extend_from_slice(match c.proto {
            Proto::Tcp => b"\",\"proto\":\"tcp\",\"family\":\"",
            Proto::Udp => b"\",\"proto\":\"udp\",\"family\":\"",
        });
        out.extend_from_slice(match c.family {
            Family::Ipv4 => b"ipv4\",\"direction\":",
            Family::Ipv6 => b"ipv6\",\"direction\":",
        });
        out.extend_from_slice(match c.direction {
            Some(Direction::Outbound) => b"\"outbound\"",
            Some(Direction::Inbound) => b"\"inbound\"",
            None => b"null",
        });
        if let Some(src) = &c.src {
            out.extend_from_slice(b",\"src\":");
            endpoint(out, src);
        }
        out.extend_from_slice(b",\"dst\":");
        endpoint(out, &c.dst);
        out.extend_from_slice(b",\"process\":");
        match &c.process {
            Some(p) => {
                out.extend_from_slice(b"{\"pid\":");
                num(out, p.pid as u64);
                out.extend_from_slice(b",\"tid\":");
                num(out, p.tid as u64);
                out.extend_from_slice(b",\"comm\":");
                string(out, &p.comm);
                out.extend_from_slice(b",\"uid\":");
                num(out, p.uid as u64);
                out.extend_from_slice(b",\"gid\":");
                num(out, p.gid as u64);
                out.extend_from_slice(b",\"cgroup_id\":");
                num(out, p.cgroup_id);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"backend\":");
        string(out, &c.backend);
        if let Some(n) = c.netns {
            out.extend_from_slice(b",\"netns\":");
            num(out, n as u64);
        }
        if c.failed {
            out.extend_from_slice(b",\"failed\":true");
        }
        if let Some(b) = c.bytes {
            out.extend_from_slice(b",\"bytes\":");
            num(out, b);
        }
        if let Some(cl) = close {
            out.extend_from_slice(b",\"duration_ms\":");
            match cl.duration_ms {
                Some(ms) if ms.is_finite() => CompactFormatter.write_f64(out, ms).unwrap(),
                _ => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"bytes_sent\":");
            opt(out, cl.bytes_sent);
            out.extend_from_slice(b",\"bytes_received\":");
            opt(out, cl.bytes_received);
        }
        out.push(b'}');
    }

    fn opt(out: &mut Vec<u8>, v: Option<u64>) {
        match v {
            Some(v) => num(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }

    fn num(out: &mut Vec<u8>, v: u64) {
        CompactFormatter.write_u64(out, v).unwrap();
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            serde_json::to_writer(&mut *out, s).unwrap();
        } else {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
    }

    fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
        out.extend_from_slice(b"{\"ip\":\"");
        match e.ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    if o >= 100 {
                        out.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        out.push(b'0' + o / 10 % 10);
                    }
                    out.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                write!(out, "{}", e.ip).unwrap();
            }
        }
        out.extend_from_slice(b"\",\"port\":");
        num(out, e.port as u64);
        out.push(b'}');
    }

    fn ts(out: &mut Vec<u8>, e: &Event) {
        use chrono::{Datelike, Timelike};
        let t = &e.ts;
        let mut buf = [0u8; 29];
        fn digits(out: &mut [u8], mut v: u32) {
            for b in out.iter_mut().rev() {
                *b = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        digits(&mut buf[0..4], t.year() as u32);
        buf[4] = b'-';
        digits(&mut buf[5..7], t.month());
        buf[7] = b'-';
        digits(&mut buf[8..10], t.day());
        buf[10] = b'T';
        digits(&mut buf[11..13], t.hour());
        buf[13] = b':';
        digits(&mut buf[14..16], t.minute());
        buf[16] = b':';
        digits(&mut buf[17..19], t.second());
        buf[19] = b'.';
        digits(&mut buf[20..29], t.nanosecond());
        out.extend_from_slice(&buf);
        out.push(b'Z');
    }
}

/// Whether the hand-written writer still produces serde_json's bytes for every event.
fn handwritten_is_current(events: &[Event]) -> bool {
    let mut line = Vec::new();
    let current = events.iter().all(|e| {
        line.clear();
        handwritten::write_event(&mut line, e);
        line == serde_json::to_vec(e).unwrap()
    });
    if !current {
        eprintln!(
            "pipeline: the hand-written writer no longer matches serde_json for these event \
             types; render_json_handwritten is skipped"
        );
    }
    current
}

/// The hand-written writer behind the same 64 KiB buffer as the real sink.
struct HandwrittenSink {
    out: io::BufWriter<Box<dyn io::Write + Send>>,
    line: Vec<u8>,
}

impl HandwrittenSink {
    fn new() -> Self {
        HandwrittenSink {
            out: io::BufWriter::with_capacity(64 * 1024, Box::new(io::sink())),
            line: Vec::with_capacity(1024),
        }
    }

    fn write(&mut self, e: &Event) {
        use io::Write as _;
        self.line.clear();
        handwritten::write_event(&mut self.line, e);
        self.line.push(b'\n');
        self.out.write_all(&self.line).unwrap();
    }

    fn flush(&mut self) {
        use io::Write as _;
        self.out.flush().unwrap();
    }
}

/// The sink's JSON lines must be exactly serde_json's, over the whole stream.
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
        handwritten_current,
    } = fixture();
    let mut sink = json_sink();
    let mut stages = stages();
    for _ in 0..PASSES {
        match pass {
            "setup" => {}
            "decode" => {
                for r in records(&stream) {
                    black_box(decode::decode(black_box(r), &clock, HOST).unwrap());
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
            "render_json_handwritten" => {
                if !handwritten_current {
                    // Said on stderr by the fixture; no count, so no figure is made.
                    return;
                }
                let mut sink = HandwrittenSink::new();
                for e in &events {
                    sink.write(black_box(e));
                }
                sink.flush();
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
        handwritten_current,
    } = fixture();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for r in records(&stream) {
                black_box(decode::decode(black_box(r), &clock, HOST).unwrap());
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
    if handwritten_current {
        g.bench_function("render_json_handwritten", |b| {
            let mut sink = HandwrittenSink::new();
            b.iter(|| {
                for e in &events {
                    sink.write(black_box(e));
                }
                sink.flush();
            })
        });
    }
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
