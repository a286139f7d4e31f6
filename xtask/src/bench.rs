//! `cargo xtask bench [overhead|loss|pipeline|all]`: what netmon costs, measured on
//! this machine, written as markdown to stdout and into `docs/benchmarks.md`.
//!
//! - `overhead` ([`overhead`]): a bounded loopback connection storm (the load generator
//!   `netmon-storm`, in a network namespace of its own) with nothing attached, with
//!   `netmon run`, and with a bpftrace peer, interleaved; throughput, CPU per event,
//!   peak RSS, events generated vs received. Then ([`web`]) wrk against nginx on
//!   127.0.0.1, the same modes interleaved: requests/s kept, kernel ns and netmon CPU
//!   per connection, wake-ups and syscalls per 1,000 events.
//! - `loss` ([`loss`]): the storm against a small ring buffer and a stalled consumer;
//!   `stats.lost` must equal generated − received.
//! - `pipeline` ([`pipeline`]): decode → stages → JSON in-process (criterion).
//! - `scan` ([`scan`]): `netmon scan` side by side with nmap (full connect scan, /24
//!   discovery) in network namespaces it creates.
//! - `history` ([`history`]): the history writer's rate (paced at 100,000 events/s and
//!   flat out), `netmon history flows --since 24h` over 10 million events, size per
//!   million events.
//!
//! - `top` ([`top`]): `netmon top`'s CPU while a stand-in agent on 127.0.0.1 streams
//!   10,000 events/s (no root; `--baseline-netmon` measures a second binary beside it).
//! - `report` ([`reports`]): `netmon report --since 24h` over 1 million events and
//!   10,000 connections (time, peak RSS), and a report of the current sockets with a
//!   few thousand loopback sockets open in a network namespace it creates.
//!
//! - `ebpf-log` ([`ebpf_log`]): the programs' ns per run and xlated size with their
//!   aya-log calls compiled out, compiled in with `--ebpf-log off`, and `debug`,
//!   interleaved under one storm ("free when off", issue 22).
//! - `api` ([`api`]): the storm with netmon's API and no client vs 50 SSE clients
//!   (interleaved; every stream's gaps matched by `lagged`), and `GET /api/v1/flows`
//!   with 100,000 flows (answer time, ring-buffer loss meanwhile) (issue 14).
//!
//! Root is needed for `overhead`, `loss` and `scan` (netmon loads programs; the storm
//! and the scan lab create network namespaces). Every storm is bounded in time and count
//! and stays on loopback; every scan stays inside the lab's namespaces.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};

use crate::{build, exec, setup};

mod api;
mod ebpf_log;
mod history;
mod loss;
mod metrics;
mod overhead;
mod pipeline;
mod proc;
mod report;
mod reports;
mod scan;
mod storm;
mod top;
mod tracer;
mod web;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Tracing overhead: nothing vs netmon vs bpftrace under a connection storm, then
    /// the wrk + nginx workload (`web`).
    Overhead,
    /// Only the wrk + nginx part of `overhead`: nothing, netmon with its history off
    /// and on, bpftrace.
    Web,
    /// Loss under pressure: small ring buffer, stalled consumer, exact `lost`.
    Loss,
    /// Userspace pipeline throughput on one core (criterion).
    Pipeline,
    /// Scanner: `netmon scan` vs nmap, full connect scan and /24 discovery.
    Scan,
    /// History: writer rate, `history flows --since 24h` over 10 M events, file size.
    History,
    /// eBPF diagnostics: the programs' ns per run with aya-log compiled out, off, debug.
    EbpfLog,
    /// Metrics: what the metrics consumer adds to the event loop per event, scrape time.
    Metrics,
    /// `netmon top`: CPU at 10,000 events/s from a stand-in agent (no root).
    Top,
    /// HTTP API: the storm with and without 50 SSE clients; /api/v1/flows at 100,000 flows.
    Api,
    /// Report: `netmon report --since 24h` over 1 M events, and of the current sockets.
    Report,
    /// All of the above, in order.
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
    /// Overhead and scan: rounds (overhead: nothing / netmon / bpftrace once each, in
    /// that order; scan: netmon and nmap once each per measurement).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Length of each storm, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(500..=60_000))]
    pub duration_ms: u64,
    /// Storm: parallel TCP client threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Storm: TCP listeners (one accepting thread each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub listeners: u32,
    /// Storm: distinct UDP destination ports (0 turns the UDP sender off).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    pub udp_ports: u32,
    /// Storm: hard cap on TCP connections per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_connections: u64,
    /// Storm: hard cap on UDP datagrams per run.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_datagrams: u64,
    /// Overhead: netmon's ring buffer in KiB (netmon's default when not given).
    #[arg(long)]
    pub ring_buffer_kib: Option<u32>,
    /// Loss: netmon's ring buffer in KiB.
    #[arg(long, default_value_t = 4)]
    pub loss_ring_buffer_kib: u32,
    /// Loss: number of runs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub loss_runs: u32,
    /// Loss: stop netmon (SIGSTOP) this many milliseconds in the middle of each storm; 0 never.
    #[arg(long, default_value_t = 500)]
    pub loss_pause_ms: u64,
    /// Before each storm, wait up to this many seconds for other tracers on the machine
    /// (netmon, bpftrace of other users) to finish: they receive the storm's events too.
    #[arg(long, default_value_t = 60)]
    pub quiet_wait_s: u64,
    /// Run netmon under `nice -n N` (e.g. -10: a larger CPU share than the storm's
    /// threads); netmon's own scheduling priority otherwise.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub netmon_nice: Option<i32>,
    /// Use this netmon binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    pub netmon: Option<PathBuf>,
    /// Overhead (web) and top: also measure this netmon binary beside the one under test, in
    /// the same interleaved run (the "before" of a before/after).
    #[arg(long, value_name = "PATH")]
    pub baseline_netmon: Option<PathBuf>,
    /// Pipeline: also build and measure the benchmark of this revision (`main`, a
    /// commit) in the same run, for a before/after table.
    #[arg(long, value_name = "REV")]
    pub pipeline_baseline: Option<String>,
    /// Overhead (web): seconds of each wrk run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub web_seconds: u32,
    /// Overhead (web): wrk's open connections.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub web_connections: u32,
    /// A short pass of each benchmark that proves it still runs end to end (what
    /// `cargo xtask test` runs): one round, short storms, no report written. Its
    /// figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// History: events the fill writes (the query runs over them).
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    pub history_events: u64,
    /// Report: events of the history the report reads.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    pub report_events: u64,
    /// eBPF log: a netmon built with `NETMON_EBPF_NO_LOG=1` to use as the baseline
    /// instead of building one (a release build of netmon, minutes on two cores).
    #[arg(long, value_name = "PATH")]
    pub ebpf_log_baseline: Option<PathBuf>,
    /// Top: seconds measured on each view (after a 5 s warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub top_seconds: u64,
    /// API: concurrent SSE clients.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub api_clients: u32,
    /// API: UDP flows in the table when `/api/v1/flows` is asked.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1000..=100_000))]
    pub api_flows: u32,
    /// Print the report only; leave docs/benchmarks.md as it is.
    #[arg(long)]
    pub no_doc: bool,
}

impl BenchArgs {
    /// `--quick`: the smallest run that still exercises every step.
    fn quicken(&mut self) {
        self.rounds = 1;
        self.duration_ms = 500;
        self.loss_runs = 1;
        self.web_seconds = 1;
        self.quiet_wait_s = 0;
        self.history_events = 100_000;
        self.top_seconds = 1;
        self.api_clients = 5;
        self.api_flows = 1000;
        self.report_events = 100_000;
        self.no_doc = true;
    }
}

/// What every sub-benchmark needs: binaries, a scratch directory, the report context.
pub struct Env {
    pub root: PathBuf,
    pub netmon: PathBuf,
    /// `nice -n` for netmon, when asked.
    pub netmon_nice: Option<i32>,
    pub storm: PathBuf,
    /// `target/bench`: tracer outputs and the bpftrace script.
    pub work: PathBuf,
    pub bpftrace_script: PathBuf,
    /// An empty program on the same tracepoint (`bench web`'s floor).
    pub floor_script: PathBuf,
    pub bpftrace_version: String,
    pub machine: String,
    /// How this run was started, for the report.
    pub command_line: String,
}

impl Env {
    /// The workspace root with a trailing slash, to shorten paths in the report.
    pub fn root_prefix(&self) -> String {
        format!("{}/", self.root.display())
    }

    /// `nice -n N ` before netmon's command line in the report, when used.
    pub fn nice_prefix(&self) -> String {
        self.netmon_nice
            .map(|n| format!("nice -n {n} "))
            .unwrap_or_default()
    }
}

pub fn bench(mut args: BenchArgs) -> Result<()> {
    if args.quick {
        args.quicken();
    }
    let live = matches!(
        args.which,
        Which::Overhead
            | Which::Web
            | Which::Loss
            | Which::Scan
            | Which::EbpfLog
            | Which::Api
            | Which::All
    );
    // SAFETY: no preconditions.
    if live && unsafe { libc::geteuid() } != 0 {
        bail!(
            "`bench overhead`, `bench web`, `bench loss`, `bench scan`, `bench ebpf-log` and `bench api` need root (netmon loads eBPF \
             programs, the storm and the scan lab create network namespaces); `bench \
             pipeline` does not"
        );
    }
    setup::setup()?;
    let env = prepare(&args, live)?;
    let storm_cfg = storm::StormConfig {
        duration_ms: args.duration_ms,
        clients: args.clients,
        listeners: args.listeners,
        udp_ports: args.udp_ports,
        max_connections: args.max_connections,
        max_datagrams: args.max_datagrams,
    };
    let doc = env.root.join("docs/benchmarks.md");
    let emit = |section: report::Section| -> Result<()> {
        println!("{}", section.markdown);
        if !args.no_doc {
            report::write_doc(&doc, &[section])?;
            eprintln!("bench: wrote {}", doc.display());
        }
        Ok(())
    };
    let all = args.which == Which::All;
    if all || args.which == Which::Overhead {
        emit(overhead::run(
            &env,
            &overhead::OverheadArgs {
                rounds: args.rounds,
                storm: storm_cfg.clone(),
                netmon_flags: args
                    .ring_buffer_kib
                    .map(|k| vec!["--ring-buffer-kib".to_string(), k.to_string()])
                    .unwrap_or_default(),
                pause: Duration::from_secs(1),
                quiet_wait: Duration::from_secs(args.quiet_wait_s),
            },
        )?)?;
    }
    if all || args.which == Which::Overhead || args.which == Which::Web {
        emit(web::run(
            &env,
            &web::WebArgs {
                rounds: args.rounds,
                seconds: args.web_seconds,
                connections: args.web_connections,
                baseline: args.baseline_netmon.clone(),
                netmon_flags: args
                    .ring_buffer_kib
                    .map(|k| vec!["--ring-buffer-kib".to_string(), k.to_string()])
                    .unwrap_or_default(),
                quiet_wait: Duration::from_secs(args.quiet_wait_s),
            },
        )?)?;
    }
    if all || args.which == Which::Loss {
        emit(loss::run(
            &env,
            &loss::LossArgs {
                runs: args.loss_runs,
                storm: storm_cfg.clone(),
                ring_buffer_kib: args.loss_ring_buffer_kib,
                pause: Duration::from_millis(args.loss_pause_ms),
                quiet_wait: Duration::from_secs(args.quiet_wait_s),
            },
        )?)?;
    }
    if all || args.which == Which::Pipeline {
        // A quick pass proves the benchmark runs; it builds no baseline.
        let baseline = args.pipeline_baseline.as_deref().filter(|_| !args.quick);
        emit(pipeline::run(&env, baseline)?)?;
    }
    if all || args.which == Which::Scan {
        let (section, met) = scan::run(&env, args.rounds)?;
        emit(section)?;
        // A quick pass proves the benchmark runs; its figures are not targets.
        if !met && !args.quick {
            bail!("the scanner missed a performance target (see the table above)");
        }
    }
    if all || args.which == Which::EbpfLog {
        emit(ebpf_log::run(
            &env,
            &ebpf_log::EbpfLogArgs {
                rounds: args.rounds,
                // Short storms: programs' ns per run settle within a second; the whole
                // benchmark stays under three minutes at 5 rounds.
                storm: storm::StormConfig {
                    duration_ms: args.duration_ms.min(3000),
                    ..storm_cfg.clone()
                },
                baseline: args.ebpf_log_baseline.clone(),
                quiet_wait: Duration::from_secs(args.quiet_wait_s),
                quick: args.quick,
            },
        )?)?;
    }
    if all || args.which == Which::Metrics {
        let (events, rounds) = if args.quick {
            (20_000, 1)
        } else {
            (200_000, args.rounds)
        };
        let (section, met) = metrics::run(&env, events, rounds)?;
        emit(section)?;
        // As for the scanner: a quick pass on a loaded machine proves it runs.
        if !met && !args.quick {
            bail!("the metrics consumer missed a performance target (see the table above)");
        }
    }
    if all || args.which == Which::Top {
        let (section, met) = top::run(
            &env,
            &top::TopArgs {
                rounds: args.rounds,
                warmup_s: if args.quick { 1 } else { 5 },
                window_s: args.top_seconds,
                baseline: args.baseline_netmon.clone(),
            },
        )?;
        emit(section)?;
        if !met && !args.quick {
            bail!("netmon top missed its CPU target (see the table above)");
        }
    }
    if all || args.which == Which::Api {
        let (section, met) = api::run(
            &env,
            &api::ApiArgs {
                rounds: args.rounds,
                storm: storm_cfg.clone(),
                clients: args.api_clients as usize,
                flows: args.api_flows,
                quiet_wait: Duration::from_secs(args.quiet_wait_s),
            },
        )?;
        emit(section)?;
        if !met && !args.quick {
            bail!("the API missed a performance target (see the table above)");
        }
    }
    if all || args.which == Which::History {
        let (section, met) = history::run(&env, args.history_events)?;
        emit(section)?;
        // As for the scanner: a quick pass on a loaded machine proves it runs.
        if !met && !args.quick {
            bail!("the history missed a performance target (see the table above)");
        }
    }
    if all || args.which == Which::Report {
        let (section, met) = reports::run(&env, args.report_events, args.quick)?;
        emit(section)?;
        if !met && !args.quick {
            bail!("the report missed a performance target (see the table above)");
        }
    }
    Ok(())
}

impl Env {
    /// The end of a section: this machine, the command that made it, the load when it
    /// started.
    pub fn footer(&self, md: &mut String, load: &str) {
        md.push_str(&self.machine);
        md.push_str(&format!("- command: `{}`\n", self.command_line));
        md.push_str(&format!(
            "- load average when this section started: {load}\n"
        ));
    }

    /// Runs a driver of `netmon/benches/` (`cargo bench -p netmon --bench NAME -- ARGS`)
    /// and reads its result: the last line of its output that is a JSON object.
    pub fn driver<I, A>(&self, name: &str, args: I) -> Result<serde_json::Value>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        let out = exec::output(
            std::process::Command::new("cargo")
                .args(["bench", "-p", "netmon", "--bench", name, "--"])
                .args(args)
                .current_dir(&self.root),
        )?;
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("the {name} driver printed no result: {out}"))?;
        Ok(serde_json::from_str(line)?)
    }
}

fn prepare(args: &BenchArgs, live: bool) -> Result<Env> {
    let root = build::workspace_root();
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let (netmon, storm) = if !live && args.which == Which::Top {
        let netmon = match &args.netmon {
            Some(p) => p.clone(),
            None => build::netmon_binary()?,
        };
        (netmon, PathBuf::new())
    } else if live {
        let netmon = match &args.netmon {
            Some(p) => p.clone(),
            None => build::netmon_binary()?,
        };
        (netmon, storm::build()?)
    } else {
        (PathBuf::new(), PathBuf::new())
    };
    let bpftrace_script = work.join("peer.bt");
    let floor_script = work.join("floor.bt");
    let mut bpftrace_version = String::new();
    if live && matches!(args.which, Which::Overhead | Which::Web | Which::All) {
        if !exec::on_path("bpftrace") {
            setup::ensure_debian_packages(&["bpftrace"])?;
        }
        bpftrace_version = report::tool_version("bpftrace");
        write(&bpftrace_script, tracer::BPFTRACE_SCRIPT)?;
        write(&floor_script, tracer::FLOOR_SCRIPT)?;
    }
    let command_line = format!(
        "cargo xtask {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    Ok(Env {
        root,
        netmon,
        netmon_nice: args.netmon_nice,
        storm,
        work,
        bpftrace_script,
        floor_script,
        bpftrace_version,
        machine: report::machine(),
        command_line,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
