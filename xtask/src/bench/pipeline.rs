//! Userspace pipeline: runs the criterion benchmark `netmon/benches/pipeline.rs`
//! (decode → stages → JSON over a recorded stream of raw `ConnEvent` records, timed in
//! thread CPU time) and reads criterion's estimates back into a table.
use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    Env, proc,
    report::{Section, Table, met, thousands},
};
use crate::exec;

/// Benchmarks of the `pipeline` group and what each covers.
const BENCHES: &[(&str, &str)] = &[
    ("decode", "decode: raw record → `Event`"),
    ("render_json", "JSON: `Event` → JSON line (the real `Sink`)"),
    (
        "pipeline",
        "whole pipeline: decode → enrich (flow table, process cache, DNS names) → rules → JSON",
    ),
    (
        HANDWRITTEN,
        "*proposal, not in netmon*: JSON by a hand-written writer for connection events \
         (same bytes, checked against serde_json over the stream)",
    ),
];

/// The proposal's benchmark: skipped by the bench when it no longer matches serde_json.
const HANDWRITTEN: &str = "render_json_handwritten";

const TARGET_EVENTS_PER_S: f64 = 1_000_000.0;

pub fn run(env: &Env) -> Result<Section> {
    let load = proc::load_average();
    let started = std::time::SystemTime::now();
    // criterion's own report goes to stderr: stdout carries only the markdown.
    exec::run(
        Command::new("cargo")
            .args(["bench", "-p", "netmon", "--bench", "pipeline"])
            .current_dir(&env.root)
            .stdout(std::io::stderr()),
    )?;
    let handwritten_ran = ran_now(
        &env.root
            .join("target/criterion/pipeline")
            .join(HANDWRITTEN)
            .join("new"),
        started,
    );
    let instructions = instructions_per_event(env, handwritten_ran)?;
    let mut t = Table::new(&[
        "benchmark",
        "events per iteration",
        "CPU time per event (median)",
        "events/s on one core",
        "instructions per event (cachegrind)",
        "target ≥ 1,000,000/s",
    ]);
    let mut pipeline_rate = None;
    for (id, what) in BENCHES {
        let dir = env
            .root
            .join("target/criterion/pipeline")
            .join(id)
            .join("new");
        if *id == HANDWRITTEN && !ran_now(&dir, started) {
            t.row(&[
                what.to_string(),
                "skipped: no longer matches serde_json for the current event types".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        let (events, ns_per_iter) = read_estimate(&dir)?;
        let per_event = ns_per_iter / events as f64;
        let rate = 1e9 / per_event;
        if *id == "pipeline" {
            pipeline_rate = Some(rate);
        }
        t.row(&[
            what.to_string(),
            thousands(events),
            format!("{per_event:.0} ns"),
            thousands(rate as u64),
            instructions
                .iter()
                .find(|(pass, _)| pass == id)
                .map(|(_, n)| thousands(*n as u64))
                .unwrap_or_else(|| "–".into()),
            if *id == "pipeline" {
                met(rate >= TARGET_EVENTS_PER_S).to_string()
            } else {
                String::new()
            },
        ]);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## 3. Userspace pipeline\n");
    let _ = writeln!(
        md,
        "In-process, one thread, over a recorded stream of realistic raw `ConnEvent` records \
         (a web server's mix: accepts from many clients, 10% IPv6, outbound connects, closes \
         matching them, DNS over UDP, listeners, closes of flows older than netmon). \
         criterion with the thread's CPU time as its clock (`CLOCK_THREAD_CPUTIME_ID`), so \
         that other work on this shared machine does not count; medians of 100 samples. \
         Instructions per event come from running each benchmark's body under \
         `valgrind --tool=cachegrind` (`NETMON_PIPELINE_PASS`): exact and repeatable, so \
         they are what to compare before and after a change.\n"
    );
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
        "\n**Commands**\n\n```sh\n{}\n# which runs:\ncargo bench -p netmon --bench pipeline\n```\n",
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

/// Instructions per event of each benchmark body, counted by cachegrind (empty when
/// valgrind is not installed): a pass over the stream minus the `setup` pass.
/// The proposal's pass is left out when its benchmark was skipped (`handwritten_ran`).
fn instructions_per_event(env: &Env, handwritten_ran: bool) -> Result<Vec<(String, f64)>> {
    if !exec::on_path("valgrind") {
        eprintln!("bench pipeline: valgrind not found, no instruction counts");
        return Ok(Vec::new());
    }
    let exe = bench_executable(env)?;
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
        Ok((refs, per_run.context("the pass printed no event count")?))
    };
    let (setup, _) = count("setup")?;
    let mut out = Vec::new();
    for (id, _) in BENCHES {
        if *id == HANDWRITTEN && !handwritten_ran {
            continue;
        }
        let (refs, events) = count(id)?;
        out.push((
            id.to_string(),
            refs.saturating_sub(setup) as f64 / events as f64,
        ));
    }
    Ok(out)
}

/// The pipeline benchmark's executable, from cargo's JSON messages.
fn bench_executable(env: &Env) -> Result<std::path::PathBuf> {
    let messages = exec::output(
        Command::new("cargo")
            .args([
                "bench",
                "-p",
                "netmon",
                "--bench",
                "pipeline",
                "--no-run",
                "--message-format=json",
            ])
            .current_dir(&env.root),
    )?;
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "pipeline")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
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
