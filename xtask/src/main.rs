//! netmon's developer tasks, `cargo xtask <task>`: one module per task, a shared
//! `exec` helper that names the command that failed.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod exec;
mod integration;
mod run;
mod setup;
mod test;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netmon developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing needs (nightly rust-src, bpf-linker, Debian
    /// packages). Quick when everything is there.
    Setup {
        /// Instead: prove the fresh-machine path (build bpf-linker into a temporary
        /// root with no stamp, then link the eBPF object with it), whatever is installed.
        #[arg(long)]
        from_scratch: bool,
    },
    /// Build the eBPF object (bpfel-unknown-none) into target/bpfel-unknown-none/release.
    BuildEbpf,
    /// Set up, build, lint and run every test: unit, CLI, root integration (local and
    /// in VMs on real kernels). Ends with a `N passed, N failed` line.
    Test(test::TestArgs),
    /// Set up, build netmon and start `netmon run ARGS…` (as root; through sudo if needed).
    Run {
        /// Arguments for `netmon run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Root integration tests (real sockets, real netmon) on this host or in VMs.
    #[command(subcommand)]
    IntegrationTest(integration::Where),
    /// Benchmarks (overhead, loss, scan need root): a markdown table on stdout and in
    /// docs/benchmarks.md, with the commands and the machine.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { from_scratch } => {
            if from_scratch {
                setup::check_from_scratch()
            } else {
                setup::setup()
            }
        }
        Task::BuildEbpf => setup::setup().and_then(|()| build::build_ebpf()),
        Task::Test(args) => test::test(args),
        Task::Run { args } => setup::setup().and_then(|()| run::run(&args)),
        Task::IntegrationTest(w) => setup::setup().and_then(|()| integration::run(w)),
        Task::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
