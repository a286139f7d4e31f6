//! `netmon report` (section `report` of `docs/benchmarks.md`, issue 17's targets): a
//! report over 24 h of history with 1 million events and 10,000 connections in < 2 s
//! and < 200 MB peak RSS, and a report of the current sockets in < 1 s.
//!
//! The history comes from `netmon/benches/history.rs`'s `fill` (the real writer, 50
//! processes × 200 remote services: 10,000 flow keys, timestamps over the last 24 h).
//! The snapshot report runs inside a network namespace of its own where a helper holds
//! a few thousand loopback sockets open. Every run's wall time and peak RSS come from
//! `wait4` on the child (its `ru_maxrss`: the kernel's VmHWM at exit). Root is needed
//! for the namespace.
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Env, proc,
    report::{Section, Table, median, met, thousands},
};
use crate::{build, exec};

const RUNS: usize = 5;
/// Remote services per process in the fill: 50 × 200 = 10,000 connections.
const REMOTES: u32 = 200;
/// Loopback connections the snapshot's helper holds (two sockets each, and a listener).
const CONNECTIONS: u32 = 2500;
const NETNS: &str = "netmon-bench-report";

const HISTORY_TARGET_S: f64 = 2.0;
const HISTORY_TARGET_MB: f64 = 200.0;
const SNAPSHOT_TARGET_S: f64 = 1.0;

/// The helper: a listener on 127.0.0.1 and N connections to it, each accepted, held
/// until its stdin closes.
const HOLDER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 64, 2 * n + 64))
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(128)
port = l.getsockname()[1]
held = []
for _ in range(n):
    held.append(socket.create_connection(("127.0.0.1", port)))
    held.append(l.accept()[0])
print("ready", len(held), flush=True)
sys.stdin.read()
"#;

/// One run: wall seconds and peak RSS (KiB) of the child, which must exit 0.
fn timed(cmd: &mut Command) -> Result<(f64, u64)> {
    let what = exec::describe(cmd);
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if rc < 0 {
        bail!("wait4 for {what}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{what} failed (wait status {status})");
    }
    Ok((secs, usage.ru_maxrss.max(0) as u64))
}

/// The network namespace of the snapshot report; deleted on drop.
struct Netns;

impl Netns {
    fn add() -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        exec::run(Command::new("ip").args(["netns", "add", NETNS]))?;
        let ns = Netns;
        exec::run(Command::new("ip").args(["-n", NETNS, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

/// The helper holding the namespace's sockets; ended on drop (before the namespace).
struct Lab {
    holder: Child,
    _netns: Netns,
}

impl Lab {
    fn start(connections: u32) -> Result<Lab> {
        let netns = Netns::add()?;
        let mut holder = Command::new("ip")
            .args(["netns", "exec", NETNS, "python3", "-c", HOLDER])
            .arg(connections.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the socket holder (python3)")?;
        let stdout = holder.stdout.take().expect("piped");
        let lab = Lab {
            holder,
            _netns: netns,
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("cannot read the socket holder's first line")?;
        if !line.starts_with("ready") {
            bail!("the socket holder did not open its sockets (it said `{line}`)");
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Closing stdin ends the helper; its sockets close with it.
        drop(self.holder.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.holder.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn fill(env: &Env, db: &Path, events: u64) -> Result<Value> {
    let v = env.driver(
        "history",
        [
            "fill".into(),
            db.as_os_str().to_owned(),
            events.to_string().into(),
            REMOTES.to_string().into(),
        ],
    )?;
    if v["written"].as_u64() != Some(events) {
        bail!("the fill wrote {} of {events} events: {v}", v["written"]);
    }
    Ok(v)
}

/// Median seconds, median and largest peak RSS (MB) of `RUNS` runs.
fn runs(runs: usize, mut cmd: impl FnMut() -> Command) -> Result<(f64, f64, f64)> {
    let mut secs = Vec::new();
    let mut mb = Vec::new();
    for _ in 0..runs {
        let (s, kib) = timed(&mut cmd())?;
        secs.push(s);
        mb.push(kib as f64 / 1024.0);
    }
    let max = mb.iter().copied().fold(0.0, f64::max);
    Ok((median(&secs), median(&mb), max))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Runs both measurements; the section and whether every target was met.
pub fn run(env: &Env, events: u64, quick: bool) -> Result<(Section, bool)> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`bench report` needs root: the snapshot report runs in a network namespace it creates"
        );
    }
    let load = proc::load_average();
    let netmon: PathBuf = if env.netmon.as_os_str().is_empty() {
        build::netmon_binary()?
    } else {
        env.netmon.clone()
    };
    let dir = env.work.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("history.db");
    super::history::fresh(&db)?;
    let filled = fill(env, &db, events)?;
    let flows = exec::output(
        Command::new(&netmon)
            .args(["history", "flows", "--since", "24h", "--limit", "1000000"])
            .arg("--history")
            .arg(&db)
            .args(["--format", "json"]),
    )?
    .lines()
    .count() as u64;
    let n = if quick { 1 } else { RUNS };

    let html = dir.join("history.html");
    let (hist_s, hist_mb, hist_max_mb) = runs(n, || {
        let mut c = Command::new(&netmon);
        c.args(["report", "--since", "24h", "--history"])
            .arg(&db)
            .arg("--output")
            .arg(&html);
        c
    })?;
    let html_size = size(&html);

    let connections = if quick { 200 } else { CONNECTIONS };
    let lab = Lab::start(connections)?;
    let snap_html = dir.join("snapshot.html");
    let (snap_s, snap_mb, _) = runs(n, || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NETNS])
            .arg(&netmon)
            .args(["report", "--output"])
            .arg(&snap_html);
        c
    })?;
    drop(lab);
    let snap_size = size(&snap_html);

    let hist_ok = hist_s < HISTORY_TARGET_S && hist_max_mb < HISTORY_TARGET_MB;
    let snap_ok = snap_s < SNAPSHOT_TARGET_S;
    let mut t = Table::new(&["measurement", "result", "target", ""]);
    t.row(&[
        format!(
            "`netmon report --since 24h` over {} events, {} connections",
            thousands(events),
            thousands(flows)
        ),
        format!(
            "{hist_s:.3} s median of {n}; peak RSS {hist_mb:.0} MB median, {hist_max_mb:.0} MB largest; {} KB of HTML",
            thousands(html_size / 1000)
        ),
        format!("< {HISTORY_TARGET_S} s, < {HISTORY_TARGET_MB} MB"),
        met(hist_ok).into(),
    ]);
    t.row(&[
        format!(
            "`netmon report` (current sockets) with {} loopback sockets open",
            thousands(u64::from(connections) * 2 + 1)
        ),
        format!(
            "{snap_s:.3} s median of {n}; peak RSS {snap_mb:.0} MB; {} KB of HTML",
            thousands(snap_size / 1000)
        ),
        format!("< {SNAPSHOT_TARGET_S} s"),
        met(snap_ok).into(),
    ]);
    let mut md = String::new();
    let _ = writeln!(md, "## 7. Report\n");
    let _ = writeln!(
        md,
        "`netmon report` (issue 17) timed from outside, the release binary, wall time and \
         peak RSS (`ru_maxrss` of `wait4`) of each run. The history is filled first by \
         `netmon/benches/history.rs` (the real writer; 50 processes × {REMOTES} remote \
         services, TCP connect + close pairs, 1 in 10 a DNS transaction, 1 in 20 UDP; \
         timestamps over the last 24 hours; {:.1} s, {} MB). The snapshot report runs in a \
         network namespace of its own where a helper holds {} loopback connections (both \
         ends) and their listener; it also reads every process's descriptors on the machine.\n",
        filled["seconds"].as_f64().unwrap_or(f64::NAN),
        filled["bytes"].as_u64().unwrap_or(0) / 1_000_000,
        thousands(u64::from(connections)),
    );
    md.push_str(&t.render());
    let _ = writeln!(md);
    env.footer(&mut md, &load);
    Ok((
        Section {
            id: "report",
            markdown: md,
        },
        hist_ok && snap_ok,
    ))
}
