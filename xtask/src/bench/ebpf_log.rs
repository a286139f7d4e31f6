//! "Free when off" (issue 22): what the programs' aya-log calls cost in the kernel.
//! Three netmon builds/settings under the same bounded storm, interleaved a b c a b c …
//! with the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`):
//!
//! - (a) the programs built without their `log` feature (every log call compiled out;
//!   `NETMON_EBPF_NO_LOG=1`, see `netmon/build.rs` and `netmon-ebpf/src/log.rs`);
//! - (b) today's programs with `--ebpf-log off` (the default: the level global is 0);
//! - (c) the same with `--ebpf-log debug`.
//!
//! Per program: the median over rounds of run time / runs (ns per run) and the
//! verifier's translated size (`bpftool prog show`: `bytes_xlated` / 8 instructions),
//! which shows whether the verifier dropped the logging code when the level is 0.
use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, process::Command, thread};

use anyhow::{Context as _, Result};

use super::{
    Env, proc,
    report::{Section, Table, median},
    storm::{self, StormConfig},
    tracer::Tracer,
};
use crate::{build, exec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Compiled,
    Off,
    Debug,
}

const MODES: [Mode; 3] = [Mode::Compiled, Mode::Off, Mode::Debug];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Compiled => "(a) log calls compiled out",
            Mode::Off => "(b) --ebpf-log off",
            Mode::Debug => "(c) --ebpf-log debug",
        }
    }

    fn flags(self) -> Vec<String> {
        match self {
            Mode::Compiled | Mode::Off => Vec::new(),
            Mode::Debug => vec!["--ebpf-log".into(), "debug".into()],
        }
    }
}

pub struct EbpfLogArgs {
    pub rounds: u32,
    pub storm: StormConfig,
    /// A netmon built with `NETMON_EBPF_NO_LOG=1` to use as (a) instead of building one.
    pub baseline: Option<PathBuf>,
    pub quiet_wait: std::time::Duration,
    /// `--quick`: prove the benchmark runs without a second netmon build: the no-log
    /// programs are only compiled (the BPF object alone), and (a) runs the normal build.
    pub quick: bool,
}

/// One program in one run.
#[derive(Clone, Debug)]
struct Program {
    runs: u64,
    ns: u64,
    xlated_insns: Option<u64>,
}

struct Run {
    mode: Mode,
    /// By program name (`type name`).
    programs: BTreeMap<String, Program>,
    tcp_connections: u64,
    foreign: usize,
}

/// Builds netmon with the programs' log calls compiled out and returns a copy of it.
/// `target/release/netmon` (normally the binary under test) is saved first and put
/// back, so whatever runs it next (tests, other benches) gets the normal build; cargo
/// rebuilds it at the next plain build anyway (the build script saw the variable).
fn build_without_log(env: &Env) -> Result<PathBuf> {
    let copy = env.work.join("netmon-ebpf-no-log");
    let saved = env.work.join("netmon-before-no-log");
    let built = env.root.join("target/release/netmon");
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
    };
    let had = built.exists();
    if had {
        cp(&built, &saved)?;
    }
    exec::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "netmon", "--bin", "netmon"])
            .env("NETMON_EBPF_NO_LOG", "1")
            .current_dir(&env.root),
    )?;
    cp(&built, &copy)?;
    if had {
        // Replaced, not written through: a running copy of the old file stays intact.
        std::fs::remove_file(&built)
            .with_context(|| format!("cannot remove {}", built.display()))?;
        cp(&saved, &built)?;
    }
    Ok(copy)
}

pub fn run(env: &Env, args: &EbpfLogArgs) -> Result<Section> {
    let baseline = match &args.baseline {
        Some(p) => p.clone(),
        None if args.quick => {
            exec::run(
                Command::new("cargo")
                    .args(["+nightly", "build"])
                    .args(build::EBPF_CARGO_ARGS)
                    .args(["--no-default-features", "--target-dir"])
                    .arg(env.work.join("ebpf-no-log"))
                    .current_dir(&env.root),
            )?;
            env.netmon.clone()
        }
        None => build_without_log(env)?,
    };
    let load = proc::load_average();
    let stats = proc::BpfStats::enable()?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for mode in MODES {
            eprintln!(
                "bench ebpf-log: round {round}/{}: {}",
                args.rounds,
                mode.label()
            );
            let foreign = proc::wait_for_quiet(args.quiet_wait);
            let bin = match mode {
                Mode::Compiled => &baseline,
                _ => &env.netmon,
            };
            let mut run = one(env, bin, mode, &args.storm)?;
            run.foreign = foreign;
            runs.push(run);
        }
    }
    drop(stats);
    Ok(Section {
        id: "ebpf-log",
        markdown: render(env, args, &runs, &load),
    })
}

fn one(env: &Env, bin: &std::path::Path, mode: Mode, cfg: &StormConfig) -> Result<Run> {
    let out = env.work.join("ebpf-log-netmon.json");
    let t = Tracer::netmon(bin, env.netmon_nice, &out, &mode.flags())?;
    let before = proc::programs(t.pid());
    let storm = storm::run(&env.storm, cfg)?;
    thread::sleep(std::time::Duration::from_millis(500));
    let after = proc::programs(t.pid());
    let mut programs = BTreeMap::new();
    for a in &after {
        let b = before.iter().find(|b| b.id == a.id);
        let (name, xlated_insns) = describe(a.id, a.prog_type);
        let p = programs.entry(name).or_insert(Program {
            runs: 0,
            ns: 0,
            xlated_insns,
        });
        p.runs += a.run_cnt - b.map_or(0, |b| b.run_cnt);
        p.ns += a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
    }
    t.stop()?;
    Ok(Run {
        mode,
        programs,
        tcp_connections: storm.tcp_connections,
        foreign: 0,
    })
}

/// `bpftool prog show id ID`: the program's `type name` and its translated size in
/// instructions (8 bytes each).
fn describe(id: u32, prog_type: u32) -> (String, Option<u64>) {
    let v = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
    let name = v
        .as_ref()
        .and_then(|v| {
            Some(format!(
                "{} {}",
                v["type"].as_str()?,
                v["name"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or_else(|| format!("type {prog_type} #{id}"));
    let insns = v
        .as_ref()
        .and_then(|v| v["bytes_xlated"].as_u64())
        .map(|b| b / 8);
    (name, insns)
}

fn render(env: &Env, args: &EbpfLogArgs, runs: &[Run], load: &str) -> String {
    let of = |mode: Mode| runs.iter().filter(move |r| r.mode == mode);
    let names: Vec<String> = {
        let mut n: Vec<String> = runs
            .iter()
            .flat_map(|r| r.programs.iter())
            .filter(|(_, p)| p.runs > 0)
            .map(|(n, _)| n.clone())
            .collect();
        n.sort();
        n.dedup();
        n
    };
    let ns_per_run = |mode: Mode, name: &str| -> Vec<f64> {
        of(mode)
            .filter_map(|r| r.programs.get(name))
            .filter(|p| p.runs > 0)
            .map(|p| p.ns as f64 / p.runs as f64)
            .collect()
    };
    let insns = |mode: Mode, name: &str| -> String {
        of(mode)
            .find_map(|r| r.programs.get(name).and_then(|p| p.xlated_insns))
            .map_or("?".into(), |n| n.to_string())
    };
    let spread = |v: &[f64]| -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.0} [{lo:.0}–{hi:.0}]", median(v))
    };
    let mut t = Table::new(&[
        "program",
        "xlated insns a / b / c",
        "ns per run (a) median [min–max]",
        "(b) off",
        "(c) debug",
        "b / a",
        "c / a",
    ]);
    for name in &names {
        let (a, b, c) = (
            ns_per_run(Mode::Compiled, name),
            ns_per_run(Mode::Off, name),
            ns_per_run(Mode::Debug, name),
        );
        let runs_per_round = median(
            &of(Mode::Off)
                .filter_map(|r| r.programs.get(name.as_str()))
                .map(|p| p.runs as f64)
                .collect::<Vec<_>>(),
        );
        t.row(&[
            format!("`{name}` ({runs_per_round:.0} runs)"),
            format!(
                "{} / {} / {}",
                insns(Mode::Compiled, name),
                insns(Mode::Off, name),
                insns(Mode::Debug, name)
            ),
            spread(&a),
            spread(&b),
            spread(&c),
            format!("{:.2}", median(&b) / median(&a)),
            format!("{:.2}", median(&c) / median(&a)),
        ]);
    }
    // All programs together, per TCP connection of the storm.
    let per_conn = |mode: Mode| -> Vec<f64> {
        of(mode)
            .map(|r| {
                let ns: u64 = r.programs.values().map(|p| p.ns).sum();
                ns as f64 / r.tcp_connections.max(1) as f64
            })
            .collect()
    };
    let (a, b, c) = (
        per_conn(Mode::Compiled),
        per_conn(Mode::Off),
        per_conn(Mode::Debug),
    );
    t.row(&[
        "all programs, ns per TCP connection".to_string(),
        String::new(),
        spread(&a),
        spread(&b),
        spread(&c),
        format!("{:.2}", median(&b) / median(&a)),
        format!("{:.2}", median(&c) / median(&a)),
    ]);
    let foreign = runs.iter().filter(|r| r.foreign > 0).count();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## 6. eBPF diagnostics: free when off\n\n\
         `{}` (load average before: {load}) on:\n\n{}\n\nThe programs' in-kernel cost with \
         their aya-log calls (aya-log 0.3.0 / aya-log-ebpf 0.2.0, the pair for the pinned \
         aya 0.14 / aya-ebpf 0.2) (a) compiled out (`NETMON_EBPF_NO_LOG=1`: the \
         `netmon-ebpf` crate without its `log` feature), (b) compiled in with \
         `--ebpf-log off` (the default), (c) with `--ebpf-log debug`; {} interleaved \
         rounds a b c, each under the same storm (`{}`), with the kernel's BPF run-time \
         statistics on for the whole benchmark (they add two clock reads per run, alike \
         in every mode). Medians over rounds, per program: run time / runs from fdinfo; \
         xlated instructions from `bpftool prog show` (`bytes_xlated` / 8: what the \
         verifier kept). The storm's connections are all seen from their start, so (c) \
         measures the enabled level checks, with next to no message formatted.{}\n",
        env.command_line,
        env.machine,
        args.rounds,
        args.storm.command_line(),
        if foreign > 0 {
            format!(
                " {foreign} run(s) began while another tracer ran on the machine (it shares the CPUs)."
            )
        } else {
            String::new()
        }
    );
    md.push_str(&t.render());
    let (ma, mb) = (median(&a), median(&b));
    let _ = writeln!(
        md,
        "\nAll programs with logging compiled in and off: {:.0} ns per TCP connection vs \
         {:.0} compiled out ({:+.1}%); the range of (a) itself over the rounds is the \
         noise to compare with.",
        mb,
        ma,
        100.0 * (mb - ma) / ma
    );
    md
}
