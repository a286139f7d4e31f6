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
        "whole pipeline: decode → stages → JSON (stages: none yet; flow table and rules join here)",
    ),
];

const TARGET_EVENTS_PER_S: f64 = 1_000_000.0;

pub fn run(env: &Env) -> Result<Section> {
    let load = proc::load_average();
    exec::run(
        Command::new("cargo")
            .args(["bench", "-p", "netmon", "--bench", "pipeline"])
            .current_dir(&env.root),
    )?;
    let mut t = Table::new(&[
        "benchmark",
        "events per iteration",
        "CPU time per event (median)",
        "events/s on one core",
        "target ≥ 1,000,000/s",
    ]);
    let mut pipeline_rate = None;
    for (id, what) in BENCHES {
        let dir = env
            .root
            .join("target/criterion/pipeline")
            .join(id)
            .join("new");
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
         that other work on this shared machine does not count; medians of 100 samples.\n"
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
