//! `cargo xtask test`: everything the README promises, in order, ending with one
//! `steps: N passed, N failed` line that CI reads.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{build, exec, integration, setup, vm};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the VM tests (they boot three kernels under emulation).
    #[arg(long)]
    pub no_vm: bool,
}

pub fn test(args: TestArgs) -> Result<()> {
    setup::setup()?;
    let root = build::workspace_root();
    let cargo = |a: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(a).current_dir(&root);
        c
    };
    let mut steps = Steps::default();
    let mut skipped: Vec<&str> = Vec::new();
    // The fresh-machine path, whatever this machine has installed already: a
    // bpf-linker built from scratch into a throw-away root links the eBPF object.
    steps.run("set-up from scratch", setup::check_from_scratch);
    steps.run("fmt", || {
        exec::run(&mut cargo(&["fmt", "--all", "--", "--check"]))
    });
    // Default members: everything but the eBPF crate, which has its own lint below.
    steps.run("clippy", || {
        exec::run(&mut cargo(&[
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    steps.run("clippy (eBPF)", || {
        exec::run(
            cargo(&["+nightly", "clippy"])
                .args(build::EBPF_CARGO_ARGS)
                .args(["--", "-D", "warnings"]),
        )
    });
    steps.run("unit and CLI tests", || {
        exec::run_tests(&mut cargo(&[
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "netmon-tests",
            "--exclude",
            "netmon-ebpf",
        ]))
    });
    steps.run("integration (local)", || {
        integration::local(&integration::LocalArgs {
            backends: vec!["auto".into(), "tracepoint".into()],
        })
    });
    if args.no_vm {
        skipped.push("integration (VMs): --no-vm");
    } else {
        steps.run("integration (VMs)", || vm::run(&vm::VmArgs::default()));
    }
    // A short pass of every benchmark, so one that no longer runs fails here rather
    // than rotting until someone measures (its figures are not kept).
    steps.run("benchmarks (quick pass)", || {
        exec::run(&mut cargo(&["xtask", "bench", "all", "--quick"]))
    });
    // cargo-fuzz over every parser of outside data (fuzz/run lists them), 10 s each.
    steps.run(
        "fuzz (DNS, config, scan input, banners, ICMP, ring records; 10 s each)",
        || {
            exec::run(
                Command::new("bash")
                    .arg(root.join("fuzz/run"))
                    .arg("10")
                    .current_dir(&root),
            )
        },
    );
    steps.report(&skipped)
}

/// The steps run so far: each one's name, result and how long it took.
#[derive(Default)]
struct Steps(Vec<(&'static str, Result<()>, Duration)>);

impl Steps {
    fn run(&mut self, name: &'static str, step: impl FnOnce() -> Result<()>) {
        let started = Instant::now();
        let result = step();
        self.0.push((name, result, started.elapsed()));
    }

    /// Prints a line per step and the `steps:` line; fails naming the failed steps.
    fn report(&self, skipped: &[&str]) -> Result<()> {
        let failed: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, r, _)| r.is_err())
            .map(|(n, _, _)| *n)
            .collect();
        for (name, r, took) in &self.0 {
            let took = took.as_secs();
            match r {
                Ok(()) => eprintln!("ok      {name} ({took} s)"),
                Err(e) => eprintln!("FAILED  {name} ({took} s): {e:#}"),
            }
        }
        for s in skipped {
            eprintln!("SKIPPED {s}");
        }
        println!(
            "steps: {} passed, {} failed, {} skipped",
            self.0.len() - failed.len(),
            failed.len(),
            skipped.len()
        );
        if !failed.is_empty() {
            bail!("failed: {}", failed.join(", "));
        }
        Ok(())
    }
}
