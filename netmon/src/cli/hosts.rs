//! `netmon hosts`: prints the host inventory that the monitor persists (the JSON state
//! file, `scan.state_file`, default `/var/lib/netmon/hosts.json`). Reads only.
//!
//! `--format text`: one line per host and one indented line per port ever seen open.
//! `--format json`: JSON Lines, one inventory record per host (the state file's host
//! objects, see `docs/events.md`, "Host inventory").
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    escape::remote,
    output::Format,
    scan::{HostState, PortState, config::DEFAULT_STATE_FILE, monitor::load_state},
};

#[derive(Debug, Args)]
pub struct HostsArgs {
    /// The inventory state file (`scan.state_file` in the configuration).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_STATE_FILE)]
    pub state: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Only hosts that are up now.
    #[arg(long)]
    pub up: bool,
}

pub fn run(args: HostsArgs) -> Result<ExitCode> {
    let inv = load_state(&args.state).with_context(|| {
        format!(
            "cannot read the inventory {} (it is written by the scanner of `netmon run` once [scan] allows a network)",
            args.state.display()
        )
    })?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = (|| -> std::io::Result<()> {
        for h in inv.hosts().filter(|h| !args.up || h.state == HostState::Up) {
            match args.format {
                Format::Json => {
                    serde_json::to_writer(&mut out, h)?;
                    out.write_all(b"\n")?;
                }
                Format::Text => {
                    let state = if h.state == HostState::Up {
                        "up"
                    } else {
                        "down"
                    };
                    let seen = h.last_seen.map_or("never".to_owned(), |t| {
                        t.format("%Y-%m-%d %H:%M:%S").to_string()
                    });
                    write!(
                        out,
                        "{:<39} {state:<4} last seen {seen}",
                        h.addr.to_string()
                    )?;
                    if let Some(n) = &h.name {
                        write!(out, " name={}", remote(n))?;
                    }
                    if let Some(m) = &h.mac {
                        write!(out, " mac={}", remote(m))?;
                    }
                    if let Some(o) = &h.os_hint {
                        write!(out, " os={}", remote(o))?;
                    }
                    writeln!(out)?;
                    for (k, p) in &h.ports {
                        let st = if p.state == PortState::Open {
                            "open"
                        } else {
                            "closed"
                        };
                        writeln!(
                            out,
                            "    {k:<10} {st:<6} {} {}",
                            remote(p.service.as_deref().unwrap_or("unknown")),
                            remote(p.version.as_deref().unwrap_or(""))
                        )?;
                    }
                }
            }
        }
        out.flush()
    })();
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the inventory")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
