//! The metrics consumer's cost (section `metrics` of `docs/benchmarks.md`): what the
//! `metrics` hub subscription adds to the event loop per event, and how long a scrape of
//! the full label set takes.
//!
//! The load comes from `netmon/benches/metrics.rs` (a driver, not criterion): the real
//! hub with a draining sink, with and without the real metrics consumer, rounds
//! interleaved; the emitting thread's CPU time. No root needed.
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    Env, proc,
    report::{Section, Table, met, thousands},
};

/// What the issue allows: ns per event the metrics consumer adds to the event loop.
const TARGET_NS: f64 = 50.0;
/// And a scrape of the full label set.
const TARGET_SCRAPE_MS: f64 = 50.0;

/// Runs the driver; the section and whether both targets were met.
pub fn run(env: &Env, events: u64, rounds: u32) -> Result<(Section, bool)> {
    let load = proc::load_average();
    let v = env.driver("metrics", [events.to_string(), rounds.to_string()])?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let rounds_of = |k: &str| -> String {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:.0}", x.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let added = f("metrics_add_ns");
    let scrape = f("scrape_ms");
    let (added_ok, scrape_ok) = (added <= TARGET_NS, scrape < TARGET_SCRAPE_MS);

    let mut t = Table::new(&["measurement", "result", "target", ""]);
    t.row(&[
        "event loop, sink only (ns per event, CPU of the emitting thread)".to_string(),
        format!(
            "{:.0} (rounds: {})",
            f("sink_only_ns"),
            rounds_of("sink_only_rounds")
        ),
        String::new(),
        String::new(),
    ]);
    t.row(&[
        "event loop, sink + metrics consumer".to_string(),
        format!(
            "{:.0} (rounds: {})",
            f("with_metrics_ns"),
            rounds_of("with_metrics_rounds")
        ),
        String::new(),
        String::new(),
    ]);
    t.row(&[
        "what the metrics consumer adds per event".to_string(),
        format!("{added:.0} ns"),
        format!("≤ {TARGET_NS:.0} ns"),
        met(added_ok).into(),
    ]);
    t.row(&[
        format!(
            "scrape of the full label set ({} series, host statistics included)",
            v["series"].as_u64().unwrap_or(0)
        ),
        format!("{scrape:.2} ms (median of 20)"),
        format!("< {TARGET_SCRAPE_MS:.0} ms"),
        met(scrape_ok).into(),
    ]);
    let mut md = String::new();
    let _ = writeln!(md, "## Metrics\n");
    let _ = writeln!(
        md,
        "`netmon/benches/metrics.rs`: {} events (connect and close pairs of 500 exe names to \
         10,000 peers) emitted through the real hub with a draining sink, alone and with the \
         real `metrics` consumer (its queue, its thread applying `Families::observe`), {} \
         interleaved rounds, medians. The hub hands events over once per step of at most 1,024 \
         ring records, as `netmon run` does. Then `Metrics::render` after the whole stream.\n",
        thousands(events),
        rounds
    );
    md.push_str(&t.render());
    let _ = writeln!(md);
    env.footer(&mut md, &load);
    Ok((
        Section {
            id: "metrics",
            markdown: md,
        },
        added_ok && scrape_ok,
    ))
}
