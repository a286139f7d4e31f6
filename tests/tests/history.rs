//! The history end to end: real traffic in the test's own network namespace through a
//! real `netmon run --history FILE`, read back with the `sqlite3` command-line tool and
//! with `netmon history`; `kill -9` under load, repeated, never corrupts; retention
//! prunes with shortened periods; the scanner's old `hosts.json` is imported once.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use netmon::event::{Event, EventBody};
use netmon_tests::{
    ConfigFile, NetNs, Netmon, Scratch, free_port, netmon_bin, process_comm, require_root,
};

const WAIT: Duration = Duration::from_secs(20);

fn sqlite3(db: &Path, sql: &str) -> String {
    // A reader may wait a moment for the writer's commit (WAL), as any reader should.
    let out = Command::new("sqlite3")
        .args(["-readonly", "-cmd", ".timeout 5000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (Debian package sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn history(args: &[&str]) -> String {
    let out = Command::new(netmon_bin())
        .arg("history")
        .args(args)
        .output()
        .expect("run netmon history");
    assert!(
        out.status.success(),
        "netmon history {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A listener that reads what each client sends, answers `reply` bytes and closes.
fn serve(listener: TcpListener, reply: usize, conns: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = 0;
            while got < 1000 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            s.write_all(&vec![b'r'; reply]).unwrap();
        }
    })
}

fn close_events(seen: &[Event], port: u16) -> impl Iterator<Item = &netmon::event::Close> {
    seen.iter().filter_map(move |e| match &e.body {
        EventBody::Close(c) if c.conn.dst.port == port => Some(c),
        _ => None,
    })
}

#[test]
fn real_traffic_is_kept_and_read_back_by_sqlite3_and_netmon_history() {
    require_root!();
    let scratch = Scratch::new("history-traffic");
    let db = scratch.0.join("netmon.db");
    let _ns = NetNs::new();
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let conns = 5;
    let server = serve(listener, 2000, conns);
    let db_arg = db.to_str().unwrap().to_owned();
    let mut netmon = Netmon::start(&["--history", &db_arg, "--stats-interval", "1"]);
    let comm = process_comm();
    for _ in 0..conns {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[b'q'; 1000]).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 2000);
    }
    server.join().unwrap();
    // Both sides' closes (client and server socket) reach the stream; SIGTERM then
    // commits what the writer holds.
    netmon.collect_for(Duration::from_millis(1500));
    let (status, seen) = netmon.stop();
    assert!(status.success(), "{status}");
    let stream_closes: Vec<_> = close_events(&seen, port).collect();
    assert_eq!(
        stream_closes.len(),
        2 * conns,
        "client and server closes on the stream"
    );
    let final_stats = seen
        .iter()
        .rev()
        .find_map(|e| match &e.body {
            EventBody::Stats(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let h = final_stats.history.expect("stats.history with --history");
    assert_eq!((h.errors, h.dropped), (0, 0), "{h:?}");
    assert_eq!(final_stats.consumers["history"].dropped, 0);

    // The file is private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
    // sqlite3: the connects, by this thread's process, to the port.
    let n = sqlite3(
        &db,
        &format!(
            "SELECT count(*) FROM events_with_process WHERE type = 'connect' AND dst_port = {port} AND comm = '{comm}'"
        ),
    );
    assert_eq!(n, conns.to_string());
    // Per-minute totals equal the close events, each direction.
    for (direction, key) in [("outbound", "remote_port"), ("inbound", "local_port")] {
        let want_sent: u64 = stream_closes
            .iter()
            .filter(|c| {
                c.conn.direction.map(|d| format!("{d:?}").to_lowercase()) == Some(direction.into())
            })
            .map(|c| c.bytes_sent.unwrap_or(0))
            .sum();
        let want_received: u64 = stream_closes
            .iter()
            .filter(|c| {
                c.conn.direction.map(|d| format!("{d:?}").to_lowercase()) == Some(direction.into())
            })
            .map(|c| c.bytes_received.unwrap_or(0))
            .sum();
        let row = sqlite3(
            &db,
            &format!(
                "SELECT sum(connections), sum(bytes_sent), sum(bytes_received) FROM flows_by_minute WHERE {key} = {port} AND direction = '{direction}' AND local_ip = '127.0.0.1'"
            ),
        );
        assert_eq!(
            row,
            format!("{conns}|{want_sent}|{want_received}"),
            "{direction}"
        );
        let hour = sqlite3(
            &db,
            &format!(
                "SELECT sum(connections), sum(bytes_sent), sum(bytes_received) FROM flows_by_hour WHERE {key} = {port} AND direction = '{direction}' AND local_ip = '127.0.0.1'"
            ),
        );
        assert_eq!(hour, row, "hourly totals equal the minutes'");
    }
    // The client sent 1000 and received 2000 on each connection.
    let outbound = sqlite3(
        &db,
        &format!(
            "SELECT bytes_sent, bytes_received, comm FROM flows_by_minute WHERE remote_port = {port} AND direction = 'outbound'"
        ),
    );
    assert!(
        outbound.lines().all(|l| l.ends_with(&format!("|{comm}"))),
        "{outbound}"
    );
    let sent: u64 = outbound
        .lines()
        .map(|l| l.split('|').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let received: u64 = outbound
        .lines()
        .map(|l| l.split('|').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!((sent, received), (1000 * conns as u64, 2000 * conns as u64));

    // netmon history: the same answers.
    let flows = json_lines(&history(&[
        "flows",
        "--history",
        &db_arg,
        "--since",
        "1h",
        "--port",
        &port.to_string(),
        "--format",
        "json",
    ]));
    let out = flows
        .iter()
        .find(|f| f["direction"] == "outbound" && f["comm"] == comm.as_str())
        .unwrap_or_else(|| panic!("{flows:?}"));
    assert_eq!(out["connections"], conns as u64);
    assert_eq!(out["bytes_sent"], 1000 * conns as u64);
    assert_eq!(out["bytes_received"], 2000 * conns as u64);
    assert_eq!(out["remote_port"], port);
    let inb = flows.iter().find(|f| f["direction"] == "inbound").unwrap();
    assert_eq!(inb["local_port"], port);
    assert_eq!(inb["bytes_received"], 1000 * conns as u64);
    let csv = history(&[
        "events",
        "--history",
        &db_arg,
        "--type",
        "connect",
        "--port",
        &port.to_string(),
        "--process",
        &comm,
        "--host",
        "127.0.0.0/8",
        "--format",
        "csv",
    ]);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), conns, "{csv}");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert!(
        rows.iter()
            .all(|r| &r[col("dst_port")] == port.to_string().as_str())
    );
    assert!(rows.iter().all(|r| &r[col("comm")] == comm.as_str()));
    let text = history(&["events", "--history", &db_arg, "--port", &port.to_string()]);
    assert!(
        text.lines()
            .any(|l| l.contains(" close ") && l.contains("sent=1000 received=2000")),
        "{text}"
    );
    // Nothing for another host.
    let none = history(&[
        "events",
        "--history",
        &db_arg,
        "--host",
        "192.0.2.0/24",
        "--port",
        &port.to_string(),
    ]);
    assert!(none.is_empty(), "{none}");

    // A non-root user who can read the file reads it (read-only, WAL).
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(&scratch.0).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netmon_bin())
        .args([
            "history",
            "flows",
            "--history",
            &db_arg,
            "--port",
            &port.to_string(),
            "--format",
            "json",
        ])
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\"remote_port\":{port}")));
}

#[test]
fn kill_9_under_load_loses_at_most_the_last_second_and_never_corrupts() {
    require_root!();
    let scratch = Scratch::new("history-kill");
    let db = scratch.0.join("netmon.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let _ns = NetNs::new();
    let stop = Arc::new(AtomicBool::new(false));
    // Two listeners: `load` takes a storm that goes on through the kill; `probe` takes
    // the connections whose keeping is checked.
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        servers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => thread::sleep(Duration::from_micros(200)),
                }
            }
        }));
        ports.push(port);
    }
    let (load_port, probe_port) = (ports[0], ports[1]);
    let storm = {
        let stop = stop.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && made < 2_000_000 {
                if TcpStream::connect(("127.0.0.1", load_port)).is_ok() {
                    made += 1;
                }
            }
            made
        })
    };
    let mut kept_total = 0;
    for round in 0..3 {
        let mut netmon = Netmon::start(&["--history", &db_arg]);
        for _ in 0..200 {
            let _ = TcpStream::connect(("127.0.0.1", probe_port));
        }
        // Seen on the stream, then more than a commit interval (0.5 s) of load: these
        // must be committed when the kill comes.
        netmon.collect_for(Duration::from_millis(1500));
        let streamed: BTreeSet<i64> = netmon
            .seen
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Connect(c) if c.dst.port == probe_port => e.ts.timestamp_nanos_opt(),
                _ => None,
            })
            .collect();
        netmon.collect_for(Duration::from_millis(1100));
        // SAFETY: killing our own child.
        unsafe { libc::kill(netmon.pid() as i32, libc::SIGKILL) };
        drop(netmon);
        assert_eq!(
            sqlite3(&db, "PRAGMA integrity_check"),
            "ok",
            "round {round}"
        );
        let kept: BTreeSet<i64> = sqlite3(
            &db,
            &format!("SELECT ts FROM events WHERE type = 'connect' AND dst_port = {probe_port}"),
        )
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
        let missing = streamed.difference(&kept).count();
        assert!(
            !streamed.is_empty() && missing == 0 && kept.len() > kept_total,
            "round {round}: {} connects on the stream, {missing} of them not in the history",
            streamed.len()
        );
        let storm_rows: u64 = sqlite3(
            &db,
            &format!("SELECT count(*) FROM events WHERE dst_port = {load_port}"),
        )
        .parse()
        .unwrap();
        assert!(storm_rows > 0, "round {round}: the storm was not kept");
        kept_total = kept.len();
    }
    stop.store(true, Ordering::Relaxed);
    let made = storm.join().unwrap();
    for s in servers {
        s.join().unwrap();
    }
    eprintln!("storm: {made} connections over three runs");
    // netmon history still reads it.
    let n = history(&[
        "events",
        "--history",
        &db_arg,
        "--type",
        "connect",
        "--port",
        &probe_port.to_string(),
        "--format",
        "json",
        "--limit",
        "1000000",
    ]);
    assert_eq!(n.lines().count(), kept_total);
}

#[test]
fn retention_prunes_raw_events_sooner_than_the_minute_totals() {
    require_root!();
    let scratch = Scratch::new("history-retention");
    let db = scratch.0.join("netmon.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let config = ConfigFile::new(
        "[history]\nraw_retention = \"3s\"\nminute_retention = \"1h\"\nprune_interval = \"1s\"\n",
    );
    let _ns = NetNs::new();
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = serve(listener, 10, 3);
    let cfg = config.arg();
    let netmon = Netmon::start(&["--history", &db_arg, "--config", &cfg]);
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[b'q'; 1000]).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    server.join().unwrap();
    // Until the writer has made its tables, a count is 0.
    let count = |sql: &str| -> u64 {
        let ready = sqlite3(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
        );
        if ready != "1" {
            return 0;
        }
        sqlite3(&db, sql).parse().unwrap_or(0)
    };
    let raw = format!("SELECT count(*) FROM events WHERE dst_port = {port}");
    let minutes = format!(
        "SELECT coalesce(sum(connections), 0) FROM flow_minute m JOIN flow_keys k ON k.id = m.key_id WHERE k.remote_port = {port}"
    );
    let deadline = Instant::now() + WAIT;
    while count(&raw) == 0 {
        assert!(
            Instant::now() < deadline,
            "events never reached the history"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // Older than 3 s, pruned within the next pruning pass; the minutes stay.
    let deadline = Instant::now() + WAIT;
    while count(&raw) > 0 {
        assert!(Instant::now() < deadline, "raw events were never pruned");
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count(&minutes), 3);
    let (status, _) = netmon.stop();
    assert!(status.success());
    let flows = history(&[
        "flows",
        "--history",
        &db_arg,
        "--port",
        &port.to_string(),
        "--format",
        "json",
    ]);
    assert!(flows.contains("\"connections\":3"), "{flows}");
}

#[test]
fn an_old_hosts_json_is_imported_once() {
    require_root!();
    let scratch = Scratch::new("history-import");
    let db = scratch.0.join("netmon.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let state = scratch.0.join("hosts.json");
    let hosts = |extra: &str| {
        format!(
            r#"{{"version":1,"updated":"2026-11-30T10:00:00Z","hosts":{{
  "10.77.0.5":{{"addr":"10.77.0.5","state":"up","mac":"02:00:00:00:00:05","name":"printer.lan","os_hint":null,"distance":1,"source":"network","first_seen":"2026-11-01T08:00:00Z","last_seen":"2026-11-30T09:59:00Z","last_change":"2026-11-01T08:00:00Z","last_port_scan":null,"misses":0,
    "ports":{{"631/tcp":{{"port":631,"proto":"tcp","state":"open","service":"ipp","version":null,"banner":null,"first_seen":"2026-11-01T08:00:00Z","last_change":"2026-11-01T08:00:00Z"}}}}}}{extra}}}}}"#
        )
    };
    std::fs::write(&state, hosts("")).unwrap();
    let config = ConfigFile::new(&format!("[scan]\nstate_file = \"{}\"\n", state.display()));
    let cfg = config.arg();
    for round in 0..2 {
        let netmon = Netmon::start(&["--history", &db_arg, "--config", &cfg]);
        thread::sleep(Duration::from_millis(700));
        let (status, _) = netmon.stop();
        assert!(status.success());
        let out = json_lines(&history(&[
            "hosts",
            "--history",
            &db_arg,
            "--format",
            "json",
        ]));
        assert_eq!(out.len(), 1, "round {round}: {out:?}");
        assert_eq!(out[0]["ip"], "10.77.0.5");
        assert_eq!(out[0]["name"], "printer.lan");
        assert_eq!(out[0]["ports"][0]["port"], 631);
        assert_eq!(out[0]["ports"][0]["service"], "ipp");
        // A host added to the file later is not imported again.
        std::fs::write(
            &state,
            hosts(r#","10.77.0.6":{"addr":"10.77.0.6","state":"up","mac":null,"name":null,"os_hint":null,"distance":null,"source":"flow","first_seen":"2026-12-01T08:00:00Z","last_seen":null,"last_change":"2026-12-01T08:00:00Z","last_port_scan":null,"misses":0,"ports":{}}"#),
        )
        .unwrap();
    }
    assert!(
        sqlite3(
            &db,
            "SELECT value FROM meta WHERE key = 'hosts_json_imported'"
        )
        .contains("hosts.json")
    );
    let text = history(&["hosts", "--history", &db_arg, "--host", "10.77.0.0/16"]);
    assert!(text.contains("631/tcp open ipp"), "{text}");
    // The file itself is left as it is.
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("10.77.0.6")
    );
}

/// Without `--history` or `--no-history`, `netmon run` keeps a history: here at the
/// `[history] path` of a config (the default, /var/lib/netmon/netmon.db, is shared by
/// the machine's own runs), created 0600 in a 0700 directory, with the run's events.
#[test]
fn the_history_is_on_by_default_private_and_filled() {
    require_root!();
    let scratch = Scratch::new("history-default");
    let dir = scratch.0.join("lib");
    let db = dir.join("netmon.db");
    let config = ConfigFile::new(&format!("[history]\npath = \"{}\"\n", db.display()));
    let _ns = NetNs::new();
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = serve(listener, 10, 1);
    let netmon = Netmon::try_start_default_history(
        &[],
        &netmon_bin(),
        &netmon_tests::backend(),
        &["--config", &config.arg()],
    )
    .expect("netmon run starts");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&[b'q'; 1000]).unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    drop(c);
    server.join().unwrap();
    thread::sleep(Duration::from_millis(1_500));
    let (status, _) = netmon.stop();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the directory");
    assert_eq!(mode(&db), 0o600, "the file");
    let closes = sqlite3(
        &db,
        &format!("SELECT count(*) FROM events WHERE type = 'close' AND dst_port = {port}"),
    );
    assert!(closes.parse::<u32>().unwrap() >= 1, "closes kept: {closes}");
}
