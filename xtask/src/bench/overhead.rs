//! Overhead: the same bounded storm with (a) nothing attached, (b) `netmon run` writing
//! JSON to a file, (c) the bpftrace peer writing its lines to a file, interleaved
//! A B C A B C … so that the machine's drifting load hits every mode alike.
//!
//! Per run: the storm's throughput and CPU; for tracers, their CPU time over the run
//! (from just before the storm until they exit, so the catching-up after the storm is
//! included) per 1,000 events written, their peak RSS, and the storm's events generated
//! vs received.
use std::{fmt::Write as _, thread, time::Duration};

use anyhow::Result;

use super::{
    Env, proc,
    report::{Section, Table, median, met, thousands},
    storm::{self, StormConfig, StormReport},
    tracer::{self, Tracer},
};

/// After the storm, time for a tracer to catch up before it is stopped.
const DRAIN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Netmon,
    Bpftrace,
}

const MODES: [Mode; 3] = [Mode::Bare, Mode::Netmon, Mode::Bpftrace];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "(a) nothing attached",
            Mode::Netmon => "(b) netmon",
            Mode::Bpftrace => "(c) bpftrace peer",
        }
    }
}

pub struct OverheadArgs {
    pub rounds: u32,
    pub storm: StormConfig,
    /// Extra `netmon run` flags (e.g. `--ring-buffer-kib`).
    pub netmon_flags: Vec<String>,
    pub pause: Duration,
    /// Longest wait for other tracers on the machine to finish before each run.
    pub quiet_wait: Duration,
}

struct Run {
    round: u32,
    mode: Mode,
    storm: StormReport,
    tracer: Option<TracerRun>,
    /// Other tracers (netmon, bpftrace) running on the machine when the run started.
    foreign: usize,
}

struct TracerRun {
    /// CPU from just before the storm to exit.
    cpu: Duration,
    /// `VmHWM` just before the tracer is stopped.
    peak_rss_kib: u64,
    /// Event lines written (all processes).
    written: u64,
    /// Storm events this tracer is meant to report.
    generated: u64,
    /// Storm events found in its output.
    received: u64,
    /// netmon: `lost` of the final stats; bpftrace: its `Lost N events` lines.
    lost: u64,
    recursion_misses: u64,
}

impl TracerRun {
    fn cpu_ms_per_1000(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e3 / (self.written.max(1) as f64 / 1000.0)
    }

    fn missing(&self) -> i64 {
        self.generated as i64 - self.received as i64
    }
}

pub fn run(env: &Env, args: &OverheadArgs) -> Result<Section> {
    let load = proc::load_average();
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for mode in MODES {
            eprintln!(
                "bench overhead: round {round}/{}: {}",
                args.rounds,
                mode.label()
            );
            let foreign = proc::wait_for_quiet(args.quiet_wait);
            let mut run = one(env, args, round, mode)?;
            run.foreign = foreign;
            eprintln!(
                "bench overhead:   {:.0} TCP connections/s, {:.0} UDP datagrams/s{}",
                run.storm.tcp_per_s,
                run.storm.udp_per_s,
                run.tracer
                    .as_ref()
                    .map(|t| format!(
                        ", {:.2} ms CPU per 1,000 events, {} of {} storm events received",
                        t.cpu_ms_per_1000(),
                        t.received,
                        t.generated
                    ))
                    .unwrap_or_default()
            );
            runs.push(run);
            thread::sleep(args.pause);
        }
    }
    let mut costs = Vec::new();
    for kind in [tracer::Kind::Netmon, tracer::Kind::Bpftrace] {
        eprintln!("bench overhead: diagnostic run with BPF run-time statistics: {kind:?}");
        proc::wait_for_quiet(args.quiet_wait);
        costs.push(kernel_cost(env, args, kind)?);
    }
    let bare_cpu_us = median(
        &runs
            .iter()
            .filter(|r| r.mode == Mode::Bare)
            .map(|r| r.storm.cpu_us_per_connection())
            .collect::<Vec<_>>(),
    );
    let mut md = render(env, args, &runs, &load);
    md.push_str(&render_costs(&costs, bare_cpu_us));
    Ok(Section {
        id: "overhead",
        markdown: md,
    })
}

/// Where a tracer's cost goes, from one run with `BPF_ENABLE_STATS` on.
struct Cost {
    kind: tracer::Kind,
    connections: u64,
    /// (program, runs, run time in ns) for every program the tracer holds.
    programs: Vec<(String, u64, u64)>,
    /// The tracer process's own CPU (userspace side) and events written.
    cpu: Duration,
    written: u64,
}

fn kernel_cost(env: &Env, args: &OverheadArgs, kind: tracer::Kind) -> Result<Cost> {
    let stats = proc::BpfStats::enable()?;
    let (t, output) = match kind {
        tracer::Kind::Netmon => {
            let out = env.work.join("diag-netmon.json");
            (
                Tracer::netmon(&env.netmon, env.netmon_nice, &out, &args.netmon_flags)?,
                out,
            )
        }
        tracer::Kind::Bpftrace => {
            let out = env.work.join("diag-bpftrace.txt");
            (Tracer::bpftrace(&env.bpftrace_script, &out)?, out)
        }
    };
    let before = proc::programs(t.pid());
    let cpu_before = t.cpu_time()?;
    let storm = storm::run(&env.storm, &args.storm)?;
    thread::sleep(DRAIN);
    let after = proc::programs(t.pid());
    // Names while the programs are still loaded.
    let names: Vec<String> = after
        .iter()
        .map(|a| proc::program_name(a.id, a.prog_type))
        .collect();
    let usage = t.stop()?;
    drop(stats);
    let programs = after
        .iter()
        .zip(names)
        .map(|(a, name)| {
            let b = before.iter().find(|b| b.id == a.id);
            let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt);
            let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            (name, runs, ns)
        })
        .collect();
    let written = match kind {
        tracer::Kind::Netmon => tracer::count_netmon(&output, &storm)?.written,
        tracer::Kind::Bpftrace => tracer::count_bpftrace(&output, &storm)?.written,
    };
    Ok(Cost {
        kind,
        connections: storm.tcp_connections,
        programs,
        cpu: usage.cpu.saturating_sub(cpu_before),
        written,
    })
}

impl Cost {
    fn name(&self) -> &'static str {
        match self.kind {
            tracer::Kind::Netmon => "netmon",
            tracer::Kind::Bpftrace => "bpftrace",
        }
    }

    /// In-kernel µs per TCP connection, all programs.
    fn kernel_us(&self) -> f64 {
        let ns: u64 = self.programs.iter().map(|(_, _, ns)| ns).sum();
        ns as f64 / 1e3 / self.connections.max(1) as f64
    }

    /// The tracer process's µs per TCP connection.
    fn user_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.connections.max(1) as f64
    }
}

/// `bare_cpu_us`: the storm's CPU per TCP connection with nothing attached (median).
fn render_costs(costs: &[Cost], bare_cpu_us: f64) -> String {
    let mut t = Table::new(&[
        "tracer",
        "side",
        "runs per TCP connection",
        "ns per run",
        "µs per TCP connection",
    ]);
    for c in costs {
        let conns = c.connections.max(1) as f64;
        let name = c.name();
        let mut total_ns = 0;
        for (prog, runs, ns) in &c.programs {
            if *runs == 0 {
                continue;
            }
            total_ns += ns;
            t.row(&[
                name.to_string(),
                format!("kernel: `{prog}`"),
                format!("{:.2}", *runs as f64 / conns),
                format!("{:.0}", *ns as f64 / *runs as f64),
                format!("{:.2}", *ns as f64 / 1e3 / conns),
            ]);
        }
        t.row(&[
            name.to_string(),
            "kernel: all programs".to_string(),
            String::new(),
            String::new(),
            format!("{:.2}", total_ns as f64 / 1e3 / conns),
        ]);
        t.row(&[
            name.to_string(),
            format!(
                "userspace process ({:.2} µs per event written)",
                c.cpu.as_secs_f64() * 1e6 / c.written.max(1) as f64
            ),
            String::new(),
            String::new(),
            format!("{:.2}", c.cpu.as_secs_f64() * 1e6 / conns),
        ]);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### Where the cost goes\n\n\
         One more storm per tracer with the kernel's BPF run-time statistics on \
         (`BPF_ENABLE_STATS`; they add two clock reads per program run, so the runs above \
         are made without them). Kernel rows are the tracer's programs: they run in the \
         storm's syscalls and softirqs, so their time is charged to the storm. The userspace \
         row is the tracer process. Per TCP connection of that storm (each makes 4 netmon \
         events; bpftrace prints 2 lines).\n"
    );
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\nWith nothing attached the storm spends {bare_cpu_us:.1} µs of CPU per TCP \
         connection (median above). The storm keeps both CPUs busy, so a tracer that adds \
         `k` µs in the kernel and `u` µs in its own process per connection leaves it at most \
         about 1 / (1 + (k + u) / {bare_cpu_us:.1}) of its throughput:\n"
    );
    for c in costs {
        let extra = c.kernel_us() + c.user_us();
        let _ = writeln!(
            md,
            "- {}: {:.1} + {:.1} µs = {:.0}% more CPU per connection → at most ~{:.0}% of the \
             throughput;",
            c.name(),
            c.kernel_us(),
            c.user_us(),
            100.0 * extra / bare_cpu_us,
            100.0 / (1.0 + extra / bare_cpu_us)
        );
    }
    let _ = writeln!(
        md,
        "- keeping 97% needs a tracer's whole cost under {:.1} µs per connection here \
         (3% of {bare_cpu_us:.1}).",
        bare_cpu_us * 0.03 / 0.97
    );
    md
}

fn one(env: &Env, args: &OverheadArgs, round: u32, mode: Mode) -> Result<Run> {
    let tracer = match mode {
        Mode::Bare => None,
        Mode::Netmon => Some(Tracer::netmon(
            &env.netmon,
            env.netmon_nice,
            &env.work.join("overhead-netmon.json"),
            &args.netmon_flags,
        )?),
        Mode::Bpftrace => Some(Tracer::bpftrace(
            &env.bpftrace_script,
            &env.work.join("overhead-bpftrace.txt"),
        )?),
    };
    let Some(tracer) = tracer else {
        let storm = storm::run(&env.storm, &args.storm)?;
        return Ok(Run {
            round,
            mode,
            storm,
            tracer: None,
            foreign: 0,
        });
    };
    let cpu_before = tracer.cpu_time()?;
    let storm = storm::run(&env.storm, &args.storm)?;
    thread::sleep(DRAIN);
    let recursion_misses = tracer.recursion_misses();
    let peak_rss_kib = tracer.peak_rss_kib()?;
    let output = tracer.output.clone();
    let usage = tracer.stop()?;
    let cpu = usage.cpu.saturating_sub(cpu_before);
    let t = if mode == Mode::Netmon {
        let c = tracer::count_netmon(&output, &storm)?;
        TracerRun {
            cpu,
            peak_rss_kib,
            written: c.written,
            generated: storm.events_total,
            received: c.storm_total(),
            lost: c.lost.unwrap_or(0),
            recursion_misses,
        }
    } else {
        let c = tracer::count_bpftrace(&output, &storm)?;
        TracerRun {
            cpu,
            peak_rss_kib,
            written: c.written,
            generated: storm.events_of(&["connect", "accept"]),
            received: c.storm,
            lost: c.lost,
            recursion_misses,
        }
    };
    Ok(Run {
        round,
        mode,
        storm,
        tracer: Some(t),
        foreign: 0,
    })
}

fn render(env: &Env, args: &OverheadArgs, runs: &[Run], load_before: &str) -> String {
    let of = |mode: Mode| runs.iter().filter(move |r| r.mode == mode);
    let med = |mode: Mode, f: &dyn Fn(&Run) -> f64| median(&of(mode).map(f).collect::<Vec<_>>());
    let med_t = |mode: Mode, f: &dyn Fn(&TracerRun) -> f64| {
        median(
            &of(mode)
                .filter_map(|r| r.tracer.as_ref())
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let tcp = |m| med(m, &|r| r.storm.tcp_per_s);
    let udp = |m| med(m, &|r| r.storm.udp_per_s);
    let storm_cpu = |m| med(m, &|r| r.storm.cpu_us_per_connection());
    let pct = |x: f64, base: f64| format!("{:.1}%", 100.0 * x / base);

    let mut t = Table::new(&[
        "median of runs",
        Mode::Bare.label(),
        Mode::Netmon.label(),
        Mode::Bpftrace.label(),
    ]);
    let (tcp_a, tcp_b, tcp_c) = (tcp(Mode::Bare), tcp(Mode::Netmon), tcp(Mode::Bpftrace));
    let (udp_a, udp_b, udp_c) = (udp(Mode::Bare), udp(Mode::Netmon), udp(Mode::Bpftrace));
    t.row(&[
        "TCP connections/s (vs a)".to_string(),
        format!("{tcp_a:.0}"),
        format!("{tcp_b:.0} ({})", pct(tcp_b, tcp_a)),
        format!("{tcp_c:.0} ({})", pct(tcp_c, tcp_a)),
    ]);
    t.row(&[
        "UDP datagrams/s (vs a)".to_string(),
        format!("{udp_a:.0}"),
        format!("{udp_b:.0} ({})", pct(udp_b, udp_a)),
        format!("{udp_c:.0} ({})", pct(udp_c, udp_a)),
    ]);
    let (sc_a, sc_b, sc_c) = (
        storm_cpu(Mode::Bare),
        storm_cpu(Mode::Netmon),
        storm_cpu(Mode::Bpftrace),
    );
    t.row(&[
        "load generator CPU per TCP connection, µs (includes the probes' in-kernel time)"
            .to_string(),
        format!("{sc_a:.1}"),
        format!("{sc_b:.1} (+{})", pct(sc_b - sc_a, sc_a)),
        format!("{sc_c:.1} (+{})", pct(sc_c - sc_a, sc_a)),
    ]);
    let cpu_b = med_t(Mode::Netmon, &|t| t.cpu_ms_per_1000());
    let cpu_c = med_t(Mode::Bpftrace, &|t| t.cpu_ms_per_1000());
    t.row(&[
        "tracer CPU (utime+stime) per 1,000 events written, ms".to_string(),
        "–".into(),
        format!("{cpu_b:.2}"),
        format!("{cpu_c:.2}"),
    ]);
    let tracer_ms = |m| med_t(m, &|t| t.cpu.as_secs_f64() * 1e3);
    t.row(&[
        "tracer CPU per run, ms".to_string(),
        "–".into(),
        format!("{:.0}", tracer_ms(Mode::Netmon)),
        format!("{:.0}", tracer_ms(Mode::Bpftrace)),
    ]);
    let rss = |m| med_t(m, &|t| t.peak_rss_kib as f64) / 1024.0;
    t.row(&[
        "tracer peak RSS (VmHWM), MiB".to_string(),
        "–".into(),
        format!("{:.1}", rss(Mode::Netmon)),
        format!("{:.1}", rss(Mode::Bpftrace)),
    ]);
    let gen_ = |m| med_t(m, &|t| t.generated as f64);
    let rec = |m| med_t(m, &|t| t.received as f64);
    t.row(&[
        "storm events generated per run".to_string(),
        "–".into(),
        format!("{} (all types)", thousands(gen_(Mode::Netmon) as u64)),
        format!(
            "{} (connect + accept)",
            thousands(gen_(Mode::Bpftrace) as u64)
        ),
    ]);
    t.row(&[
        "storm events received per run".to_string(),
        "–".into(),
        thousands(rec(Mode::Netmon) as u64),
        thousands(rec(Mode::Bpftrace) as u64),
    ]);
    let worst = |m| {
        of(m)
            .filter_map(|r| r.tracer.as_ref())
            .map(|t| t.missing())
            .max()
            .unwrap_or(0)
    };
    t.row(&[
        "events missing (generated − received), worst run".to_string(),
        "–".into(),
        thousands(worst(Mode::Netmon).max(0) as u64),
        thousands(worst(Mode::Bpftrace).max(0) as u64),
    ]);
    let lost = |m| med_t(m, &|t| t.lost as f64);
    t.row(&[
        "lost as the tracer reports it (netmon `stats.lost`, bpftrace `Lost N events`)".to_string(),
        "–".into(),
        thousands(lost(Mode::Netmon) as u64),
        thousands(lost(Mode::Bpftrace) as u64),
    ]);
    let misses = |m| med_t(m, &|t| t.recursion_misses as f64);
    t.row(&[
        "tracepoint program runs the kernel skipped (`recursion_misses`)".to_string(),
        "–".into(),
        thousands(misses(Mode::Netmon) as u64),
        thousands(misses(Mode::Bpftrace) as u64),
    ]);

    let netmon_runs: Vec<&TracerRun> = of(Mode::Netmon).filter_map(|r| r.tracer.as_ref()).collect();
    let lossless = netmon_runs.iter().filter(|t| t.missing() == 0).count();
    let exact = runs.iter().all(|r| r.storm.exact);
    let tcp_ratio = tcp_b / tcp_a;
    let udp_ratio = udp_b / udp_a;

    let mut md = String::new();
    let _ = writeln!(md, "## 1. Tracing overhead\n");
    let _ = writeln!(
        md,
        "{} rounds, each running the storm with (a) nothing attached, (b) `netmon run` writing \
         JSON to a file, (c) the bpftrace peer writing its lines to a file, in that order \
         (A B C A B C …). Medians over the rounds; percentages are relative to (a).\n",
        args.rounds
    );
    md.push_str(&t.render());
    let _ = writeln!(md, "\n**Targets**\n");
    let _ = writeln!(
        md,
        "- workload keeps ≥ 97% of its throughput with netmon attached: {} (TCP connections \
         {:.1}%; UDP datagrams {:.1}%, for information only: one sender thread among the \
         storm's 13, so its share of the CPUs swings from run to run)",
        met(tcp_ratio >= 0.97),
        100.0 * tcp_ratio,
        100.0 * udp_ratio
    );
    let _ = writeln!(
        md,
        "- 0 events lost at the storm's full rate: {} ({lossless} of {} netmon runs received \
         every storm event)",
        met(lossless == netmon_runs.len() && !netmon_runs.is_empty()),
        netmon_runs.len()
    );
    let _ = writeln!(
        md,
        "- netmon uses less CPU per event than the bpftrace peer: {} ({cpu_b:.2} vs {cpu_c:.2} ms \
         per 1,000 events, {:.2}×)",
        met(cpu_b < cpu_c),
        cpu_b / cpu_c
    );
    if !exact {
        let _ = writeln!(
            md,
            "\n*Some storms had failed connections or unsettled sockets: their generated counts \
             are not exact.*"
        );
    }

    let _ = writeln!(md, "\n<details><summary>Every run</summary>\n");
    let mut all = Table::new(&[
        "round",
        "mode",
        "TCP conn/s",
        "UDP dgram/s",
        "storm CPU µs/conn",
        "tracer CPU ms",
        "written",
        "generated",
        "received",
        "lost (reported)",
        "recursion misses",
        "peak RSS MiB",
        "other tracers running",
    ]);
    for r in runs {
        let mut row = vec![
            r.round.to_string(),
            r.mode.label().to_string(),
            format!("{:.0}", r.storm.tcp_per_s),
            format!("{:.0}", r.storm.udp_per_s),
            format!("{:.1}", r.storm.cpu_us_per_connection()),
        ];
        match &r.tracer {
            Some(t) => row.extend([
                format!("{:.0}", t.cpu.as_secs_f64() * 1e3),
                thousands(t.written),
                thousands(t.generated),
                thousands(t.received),
                thousands(t.lost),
                thousands(t.recursion_misses),
                format!("{:.1}", t.peak_rss_kib as f64 / 1024.0),
            ]),
            None => row.extend(std::iter::repeat_n("–".to_string(), 7)),
        }
        row.push(r.foreign.to_string());
        all.row(&row);
    }
    md.push_str(&all.render());
    let _ = writeln!(md, "\n</details>\n");

    let _ = writeln!(md, "**Commands**\n");
    let _ = writeln!(md, "```sh");
    let _ = writeln!(md, "{}", env.command_line);
    let _ = writeln!(md, "# each run:");
    let _ = writeln!(md, "{}", args.storm.command_line());
    let _ = writeln!(
        md,
        "{}target/release/netmon {}",
        env.nice_prefix(),
        tracer::netmon_args(&env.work.join("overhead-netmon.json"), &args.netmon_flags)
            .join(" ")
            .replace(&env.root_prefix(), "")
    );
    let _ = writeln!(
        md,
        "bpftrace -o target/bench/overhead-bpftrace.txt target/bench/peer.bt   # {}",
        env.bpftrace_version
    );
    let _ = writeln!(md, "```\n");
    let _ = writeln!(md, "The bpftrace peer (`target/bench/peer.bt`):\n");
    let _ = writeln!(md, "```\n{}```\n", tracer::BPFTRACE_SCRIPT);
    let _ = writeln!(md, "**Machine**\n");
    md.push_str(&env.machine);
    let _ = writeln!(
        md,
        "- load average when this section ended: {}",
        proc::load_average()
    );
    let _ = writeln!(
        md,
        "- load average when this section started: {load_before}"
    );
    md
}
