//! The web workload of `bench overhead`: `wrk` against nginx on 127.0.0.1, one new TCP
//! connection per request (`Connection: close`, `keepalive_timeout 0`), as a busy
//! production server sees them. Modes interleaved A B C … per round, so the machine's
//! drifting load hits every mode alike: nothing attached, `netmon run` with its history
//! off (`--no-history`: what this benchmark measured before the history was on by
//! default), the same netmon with its history on (`--history FILE`, a fresh file each
//! run: issue 13's "≤ 10% more with history on"), optionally a baseline netmon binary
//! (`--baseline-netmon`, the before of a before/after), the bpftrace peer, and the
//! floor: an empty bpftrace program on the tracepoint netmon's TCP events come from
//! here, what any tracer of that hook pays before it does anything (the kernel builds
//! the tracepoint's record and runs a program for every state change of every socket).
//! Reported: requests/s kept (medians).
//!
//! Then one diagnostic run per tracer with the kernel's BPF run-time statistics on
//! (`BPF_ENABLE_STATS`, what `kernel.bpf_stats_enabled=1` turns on; the counters are
//! those `bpftool prog show` prints), reporting per TCP connection the tracer's kernel
//! ns (all its programs) and its process's CPU, and per 1,000 events written its
//! wake-ups (context switches of all its threads) and syscalls (`perf stat -e
//! raw_syscalls:sys_enter`).
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Env, proc,
    report::{Section, Table, median},
    tracer::{self, Tracer},
};

pub struct WebArgs {
    pub rounds: u32,
    /// Seconds of each wrk run.
    pub seconds: u32,
    /// wrk's open connections.
    pub connections: u32,
    /// Another netmon binary measured beside `env.netmon` (e.g. the main branch's).
    pub baseline: Option<PathBuf>,
    pub netmon_flags: Vec<String>,
    pub quiet_wait: Duration,
}

#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Bare,
    Netmon(PathBuf),
    /// The same netmon with its history on.
    History(PathBuf),
    Baseline(PathBuf),
    Bpftrace,
    /// An empty program on `sock:inet_sock_set_state`: the floor of tracing that hook.
    Floor,
}

impl Mode {
    fn label(&self) -> String {
        match self {
            Mode::Bare => "(a) nothing attached".into(),
            Mode::Netmon(_) => "(b) netmon, history off".into(),
            Mode::History(_) => "(b+h) netmon, history on".into(),
            Mode::Baseline(p) => format!("(b0) baseline netmon `{}`", p.display()),
            Mode::Bpftrace => "(c) bpftrace peer".into(),
            Mode::Floor => "(f) floor: an empty program on the same tracepoint".into(),
        }
    }
}

pub fn run(env: &Env, args: &WebArgs) -> Result<Section> {
    let nginx = Nginx::start(&env.work)?;
    let mut modes = vec![
        Mode::Bare,
        Mode::Netmon(env.netmon.clone()),
        Mode::History(env.netmon.clone()),
    ];
    if let Some(b) = &args.baseline {
        modes.push(Mode::Baseline(b.clone()));
    }
    modes.push(Mode::Bpftrace);
    modes.push(Mode::Floor);
    let mut rates: Vec<(Mode, Vec<f64>)> = modes.iter().map(|m| (m.clone(), vec![])).collect();
    // The tracer's CPU (all threads) per event it wrote, each run: the medians compare
    // history on and off (a single run of each swung by a third on this machine).
    let mut cpu: Vec<(Mode, Vec<f64>)> = modes.iter().map(|m| (m.clone(), vec![])).collect();
    for round in 1..=args.rounds {
        for ((mode, runs), (_, cpus)) in rates.iter_mut().zip(cpu.iter_mut()) {
            proc::wait_for_quiet(args.quiet_wait);
            let t = start_tracer(env, args, mode, "web")?;
            let cpu_before = t.as_ref().map(|t| t.cpu_time()).transpose()?;
            let r = wrk(nginx.port, args.seconds, args.connections)?;
            let mut per_event = String::new();
            match (t, cpu_before) {
                // The floor writes nothing: no CPU per event to report.
                (Some(t), _) if *mode == Mode::Floor => {
                    t.stop()?;
                }
                (Some(t), Some(before)) => {
                    // As in `diagnose`: the reader and the history finish their batches.
                    thread::sleep(Duration::from_millis(700));
                    let used = t.cpu_time()?.saturating_sub(before);
                    let output = t.output.clone();
                    t.stop()?;
                    let us = used.as_secs_f64() * 1e6 / written(mode, &output).max(1) as f64;
                    per_event = format!(", {us:.2} µs of CPU per event");
                    cpus.push(us);
                }
                _ => {}
            }
            eprintln!(
                "bench overhead (web): round {round}/{}: {}: {:.0} requests/s{per_event}",
                args.rounds,
                mode.label(),
                r.per_s
            );
            runs.push(r.per_s);
        }
    }
    let mut diags = Vec::new();
    for mode in modes.iter().filter(|m| **m != Mode::Bare) {
        proc::wait_for_quiet(args.quiet_wait);
        diags.push(diagnose(env, args, mode, nginx.port)?);
    }
    Ok(Section {
        id: "overhead-web",
        markdown: render(env, args, &rates, &cpu, &diags),
    })
}

fn start_tracer(env: &Env, args: &WebArgs, mode: &Mode, tag: &str) -> Result<Option<Tracer>> {
    Ok(match mode {
        Mode::Bare => None,
        Mode::Netmon(bin) | Mode::Baseline(bin) => Some(Tracer::netmon(
            bin,
            env.netmon_nice,
            &env.work.join(format!("{tag}-netmon.json")),
            &args.netmon_flags,
        )?),
        Mode::History(bin) => {
            // A fresh file each run: every run writes the same amount.
            let db = env.work.join(format!("{tag}-history.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = fs::remove_file(format!("{}{suffix}", db.display()));
            }
            let mut flags = args.netmon_flags.clone();
            flags.extend(["--history".to_string(), db.display().to_string()]);
            Some(Tracer::netmon(
                bin,
                env.netmon_nice,
                &env.work.join(format!("{tag}-netmon-history.json")),
                &flags,
            )?)
        }
        Mode::Bpftrace => Some(Tracer::bpftrace(
            &env.bpftrace_script,
            &env.work.join(format!("{tag}-bpftrace.txt")),
        )?),
        Mode::Floor => Some(Tracer::bpftrace(
            &env.floor_script,
            &env.work.join(format!("{tag}-floor.txt")),
        )?),
    })
}

/// One tracer's costs from a run with BPF statistics on.
struct Diagnosis {
    mode: Mode,
    requests: u64,
    kernel_ns: u64,
    /// The process's CPU: its own code, and the kernel serving its syscalls.
    cpu: proc::CpuTimes,
    written: u64,
    switches: u64,
    syscalls: Option<u64>,
}

fn diagnose(env: &Env, args: &WebArgs, mode: &Mode, port: u16) -> Result<Diagnosis> {
    eprintln!("bench overhead (web): BPF statistics run: {}", mode.label());
    let stats = proc::BpfStats::enable()?;
    let t = start_tracer(env, args, mode, "web-diag")?.expect("a tracer");
    let pid = t.pid();
    let before = proc::programs(pid);
    let cpu_before = proc::cpu_times(pid)?;
    let switches_before = context_switches(pid);
    let perf = Perf::start(pid)?;
    let r = wrk(port, args.seconds, args.connections)?;
    // The batched reader drains within its latency bound, the history commits within
    // 0.5 s: let them finish.
    thread::sleep(Duration::from_millis(700));
    let syscalls = perf.stop();
    let after = proc::programs(pid);
    let switches = context_switches(pid).saturating_sub(switches_before);
    let cpu = proc::cpu_times(pid)?.since(cpu_before);
    let output = t.output.clone();
    t.stop()?;
    drop(stats);
    let kernel_ns = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            a.run_time_ns - b.map_or(0, |b| b.run_time_ns)
        })
        .sum();
    let written = written(mode, &output);
    Ok(Diagnosis {
        mode: mode.clone(),
        requests: r.requests,
        kernel_ns,
        cpu,
        written,
        switches,
        syscalls,
    })
}

/// The events (lines) a tracer wrote to `output`: bpftrace's connect and accept lines,
/// netmon's events but its `probe` and `stats`.
fn written(mode: &Mode, output: &Path) -> u64 {
    let text = fs::read_to_string(output).unwrap_or_default();
    (match mode {
        Mode::Floor => 0,
        Mode::Bpftrace => text
            .lines()
            .filter(|l| l.starts_with("connect ") || l.starts_with("accept "))
            .count(),
        _ => text
            .lines()
            .filter(|l| !l.contains("\"type\":\"probe\"") && !l.contains("\"type\":\"stats\""))
            .count(),
    }) as u64
}

fn render(
    env: &Env,
    args: &WebArgs,
    rates: &[(Mode, Vec<f64>)],
    cpu: &[(Mode, Vec<f64>)],
    diags: &[Diagnosis],
) -> String {
    let mut md = String::new();
    let bare = rates
        .iter()
        .find(|(m, _)| *m == Mode::Bare)
        .map_or(1.0, |(_, r)| median(r));
    let _ = writeln!(
        md,
        "## Overhead: wrk + nginx\n\n\
         `wrk -t1 -c{c} -d{s}s -H 'Connection: close'` against nginx 127.0.0.1 \
         (`worker_processes 1`, `keepalive_timeout 0`, `access_log off`): one new TCP \
         connection per request. {rounds} rounds, modes interleaved; netmon as `{nice}netmon {flags}` \
         (history on: `--history FILE` instead of `--no-history`, a new file each run). \
         Machine: {machine}. Command: `{cmd}`.\n",
        c = args.connections,
        s = args.seconds,
        rounds = args.rounds,
        nice = env.nice_prefix(),
        flags = tracer::netmon_args(Path::new("FILE"), &args.netmon_flags).join(" "),
        machine = env.machine,
        cmd = env.command_line,
    );
    let mut t = Table::new(&[
        "mode",
        "requests/s (median)",
        "kept",
        "runs",
        "tracer CPU µs per event written (median)",
        "runs",
    ]);
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|r| format!("{r:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ((mode, runs), (_, cpus)) in rates.iter().zip(cpu) {
        t.row(&[
            mode.label(),
            format!("{:.0}", median(runs)),
            format!("{:.3}", median(runs) / bare),
            list(runs, 0),
            if cpus.is_empty() {
                "–".into()
            } else {
                format!("{:.2}", median(cpus))
            },
            list(cpus, 2),
        ]);
    }
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nOne more run per tracer with BPF run-time statistics on (they add two clock \
         reads per program run, so the runs above are made without them). Per TCP \
         connection: the tracer's programs' time in the kernel, its process's CPU (and \
         the part of it the kernel spent in the process's syscalls: for netmon mostly \
         `write(2)` of its output into the page cache); per 1,000 events (lines) it \
         wrote: its threads' context switches (wake-ups) and syscalls.\n"
    );
    let mut t = Table::new(&[
        "tracer",
        "kernel ns / connection",
        "process µs / connection",
        "process µs / event",
        "of which its syscalls (stime) µs / event",
        "wake-ups / 1,000 events",
        "syscalls / 1,000 events",
    ]);
    for d in diags {
        let conns = d.requests.max(1) as f64;
        // Per event and per 1,000 events: nothing to divide by for the floor.
        let per_written = |x: f64, scale: f64, digits: usize| {
            if d.written == 0 {
                "–".to_string()
            } else {
                format!("{:.digits$}", x * scale / d.written as f64)
            }
        };
        t.row(&[
            d.mode.label(),
            format!("{:.0}", d.kernel_ns as f64 / conns),
            format!("{:.2}", d.cpu.total().as_secs_f64() * 1e6 / conns),
            per_written(d.cpu.total().as_secs_f64(), 1e6, 2),
            per_written(d.cpu.system.as_secs_f64(), 1e6, 2),
            per_written(d.switches as f64, 1000.0, 0),
            d.syscalls
                .map(|n| per_written(n as f64, 1000.0, 0))
                .unwrap_or_else(|| "n/a".into()),
        ]);
    }
    md.push_str(&t.render());
    // Issue 13: with the history on, ≤ 10% more overhead and CPU per event than off.
    let rate = |m: fn(&Mode) -> bool| rates.iter().find(|(x, _)| m(x)).map(|(_, r)| median(r));
    let per_event = |m: fn(&Mode) -> bool| {
        cpu.iter()
            .find(|(x, c)| m(x) && !c.is_empty())
            .map(|(_, c)| median(c))
    };
    let off = |m: &Mode| matches!(m, Mode::Netmon(_));
    let on = |m: &Mode| matches!(m, Mode::History(_));
    if let (Some(r_off), Some(r_on), Some(c_off), Some(c_on)) =
        (rate(off), rate(on), per_event(off), per_event(on))
    {
        let overhead = |r: f64| (bare - r) / bare;
        let _ = writeln!(
            md,
            "\nHistory on vs off (target ≤ 10% more): overhead (requests/s lost against \
             nothing attached) {:.1}% vs {:.1}%; netmon's CPU per event (medians of the \
             rounds) {c_on:.2} vs {c_off:.2} µs ({:+.0}%).",
            overhead(r_on) * 100.0,
            overhead(r_off) * 100.0,
            (c_on / c_off - 1.0) * 100.0
        );
    }
    if let (Some(floor), Some(netmon)) = (
        rate(|m| *m == Mode::Floor),
        rate(|m| matches!(m, Mode::Netmon(_))),
    ) {
        let _ = writeln!(
            md,
            "\nThe floor (f) is what any tracer of `sock:inet_sock_set_state` pays before \
             it does anything: it keeps {:.3} of the requests/s; netmon (b) keeps {:.3}, \
             {:.3} of the floor's.",
            floor / bare,
            netmon / bare,
            netmon / floor
        );
    }
    md
}

/// Voluntary plus involuntary context switches of every thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let v = l
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                    v.trim().parse::<u64>().ok()
                })
                .sum::<u64>()
        })
        .sum()
}

struct WrkResult {
    per_s: f64,
    requests: u64,
}

fn wrk(port: u16, seconds: u32, connections: u32) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "-H",
        "Connection: close",
        &format!("http://127.0.0.1:{port}/"),
    ]);
    let out = crate::exec::output(&mut cmd)?;
    parse_wrk(&out).with_context(|| format!("cannot read wrk's output: {out}"))
}

/// `Requests/sec:` and `N requests in …` from wrk's report.
fn parse_wrk(out: &str) -> Option<WrkResult> {
    let per_s = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let requests = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n))?
        .trim()
        .parse()
        .ok()?;
    Some(WrkResult { per_s, requests })
}

/// `perf stat -e raw_syscalls:sys_enter -p PID`, for as long as it lives.
struct Perf {
    child: Option<Child>,
    output: PathBuf,
}

impl Perf {
    fn start(pid: u32) -> Result<Perf> {
        let output =
            std::env::temp_dir().join(format!("netmon-bench-perf-{}.txt", std::process::id()));
        let _ = fs::remove_file(&output);
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        // perf attaches in a few ms; give it time before the load starts.
        thread::sleep(Duration::from_millis(300));
        Ok(Perf { child, output })
    }

    /// The count, or `None` when perf was not there or could not count.
    fn stop(mut self) -> Option<u64> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let text = fs::read_to_string(&self.output).ok()?;
        let _ = fs::remove_file(&self.output);
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// nginx serving a fixed answer on a free loopback port, from a directory of its own.
struct Nginx {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Nginx {
    fn start(work: &Path) -> Result<Nginx> {
        if !crate::exec::on_path("nginx") && !Path::new("/usr/sbin/nginx").exists() {
            bail!("nginx is missing: run `cargo xtask setup` (it installs nginx-light and wrk)");
        }
        let dir = work.join(format!("nginx-{}", std::process::id()));
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout 0;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{\n    listen 127.0.0.1:{port};\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            d = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let nginx = if crate::exec::on_path("nginx") {
            "nginx"
        } else {
            "/usr/sbin/nginx"
        };
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let mut n = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = n.child.try_wait()? {
                bail!(
                    "nginx exited with {status} (see {})",
                    n._dir.join("logs/error.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{port} within 10 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self._dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let out = "Running 4s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n\
                   \x20 41523 requests in 4.00s, 6.22MB read\nRequests/sec:  10379.52\n\
                   Transfer/sec:      1.55MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 41523);
        assert!((r.per_s - 10379.52).abs() < 1e-6);
        assert!(parse_wrk("garbage").is_none());
    }
}
