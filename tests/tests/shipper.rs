//! The consumer most users put behind netmon: a log shipper. A real rsyslog (Debian's
//! package: `imfile` on netmon's `--output`, `mmjsonparse`, `omfile`) ships every event
//! netmon wrote, fields intact, across a logrotate-style rotation (rename the file,
//! SIGHUP netmon) in the middle of the traffic.
//!
//! imfile polls (`mode="polling"`): in inotify mode it stops reading a moved file at
//! once, so a line netmon writes between logrotate's rename and its SIGHUP is lost
//! (seen here, one line in three runs out of four; rsyslog's maintainers call that
//! sequence racy by nature, rsyslog/rsyslog#1388). docs/deploy.md says the same.
use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netmon::event::{Event, EventBody};
use netmon_tests::{NetNs, Scratch, backend, netmon_bin, require_root};
use serde_json::Value;

/// A child killed (SIGKILL) when dropped, so a failing test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The complete lines of `path` (one being written has no newline yet).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(str::to_owned).collect()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `n` connections to `port` on loopback, each accepted, written to and closed.
fn connections(listener: &TcpListener, port: u16, n: usize) {
    for _ in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut c, b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
    }
}

/// Connect events of this test's namespace in `events` (netmon's own file or the
/// shipped copy).
fn our_connects(events: &[Event], netns: u32) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::Connect(c) if c.netns == Some(netns)))
        .count()
}

fn parse(lines: &[String]) -> Vec<Event> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn rsyslog_ships_every_event_across_a_rotation() {
    require_root!();
    let scratch = Scratch::new("shipper");
    let dir = &scratch.0;
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let output = dir.join("events.jsonl");
    let rotated = dir.join("events.jsonl.1");
    let shipped = dir.join("shipped.jsonl");
    let unparsed = dir.join("unparsed.log");
    let conf = dir.join("rsyslog.conf");
    // Lines up to 64 KiB (a `stats` line is a few KiB); the file is read from its start.
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imfile" mode="polling" pollingInterval="1")
module(load="mmjsonparse")
template(name="json" type="string" string="%$!all-json%\n")
input(type="imfile" file="{output}" tag="netmon" ruleset="netmon" freshStartTail="off" addMetadata="off")
ruleset(name="netmon") {{
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then {{
    action(type="omfile" file="{shipped}" template="json")
  }} else {{
    action(type="omfile" file="{unparsed}")
  }}
}}
"#,
            work = dir.join("work").display(),
            output = output.display(),
            shipped = shipped.display(),
            unparsed = unparsed.display(),
        ),
    )
    .unwrap();
    let rsyslog = Killed(
        Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .spawn()
            .expect("run rsyslogd (Debian package rsyslog)"),
    );

    let netns = NetNs::new();
    let inode = netns.inode;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let netmon = Killed(
        Command::new(netmon_bin())
            .args([
                "run",
                "--no-history",
                "--backend",
                &backend(),
                "--stats-interval",
                "1",
            ])
            .arg("--output")
            .arg(&output)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "netmon's probe line in --output",
        Duration::from_secs(60),
        || {
            lines(&output)
                .iter()
                .any(|l| l.contains(r#""type":"probe""#))
        },
    );
    assert_eq!(
        std::fs::metadata(&output).unwrap().permissions().mode() & 0o777,
        0o600,
        "--output must be private"
    );

    connections(&listener, port, 40);
    wait_until(
        "the first 40 connects written",
        Duration::from_secs(20),
        || our_connects(&parse(&lines(&output)), inode) == 40,
    );
    // The shipper follows the file before it is rotated, as a deployed one does.
    wait_until(
        "rsyslog to follow --output",
        Duration::from_secs(20),
        || {
            lines(&shipped)
                .iter()
                .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == "probe"))
        },
    );
    // logrotate: rename, then SIGHUP; netmon goes on in a new file of the same name.
    std::fs::rename(&output, &rotated).unwrap();
    signal(&netmon.0, libc::SIGHUP);
    connections(&listener, port, 60);
    // Events netmon already held when the signal came still go to the old file.
    wait_until("all 100 connects written", Duration::from_secs(20), || {
        our_connects(&parse(&lines(&rotated)), inode) + our_connects(&parse(&lines(&output)), inode)
            == 100
    });
    let mut netmon = netmon;
    signal(&netmon.0, libc::SIGTERM);
    let status = netmon.0.wait().unwrap();
    assert!(status.success(), "netmon: {status}");
    drop(netns);

    let old = parse(&lines(&rotated));
    let new = parse(&lines(&output));
    let (in_old, in_new) = (our_connects(&old, inode), our_connects(&new, inode));
    assert!(
        in_old >= 40 && in_new > 0,
        "connects: {in_old} before, {in_new} after the rotation"
    );
    let written: Vec<String> = lines(&rotated).into_iter().chain(lines(&output)).collect();
    let last_stats = parse(&written)
        .into_iter()
        .rev()
        .find_map(|e| match e.body {
            EventBody::Stats(s) if s.r#final => Some(s),
            _ => None,
        })
        .expect("a final stats line");
    assert_eq!(last_stats.lost, 0, "netmon lost events: {last_stats:?}");
    // Everything netmon wrote, in both files, reaches rsyslog's output once, with every
    // field as netmon wrote it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&shipped).len() < written.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    let got: Vec<Value> = lines(&shipped)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("shipped {e}: {l}")))
        .collect();
    let want: Vec<Value> = written
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines(&unparsed).is_empty(),
        "rsyslog could not parse: {:?}",
        lines(&unparsed)
    );
    let missing: Vec<&String> = written
        .iter()
        .filter(|w| {
            let w: Value = serde_json::from_str(w).unwrap();
            !got.iter().any(|g| same(g, &w))
        })
        .collect();
    assert!(
        got.len() == want.len() && missing.is_empty(),
        "rsyslog shipped {} of the {} lines netmon wrote ({} before the rotation); not shipped (line number in the old or new file): {:?}",
        got.len(),
        want.len(),
        lines(&rotated).len(),
        missing
            .iter()
            .map(|m| {
                let at = |p: &Path| lines(p).iter().position(|l| l == *m).map(|i| i + 1);
                (
                    at(&rotated).map(|i| format!("old:{i}")),
                    at(&output).map(|i| format!("new:{i}")),
                )
            })
            .collect::<Vec<_>>()
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            same(g, w),
            "line {i} changed in shipping:\n netmon: {w}\n rsyslog: {g}"
        );
    }
    drop(rsyslog);
}

/// Equal JSON, numbers compared by value (rsyslog's json-c may print a float with
/// other digits).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    (x - y).abs() <= 1e-9 * x.abs().max(1.0)
                }
            },
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}
