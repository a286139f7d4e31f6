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
    event::EventBody,
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
    let mut input = input;
    let mut buf = Vec::with_capacity(4096);
    let mut number = 0u64;
    while let Some(fits) =
        next_line(&mut input, &mut buf).with_context(|| format!("reading {name}"))?
    {
        number += 1;
        let why = match (fits, std::str::from_utf8(&buf)) {
            (false, _) => Some(format!("longer than {MAX_LINE} bytes")),
            (true, Err(e)) => Some(format!("not UTF-8 ({e})")),
            (true, Ok(line)) if line.trim().is_empty() => continue,
            (true, Ok(line)) => match crate::event::read::from_json(line) {
                Ok(event) => {
                    if matches!(event.body, EventBody::Alert(_)) {
                        continue;
                    }
                    events += 1;
                    detector.check(&event, &mut alerts);
                    None
                }
                Err(e) => Some(format!("not an event: {e}")),
            },
        };
        if let Some(why) = why {
            bad += 1;
            if bad <= 5 {
                crate::eline!("netmon: warning: {name}:{number}: skipped, {why}");
            }
            continue;
        }
        for a in alerts.drain(..) {
            fired += 1;
            written(sink.write(&a), "alerts")?;
        }
    }
    written(sink.flush(), "alerts")?;
    crate::eline!(
        "netmon: replayed {events} events from {name}: {fired} alerts, {bad} lines skipped"
    );
    Ok(if fired > 0 {
        ExitCode::from(EXIT_FINDING)
    } else {
        ExitCode::SUCCESS
    })
}

/// The longest line read as an event; a longer one is skipped (and counted) without
/// being held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// Reads the next line (without its newline) into `buf`, keeping at most [`MAX_LINE`]
/// bytes: `None` at the end of the input, `Some(false)` when the line was longer (its
/// bytes are discarded), `Some(true)` otherwise. Bytes are not decoded here, so a line
/// that is not UTF-8 is the caller's to skip.
fn next_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut fits) = (false, true);
    loop {
        let avail = match input.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if fits {
            if buf.len() + chunk.len() > MAX_LINE {
                fits = false;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        input.consume(used);
        if done {
            return Ok(Some(fits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_not_decoded() {
        let mut data: Vec<u8> = b"one\n\xff\xfe\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend_from_slice(b"\nlast");
        let mut input = io::BufReader::with_capacity(7, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"one");
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"\xff\xfe");
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(false));
        assert!(buf.is_empty());
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        assert_eq!(next_line(&mut input, &mut buf).unwrap(), None);
    }
}
