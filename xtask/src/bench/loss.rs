//! Loss under pressure: the same storm against netmon with a deliberately small ring
//! buffer and a consumer that stops reading for a while (SIGSTOP / SIGCONT in the middle
//! of the storm). The `lost` counters of netmon's final `stats` must equal the storm's
//! events generated minus those received, in total and per type.
//!
//! `lost` counts every reservation that failed, whoever caused the event, so another
//! process's lost connections on the machine would add to it; the table shows how many
//! events of other processes netmon received during each run as a hint of such traffic.
use std::{fmt::Write as _, thread, time::Duration};

use anyhow::Result;

use super::{
    Env, proc,
    report::{Section, Table, met, thousands},
    storm::{self, StormConfig},
    tracer::{self, Tracer},
};

const DRAIN: Duration = Duration::from_secs(1);
const KINDS: &[&str] = &["connect", "accept", "close", "listen", "udp"];

pub struct LossArgs {
    pub runs: u32,
    pub storm: StormConfig,
    pub ring_buffer_kib: u32,
    /// How long netmon is stopped in the middle of each storm; zero for never.
    pub pause: Duration,
    /// Longest wait for other tracers on the machine to finish before each run.
    pub quiet_wait: Duration,
}

struct Run {
    generated: u64,
    received: u64,
    lost: u64,
    /// Per type: generated − received, and lost.
    by_type: Vec<(&'static str, i64, u64)>,
    other: u64,
    recursion_misses: u64,
    exact_storm: bool,
    /// Other tracers running when the run started.
    foreign: usize,
}

impl Run {
    fn gap(&self) -> i64 {
        self.generated as i64 - self.received as i64
    }

    fn exact(&self) -> bool {
        self.gap() == self.lost as i64 && self.by_type.iter().all(|(_, g, l)| *g == *l as i64)
    }

    /// Events neither received nor counted as lost.
    fn unaccounted(&self) -> i64 {
        self.gap() - self.lost as i64
    }

    /// Every unaccounted event can be one of the tracepoint runs the kernel skipped.
    fn explained_by_misses(&self) -> bool {
        (0..=self.recursion_misses as i64).contains(&self.unaccounted())
    }
}

fn flags(args: &LossArgs) -> Vec<String> {
    vec!["--ring-buffer-kib".into(), args.ring_buffer_kib.to_string()]
}

pub fn run(env: &Env, args: &LossArgs) -> Result<Section> {
    let load = proc::load_average();
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        eprintln!("bench loss: run {i}/{}", args.runs);
        let foreign = proc::wait_for_quiet(args.quiet_wait);
        let mut r = one(env, args)?;
        r.foreign = foreign;
        eprintln!(
            "bench loss:   generated {} received {} lost (stats) {}{}",
            r.generated,
            r.received,
            r.lost,
            if r.exact() {
                " — exact"
            } else {
                " — NOT exact"
            }
        );
        runs.push(r);
        thread::sleep(Duration::from_secs(1));
    }
    Ok(Section {
        id: "loss",
        markdown: render(env, args, &runs, &load),
    })
}

fn one(env: &Env, args: &LossArgs) -> Result<Run> {
    let output = env.work.join("loss-netmon.json");
    let tracer = Tracer::netmon(&env.netmon, env.netmon_nice, &output, &flags(args))?;
    let running = storm::spawn(&env.storm, &args.storm)?;
    if !args.pause.is_zero() {
        let storm_time = Duration::from_millis(args.storm.duration_ms);
        thread::sleep(storm_time.saturating_sub(args.pause) / 2);
        tracer.pause(true);
        thread::sleep(args.pause);
        tracer.pause(false);
    }
    let storm = running.finish()?;
    thread::sleep(DRAIN);
    let recursion_misses = tracer.recursion_misses();
    tracer.stop()?;
    let c = tracer::count_netmon(&output, &storm)?;
    let by_type = KINDS
        .iter()
        .map(|k| {
            let generated = storm.events.get(*k).copied().unwrap_or(0) as i64;
            let received = c.storm.get(*k).copied().unwrap_or(0) as i64;
            (
                *k,
                generated - received,
                c.lost_by_type.get(*k).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(Run {
        generated: storm.events_total,
        received: c.storm_total(),
        lost: c.lost.unwrap_or(0),
        by_type,
        other: c.other,
        recursion_misses,
        exact_storm: storm.exact,
        foreign: 0,
    })
}

fn render(env: &Env, args: &LossArgs, runs: &[Run], load_before: &str) -> String {
    let mut t = Table::new(&[
        "run",
        "generated",
        "received",
        "generated − received",
        "`lost` in final stats",
        "equal",
        "per type: gap / lost",
        "other processes' events received",
        "unaccounted (gap − lost)",
        "tracepoint runs skipped (`recursion_misses`)",
        "unaccounted ≤ skipped",
        "other tracers running",
    ]);
    for (i, r) in runs.iter().enumerate() {
        let per_type = r
            .by_type
            .iter()
            .map(|(k, g, l)| format!("{k} {g}/{l}"))
            .collect::<Vec<_>>()
            .join(", ");
        t.row(&[
            (i + 1).to_string(),
            thousands(r.generated),
            thousands(r.received),
            thousands(r.gap().max(0) as u64),
            thousands(r.lost),
            if r.exact() { "yes" } else { "**no**" }.to_string(),
            per_type,
            thousands(r.other),
            r.unaccounted().to_string(),
            thousands(r.recursion_misses),
            if r.explained_by_misses() { "yes" } else { "no" }.to_string(),
            r.foreign.to_string(),
        ]);
    }
    let exact = runs.iter().filter(|r| r.exact()).count();
    let mut md = String::new();
    let _ = writeln!(md, "## 2. Loss under pressure\n");
    let _ = writeln!(
        md,
        "The storm against netmon with `--ring-buffer-kib {}`{}. `generated` is what the storm \
         made the kernel emit (per TCP connection connect + accept + 2 close, one listen per \
         listener, one udp per port), `received` what netmon wrote for the storm's namespace \
         and pid.\n",
        args.ring_buffer_kib,
        if args.pause.is_zero() {
            String::new()
        } else {
            format!(
                ", netmon stopped (SIGSTOP) for {} ms in the middle of each storm",
                args.pause.as_millis()
            )
        }
    );
    md.push_str(&t.render());
    let _ = writeln!(
        md,
        "\n**Target**: losses are reported exactly (`stats.lost` = generated − received, in \
         total and per type): {} ({exact} of {} runs).",
        met(exact == runs.len() && !runs.is_empty()),
        runs.len()
    );
    let explained = runs.iter().filter(|r| r.explained_by_misses()).count();
    let _ = writeln!(
        md,
        "\nEvents neither received nor counted in `lost` are no more than the runs of \
         netmon's tracepoint program that the kernel skipped in {explained} of {} runs \
         (`recursion_misses` in the program's fdinfo: a softirq reached the CPU while a BPF \
         tracing program was running there, so the kernel dropped the nested run before it \
         started; a skipped run loses the event that transition would have made, if any). \
         netmon's `stats` do not report skipped runs yet.",
        runs.len()
    );
    if runs.iter().any(|r| !r.exact_storm) {
        let _ = writeln!(
            md,
            "\n*Some storms had failed connections or unsettled sockets: their generated counts \
             are not exact.*"
        );
    }
    let _ = writeln!(md, "\n**Commands**\n\n```sh\n{}", env.command_line);
    let _ = writeln!(md, "# each run:");
    let _ = writeln!(
        md,
        "{}target/release/netmon {} &",
        env.nice_prefix(),
        tracer::netmon_args(&env.work.join("loss-netmon.json"), &flags(args))
            .join(" ")
            .replace(&env.root_prefix(), "")
    );
    let _ = writeln!(md, "{}", args.storm.command_line());
    let _ = writeln!(md, "```\n\n**Machine**\n");
    md.push_str(&env.machine);
    let _ = writeln!(
        md,
        "- load average when this section started: {load_before}"
    );
    let _ = writeln!(md, "- load average when it ended: {}", proc::load_average());
    md
}
