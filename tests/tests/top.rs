//! `netmon top` end to end in tmux, as a user drives it: keys with `send-keys`, the
//! screen with `capture-pane`. In-process (`sudo netmon top` tracing real traffic in the
//! test's own network namespace): the test process and its peer show up within 2 s,
//! `/` filters, `s` sorts, Tab switches views, `q` leaves a clean terminal. Agent mode
//! against SSE servers this test runs on loopback (serving recorded netmon JSON lines
//! in the agreed `GET /api/v1/events` format): two agents merged, one killed shows
//! unreachable and then reconnects with `Last-Event-ID`, a wrong token and a server
//! that is not netmon each get one clear line. Against a real agent with a history:
//! `--since 5m` shows its connections from the history, `]` is live again. Without
//! privileges and no agent: one line, non-zero exit.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use netmon_tests::{NetNs, backend, netmon_bin, require_root, testpeer_bin, thread_comm};

/// A tmux server of its own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached session of `w`×`h` running `cmd` in a shell; the shell then prints
    /// `TOP-EXIT=<status>` and waits, so the pane outlives netmon top.
    fn start(tag: &str, w: u16, h: u16, cmd: &str, env: &[(&str, &str)]) -> Tmux {
        let socket = format!("netmon-top-{tag}-{}", std::process::id());
        let script = format!("{cmd}; echo TOP-EXIT=$?; sleep 600");
        let mut c = Command::new("tmux");
        c.args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &w.to_string(), "-y", &h.to_string()]);
        for (k, v) in env {
            c.args(["-e", &format!("{k}={v}")]);
        }
        let status = c
            .args(["sh", "-c", &script])
            .status()
            .expect("run tmux (Debian package tmux)");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
    }

    /// Waits until the screen satisfies `pred`; the screen, or a panic with the last one.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}; screen:\n{s}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn format(&self, f: &str) -> String {
        self.tmux(&["display-message", "-p", f]).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn top_cmd(args: &str) -> String {
    format!("{} top {args}", netmon_bin().display())
}

/// The line of `screen` holding `needle`.
fn line_of(screen: &str, needle: &str) -> Option<usize> {
    screen.lines().position(|l| l.contains(needle))
}

/// Accepts connections on `listener` and holds them open until `stop`.
fn hold(listener: TcpListener, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// `netmon-testpeer tcp-many ADDR N`: N connections held until its stdin closes.
fn peer_many(addr: &str, n: usize) -> Child {
    let mut child = Command::new(testpeer_bin())
        .args(["tcp-many", addr, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start netmon-testpeer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("open"), "testpeer: {line}");
    child
}

#[test]
fn top_in_process_shows_processes_filters_sorts_switches_and_quits_cleanly() {
    require_root!();
    let _ns = NetNs::new();
    let stop = Arc::new(AtomicBool::new(false));
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    let (p1, p2) = (
        l1.local_addr().unwrap().port(),
        l2.local_addr().unwrap().port(),
    );
    // p1 < p2 for the sort check.
    let (p1, p2, l1, l2) = if p1 < p2 {
        (p1, p2, l1, l2)
    } else {
        (p2, p1, l2, l1)
    };
    let h1 = hold(l1, stop.clone());
    let h2 = hold(l2, stop.clone());

    let tmux = Tmux::start(
        "inproc",
        120,
        30,
        &top_cmd(&format!("--in-process --backend {}", backend())),
        &[],
    );
    tmux.wait("the UI", Duration::from_secs(30), |s| {
        s.contains("1:Overview") && s.contains("local (in-process) live")
    });

    // Traffic starts now: this process and its peers must show within 2 s.
    let started = Instant::now();
    let mine = TcpStream::connect(("127.0.0.1", p1)).unwrap();
    let mut a = peer_many(&format!("127.0.0.1:{p1}"), 2);
    let mut b = peer_many(&format!("127.0.0.1:{p2}"), 1);
    tmux.keys(&["2"]);
    let me = std::env::current_exe().unwrap();
    let me: String = me
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .take(20)
        .collect();
    let comm = thread_comm();
    let (pa, pb) = (a.id().to_string(), b.id().to_string());
    let row = |s: &str, pid: &str| {
        s.lines()
            .position(|l| l.contains("netmon-testpeer") && l.contains(&format!(" {pid} ")))
    };
    let s = tmux.wait(
        "this process and both peers",
        Duration::from_secs(10),
        |s| {
            (s.contains(&me) || s.contains(&comm)) && row(s, &pa).is_some() && row(s, &pb).is_some()
        },
    );
    let took = started.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the test process and its peers took {took:?} to show:\n{s}"
    );
    assert!(s.contains("Processes ("), "{s}");

    // `s`: sort by pid, descending; `r` reverses.
    let (hi, lo) = if a.id() > b.id() {
        (&pa, &pb)
    } else {
        (&pb, &pa)
    };
    tmux.keys(&["s"]);
    let s = tmux.wait("sorted by pid", Duration::from_secs(5), |s| {
        s.contains("pid▼")
    });
    assert!(
        row(&s, hi).unwrap() < row(&s, lo).unwrap(),
        "pid {hi} above {lo}:\n{s}"
    );
    tmux.keys(&["r"]);
    let s = tmux.wait("reversed", Duration::from_secs(5), |s| s.contains("pid▲"));
    assert!(
        row(&s, lo).unwrap() < row(&s, hi).unwrap(),
        "pid {lo} above {hi}:\n{s}"
    );

    // Tab: Processes → Connections, where the flows to both ports show.
    tmux.keys(&["Tab"]);
    let s = tmux.wait("the connections", Duration::from_secs(5), |s| {
        s.contains("Connections (")
            && s.contains(&format!("127.0.0.1:{p1}"))
            && s.contains(&format!("127.0.0.1:{p2}"))
    });
    assert!(s.contains("established"), "{s}");

    // `/` + the second port: only its flows stay.
    tmux.keys(&["/"]);
    tmux.type_text(&p2.to_string());
    tmux.keys(&["Enter"]);
    let s = tmux.wait("the filter", Duration::from_secs(5), |s| {
        s.contains(&format!("filter: {p2}")) && !s.contains(&format!("127.0.0.1:{p1}"))
    });
    assert!(s.contains(&format!("127.0.0.1:{p2}")), "{s}");
    assert!(
        s.contains(" of "),
        "the title counts what the filter keeps: {s}"
    );

    // `?` shows the help, any key closes it; `q` quits and restores the terminal.
    tmux.keys(&["?"]);
    tmux.wait("the help", Duration::from_secs(5), |s| {
        s.contains("netmon top: keys")
    });
    tmux.keys(&["x"]);
    tmux.wait("the help closed", Duration::from_secs(5), |s| {
        !s.contains("netmon top: keys")
    });
    tmux.keys(&["q"]);
    let s = tmux.wait("netmon top to exit", Duration::from_secs(15), |s| {
        s.contains("TOP-EXIT=")
    });
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    assert!(
        !s.contains("Connections ("),
        "the UI is gone from the screen: {s}"
    );
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "0",
        "left the alternate screen"
    );
    assert_eq!(
        tmux.format("#{cursor_flag}"),
        "1",
        "the cursor is visible again"
    );

    drop(mine);
    for c in [&mut a, &mut b] {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    stop.store(true, Ordering::Relaxed);
    h1.join().unwrap();
    h2.join().unwrap();
}

#[test]
fn top_without_privileges_or_agent_says_how_to_start_one() {
    require_root!();
    let _ns = NetNs::new();
    // A copy that uid nobody may execute, whatever the mode of the build tree.
    let dir = std::env::temp_dir().join(format!("netmon-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("netmon");
    std::fs::copy(netmon_bin(), &bin).unwrap();
    for path in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Nothing listens on 127.0.0.1:9469 in this namespace.
    let tmux = Tmux::start(
        "unpriv",
        200,
        10,
        &format!(
            "setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all {} top",
            bin.display()
        ),
        &[],
    );
    let s = tmux.wait("the exit", Duration::from_secs(15), |s| {
        s.contains("TOP-EXIT=")
    });
    assert!(s.contains("TOP-EXIT=2"), "{s}");
    let msg: Vec<&str> = s.lines().filter(|l| l.contains("netmon:")).collect();
    assert_eq!(msg.len(), 1, "one line: {s}");
    assert!(msg[0].contains("start an agent"), "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One recorded netmon event (JSON line) of `host` by process `comm`.
fn connect_line(host: &str, comm: &str, port: u16) -> String {
    format!(
        r#"{{"ts":"2026-12-02T06:00:01Z","type":"connect","host":"{host}","proto":"tcp","family":"ipv4","direction":"outbound","src":{{"ip":"127.0.0.1","port":40000}},"dst":{{"ip":"127.0.0.1","port":{port}}},"process":{{"pid":4242,"tid":4242,"comm":"{comm}","uid":0,"gid":0,"cgroup_id":1,"exe":null,"cmdline":null,"user":"root","ppid":1,"container":null}},"backend":"tracepoint"}}"#
    )
}

/// A tiny SSE server in the agreed `GET /api/v1/events` format: checks the bearer
/// token, then sends `id: N\ndata: <line>\n\n` for each recorded line (one every
/// 100 ms, numbered on from the client's `Last-Event-ID`), and records the
/// `Last-Event-ID` each client sent. `kind` = `html` plays a server that is not netmon.
struct SseServer {
    port: u16,
    stop: Arc<AtomicBool>,
    resumed_from: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SseServer {
    fn start(port: u16, token: &'static str, host: &'static str, kind: &'static str) -> SseServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let resumed_from = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), resumed_from.clone());
        let thread = thread::spawn(move || {
            let mut clients = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    let (s, r) = (s.clone(), r.clone());
                    clients.push(thread::spawn(move || {
                        serve(conn, token, host, kind, &s, &r)
                    }));
                }
                thread::sleep(Duration::from_millis(10));
            }
            for c in clients {
                let _ = c.join();
            }
        });
        SseServer {
            port,
            stop,
            resumed_from,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every client connection.
    fn kill(mut self) -> (u16, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.port, self.resumed_from.lock().unwrap().clone())
    }
}

fn serve(
    mut conn: TcpStream,
    token: &str,
    host: &str,
    kind: &str,
    stop: &AtomicBool,
    resumed_from: &Mutex<Vec<String>>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        if conn.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    if kind == "html" {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello",
        );
        return;
    }
    if !head.starts_with("get /api/v1/events ")
        || header("authorization") != Some(format!("bearer {token}"))
    {
        let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let mut next: u64 = 1;
    if let Some(id) = header("last-event-id") {
        next = id.trim().parse::<u64>().unwrap_or(0) + 1;
        resumed_from.lock().unwrap().push(id.trim().to_owned());
    }
    if conn
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
        .is_err()
    {
        return;
    }
    let proc_name = format!("{host}-proc");
    while !stop.load(Ordering::Relaxed) {
        let line = connect_line(host, &proc_name, 1000 + (next % 50) as u16);
        if conn
            .write_all(format!("id: {next}\ndata: {line}\n\n").as_bytes())
            .is_err()
        {
            return;
        }
        next += 1;
        thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback port that stays free for a moment (bind 0, then release).
fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn top_merges_agents_reconnects_and_names_bad_ones() {
    require_root!();
    let _ns = NetNs::new();
    let alpha = SseServer::start(0, "s3cret", "alpha", "sse");
    let bravo = SseServer::start(0, "s3cret", "bravo", "sse");
    let wrong = SseServer::start(0, "another-token", "charlie", "sse");
    let html = SseServer::start(0, "s3cret", "delta", "html");
    let dead = free_loopback_port();
    let args = format!(
        "--agent {} --agent {} --agent {} --agent {} --agent http://127.0.0.1:{dead}",
        alpha.url(),
        bravo.url(),
        wrong.url(),
        html.url()
    );
    let tmux = Tmux::start(
        "agents",
        200,
        50,
        &top_cmd(&args),
        &[("NETMON_TOKEN", "s3cret")],
    );
    let bravo_url = bravo.url();
    let s = tmux.wait("every agent's state", Duration::from_secs(15), |s| {
        s.contains(&format!("{} live", alpha.url()))
            && s.contains(&format!("{bravo_url} live"))
            && s.contains("wrong or missing token (HTTP 401)")
            && s.contains("not a netmon agent")
            && s.contains("unreachable: cannot connect")
    });
    assert!(s.contains("host alpha") && s.contains("host bravo"), "{s}");

    // Merged: both agents' processes, each with its host.
    tmux.keys(&["2"]);
    let s = tmux.wait("both agents' processes", Duration::from_secs(5), |s| {
        s.contains("alpha-proc") && s.contains("bravo-proc")
    });
    let a = line_of(&s, "alpha-proc").unwrap();
    assert!(s.lines().nth(a).unwrap().contains("alpha"), "{s}");
    // The filter also filters by host.
    tmux.keys(&["/"]);
    tmux.type_text("bravo");
    tmux.keys(&["Enter"]);
    tmux.wait("filtered by host", Duration::from_secs(5), |s| {
        s.contains("bravo-proc") && !s.contains("alpha-proc")
    });
    tmux.keys(&["Escape", "1"]);

    // Bravo goes away: unreachable; back on the same port: live again, resumed from
    // the last id it sent.
    let (port, _) = bravo.kill();
    tmux.wait("bravo unreachable", Duration::from_secs(10), |s| {
        s.contains(&format!("{bravo_url} unreachable"))
    });
    let bravo = SseServer::start(port, "s3cret", "bravo", "sse");
    tmux.wait("bravo back", Duration::from_secs(15), |s| {
        s.contains(&format!("{bravo_url} live"))
    });
    thread::sleep(Duration::from_millis(300));
    let (_, resumed) = bravo.kill();
    assert_eq!(
        resumed.len(),
        1,
        "one reconnect, with Last-Event-ID: {resumed:?}"
    );
    assert!(
        resumed[0].parse::<u64>().unwrap() >= 1,
        "resumed from the last id seen: {resumed:?}"
    );

    tmux.keys(&["q"]);
    let s = tmux.wait("netmon top to exit", Duration::from_secs(10), |s| {
        s.contains("TOP-EXIT=")
    });
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    for srv in [alpha, wrong, html] {
        srv.kill();
    }
}

/// The time cursor against a real agent with a history: the Overview's hour
/// sparkline starts from the history; `--since 5m` shows the Connections of the last
/// five minutes from the agent's history (its per-minute totals: the peer, its
/// connection count), `]` returns to live.
#[test]
fn top_since_shows_the_agents_history_and_right_bracket_returns_to_live() {
    require_root!();
    let _ns = NetNs::new();
    let scratch = netmon_tests::Scratch::new("top-history");
    let db = scratch.0.join("h.db").to_string_lossy().into_owned();
    let token_file = scratch.0.join("api.token").to_string_lossy().into_owned();
    let api_port = netmon_tests::free_port();
    let api = format!("127.0.0.1:{api_port}");
    let agent = netmon_tests::Netmon::start(&[
        "--history",
        &db,
        "--api",
        &api,
        "--api-token-file",
        &token_file,
    ]);
    // Seven connections to a peer port: one per-minute row of 7 connections.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..7 {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
        }
    });
    for _ in 0..7 {
        let mut c = TcpStream::connect(("127.0.0.1", peer_port)).unwrap();
        c.write_all(b"ping").unwrap();
    }
    server.join().unwrap();
    // The writer commits every 0.5 s.
    thread::sleep(Duration::from_millis(1_500));
    let tmux = Tmux::start(
        "history",
        160,
        40,
        &top_cmd(&format!(
            "--agent http://{api} --token-file {token_file} --since 5m"
        )),
        &[],
    );
    // The Overview's hour sparkline starts from the history: the 7 connections (and
    // the agent's own API connections) are in it.
    let s = tmux.wait("the hour from the history", Duration::from_secs(10), |s| {
        s.lines()
            .find_map(|l| l.split("conn/min, last 60 min: ").nth(1))
            .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|n| n >= 7)
    });
    assert!(s.contains("conn/min"), "{s}");
    tmux.keys(&["3"]);
    let peer = format!("127.0.0.1:{peer_port}");
    let s = tmux.wait("the history's connections", Duration::from_secs(10), |s| {
        s.contains("HISTORY") && s.contains(&peer)
    });
    let row = s.lines().find(|l| l.contains(&peer)).unwrap();
    assert!(row.contains("7 conn"), "{s}");
    assert!(!s.contains("asking"), "{s}");
    // Live again: the footer's HISTORY is gone.
    tmux.keys(&["]"]);
    tmux.wait("live again", Duration::from_secs(5), |s| {
        !s.contains("HISTORY")
    });
    tmux.keys(&["q"]);
    tmux.wait("a clean exit", Duration::from_secs(5), |s| {
        s.contains("TOP-EXIT=0")
    });
    let (status, _) = agent.stop();
    assert!(status.success());
}
