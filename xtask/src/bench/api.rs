//! `cargo xtask bench api` (issue 14): what the HTTP API costs the event loop.
//!
//! 1. The storm (`storm.rs`) with netmon's API and no client, and with 50 SSE clients
//!    (`curl -N` on loopback) reading `/api/v1/events`, interleaved rounds: netmon's
//!    throughput (storm events received per second) and loss (`stats.lost`, generated
//!    − received), medians side by side. Every client's stream is checked: each gap
//!    in its ids must be announced by `lagged` events with exactly that count. Each
//!    `curl` writes its stream to a file, read after the storm: checking 50 streams
//!    while they come would take the storm's CPU for the benchmark's own work.
//! 2. `GET /api/v1/flows` with 100,000 flows in the table (UDP datagrams to 100,000
//!    loopback peers, as `tests/tests/flows.rs` makes them): the answer's time, and
//!    `stats.lost` before and after (the ring buffer must lose nothing meanwhile).
//!
//! Loopback only, every load bounded in count and time.
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Env,
    report::{Section, Table, median, met, thousands},
    storm::{self, StormConfig},
    tracer::{self, Tracer},
};

/// Events left to drain after a storm before netmon is stopped.
const DRAIN: Duration = Duration::from_secs(2);

pub struct ApiArgs {
    pub rounds: u32,
    pub storm: StormConfig,
    pub clients: usize,
    pub flows: u32,
    pub quiet_wait: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Alone,
    Clients,
}

/// What one SSE client saw.
#[derive(Debug, Default, Clone)]
struct Stream {
    events: u64,
    lagged: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// The first gap in the ids that no `lagged` accounted for.
    unaccounted: Option<String>,
}

impl Stream {
    fn frame(&mut self, id: Option<u64>, event: Option<&str>, data: &str, pending: &mut u64) {
        if event == Some("lagged") {
            let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
            let n = v["missed"].as_u64().unwrap_or(0);
            self.lagged += n;
            *pending += n;
            return;
        }
        let Some(id) = id else { return };
        self.events += 1;
        if let Some(last) = self.last {
            let gap = id.saturating_sub(last + 1);
            if (gap != *pending || id <= last) && self.unaccounted.is_none() {
                self.unaccounted = Some(format!(
                    "ids {last} → {id}: {gap} missing, lagged said {pending}"
                ));
            }
        }
        *pending = 0;
        self.first.get_or_insert(id);
        self.last = Some(id);
    }
}

/// A `curl -N` on the event stream, writing it to a file that [`Client::finish`] reads.
struct Client {
    child: Child,
    file: PathBuf,
}

impl Client {
    fn start(url: &str, token: &str, file: PathBuf) -> Result<Client> {
        let child = Command::new("curl")
            .args(["-sN", "--max-time", "300", "-o"])
            .arg(&file)
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start curl (Debian package curl)")?;
        Ok(Client { child, file })
    }

    /// Stops the client and parses what it received (then removes the file).
    fn finish(mut self) -> Stream {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = Stream::default();
        let Ok(out) = std::fs::File::open(&self.file) else {
            return s;
        };
        let (mut id, mut event, mut data) = (None, None::<String>, String::new());
        let mut pending = 0;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.is_empty() {
                s.frame(id.take(), event.take().as_deref(), &data, &mut pending);
                data.clear();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        let _ = std::fs::remove_file(&self.file);
        s
    }
}

struct Run {
    mode: Mode,
    storm: storm::StormReport,
    received: u64,
    lost: u64,
    streams: Vec<Stream>,
}

impl Run {
    /// Storm events netmon received per second of storm.
    fn per_s(&self) -> f64 {
        self.received as f64 * 1000.0 / self.storm_ms() as f64
    }

    fn storm_ms(&self) -> u64 {
        // The storm's TCP rate × its connections gives its length.
        ((self.storm.tcp_connections as f64 / self.storm.tcp_per_s.max(1e-9)) * 1000.0) as u64
    }

    fn missing(&self) -> u64 {
        self.storm.events_total.saturating_sub(self.received)
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// netmon with its API on a free loopback port: (tracer, address, token).
fn netmon_with_api(env: &Env, name: &str, extra: &[&str]) -> Result<(Tracer, String, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let token_file = env.work.join("api-bench.token");
    let mut flags: Vec<String> = vec![
        "--api".into(),
        addr.clone(),
        "--api-token-file".into(),
        token_file.display().to_string(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    let t = Tracer::netmon(&env.netmon, env.netmon_nice, &env.work.join(name), &flags)?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("netmon made no token file {}", token_file.display()))?
        .trim()
        .to_owned();
    Ok((t, addr, token))
}

/// `GET path` with the token: (status, body, seconds).
fn get(addr: &str, token: &str, path: &str) -> Result<(u16, String, f64)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code} %{time_total}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{addr}{path}"))
        .output()
        .context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs = it.next().and_then(|c| c.parse().ok()).unwrap_or(f64::NAN);
    Ok((code, body.to_owned(), secs))
}

fn one(env: &Env, args: &ApiArgs, mode: Mode) -> Result<Run> {
    let (tracer, addr, token) = netmon_with_api(env, "api-netmon.json", &[])?;
    let mut clients = Vec::new();
    if mode == Mode::Clients {
        let url = format!("http://{addr}/api/v1/events");
        for _ in 0..args.clients {
            let file = env.work.join(format!("api-client-{}.sse", clients.len()));
            clients.push(Client::start(&url, &token, file)?);
        }
        // Wait until the API counts every stream.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body, _) = get(&addr, &token, "/api/v1/stats")?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if v["api"]["streams"].as_u64() == Some(args.clients as u64) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the API did not count {} streams within 10 s: {body}",
                    args.clients
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    let storm = storm::run(&env.storm, &args.storm)?;
    thread::sleep(DRAIN);
    let streams: Vec<Stream> = clients.into_iter().map(Client::finish).collect();
    let output = tracer.output.clone();
    tracer.stop()?;
    let c = tracer::count_netmon(&output, &storm)?;
    Ok(Run {
        mode,
        received: c.storm_total(),
        lost: c.lost.unwrap_or(0),
        storm,
        streams,
    })
}

/// The flow table filled with `n` UDP flows, then `/api/v1/flows` asked five times:
/// (answer seconds each, flows in the table, ring-buffer loss during the requests).
fn flows(env: &Env, n: u32) -> Result<(Vec<f64>, u64, u64)> {
    let (tracer, addr, token) = netmon_with_api(
        env,
        "api-flows.json",
        &[
            "--udp-timeout",
            "3600",
            "--flow-interval",
            "3600",
            "--stats-interval",
            "1",
        ],
    )?;
    let out = tracer.output.clone();
    // n peers: two loopback addresses × n/2 ports, one datagram each, paced.
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..n {
        let ip = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        let port = 10_000 + (i / 2) as u16;
        let _ = sock.send_to(b"x", (ip, port));
        if i % 2_000 == 1_999 {
            thread::sleep(Duration::from_millis(40));
        }
    }
    // Until the table stops growing.
    let mut last = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1500));
        let now = last_stats(&out)?;
        if now.0 >= n as u64 || (now.0 == last.0 && now.0 > 0) {
            last = now;
            break;
        }
        last = now;
    }
    let (active, lost_before) = last;
    let mut times = Vec::new();
    for _ in 0..5 {
        let (code, body, secs) = get(&addr, &token, "/api/v1/flows")?;
        if code != 200 {
            bail!("/api/v1/flows answered {code}: {body}");
        }
        times.push(secs * 1000.0);
    }
    // The stats line after the requests.
    thread::sleep(Duration::from_millis(2500));
    let (_, lost_after) = last_stats(&out)?;
    tracer.stop()?;
    Ok((times, active, lost_after.saturating_sub(lost_before)))
}

/// (flows.active, lost) of the newest `stats` line in netmon's output.
fn last_stats(path: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"stats\""))
        .unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    Ok((
        v["flows"]["active"].as_u64().unwrap_or(0),
        v["lost"].as_u64().unwrap_or(0),
    ))
}

pub fn run(env: &Env, args: &ApiArgs) -> Result<(Section, bool)> {
    let load = super::proc::load_average();
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        // Alternate which goes first, so a drift in the machine's load hits both.
        let order = if round % 2 == 1 {
            [Mode::Alone, Mode::Clients]
        } else {
            [Mode::Clients, Mode::Alone]
        };
        for mode in order {
            eprintln!("bench api: round {round}/{}: {mode:?}", args.rounds);
            super::proc::wait_for_quiet(args.quiet_wait);
            let r = one(env, args, mode)?;
            eprintln!(
                "bench api:   {} of {} storm events received ({:.0}/s), lost {}, {} streams",
                r.received,
                r.storm.events_total,
                r.per_s(),
                r.lost,
                r.streams.len()
            );
            runs.push(r);
        }
    }
    eprintln!("bench api: /api/v1/flows with {} flows", args.flows);
    let (times, active, flows_lost) = flows(env, args.flows)?;
    let med = |mode: Mode, f: &dyn Fn(&Run) -> f64| {
        median(
            &runs
                .iter()
                .filter(|r| r.mode == mode)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let rate = (
        med(Mode::Alone, &|r| r.per_s()),
        med(Mode::Clients, &|r| r.per_s()),
    );
    let tcp = (
        med(Mode::Alone, &|r| r.storm.tcp_per_s),
        med(Mode::Clients, &|r| r.storm.tcp_per_s),
    );
    let lost = (
        med(Mode::Alone, &|r| r.lost as f64),
        med(Mode::Clients, &|r| r.lost as f64),
    );
    let missing = (
        med(Mode::Alone, &|r| r.missing() as f64),
        med(Mode::Clients, &|r| r.missing() as f64),
    );
    let streams: Vec<&Stream> = runs.iter().flat_map(|r| &r.streams).collect();
    let bad: Vec<&String> = streams
        .iter()
        .filter_map(|s| s.unaccounted.as_ref())
        .collect();
    let silent = streams.iter().filter(|s| s.events == 0).count();
    let delivered: u64 = streams.iter().map(|s| s.events).sum();
    let lagged: u64 = streams.iter().map(|s| s.lagged).sum();
    let rate_ratio = rate.1 / rate.0;
    let rate_ok = rate_ratio >= 0.95;
    let loss_ok = missing.1 <= missing.0 + 0.05 * (runs[0].storm.events_total as f64);
    let streams_ok = bad.is_empty() && silent == 0 && !streams.is_empty();
    let flows_ms = median(&times);
    let flows_max = times.iter().copied().fold(0.0, f64::max);
    let flows_ok = flows_max < 200.0 && flows_lost == 0 && active >= args.flows as u64 * 99 / 100;
    let mut md = String::new();
    let _ = writeln!(md, "## 7. HTTP API: 50 event streams, the flow table\n");
    let _ = writeln!(
        md,
        "`{}` — the storm (`{}`) with netmon's API and no client, and with {} SSE clients \
         (`curl -N` on `/api/v1/events`, unfiltered) on loopback; {} interleaved rounds, \
         medians. Then `GET /api/v1/flows` (default `sort=bytes`, `limit=1000`) five times \
         with {} UDP flows in the table. Load before: {load}.\n",
        env.command_line,
        args.storm.command_line(),
        args.clients,
        args.rounds,
        thousands(args.flows as u64)
    );
    let _ = writeln!(md, "{}\n", env.machine);
    let mut t = Table::new(&[
        "",
        "no client",
        &format!("{} clients", args.clients),
        "ratio",
        "target",
    ]);
    t.row(&[
        "storm events netmon received per s".to_string(),
        format!("{:.0}", rate.0),
        format!("{:.0}", rate.1),
        format!("{rate_ratio:.3}"),
        format!("≥ 0.95: {}", met(rate_ok)),
    ]);
    t.row(&[
        "storm TCP connections per s".to_string(),
        format!("{:.0}", tcp.0),
        format!("{:.0}", tcp.1),
        format!("{:.3}", tcp.1 / tcp.0),
        String::new(),
    ]);
    t.row(&[
        "events missing (generated − received)".to_string(),
        format!("{:.0}", missing.0),
        format!("{:.0}", missing.1),
        String::new(),
        format!("within 5% of the storm: {}", met(loss_ok)),
    ]);
    t.row(&[
        "`stats.lost`".to_string(),
        format!("{:.0}", lost.0),
        format!("{:.0}", lost.1),
        String::new(),
        String::new(),
    ]);
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nStreams: {} in all, {} events delivered, {} announced as `lagged`; every gap in a \
         stream's ids matched by `lagged`: {} ({} streams with an unannounced gap{}, {} that \
         received nothing).\n",
        streams.len(),
        thousands(delivered),
        thousands(lagged),
        met(streams_ok),
        bad.len(),
        bad.first()
            .map(|b| format!(", first: {b}"))
            .unwrap_or_default(),
        silent
    );
    let mut t = Table::new(&[
        "run",
        "received",
        "generated",
        "received/s",
        "lost",
        "lagged (all streams)",
    ]);
    for r in &runs {
        t.row(&[
            format!("{:?}", r.mode),
            thousands(r.received),
            thousands(r.storm.events_total),
            format!("{:.0}", r.per_s()),
            thousands(r.lost),
            thousands(r.streams.iter().map(|s| s.lagged).sum()),
        ]);
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\n`GET /api/v1/flows` with {} flows in the table: median {flows_ms:.1} ms, slowest \
         {flows_max:.1} ms of 5 (target < 200 ms); ring-buffer loss during the requests: {} \
         (target 0): {}.\n",
        thousands(active),
        flows_lost,
        met(flows_ok)
    );
    Ok((
        Section {
            id: "api",
            markdown: md,
        },
        rate_ok && loss_ok && streams_ok && flows_ok,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_accounted_only_by_a_lagged_of_its_size() {
        let mut s = Stream::default();
        let mut p = 0;
        s.frame(Some(5), None, "{}", &mut p);
        s.frame(None, Some("lagged"), r#"{"missed":3}"#, &mut p);
        s.frame(Some(9), None, "{}", &mut p);
        s.frame(Some(10), None, "{}", &mut p);
        assert!(s.unaccounted.is_none(), "{s:?}");
        assert_eq!((s.events, s.lagged), (3, 3));
        s.frame(Some(12), None, "{}", &mut p);
        assert!(s.unaccounted.is_some());
    }
}
