//! Command-line interface: parses flags (clap derive; doc comments are the help text),
//! dispatches to one module per subcommand, and turns errors into one line on stderr
//! and an exit code (0 ok, 1 a finding, 2 an error), ripgrep-style.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod doctor;
pub mod run;

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
    /// final `stats` line.
    Run(run::RunArgs),
    /// Check what this kernel offers netmon (BTF, kprobes, fentry, tracepoints, cgroup
    /// v2, …), which hooks `auto` would pick, and how to fix what is missing.
    ///
    /// Exits 0 when netmon can run, 1 when it cannot.
    Doctor(doctor::DoctorArgs),
}

/// Exit code for errors: bad flags, missing privileges, unusable kernel.
pub const EXIT_ERROR: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Doctor(args) => doctor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("netmon: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
