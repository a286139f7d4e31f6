//! `netmon replay FILE.jsonl`: the detection rules over a recorded event stream, offline.
//!
//! The input is what `netmon run` writes. Alerts in it (from the recording run) are
//! ignored; lines that are not events are reported (file and line) and skipped, so one
//! bad line never hides the alerts of the valid events around it.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::Args;

use super::{ConfigArgs, EXIT_FINDING};
use crate::{
    event::{Event, EventBody},
    output::{Format, Sink, written},
    pipeline::detect::Detector,
    rules::NoResolver,
};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// JSON Lines recorded by `netmon run` (`-` reads stdin).
    pub file: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output format of the alerts: `json` (JSON Lines) or `text`.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

pub fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let config = args.config.load()?;
    let name = args.file.display().to_string();
    let input: Box<dyn BufRead> = if name == "-" {
        Box::new(BufReader::new(io::stdin()))
    } else {
        let f = File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
        Box::new(BufReader::new(f))
    };
    // The recording already has its `dns` events and names: only the rules run.
    let mut detector = Detector::new(&config.rules, Box::new(NoResolver));
    let mut sink = Sink::stdout(args.format);
    let mut alerts = Vec::new();
    let (mut events, mut bad, mut fired) = (0u64, 0u64, 0u64);
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                bad += 1;
                if bad <= 5 {
                    eprintln!(
                        "netmon: warning: {name}:{}: not an event, skipped: {e}",
                        i + 1
                    );
                }
                continue;
            }
        };
        if matches!(event.body, EventBody::Alert(_)) {
            continue;
        }
        events += 1;
        detector.check(&event, &mut alerts);
        for a in alerts.drain(..) {
            fired += 1;
            written(sink.write(&a), "alerts")?;
        }
    }
    written(sink.flush(), "alerts")?;
    eprintln!("netmon: replayed {events} events from {name}: {fired} alerts, {bad} lines skipped");
    Ok(if fired > 0 {
        ExitCode::from(EXIT_FINDING)
    } else {
        ExitCode::SUCCESS
    })
}
