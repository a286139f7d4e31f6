//! The agent's HTTP API end to end: a real `netmon run` in the test's own network
//! namespace, asked with the real `curl`: the token (401 without or with a wrong one,
//! 200 with it), `/healthz`, 404 and 400 as JSON, the SSE stream of a test
//! connection's `connect`/`accept`/`close`, resuming with `Last-Event-ID` after a
//! disconnect during traffic without missing anything (from the ring, and from the
//! history when more than the ring happened meanwhile), `lagged` with the exact count,
//! the stream cap, refusals at start (plain HTTP on a non-loopback address, a port in
//! use), and garbage, a half-open connection and 10,000 requests leaving it healthy.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::{Duration, Instant},
};

use netmon::event::EventBody;
use netmon_tests::{NetNs, Netmon, Scratch, free_port, netmon_bin, require_root};

const WAIT: Duration = Duration::from_secs(20);

/// The token file netmon makes in `scratch` (and the directory, 0700).
fn token_file(scratch: &Scratch) -> String {
    scratch.0.join("api.token").to_string_lossy().into_owned()
}

/// A running netmon with its API on a free loopback port.
struct Agent {
    netmon: Netmon,
    port: u16,
    token: String,
    _scratch: Scratch,
}

impl Agent {
    fn start(tag: &str, extra: &[&str]) -> Agent {
        let scratch = Scratch::reserve(&format!("api-{tag}"));
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let tf = token_file(&scratch);
        let mut args = vec!["--api", &addr, "--api-token-file", &tf];
        args.extend_from_slice(extra);
        let netmon = Netmon::start(&args);
        let token = std::fs::read_to_string(&tf)
            .expect("netmon made the token file")
            .trim()
            .to_owned();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&tf).unwrap().mode() & 0o777, 0o600);
        Agent {
            netmon,
            port,
            token,
            _scratch: scratch,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `curl` with the token: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        curl(&[
            "-H",
            &format!("Authorization: Bearer {}", self.token),
            &self.url(path),
        ])
    }

    fn stream(&self, path: &str, headers: &[&str]) -> Sse {
        let mut args = vec![
            "-sN".to_owned(),
            "-H".to_owned(),
            format!("Authorization: Bearer {}", self.token),
        ];
        for h in headers {
            args.push("-H".into());
            args.push((*h).into());
        }
        args.push(self.url(path));
        Sse::start(&args)
    }
}

/// `curl -s` printing the status after the body: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// One SSE event as the wire carries it.
#[derive(Debug, Clone, Default)]
struct Frame {
    event: Option<String>,
    id: Option<u64>,
    data: String,
}

/// A `curl -N` reading an event stream; frames parsed as they arrive.
struct Sse {
    child: Child,
    frames: Receiver<Frame>,
}

impl Sse {
    fn start(args: &[String]) -> Sse {
        let mut child = Command::new("curl")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run curl");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            let mut f = Frame::default();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.is_empty() {
                    if !f.data.is_empty() && tx.send(std::mem::take(&mut f)).is_err() {
                        break;
                    }
                    f = Frame::default();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    f.data.push_str(v);
                } else if let Some(v) = line.strip_prefix("id: ") {
                    f.id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    f.event = Some(v.to_owned());
                }
            }
        });
        Sse { child, frames: rx }
    }

    /// Frames until `done` says stop (true) or the time is up.
    fn read_until(&self, timeout: Duration, mut done: impl FnMut(&[Frame]) -> bool) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(f) => got.push(f),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (type, event) of each data frame.
fn events(frames: &[Frame]) -> Vec<(String, serde_json::Value)> {
    frames
        .iter()
        .filter(|f| f.event.is_none())
        .map(|f| {
            let v = json(&f.data);
            (v["type"].as_str().unwrap_or("").to_owned(), v)
        })
        .collect()
}

/// A listener on `port` that accepts, reads to EOF and closes, `n` times.
fn serve(port: u16, n: usize) -> thread::JoinHandle<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
        }
    })
}

/// `n` connections to the `serve`r on `port`, one byte each; their client ports are
/// added to `clients`.
fn connections(port: u16, n: usize, clients: &mut Vec<u64>) {
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        clients.push(s.local_addr().unwrap().port() as u64);
        s.write_all(b"x").unwrap();
    }
}

fn connect_once(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"hello").unwrap();
}

#[test]
fn token_healthz_404_and_400() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("auth", &[]);
    let (code, body) = curl(&[&agent.url("/healthz")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    // No token, a wrong one, the wrong scheme: 401 with a JSON error.
    let (code, body) = curl(&[&agent.url("/api/v1/stats")]);
    assert_eq!(code, 401, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("token"));
    let (code, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {}x", agent.token),
        &agent.url("/api/v1/stats"),
    ]);
    assert_eq!(code, 401);
    let (code, _) = curl(&[
        "-H",
        &format!("Authorization: Basic {}", agent.token),
        &agent.url("/api/v1/stats"),
    ]);
    assert_eq!(code, 401);
    // Repeated failures from one address are slowed down (the 3 above, then more).
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    let t = Instant::now();
    for _ in 0..3 {
        let (code, _) = curl(&["-H", &wrong, &agent.url("/api/v1/stats")]);
        assert_eq!(code, 401);
    }
    // Failures 4, 5 and 6 wait 100, 200 and 300 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    // The right one.
    let (code, body) = agent.get("/api/v1/stats");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["api"]["auth_failures"], 6, "{v}");
    // Unknown endpoint, bad filters.
    let (code, body) = agent.get("/api/v1/nothing-here");
    assert_eq!(code, 404);
    assert!(json(&body)["error"].is_string());
    let (code, body) = agent.get("/api/v1/events?type=nonsense");
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("`type`"),
        "{body}"
    );
    let (code, body) = agent.get("/api/v1/events?port=99999");
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("`port`"),
        "{body}"
    );
    let (code, body) = agent.get("/api/v1/alerts?limit=0");
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("`limit`"),
        "{body}"
    );
    // The stats line arrives with the stream (every second here).
    let (status, _) = agent.netmon.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn stats_endpoint_serves_the_last_stats_line() {
    require_root!();
    let _ns = NetNs::new();
    let mut agent = Agent::start("stats", &["--stats-interval", "1"]);
    agent
        .netmon
        .wait_for(WAIT, |e| matches!(e.body, EventBody::Stats(_)))
        .expect("a stats line");
    let (code, body) = agent.get("/api/v1/stats");
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["stats"]["type"], "stats", "{v}");
    assert!(v["stats"]["events"]["connect"].is_u64(), "{v}");
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn sse_streams_a_test_connection_with_filters() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("sse", &[]);
    let port = free_port();
    let other = free_port();
    let server = serve(port, 1);
    let server2 = serve(other, 1);
    let sse = agent.stream(
        &format!("/api/v1/events?type=connect,accept,close&port={port}"),
        &[],
    );
    // The stream is up once curl connected: give it a moment, then make traffic on
    // both ports; only `port` may come through.
    thread::sleep(Duration::from_millis(300));
    connect_once(other);
    connect_once(port);
    server.join().unwrap();
    server2.join().unwrap();
    let frames = sse.read_until(WAIT, |f| {
        let kinds: BTreeSet<_> = events(f).into_iter().map(|(k, _)| k).collect();
        kinds.contains("connect") && kinds.contains("accept") && kinds.contains("close")
    });
    let evs = events(&frames);
    let kinds: BTreeSet<_> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.contains("connect") && kinds.contains("accept") && kinds.contains("close"),
        "{frames:?}"
    );
    for (_, v) in &evs {
        let ports = [v["src"]["port"].as_u64(), v["dst"]["port"].as_u64()];
        assert!(ports.contains(&Some(port as u64)), "filter let through {v}");
    }
    // Ids increase.
    let ids: Vec<u64> = frames.iter().filter_map(|f| f.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let (status, seen) = agent.netmon.stop();
    assert!(status.success());
    // The SSE objects are the JSON Lines objects.
    let (_, connect) = evs.iter().find(|(k, _)| k == "connect").unwrap();
    let same = seen
        .iter()
        .any(|e| serde_json::to_value(e).unwrap() == *connect);
    assert!(
        same,
        "the SSE connect is not one of the JSON lines: {connect}"
    );
}

/// Which (src port) connections to `port` a list of `close` events covers.
fn closed_clients(evs: &[(String, serde_json::Value)], port: u16) -> BTreeSet<u64> {
    evs.iter()
        .filter(|(k, v)| k == "close" && v["dst"]["port"] == port && v["direction"] == "outbound")
        .filter_map(|(_, v)| v["src"]["port"].as_u64())
        .collect()
}

#[test]
fn resume_with_last_event_id_after_a_disconnect_misses_nothing() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("resume", &[]);
    let port = free_port();
    let total = 30;
    let server = serve(port, total);
    let filter = format!("/api/v1/events?type=close&port={port}");
    let sse = agent.stream(&filter, &[]);
    thread::sleep(Duration::from_millis(300));
    let mut clients = Vec::new();
    let connect = |n: usize, clients: &mut Vec<u64>| connections(port, n, clients);
    connect(10, &mut clients);
    let first = sse.read_until(WAIT, |f| closed_clients(&events(f), port).len() >= 10);
    let last_id = first.iter().filter_map(|f| f.id).max().expect("an id");
    drop(sse);
    // Traffic while no client is connected.
    connect(10, &mut clients);
    thread::sleep(Duration::from_millis(500));
    let sse = agent.stream(&filter, &[&format!("Last-Event-ID: {last_id}")]);
    connect(10, &mut clients);
    server.join().unwrap();
    let second = sse.read_until(WAIT, |f| closed_clients(&events(f), port).len() >= 20);
    let mut got = closed_clients(&events(&first), port);
    let again = closed_clients(&events(&second), port);
    assert!(got.is_disjoint(&again), "resume repeated events");
    got.extend(again);
    let want: BTreeSet<u64> = clients.into_iter().collect();
    assert_eq!(got, want, "missed closes across the reconnect");
    assert!(
        second.iter().all(|f| f.event.is_none()),
        "unexpected lagged: {second:?}"
    );
    assert!(second.iter().filter_map(|f| f.id).all(|id| id > last_id));
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

/// (direction, src port) of every `connect`/`close` to `port`, in order of arrival.
fn conn_events(evs: &[(String, serde_json::Value)], port: u16) -> Vec<(String, String, u64)> {
    evs.iter()
        .filter(|(k, v)| (k == "connect" || k == "close") && v["dst"]["port"] == port)
        .filter(|(_, v)| v["direction"] == "outbound")
        .filter_map(|(k, v)| {
            Some((
                k.clone(),
                v["backend"].as_str()?.to_owned(),
                v["src"]["port"].as_u64()?,
            ))
        })
        .collect()
}

/// The client ports of the `kind` events in `got` (from [`conn_events`]), none twice.
fn ports_once(got: &[(String, String, u64)], kind: &str) -> BTreeSet<u64> {
    let ports: Vec<u64> = got
        .iter()
        .filter(|(k, _, _)| k == kind)
        .map(|(_, _, p)| *p)
        .collect();
    let unique: BTreeSet<u64> = ports.iter().copied().collect();
    assert_eq!(ports.len(), unique.len(), "a {kind} came twice");
    unique
}

/// An agent keeping a history in a scratch directory (kept while the agent runs).
fn agent_with_history(tag: &str) -> (Agent, Scratch) {
    let scratch = Scratch::reserve(&format!("api-{tag}"));
    let db = scratch.0.join("h.db").to_string_lossy().into_owned();
    (Agent::start(tag, &["--history", &db]), scratch)
}

#[test]
fn resume_from_the_history_beyond_the_ring_misses_nothing_and_repeats_nothing() {
    require_root!();
    let _ns = NetNs::new();
    // The default ring (1024 events) and a history.
    let (agent, _scratch) = agent_with_history("resume-history");
    let port = free_port();
    let (before, away, after) = (5, 600, 5);
    let server = serve(port, before + away + after);
    let filter = format!("/api/v1/events?port={port}");
    let sse = agent.stream(&filter, &[]);
    thread::sleep(Duration::from_millis(300));
    let mut clients = Vec::new();
    let connect = |n: usize, clients: &mut Vec<u64>| connections(port, n, clients);
    connect(before, &mut clients);
    let first = sse.read_until(WAIT, |f| closed_clients(&events(f), port).len() >= before);
    let last_id = first.iter().filter_map(|f| f.id).max().expect("an id");
    drop(sse);
    // While no client listens: connect, accept and two closes per connection, far
    // more than the ring holds. Reconnect at once: the history may still be
    // committing what left the ring.
    connect(away, &mut clients);
    thread::sleep(Duration::from_millis(200));
    let sse = agent.stream(&filter, &[&format!("Last-Event-ID: {last_id}")]);
    connect(after, &mut clients);
    server.join().unwrap();
    let want = clients.len();
    let second = sse.read_until(Duration::from_secs(60), |f| {
        closed_clients(&events(f), port).len() >= want - before
    });
    assert!(
        second.iter().all(|f| f.event.is_none()),
        "nothing is missed, so no lagged: {:?}",
        second.iter().find(|f| f.event.is_some())
    );
    let ids: Vec<u64> = second.iter().filter_map(|f| f.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids in order, none twice"
    );
    assert!(ids.iter().all(|id| *id > last_id));
    // More than the ring: some of it can only have come from the history.
    assert!(
        ids.len() > 1024,
        "only {} events after the reconnect",
        ids.len()
    );
    let got = conn_events(&events(&second), port);
    assert!(
        got.iter().any(|(_, b, _)| b == "history"),
        "none replayed from the history"
    );
    assert!(
        got.iter().any(|(_, b, _)| b != "history"),
        "none live after the replay"
    );
    let before_ports: BTreeSet<u64> = clients[..before].iter().copied().collect();
    for kind in ["connect", "close"] {
        let unique = ports_once(&got, kind);
        let want: BTreeSet<u64> = clients[before..].iter().copied().collect();
        let missing: Vec<_> = want.difference(&unique).collect();
        assert!(
            missing.is_empty(),
            "{} {kind}s missed: {missing:?}",
            missing.len()
        );
        assert!(
            unique.is_disjoint(&before_ports),
            "a {kind} from before the disconnect came again"
        );
    }
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

/// `since=` as a time: the stream starts with the first event at or after it, from the
/// history (further back than the ring) and then the ring, nothing before it; `since=1h`
/// reaches back to the start.
#[test]
fn since_a_time_starts_at_that_time_from_the_history_then_the_ring() {
    require_root!();
    let _ns = NetNs::new();
    let (agent, _scratch) = agent_with_history("since-time");
    let port = free_port();
    let (before, after) = (3, 600);
    let server = serve(port, before + after);
    let mut clients = Vec::new();
    connections(port, before, &mut clients);
    thread::sleep(Duration::from_millis(1_100));
    // A whole second at most 1 s back: still after the first connections.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let mark = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Far more events than the ring (1024) holds.
    connections(port, after, &mut clients);
    server.join().unwrap();
    let want_after: BTreeSet<u64> = clients[before..].iter().copied().collect();
    let want_all: BTreeSet<u64> = clients.iter().copied().collect();
    let read = |since: &str, want: &BTreeSet<u64>| {
        let sse = agent.stream(&format!("/api/v1/events?port={port}&since={since}"), &[]);
        let frames = sse.read_until(Duration::from_secs(60), |f| {
            closed_clients(&events(f), port).len() >= want.len()
        });
        assert!(
            frames.iter().all(|f| f.event.is_none()),
            "since={since}: nothing is missed, so no lagged: {:?}",
            frames.iter().find(|f| f.event.is_some())
        );
        conn_events(&events(&frames), port)
    };
    let got = read(&mark, &want_after);
    assert!(
        got.iter().any(|(_, b, _)| b == "history"),
        "since={mark}: none replayed from the history"
    );
    for kind in ["connect", "close"] {
        assert_eq!(
            ports_once(&got, kind),
            want_after,
            "since={mark}: the {kind}s after the mark, only they"
        );
    }
    let got = read("1h", &want_all);
    assert_eq!(
        ports_once(&got, "connect"),
        want_all,
        "since=1h: every connect"
    );
    // A bad value names the parameter.
    let (status, body) = agent.get("/api/v1/events?since=yesterday");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("since"), "{body}");
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn a_client_that_asks_for_more_than_the_ring_gets_lagged_with_the_count() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("lagged", &["--api-replay", "16"]);
    let port = free_port();
    let server = serve(port, 20);
    for _ in 0..20 {
        connect_once(port);
    }
    server.join().unwrap();
    thread::sleep(Duration::from_millis(500));
    // Resume from the very first event: everything before the ring's oldest is missed.
    let sse = agent.stream("/api/v1/events?since=1", &[]);
    let frames = sse.read_until(WAIT, |f| f.len() >= 2);
    assert_eq!(frames[0].event.as_deref(), Some("lagged"), "{frames:?}");
    let missed = json(&frames[0].data)["missed"].as_u64().unwrap();
    let next = frames[1].id.unwrap();
    // Asked from id 2 on; got `next`: exactly the ones in between were missed.
    assert_eq!(missed, next - 2, "{frames:?}");
    assert!(missed > 0);
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn streams_beyond_the_cap_get_503_and_are_counted() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("cap", &["--api-max-streams", "2"]);
    let a = agent.stream("/api/v1/events", &[]);
    let b = agent.stream("/api/v1/events", &[]);
    thread::sleep(Duration::from_millis(500));
    let (code, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", agent.token),
        &agent.url("/api/v1/events"),
    ]);
    assert_eq!(code, 503, "{body}");
    let (_, stats) = agent.get("/api/v1/stats");
    let v = json(&stats);
    assert_eq!(v["api"]["streams"], 2, "{v}");
    assert_eq!(v["api"]["streams_refused"], 1, "{v}");
    drop(a);
    thread::sleep(Duration::from_millis(300));
    let c = agent.stream("/api/v1/events", &[]);
    thread::sleep(Duration::from_millis(300));
    let (_, stats) = agent.get("/api/v1/stats");
    assert_eq!(json(&stats)["api"]["streams_refused"], 1);
    drop((b, c));
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

/// netmon refuses to start: exit 2, one line on stderr, nothing printed on stdout.
fn refused(args: &[&str]) -> String {
    let out = Command::new(netmon_bin())
        .arg("run")
        .args(args)
        .output()
        .expect("run netmon");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "attached anyway: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn plain_http_on_a_non_loopback_address_and_a_busy_port_are_refused_at_start() {
    require_root!();
    let _ns = NetNs::new();
    let scratch = Scratch::reserve("api-refuse");
    let tf = token_file(&scratch);
    let err = refused(&["--api", "0.0.0.0:9469", "--api-token-file", &tf]);
    assert!(
        err.contains("TLS") && err.contains("--api-insecure"),
        "{err}"
    );
    let port = free_port();
    let _busy = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = refused(&[
        "--api",
        &format!("127.0.0.1:{port}"),
        "--api-token-file",
        &tf,
    ]);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let err = refused(&["--api", "off", "--api", "127.0.0.1:1"]);
    assert!(err.contains("--api off"), "{err}");
    // `--api off` serves nothing on the default port.
    let netmon = Netmon::start(&["--api", "off"]);
    assert!(TcpStream::connect("127.0.0.1:9469").is_err());
    let (status, _) = netmon.stop();
    assert!(status.success());
}

#[test]
fn garbage_half_open_and_ten_thousand_requests_leave_it_healthy() {
    require_root!();
    let _ns = NetNs::new();
    let mut agent = Agent::start("robust", &[]);
    let addr = ("127.0.0.1", agent.port);
    // A half-open connection that never sends anything, kept open meanwhile.
    let _half = TcpStream::connect(addr).unwrap();
    // Garbage, and a request line that never ends.
    for junk in [
        &b"\x00\xff\x16\x03\x01garbage\r\n\r\n"[..],
        b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX: ",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(junk);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
    }
    // 10,000 requests on kept-alive connections (one curl, a config file of URLs).
    let cfg = agent._scratch.0.join("urls");
    let mut text = String::new();
    for i in 0..10_000 {
        let path = if i % 2 == 0 {
            "/healthz"
        } else {
            "/api/v1/stats"
        };
        text.push_str(&format!(
            "url = \"{}\"\noutput = \"/dev/null\"\n",
            agent.url(path)
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-w", "%{http_code}\n", "-H"])
        .arg(format!("Authorization: Bearer {}", agent.token))
        .arg("-K")
        .arg(&cfg)
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|c| *c == "200").count();
    eprintln!("10,000 requests in {:?}", t.elapsed());
    assert_eq!(ok, 10_000, "{}", &codes[..codes.len().min(2000)]);
    // Still healthy: answers, and still monitors.
    let (code, _) = agent.get("/api/v1/stats");
    assert_eq!(code, 200);
    let port = free_port();
    let server = serve(port, 1);
    connect_once(port);
    server.join().unwrap();
    assert!(
        agent
            .netmon
            .wait_for(
                WAIT,
                |e| matches!(&e.body, EventBody::Close(c) if c.conn.dst.port == port)
            )
            .is_some()
    );
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn flows_endpoint_lists_the_live_flow_table_filtered_sorted_and_cut() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("flows", &[]);
    let port = free_port();
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let n = 20;
    // Held open: connections in the flow table, the ith one carrying i*100 bytes.
    let mut held = Vec::new();
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        c.write_all(&vec![b'x'; 100 * (i + 1)]).unwrap();
        held.push((c, s));
    }
    // The loop learns of them within its drain timer.
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let (code, body) = agent.get(&format!("/api/v1/flows?port={port}&proto=tcp&limit=1000"));
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        if v["matched"].as_u64() >= Some(2 * n as u64) || Instant::now() > deadline {
            break v;
        }
        thread::sleep(Duration::from_millis(200));
    };
    // Both ends of each connection are flows of this host.
    assert_eq!(v["matched"], 2 * n as u64, "{v}");
    assert!(v["total"].as_u64().unwrap() >= 2 * n as u64);
    for f in v["flows"].as_array().unwrap() {
        assert_eq!(f["type"], "flow");
        let ports = [f["src"]["port"].as_u64(), f["dst"]["port"].as_u64()];
        assert!(ports.contains(&Some(port as u64)), "{f}");
    }
    let (code, body) = agent.get(&format!("/api/v1/flows?port={port}&limit=3&sort=start"));
    assert_eq!(code, 200);
    assert_eq!(json(&body)["flows"].as_array().unwrap().len(), 3);
    let (code, body) = agent.get("/api/v1/flows?sort=sideways");
    assert_eq!(code, 400);
    assert!(body.contains("`sort`"), "{body}");
    drop(held);
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn metrics_are_served_on_the_api_behind_the_token_or_open_when_asked() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("metrics", &[]);
    let port = free_port();
    let server = serve(port, 1);
    connect_once(port);
    server.join().unwrap();
    let (code, _) = curl(&[&agent.url("/metrics")]);
    assert_eq!(code, 401, "/metrics needs the token by default");
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("# TYPE netmon_connections_total counter"),
        "{body}"
    );
    assert!(body.contains("netmon_backend_info"), "{body}");
    // Prometheus' own checker finds nothing to say about it.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);

    let open = Agent::start("metrics-open", &["--api-metrics-open"]);
    let (code, body) = curl(&[&open.url("/metrics")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("netmon_connections_total"), "{body}");
    // Only /metrics is opened.
    let (code, _) = curl(&[&open.url("/api/v1/stats")]);
    assert_eq!(code, 401);
}

/// `openssl` commands run in `dir`; panics with their stderr when one fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a server certificate it signed for `ip` (`NAME.pem`,
/// `NAME.key`), as docs/api.md tells administrators to make them.
fn certificate(dir: &std::path::Path, name: &str, ip: &str) {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=netmon test CA",
            ],
        );
    }
    let subj = format!("/CN={name}");
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subj,
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName=IP:{ip}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// The subject of the certificate `addr` presents.
fn presented_subject(addr: &str, ca: &std::path::Path) -> String {
    let shown = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(&shown.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An address of this namespace that is not loopback (on a veth pair: this kernel
/// has no dummy interfaces).
fn non_loopback_address(ip: &str) {
    for args in [
        vec![
            "link", "add", "nmapi0", "type", "veth", "peer", "name", "nmapi1",
        ],
        vec!["addr", "add", &format!("{ip}/32"), "dev", "nmapi0"],
        vec!["link", "set", "nmapi0", "up"],
        vec!["link", "set", "nmapi1", "up"],
    ] {
        let st = Command::new("ip").args(&args).status().expect("run ip");
        assert!(st.success(), "ip {args:?}");
    }
}

/// A TLS lab in the calling thread's namespace: `ip` on an interface, a scratch
/// directory holding the test CA and a certificate `name` for `ip`.
fn tls_lab(ip: &str, tag: &str, name: &str) -> (Scratch, std::path::PathBuf) {
    non_loopback_address(ip);
    let scratch = Scratch::reserve(tag);
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    certificate(&dir, name, ip);
    (scratch, dir)
}

#[test]
fn tls_on_a_non_loopback_address_with_a_test_ca_refuses_plain_http_and_reloads_on_sighup() {
    require_root!();
    let _ns = NetNs::new();
    let ip = "10.231.0.1";
    let (scratch, dir) = tls_lab(ip, "api-tls", "agent-one");
    // The files the agent serves; replaced below by a renewed certificate.
    std::fs::copy(dir.join("agent-one.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(dir.join("agent-one.key"), dir.join("server.key")).unwrap();
    let port = free_port();
    let addr = format!("{ip}:{port}");
    let tf = token_file(&scratch);
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let args = [
        "--api",
        &addr,
        "--api-token-file",
        &tf,
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ];
    let netmon = Netmon::start(&args);
    let token = std::fs::read_to_string(&tf).unwrap().trim().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let ca = dir.join("ca.pem");
    let url = format!("https://{addr}/api/v1/stats");
    // Trusting the test CA: 200. Trusting only the system's roots: refused by curl.
    let (code, body) = curl(&["--cacert", ca.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["api"]["tls_failures"], 0);
    let (code, _) = curl(&["-H", &auth, &url]);
    assert_eq!(code, 0, "curl trusted a certificate of an unknown CA");
    // Plain HTTP to the TLS listener fails cleanly and is counted.
    let (code, _) = curl(&["-H", &auth, &format!("http://{addr}/api/v1/stats")]);
    assert_eq!(code, 0, "plain HTTP got an HTTP answer from a TLS listener");
    let (code, body) = curl(&["--cacert", ca.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(code, 200);
    assert!(
        json(&body)["api"]["tls_failures"].as_u64().unwrap() >= 2,
        "{body}"
    );
    assert!(presented_subject(&addr, &ca).contains("agent-one"));
    // A renewed certificate: written over the files, then SIGHUP (as certbot's hook).
    certificate(&dir, "agent-two", ip);
    std::fs::copy(dir.join("agent-two.pem"), &cert).unwrap();
    std::fs::copy(dir.join("agent-two.key"), &key).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + WAIT;
    while !presented_subject(&addr, &ca).contains("agent-two") {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served after SIGHUP"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A broken file at the next SIGHUP: the agent keeps the certificate it had.
    std::fs::write(&key, "not a key\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    thread::sleep(Duration::from_millis(300));
    let (code, _) = curl(&["--cacert", ca.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(code, 200);
    assert!(presented_subject(&addr, &ca).contains("agent-two"));
    let (status, _) = netmon.stop();
    assert!(status.success(), "{status}");
    // At start, a key that is not one is an error naming the file, nothing attached.
    let err = refused(&args);
    assert!(err.contains("server.key"), "{err}");
}

#[test]
fn slow_and_oversized_requests_are_cut_off() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("limits", &[]);
    let addr = ("127.0.0.1", agent.port);
    // Headers of 20 KiB: 431, or the connection closed.
    let mut s = TcpStream::connect(addr).unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = s.write_all(big.as_bytes());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    let head = String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned();
    assert!(
        b.is_empty() || head.starts_with("HTTP/1.1 431"),
        "oversized headers got {head:?}"
    );
    // Headers that never end, and a connection that never sends: closed by the agent
    // after its header time (10 s), not held for ever.
    let t = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let idle = TcpStream::connect(addr).unwrap();
    for mut s in [slow, idle] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = Vec::new();
        let r = s.read_to_end(&mut b);
        assert!(r.is_ok(), "not closed by the agent within 20 s: {r:?}");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let (code, _) = agent.get("/api/v1/stats");
    assert_eq!(code, 200);
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

#[test]
fn processes_and_history_endpoints_answer_what_netmon_history_answers_over_https() {
    require_root!();
    let _ns = NetNs::new();
    let ip = "10.231.0.2";
    let (scratch, dir) = tls_lab(ip, "api-history", "agent");
    let db = dir.join("netmon.db");
    let port = free_port();
    let addr = format!("{ip}:{port}");
    let tf = token_file(&scratch);
    let mut netmon = Netmon::start(&[
        "--api",
        &addr,
        "--api-token-file",
        &tf,
        "--api-tls-cert",
        dir.join("agent.pem").to_str().unwrap(),
        "--api-tls-key",
        dir.join("agent.key").to_str().unwrap(),
        "--history",
        db.to_str().unwrap(),
        "--flow-interval",
        "1",
    ]);
    let token = std::fs::read_to_string(&tf).unwrap().trim().to_owned();
    let ca = dir.join("ca.pem");
    let get = |path: &str| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://{addr}{path}"),
        ])
    };
    // Two connections of this test process held open to one listener.
    let listen = free_port();
    let l = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", listen)).unwrap();
            c.write_all(b"x").unwrap();
            (c, l.accept().unwrap().0)
        })
        .collect();
    netmon
        .wait_for(
            WAIT,
            |e| matches!(&e.body, EventBody::Accept(c) if c.dst.port == listen),
        )
        .expect("the accept");
    let comm = netmon_tests::process_comm();
    let (code, body) = get(&format!("/api/v1/processes?process={comm}"));
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let me = &v["processes"][0];
    assert_eq!(me["pid"], std::process::id(), "{v}");
    // Both ends of both connections are this process's: 4 flows, 1 peer (127.0.0.1).
    assert_eq!(me["connections"], 4, "{v}");
    assert_eq!(me["peers"], 1, "{v}");
    let (code, body) = get("/api/v1/processes?colour=red");
    assert_eq!(code, 400, "{body}");
    drop(held);
    netmon
        .wait_for(
            WAIT,
            |e| matches!(&e.body, EventBody::Close(c) if c.conn.dst.port == listen),
        )
        .expect("a close");
    // The history endpoint, once the writer committed (about every second).
    let query = format!("/api/v1/history/events?type=connect&port={listen}");
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let (code, body) = get(&query);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        if v["count"] == 2 {
            break v["rows"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "history never held both connects: {v}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rows[0]["type"], "connect");
    assert_eq!(rows[0]["dst_port"], listen);
    // `netmon history --agent` prints what `netmon history` prints from the file.
    let history = |args: &[&str]| {
        let out = Command::new(netmon_bin())
            .args(["history", "events", "--type", "connect", "--port"])
            .arg(listen.to_string())
            .args(args)
            .env_remove("NETMON_TOKEN")
            .output()
            .expect("run netmon history");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    };
    let local = history(&["--history", db.to_str().unwrap(), "--format", "csv"]);
    let url = format!("https://{addr}");
    let remote = history(&[
        "--agent",
        &url,
        "--token-file",
        &tf,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert_eq!(local.0, Some(0), "{}", local.2);
    assert_eq!(remote.0, Some(0), "{}", remote.2);
    assert_eq!(local.1.lines().count(), 3, "{}", local.1);
    assert_eq!(remote.1, local.1);
    // Without the CA, a wrong token, a bad question: one line, exit 2... or 1.
    let untrusted = history(&["--agent", &url, "--token-file", &tf]);
    assert_ne!(untrusted.0, Some(0));
    assert!(
        untrusted.2.contains("TLS") || untrusted.2.contains("certificate"),
        "{}",
        untrusted.2
    );
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let denied = history(&[
        "--agent",
        &url,
        "--token-file",
        wrong.to_str().unwrap(),
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    assert_ne!(denied.0, Some(0));
    assert!(denied.2.contains("401"), "{}", denied.2);
    let (code, body) = get("/api/v1/history/events?limit=0");
    assert_eq!(code, 400);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("`limit`"),
        "{body}"
    );
    let (code, _) = get("/api/v1/history/nothing");
    assert_eq!(code, 404);
    let (status, _) = netmon.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn an_agent_without_history_says_so() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("nohistory", &["--no-history"]);
    let (code, body) = agent.get("/api/v1/history/flows");
    assert_eq!(code, 404, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("no history"),
        "{body}"
    );
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
}

/// The nice value of `pid`'s thread named `comm` (field 19 of its `stat`).
fn thread_nice(pid: u32, comm: &str) -> Option<i64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        if head.split_once(" (")?.1 != comm {
            continue;
        }
        // Fields after the name start at 3 (state); nice is field 19.
        return rest.split_whitespace().nth(19 - 3)?.parse().ok();
    }
    None
}

/// The API thread runs at `--api-nice` (19 by default) and the event loop at netmon's
/// own priority; a value outside 0–19 is refused.
#[test]
fn the_api_thread_yields_to_the_workload_by_its_nice_value() {
    require_root!();
    let _ns = NetNs::new();
    let agent = Agent::start("nice", &[]);
    let pid = agent.netmon.pid();
    assert_eq!(thread_nice(pid, "netmon-api"), Some(19));
    assert_eq!(thread_nice(pid, "netmon"), Some(0), "the event loop");
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
    let agent = Agent::start("nice0", &["--api-nice", "0"]);
    assert_eq!(thread_nice(agent.netmon.pid(), "netmon-api"), Some(0));
    let (status, _) = agent.netmon.stop();
    assert!(status.success());
    let out = Command::new(netmon_bin())
        .args(["run", "--api-nice", "20"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--api-nice") && err.contains("0..=19"),
        "{err}"
    );
}
