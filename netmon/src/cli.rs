//! Command-line interface: parses flags (clap derive; doc comments are the help text),
//! dispatches to one module per subcommand, and turns errors into one line on stderr
//! and an exit code (0 ok, 1 a finding, 2 an error), ripgrep-style.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

pub mod doctor;
pub mod history;
pub mod history_agent;
pub mod hosts;
pub mod replay;
pub mod report;
pub mod rules;
pub mod run;
pub mod scan;
pub mod snapshot;
pub mod token;
pub mod top;

/// Linux network monitor: traces every TCP and UDP connection with eBPF and tells you
/// which process made it.
#[derive(Debug, Parser)]
#[command(name = "netmon", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace connections live and stream them as JSON Lines (default) or text.
    ///
    /// Needs root. Stops on SIGINT/SIGTERM, detaching every program and writing a
    /// final `stats` line. With a `[scan]` section that allows networks (see
    /// docs/scan.md), also discovers and port-scans the peers that flows reveal inside
    /// them and writes `host_up`, `host_down`, `port_opened`, `port_closed` and
    /// `service_changed` events; nothing is scanned otherwise.
    Run(run::RunArgs),
    /// One-shot report of every current TCP/UDP socket and listener with its processes,
    /// checked by the detection rules of the configuration (all but DNS_TUNNELING).
    ///
    /// Exit code 0 when no rule raised a high or critical alert, 1 when one did, 2 on error.
    Snapshot(snapshot::SnapshotArgs),
    /// Run the detection rules offline over a recorded event stream and print the alerts.
    ///
    /// Reads the JSON Lines `netmon run` writes. Exit status: 0 no alert, 1 alerts, 2 error.
    Replay(replay::ReplayArgs),
    /// Show the effective detection rules, or check a configuration file.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Check what this kernel offers netmon (BTF, kprobes, fentry, tracepoints, cgroup
    /// v2, …), which hooks `auto` would pick, and how to fix what is missing.
    ///
    /// Exits 0 when netmon can run, 1 when it cannot.
    Doctor(doctor::DoctorArgs),
    /// Discover hosts, scan their ports and name their services (an nmap-like scanner).
    ///
    /// Refuses public addresses unless --allow-public. Needs no privilege; as root it
    /// uses raw sockets for ICMP discovery and a SYN scan.
    Scan(scan::ScanArgs),
    /// Print the host inventory that the scanner in `netmon run` keeps.
    Hosts(hosts::HostsArgs),
    /// Query the history that `netmon run` keeps: events, flows, alerts, hosts.
    ///
    /// Opens the file read-only: works while `netmon run` writes, and for any user who
    /// can read it. See docs/history.md.
    #[command(subcommand)]
    History(history::What),
    /// Write a report to keep or send: one self-contained HTML page (or a CSV table)
    /// of the current sockets, or of the history over a window (`--since 24h`), with
    /// alerts, connections, processes, remote hosts with country/ASN, listening ports,
    /// the scanner's inventory and DNS names. See docs/report.md.
    Report(report::ReportArgs),
    /// A live terminal UI (top-like): processes, connections, hosts, DNS, alerts and
    /// interfaces, from the local agent, from several (`--agent URL`, repeatable), or
    /// traced in-process when none runs and it is root (`sudo netmon top`).
    ///
    /// Keys: Tab switches views, `s` sorts, `/` filters, `p` pauses, `?` helps, `q`
    /// quits. NO_COLOR turns colours off. See docs/top.md.
    Top(top::TopArgs),
    /// Print the bearer token of `netmon run`'s HTTP API (made when missing), or
    /// replace it with `--rotate`. See docs/api.md.
    Token(token::TokenArgs),
}

/// `--config`, shared by every subcommand that reads the configuration file.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML, see docs/config.md). Without it netmon reads
    /// /etc/netmon/netmon.toml when that file exists, else uses the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<crate::config::Config> {
        let (config, _) = crate::config::load(self.config.as_deref())?;
        Ok(config)
    }
}

/// Exit code for errors: bad flags, missing privileges, unusable kernel.
pub const EXIT_ERROR: u8 = 2;
/// Exit code for a finding (alerts from `replay`, a high alert from `snapshot`).
pub const EXIT_FINDING: u8 = 1;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Snapshot(args) => snapshot::snapshot(args),
        Command::Replay(args) => replay::replay(args),
        Command::Rules(cmd) => rules::rules(cmd),
        Command::Doctor(args) => doctor::run(args),
        Command::Scan(args) => scan::run(args),
        Command::Hosts(args) => hosts::run(args),
        Command::History(what) => history::run(history::HistoryArgs { what }),
        Command::Report(args) => report::run(args),
        Command::Top(args) => top::run(args),
        Command::Token(args) => token::run(args),
    };
    match result {
        Ok(code) => code,
        // A closed stdout (`| head`) ends any command quietly, wherever it was seen.
        Err(err) if crate::output::is_output_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            crate::eline!("netmon: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
