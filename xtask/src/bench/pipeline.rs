//! Userspace pipeline: runs the criterion benchmark `netmon/benches/pipeline.rs`
//! (decode → stages → JSON over a recorded stream of raw `ConnEvent` records, timed in
//! thread CPU time) and reads criterion's estimates back into a table, with each
//! benchmark body's instructions per event counted by cachegrind.
//!
//! With a baseline (`--pipeline-baseline REV`, e.g. `main`), the same benchmark of that
//! revision's code is built from `git archive REV` in `target/bench/pipeline-baseline`
//! (sharing this tree's target directory, so only netmon itself is built again) and
//! measured in the same run, before the code under test: the table then shows before
//! and after side by side.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Env, proc,
    report::{Section, Table, met, thousands},
};
use crate::exec;

/// Benchmarks of the `pipeline` group and what each covers.
const BENCHES: &[(&str, &str)] = &[
    ("decode", "decode: raw record → `Event`"),
    (
        "render_json",
        "JSON: `Event` → JSON line (the real `Sink`; hand-written for the hot types)",
    ),
    (
        "pipeline",
        "whole pipeline: decode → enrich (flow table, process cache, DNS names) → rules → JSON",
    ),
];

const TARGET_EVENTS_PER_S: f64 = 1_000_000.0;

/// One build of the benchmark: where it runs and where criterion writes.
struct Build {
    /// The workspace the benchmark is built in.
    dir: PathBuf,
    /// criterion's output directory (`CRITERION_HOME`).
    criterion: PathBuf,
    /// The shared target directory, when not the workspace's own.
    target_dir: Option<PathBuf>,
}

impl Build {
    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.args(args)
            .current_dir(&self.dir)
            .env("CRITERION_HOME", &self.criterion);
        if let Some(t) = &self.target_dir {
            cmd.env("CARGO_TARGET_DIR", t);
        }
        cmd
    }
}

/// What one build measured, per benchmark id: (events, ns per event, instructions per
/// event).
type Figures = Vec<(&'static str, u64, f64, Option<f64>)>;

pub fn run(env: &Env, baseline: Option<&str>) -> Result<Section> {
    let load = proc::load_average();
    let current = Build {
        dir: env.root.clone(),
        criterion: env.root.join("target/criterion"),
        target_dir: None,
    };
    let base = match baseline {
        Some(rev) => Some((rev, resolve(env, rev)?, baseline_build(env, rev)?)),
        None => None,
    };
    let before = match &base {
        Some((_, _, b)) => Some(measure(b)?),
        None => None,
    };
    let after = measure(&current)?;

    let mut header = vec!["benchmark", "events per iteration"];
    if before.is_some() {
        header.extend([
            "CPU time per event, before",
            "after",
            "events/s on one core, before",
            "after",
            "instructions per event (cachegrind), before",
            "after",
            "instructions after / before",
        ]);
    } else {
        header.extend([
            "CPU time per event (median)",
            "events/s on one core",
            "instructions per event (cachegrind)",
        ]);
    }
    header.push("target ≥ 1,000,000/s");
    let mut t = Table::new(&header);
    let mut pipeline_rate = None;
    for (id, what) in BENCHES {
        let Some(&(_, events, ns, instr)) = after.iter().find(|f| f.0 == *id) else {
            continue;
        };
        let rate = 1e9 / ns;
        if *id == "pipeline" {
            pipeline_rate = Some(rate);
        }
        let instr_text = |i: Option<f64>| i.map_or_else(|| "–".into(), |n| thousands(n as u64));
        let mut row = vec![what.to_string(), thousands(events)];
        match before.as_ref().and_then(|b| b.iter().find(|f| f.0 == *id)) {
            Some(&(_, _, bns, binstr)) => row.extend([
                format!("{bns:.0} ns"),
                format!("{ns:.0} ns"),
                thousands((1e9 / bns) as u64),
                thousands(rate as u64),
                instr_text(binstr),
                instr_text(instr),
                match (binstr, instr) {
                    (Some(b), Some(a)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".into(),
                },
            ]),
            None if before.is_some() => row.extend([
                "–".into(),
                format!("{ns:.0} ns"),
                "–".into(),
                thousands(rate as u64),
                "–".into(),
                instr_text(instr),
                "–".into(),
            ]),
            None => row.extend([
                format!("{ns:.0} ns"),
                thousands(rate as u64),
                instr_text(instr),
            ]),
        }
        row.push(if *id == "pipeline" {
            met(rate >= TARGET_EVENTS_PER_S).to_string()
        } else {
            String::new()
        });
        t.row(&row);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## 3. Userspace pipeline\n");
    let _ = writeln!(
        md,
        "In-process, one thread, over a recorded stream of realistic raw `ConnEvent` records \
         (a web server's mix: accepts from many clients, 10% IPv6, outbound connects, closes \
         matching them, DNS over UDP, listeners, closes of flows older than netmon), through \
         netmon's real stages: decode, the flow table, the process-context cache, DNS names, \
         the rules, the JSON sink (to nowhere). criterion with the thread's CPU time as its \
         clock (`CLOCK_THREAD_CPUTIME_ID`), so that other work on this shared machine does \
         not count; medians of 100 samples. Instructions per event come from running each \
         benchmark's body under `valgrind --tool=cachegrind` (`NETMON_PIPELINE_PASS`): exact \
         and repeatable, so they are what to compare before and after a change. The sink's \
         bytes are checked against serde_json's over the whole stream before anything is \
         measured.\n"
    );
    if let Some((rev, hash, _)) = &base {
        let _ = writeln!(
            md,
            "*Before* is `{rev}` (`{hash}`), built from `git archive` and measured in the same \
             run, just before *after* (the code under test).\n"
        );
    }
    md.push_str(&t.render());
    if let Some(rate) = pipeline_rate {
        let _ = writeln!(
            md,
            "\n**Target** ≥ 1,000,000 events/s on one core for the whole pipeline: {} ({} events/s).",
            met(rate >= TARGET_EVENTS_PER_S),
            thousands(rate as u64)
        );
    }
    let _ = writeln!(
        md,
        "\n**Commands**\n\n```sh\n{}\n# which runs, for each build:\ncargo bench -p netmon --bench pipeline\n```\n",
        env.command_line
    );
    let _ = writeln!(md, "**Machine**\n");
    md.push_str(&env.machine);
    let _ = writeln!(md, "- load average when this section started: {load}");
    let _ = writeln!(md, "- load average when it ended: {}", proc::load_average());
    Ok(Section {
        id: "pipeline",
        markdown: md,
    })
}

/// Runs criterion, then the cachegrind passes, of one build.
fn measure(build: &Build) -> Result<Figures> {
    // The baseline shares the workspace's target directory, and cargo names and
    // fingerprints workspace members by paths relative to their workspace: without
    // this, whichever build ran second found the first one's netmon "fresh" and
    // measured it again (both columns were the baseline's).
    exec::run(&mut build.cargo(&["clean", "--release", "-p", "netmon", "-p", "netmon-common"]))?;
    let started = std::time::SystemTime::now();
    // criterion's own report goes to stderr: stdout carries only the markdown.
    exec::run(
        build
            .cargo(&["bench", "-p", "netmon", "--bench", "pipeline"])
            .stdout(std::io::stderr()),
    )?;
    let instructions = instructions_per_event(build)?;
    let mut out = Vec::new();
    for (id, _) in BENCHES {
        let dir = build.criterion.join("pipeline").join(id).join("new");
        if !ran_now(&dir, started) {
            // A baseline older than a benchmark does not have it.
            continue;
        }
        let (events, ns_per_iter) = read_estimate(&dir)?;
        let instr = instructions
            .iter()
            .find(|(pass, _)| pass == id)
            .map(|(_, n)| *n);
        out.push((*id, events, ns_per_iter / events as f64, instr));
    }
    if !out.iter().any(|f| f.0 == "pipeline") {
        bail!(
            "criterion wrote no figures for pipeline/pipeline under {}",
            build.criterion.display()
        );
    }
    Ok(out)
}

/// The commit `rev` names.
fn resolve(env: &Env, rev: &str) -> Result<String> {
    let out = exec::output(
        Command::new("git")
            .args(["rev-parse", "--short=12", "--verify"])
            .arg(format!("{rev}^{{commit}}"))
            .current_dir(&env.root),
    )
    .with_context(|| {
        format!("--pipeline-baseline {rev} names no commit: give a branch or commit")
    })?;
    Ok(out.trim().to_string())
}

/// `rev`'s tree, unpacked afresh into `target/bench/pipeline-baseline`.
fn baseline_build(env: &Env, rev: &str) -> Result<Build> {
    let dir = env.work.join("pipeline-baseline");
    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("cannot clear {}", src.display()))?;
    }
    fs::create_dir_all(&src).with_context(|| format!("cannot create {}", src.display()))?;
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", rev])
        .current_dir(&env.root)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.take().context("git archive has no stdout")?)
        .status()
        .context("cannot start tar")?;
    let git = archive.wait().context("git archive")?;
    if !git.success() || !tar.success() {
        bail!("cannot unpack `git archive {rev}` into {}", src.display());
    }
    Ok(Build {
        dir: src,
        criterion: dir.join("criterion"),
        target_dir: Some(env.root.join("target")),
    })
}

/// Instructions per event of each benchmark body, counted by cachegrind (empty when
/// valgrind is not installed): a pass over the stream minus the `setup` pass.
fn instructions_per_event(build: &Build) -> Result<Vec<(String, f64)>> {
    if !exec::on_path("valgrind") {
        eprintln!("bench pipeline: valgrind not found, no instruction counts");
        return Ok(Vec::new());
    }
    let exe = bench_executable(build)?;
    let count = |pass: &str| -> Result<(u64, u64)> {
        let out = exec::capture(
            Command::new("valgrind")
                .args([
                    "--tool=cachegrind",
                    "--cache-sim=no",
                    "--cachegrind-out-file=/dev/null",
                ])
                .arg(&exe)
                .env("NETMON_PIPELINE_PASS", pass),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the {pass} pass under cachegrind failed ({}): {stderr}",
                out.status
            );
        }
        let refs = stderr
            .lines()
            .find_map(|l| {
                l.split_once("I refs:")
                    .or_else(|| l.split_once("I   refs:"))
            })
            .map(|(_, n)| n.trim().replace(',', ""))
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("no instruction count from cachegrind: {stderr}"))?;
        // "N events per pass, P passes"
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let events = words.first().and_then(|n| n.parse::<u64>().ok());
        let passes = words.get(4).and_then(|n| n.parse::<u64>().ok());
        let per_run = events.zip(passes).map(|(e, p)| e * p);
        Ok((
            refs,
            per_run.with_context(|| format!("the {pass} pass printed no event count: {stdout}"))?,
        ))
    };
    let (setup, _) = count("setup")?;
    let mut out = Vec::new();
    for (id, _) in BENCHES {
        let (refs, events) = count(id)?;
        out.push((
            id.to_string(),
            refs.saturating_sub(setup) as f64 / events as f64,
        ));
    }
    Ok(out)
}

/// The pipeline benchmark's executable, from cargo's JSON messages.
fn bench_executable(build: &Build) -> Result<PathBuf> {
    let messages = exec::output(&mut build.cargo(&[
        "bench",
        "-p",
        "netmon",
        "--bench",
        "pipeline",
        "--no-run",
        "--message-format=json",
    ]))?;
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "pipeline")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for the pipeline benchmark")
}

/// Whether criterion wrote this benchmark's estimates during this run.
fn ran_now(dir: &Path, started: std::time::SystemTime) -> bool {
    fs::metadata(dir.join("estimates.json"))
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= started)
}

/// Elements per iteration and the median time per iteration (ns) of one benchmark.
fn read_estimate(dir: &Path) -> Result<(u64, f64)> {
    let read = |name: &str| -> Result<Value> {
        let path = dir.join(name);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    let bench = read("benchmark.json")?;
    let estimates = read("estimates.json")?;
    let events = bench["throughput"]["Elements"]
        .as_u64()
        .context("benchmark.json declares no element throughput")?;
    let median = estimates["median"]["point_estimate"]
        .as_f64()
        .context("estimates.json has no median")?;
    Ok((events, median))
}
