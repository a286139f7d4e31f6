//! Prometheus metrics end to end: a real `netmon run --metrics`, a real Prometheus and
//! node-exporter (Debian's `prometheus` and `prometheus-node-exporter`, started here on
//! the test namespace's loopback with their own storage; the packages' services are not
//! used), known traffic in the test's network namespace, read back through Prometheus'
//! HTTP API and linted with `promtool`.
//!
//! The counters compared exactly are the per-process ones of this test binary's own
//! exe name: other tests on the machine make connections too (netmon sees every
//! namespace), but not under this name.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netmon_tests::{ConfigFile, NetNs, Netmon, Scratch, free_port, require_root, testpeer_bin};

const WAIT: Duration = Duration::from_secs(30);

/// A child process killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--fail", url])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 body")
}

fn wait_http(url: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "2", "--fail", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} did not answer within {WAIT:?}");
}

fn node_exporter(port: u16) -> Daemon {
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args([
            "--collector.disable-defaults",
            "--collector.meminfo",
            "--collector.netdev",
            // Debian's build leaves `lo` out by default; it is the test namespace's one.
            "--collector.netdev.device-exclude=^$",
            "--collector.filesystem",
            "--collector.cpu",
            "--collector.loadavg",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-node-exporter (Debian package prometheus-node-exporter)");
    let d = Daemon(child);
    wait_http(&format!("http://127.0.0.1:{port}/metrics"));
    d
}

/// A Prometheus scraping `targets` (job name, port) every second.
struct Prometheus {
    _daemon: Daemon,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, u16)]) -> Prometheus {
        let port = free_port();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, p) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{p}']\n        labels: {{host: test}}\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        let p = Prometheus {
            _daemon: Daemon(child),
            port,
        };
        wait_http(&format!("http://127.0.0.1:{port}/-/ready"));
        for (job, _) in targets {
            p.wait_value(&format!("up{{job=\"{job}\"}}"), |v| v == 1.0);
        }
        p
    }

    /// The instant vector of `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--fail", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "query {query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "success", "query {query}: {v}");
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().unwrap().parse().unwrap();
                    (s["metric"].clone(), value)
                })
                .collect(),
            Some("scalar") => vec![(
                serde_json::Value::Null,
                data["result"][1].as_str().unwrap().parse().unwrap(),
            )],
            other => panic!("query {query}: result type {other:?}"),
        }
    }

    /// Waits until `query` has one series whose value passes `ok`; returns it.
    fn wait_value(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.query(query);
            if let [(_, v)] = last[..]
                && ok(v)
            {
                return v;
            }
            thread::sleep(Duration::from_millis(250));
        }
        panic!("{query}: never passed; last {last:?}");
    }
}

fn start_netmon(metrics_port: u16) -> Netmon {
    let addr = format!("127.0.0.1:{metrics_port}");
    let netmon = Netmon::start(&["--no-history", "--stats-interval", "1", "--metrics", &addr]);
    wait_http(&format!("http://{addr}/metrics"));
    netmon
}

/// The file name of this test binary: the `process` label of its connections.
fn own_exe_name() -> String {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    exe.file_name().unwrap().to_string_lossy().into_owned()
}

/// `n` TCP connections from this process to a listener of this process, each carrying
/// `up` bytes to the server and `down` bytes back.
fn tcp_exchanges(n: usize, up: usize, down: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0; up];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&vec![b's'; down]).unwrap();
        }
    });
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&vec![b'c'; up]).unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len(), down);
    }
    server.join().unwrap();
}

/// `promtool check metrics` on `text`: its whole output (empty when clean).
fn promtool(text: &str, extended: bool) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "metrics"]);
    if extended {
        cmd.arg("--extended");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() || !all.is_empty(),
        "promtool failed silently"
    );
    all
}

/// Series in a text exposition (sample lines).
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The value of the one sample of `name` whose labels contain every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text).into_iter().find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, rest) = head.split_once('{').unwrap_or((head, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().unwrap())
    })
}

#[test]
fn prometheus_counts_exactly_the_connections_made_and_the_scrape_lints_clean() {
    require_root!();
    let _ns = NetNs::new();
    let scratch = Scratch::new("metrics-counts");
    let metrics_port = free_port();
    let _netmon = start_netmon(metrics_port);
    let prom = Prometheus::start(&scratch.0, &[("netmon", metrics_port)]);
    let me = own_exe_name();
    let conns = format!("netmon_process_connections_total{{job=\"netmon\",process=\"{me}\"}}");
    assert!(prom.query(&conns).is_empty(), "no traffic of ours yet");
    let outbound_before = prom.query(
        "sum(netmon_connections_total{direction=\"outbound\",proto=\"tcp\",result=\"established\"})",
    );
    let outbound_before = outbound_before.first().map_or(0.0, |s| s.1);

    const N: usize = 25;
    const UP: usize = 1000;
    const DOWN: usize = 3000;
    // Scrape while the traffic runs: the lint holds under load.
    let traffic = thread::spawn(|| {
        let _ns_of_this_thread = NetNs::new();
        tcp_exchanges(N, UP, DOWN);
    });
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut scrapes = Vec::new();
    while !traffic.is_finished() {
        scrapes.push(http_get(&url));
    }
    traffic.join().unwrap();
    scrapes.push(http_get(&url));
    for text in &scrapes {
        assert_eq!(
            promtool(text, false),
            "",
            "promtool check metrics on:\n{text}"
        );
    }

    // Every connection is one `connect` and one `accept` of this process.
    prom.wait_value(&conns, |v| v == (2 * N) as f64);
    let bytes = |dir: &str| {
        format!("netmon_process_bytes_total{{job=\"netmon\",process=\"{me}\",direction=\"{dir}\"}}")
    };
    prom.wait_value(&bytes("sent"), |v| v == (N * (UP + DOWN)) as f64);
    prom.wait_value(&bytes("received"), |v| v == (N * (UP + DOWN)) as f64);
    let outbound = prom.wait_value(
        "sum(netmon_connections_total{direction=\"outbound\",proto=\"tcp\",result=\"established\"})",
        |v| v >= outbound_before + N as f64,
    );
    assert!(outbound >= outbound_before + N as f64);
    // Three scrapes later nothing was counted twice.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(prom.query(&conns)[0].1, (2 * N) as f64);
    // The pipeline's own counters arrive too (from `stats`), and nothing was dropped
    // for the metrics consumer.
    prom.wait_value("netmon_events_total{type=\"probe\"}", |v| v == 1.0);
    prom.wait_value("netmon_consumer_dropped_total{consumer=\"metrics\"}", |v| {
        v == 0.0
    });
    assert!(
        !prom
            .query("netmon_backend_info{capability=\"tcp_connect\"}")
            .is_empty()
    );

    // Every query of every panel of the dashboard returns data, `$host` being any.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/netmon.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(
        panels.len() >= 10,
        "the dashboard has {} panels",
        panels.len()
    );
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap().replace("$host", ".+");
            let deadline = Instant::now() + WAIT;
            while prom.query(&expr).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "panel {}: `{expr}` returns no data",
                    panel["title"]
                );
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

#[test]
fn host_statistics_agree_with_node_exporter() {
    require_root!();
    let _ns = NetNs::new();
    let metrics_port = free_port();
    let _netmon = start_netmon(metrics_port);
    let node_port = free_port();
    let _node = node_exporter(node_port);
    let netmon_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let node_url = format!("http://127.0.0.1:{node_port}/metrics");
    // Some traffic on this namespace's loopback, so the counters are not all zero.
    tcp_exchanges(5, 10_000, 10_000);
    // node-exporter before and after netmon: a counter of netmon's must lie in
    // between (within 1%), a gauge within 1% of either.
    let before = http_get(&node_url);
    let ours = http_get(&netmon_url);
    let after = http_get(&node_url);
    let within = |what: &str, v: Option<f64>, lo: Option<f64>, hi: Option<f64>| {
        let (v, lo, hi) = (
            v.unwrap_or_else(|| panic!("netmon has no {what}")),
            lo.unwrap_or_else(|| panic!("node-exporter has no {what}")),
            hi.unwrap(),
        );
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        assert!(
            v >= lo * 0.99 && v <= hi * 1.01,
            "{what}: netmon {v}, node-exporter {lo}..{hi}"
        );
    };
    let both = |name: &str, labels: &[(&str, &str)]| {
        (sample(&before, name, labels), sample(&after, name, labels))
    };
    let (lo, hi) = both("node_memory_MemTotal_bytes", &[]);
    within(
        "memory total",
        sample(&ours, "netmon_host_memory_total_bytes", &[]),
        lo,
        hi,
    );
    let (lo, hi) = both("node_memory_MemAvailable_bytes", &[]);
    within(
        "memory available",
        sample(&ours, "netmon_host_memory_available_bytes", &[]),
        lo,
        hi,
    );
    let (lo, hi) = both("node_memory_SwapTotal_bytes", &[]);
    within(
        "swap total",
        sample(&ours, "netmon_host_swap_total_bytes", &[]),
        lo,
        hi,
    );
    for (node, ours_name) in [
        (
            "node_network_receive_bytes_total",
            "netmon_host_network_receive_bytes_total",
        ),
        (
            "node_network_transmit_bytes_total",
            "netmon_host_network_transmit_bytes_total",
        ),
        (
            "node_network_receive_packets_total",
            "netmon_host_network_receive_packets_total",
        ),
    ] {
        let (lo, hi) = both(node, &[("device", "lo")]);
        within(node, sample(&ours, ours_name, &[("device", "lo")]), lo, hi);
    }
    assert!(
        sample(
            &ours,
            "netmon_host_network_receive_bytes_total",
            &[("device", "lo")]
        )
        .unwrap()
            > 20_000.0
    );
    let (lo, hi) = both("node_filesystem_size_bytes", &[("mountpoint", "/")]);
    within(
        "root filesystem size",
        sample(
            &ours,
            "netmon_host_filesystem_size_bytes",
            &[("mountpoint", "/")],
        ),
        lo,
        hi,
    );
    let idle = |t: &str| {
        series(t)
            .into_iter()
            .filter(|l| l.starts_with("node_cpu_seconds_total{") && l.contains("mode=\"idle\""))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum::<f64>()
    };
    // CPU seconds move fast: one scrape's worth of change is allowed (both read /proc/stat).
    let ours_idle = sample(&ours, "netmon_host_cpu_seconds_total", &[("mode", "idle")]).unwrap();
    assert!(
        ours_idle >= idle(&before) - 1.0 && ours_idle <= idle(&after) + 1.0,
        "idle CPU seconds: netmon {ours_idle}, node-exporter {}..{}",
        idle(&before),
        idle(&after)
    );
    assert!(sample(&ours, "netmon_host_load1", &[]).is_some());
}

#[test]
fn cardinality_stays_under_budget_with_500_processes_and_10000_peers() {
    require_root!();
    let _ns = NetNs::new();
    // 500 exe names: hard links to the test peer (same filesystem as the binary).
    let peer = testpeer_bin();
    let scratch = Scratch::under(peer.parent().unwrap(), "metrics-cardinality");
    let metrics_port = free_port();
    let netmon = start_netmon(metrics_port);
    let mut children = Vec::new();
    for i in 0..500 {
        let exe = scratch.0.join(format!("nm-proc-{i:03}"));
        std::fs::hard_link(&peer, &exe).unwrap();
        // 20 peers each in 127.<i/100+1>.<i%100>.1..20 (loopback): 10,000 peers.
        let prefix = format!("127.{}.{}", i / 100 + 1, i % 100);
        children.push(
            Command::new(&exe)
                .args(["udp-fanout", &prefix, "1", "20", "9"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        if children.len() == 50 {
            for mut c in children.drain(..) {
                assert!(c.wait().unwrap().success());
            }
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Wait until netmon saw most of them (the ring buffer may lose some under the burst).
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = http_get(&url);
        let peers: f64 = series(&text)
            .into_iter()
            .filter(|l| l.starts_with("netmon_udp_peers_total"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum();
        if peers >= 9_000.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "netmon saw only {peers} UDP peers"
        );
        thread::sleep(Duration::from_millis(500));
    };
    // The scrape with the full label set (host statistics read then) is quick. The
    // issue's budget is 50 ms; a loaded 2-core test machine gets 5 times that.
    let t = Instant::now();
    let again = http_get(&url);
    let took = t.elapsed();
    eprintln!("scrape of {} series took {took:?}", series(&again).len());
    assert!(took < Duration::from_millis(250), "a scrape took {took:?}");
    drop(netmon);
    assert_eq!(promtool(&text, false), "", "promtool check metrics");
    let extended = promtool(&text, true);
    assert!(
        extended.contains("Cardinality"),
        "promtool --extended: {extended}"
    );
    let n = series(&text).len();
    assert!(n < 2_000, "{n} series: over the budget of 2,000");
    let processes: Vec<&str> = series(&text)
        .into_iter()
        .filter(|l| l.starts_with("netmon_process_connections_total{"))
        .collect();
    assert!(processes.len() <= 21, "{} process series", processes.len());
    let other = sample(
        &text,
        "netmon_process_connections_total",
        &[("process", "~other")],
    )
    .unwrap();
    assert!(other >= 400.0, "the rest summed under ~other: {other}");
    assert!(!text.contains("127.1."), "peer addresses are not labels");
}

/// `CapEff` of every thread of `pid`, by thread name.
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let eff = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(u64::MAX);
            (comm.trim().to_owned(), eff)
        })
        .collect()
}

#[test]
fn the_metrics_thread_starts_after_the_privilege_drop() {
    require_root!();
    let _ns = NetNs::new();
    let netmon = start_netmon(free_port());
    // CAP_SYS_PTRACE and CAP_SYS_ADMIN (see tests/tests/privileges.rs).
    const KEPT: u64 = (1 << 19) | (1 << 21);
    let threads = thread_caps(netmon.pid());
    assert!(
        threads.iter().any(|(name, _)| name == "netmon-metrics"),
        "no metrics thread in {threads:?}"
    );
    for (name, eff) in &threads {
        assert_eq!(*eff, KEPT, "thread {name} has CapEff {eff:#x}");
    }
}

#[test]
fn a_taken_metrics_port_fails_at_start_in_one_line() {
    require_root!();
    let _ns = NetNs::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(netmon_tests::netmon_bin())
        .args(["run", "--no-history", "--metrics", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "nothing attached, no probe line");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--metrics"),
        "{stderr}"
    );
}

/// `n` connections from this process to `addr`'s listener, each closed at once.
fn connections_to(addr: &str, n: usize) {
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let to = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        for _ in 0..n {
            drop(listener.accept().unwrap());
        }
    });
    for _ in 0..n {
        drop(TcpStream::connect(to).unwrap());
    }
    server.join().unwrap();
}

#[test]
fn ring_buffer_fill_and_the_opt_in_peer_top_n_are_exported() {
    require_root!();
    let _ns = NetNs::new();
    let config = ConfigFile::new("[metrics]\npeers = 3\n");
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let netmon = Netmon::start(&[
        "--no-history",
        "--stats-interval",
        "1",
        "--ring-buffer-kib",
        "256",
        "--config",
        &config.arg(),
        "--metrics",
        &addr,
    ]);
    let url = format!("http://{addr}/metrics");
    wait_http(&url);
    // Five remote addresses of this namespace's loopback, made busy in a known order.
    // The accepted side's remote is the client's source, 127.0.0.1, busiest of all.
    for (peer, n) in [
        ("127.77.0.2", 30),
        ("127.77.0.3", 25),
        ("127.77.0.4", 20),
        ("127.77.0.5", 1),
        ("127.77.0.6", 1),
    ] {
        connections_to(peer, n);
    }
    let peer = |text: &str, p: &str| sample(text, "netmon_peer_connections_total", &[("peer", p)]);
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = http_get(&url);
        if peer(&text, "127.77.0.2") == Some(30.0) && peer(&text, "127.77.0.3") == Some(25.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "peer series never reached 30 and 25:\n{}",
            series(&text)
                .into_iter()
                .filter(|l| l.starts_with("netmon_peer_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(300));
    };
    // Three addresses get a label; the fourth busiest is summed under ~other.
    assert!(peer(&text, "127.0.0.1").unwrap() >= 77.0);
    assert_eq!(
        peer(&text, "127.77.0.4"),
        None,
        "only the top 3 get a label"
    );
    assert!(peer(&text, "~other").unwrap() >= 22.0);
    let labelled = series(&text)
        .into_iter()
        .filter(|l| l.starts_with("netmon_peer_connections_total{"))
        .count();
    assert_eq!(labelled, 4, "3 peers and ~other");
    // The ring buffer's fill, read from the ring's own positions.
    let size = sample(&text, "netmon_ring_buffer_size_bytes", &[]).unwrap();
    assert_eq!(size, 262_144.0, "--ring-buffer-kib 256");
    let used = sample(&text, "netmon_ring_buffer_used_bytes", &[]).unwrap();
    assert!((0.0..=size).contains(&used), "used {used} of {size}");
    for ratio in [
        "netmon_ring_buffer_fill_ratio",
        "netmon_ring_buffer_peak_fill_ratio",
    ] {
        let r = sample(&text, ratio, &[]).unwrap();
        assert!((0.0..=1.0).contains(&r), "{ratio} {r}");
    }
    drop(netmon);
    assert_eq!(promtool(&text, false), "", "promtool check metrics");
}
