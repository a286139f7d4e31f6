//! The history (section `history` of `docs/benchmarks.md`): the writer's sustained
//! rate and what it drops at 100,000 events/s, the file size per million events, and
//! `netmon history flows --since 24h` over the 10 million events it wrote.
//!
//! The load comes from `netmon/benches/history.rs` (a driver, not criterion): the real
//! `history::Writer` fed through a bounded queue as the hub feeds it. No root needed.
use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Env, proc,
    report::{Section, Table, median, met, thousands},
};
use crate::{build, exec};

const TARGET_RATE: u64 = 100_000;
const PACED_SECONDS: u64 = 10;
const QUERY_RUNS: usize = 5;

/// One run of the driver: its JSON line.
fn driver(env: &Env, args: &[&str]) -> Result<Value> {
    env.driver("history", args)
}

/// Removes a database and its WAL files, so a run starts from nothing.
pub(super) fn fresh(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        if Path::new(&p).exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {p}"))?;
        }
    }
    Ok(())
}

/// Runs the three measurements; the section and whether every target was met.
pub fn run(env: &Env, events: u64) -> Result<(Section, bool)> {
    let load = proc::load_average();
    let netmon = if env.netmon.as_os_str().is_empty() {
        build::netmon_binary()?
    } else {
        env.netmon.clone()
    };
    let dir = env.work.join("history");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paced_db = dir.join("paced.db");
    let fill_db = dir.join("fill.db");
    fresh(&paced_db)?;
    fresh(&fill_db)?;

    let paced = driver(
        env,
        &[
            "paced",
            paced_db.to_str().unwrap(),
            &TARGET_RATE.to_string(),
            &PACED_SECONDS.to_string(),
        ],
    )?;
    let fill = driver(
        env,
        &["fill", fill_db.to_str().unwrap(), &events.to_string()],
    )?;
    if fill["written"].as_u64() != Some(events) {
        bail!(
            "the fill wrote {} of {events} events: {fill}",
            fill["written"]
        );
    }
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..QUERY_RUNS {
        let started = Instant::now();
        let out = exec::output(Command::new(&netmon).args([
            "history",
            "flows",
            "--since",
            "24h",
            "--history",
            fill_db.to_str().unwrap(),
            "--format",
            "json",
        ]))?;
        times.push(started.elapsed().as_secs_f64());
        rows = out.lines().count();
    }
    let query_s = median(&times);
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let paced_ok = u(&paced, "dropped") == 0 && u(&paced, "written") == u(&paced, "offered");
    let fill_rate = f(&fill, "events_per_s");
    let rate_ok = fill_rate >= TARGET_RATE as f64 && paced_ok;
    let query_ok = query_s < 1.0;

    let mut t = Table::new(&["measurement", "result", "target", ""]);
    t.row(&[
        format!(
            "writer, paced at {} events/s for {PACED_SECONDS} s (queue {})",
            thousands(TARGET_RATE),
            thousands(u(&paced, "queue"))
        ),
        format!(
            "{} offered, {} written, {} dropped ({} batches); the writer's threads used {:.2} µs of CPU per event",
            thousands(u(&paced, "offered")),
            thousands(u(&paced, "written")),
            thousands(u(&paced, "dropped")),
            thousands(u(&paced, "batches")),
            f(&paced, "cpu_ns_per_event") / 1e3
        ),
        "nothing dropped".into(),
        met(paced_ok).into(),
    ]);
    t.row(&[
        format!(
            "writer, as fast as it takes them ({} events)",
            thousands(events)
        ),
        format!(
            "{} events/s ({:.1} s, {} batches); {} events per CPU-second of the writer's threads ({:.2} µs each)",
            thousands(fill_rate as u64),
            f(&fill, "seconds"),
            thousands(u(&fill, "batches")),
            thousands(f(&fill, "events_per_cpu_s") as u64),
            f(&fill, "cpu_ns_per_event") / 1e3
        ),
        "≥ 100,000 events/s".into(),
        met(rate_ok).into(),
    ]);
    t.row(&[
        format!(
            "`netmon history flows --since 24h` over {} events",
            thousands(events)
        ),
        format!("{:.3} s median of {QUERY_RUNS} ({rows} flow rows)", query_s),
        "< 1 s".into(),
        met(query_ok).into(),
    ]);
    t.row(&[
        "database size".to_string(),
        format!(
            "{:.0} MB per million events ({:.2} GB for {})",
            f(&fill, "bytes_per_million_events") / 1e6,
            f(&fill, "bytes") / 1e9,
            thousands(events)
        ),
        "measured".into(),
        String::new(),
    ]);
    let mut md = String::new();
    let _ = writeln!(md, "## History\n");
    let _ = writeln!(
        md,
        "The history writer (`netmon/src/history/writer.rs`) fed through a bounded queue as \
         the hub feeds it, by `netmon/benches/history.rs`: 50 processes × 20 remote services \
         (1,000 flow keys), TCP connect + close pairs with byte counts, 1 in 10 a DNS \
         transaction, 1 in 20 UDP. The paced run offers events without ever waiting, through \
         a queue of netmon's own size (`[history] queue`, {queue} events: a full queue drops, \
         as in the hub), stamped as a live stream at that rate is. The fill takes them as fast \
         as the writer does (a queue of 65,536, the producer waits), with timestamps spread \
         over the last 24 hours (the worst case for the per-minute totals: ~1,000 flow keys \
         a minute); the query runs the release `netmon` binary on the filled file.\n",
        queue = thousands(u(&paced, "queue")),
    );
    md.push_str(&t.render());
    let _ = writeln!(md);
    env.footer(&mut md, &load);
    Ok((
        Section {
            id: "history",
            markdown: md,
        },
        rate_ok && query_ok,
    ))
}
