//! `cargo xtask test`: everything the README promises, in order, ending with one
//! `steps: N passed, N failed` line that CI reads.
use std::process::Command;

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
    let mut steps: Vec<(&str, Result<()>)> = Vec::new();
    let mut skipped: Vec<&str> = Vec::new();
    // The fresh-machine path, whatever this machine has installed already: a
    // bpf-linker built from scratch into a throw-away root links the eBPF object.
    steps.push(("set-up from scratch", setup::check_from_scratch()));
    steps.push((
        "fmt",
        exec::run(&mut cargo(&["fmt", "--all", "--", "--check"])),
    ));
    // Default members: everything but the eBPF crate, which has its own lint below.
    steps.push((
        "clippy",
        exec::run(&mut cargo(&[
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    ));
    steps.push((
        "clippy (eBPF)",
        exec::run(
            cargo(&["+nightly", "clippy"])
                .args(build::EBPF_CARGO_ARGS)
                .args(["--", "-D", "warnings"]),
        ),
    ));
    steps.push((
        "unit and CLI tests",
        exec::run(&mut cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "netmon-tests",
            "--exclude",
            "netmon-ebpf",
        ])),
    ));
    steps.push((
        "integration (local)",
        integration::local(&integration::LocalArgs {
            backends: vec!["auto".into(), "tracepoint".into()],
        }),
    ));
    if args.no_vm {
        skipped.push("integration (VMs): --no-vm");
    } else {
        steps.push(("integration (VMs)", vm::run(&vm::VmArgs::default())));
    }
    // A short pass of every benchmark, so one that no longer runs fails here rather
    // than rotting until someone measures (its figures are not kept).
    steps.push((
        "benchmarks (quick pass)",
        exec::run(&mut cargo(&["xtask", "bench", "all", "--quick"])),
    ));
    // cargo-fuzz over every parser of outside data (fuzz/run lists them), 10 s each.
    steps.push((
        "fuzz (DNS, config, scan input, banners, ICMP, ring records; 10 s each)",
        exec::run(
            Command::new("bash")
                .arg(root.join("fuzz/run"))
                .arg("10")
                .current_dir(&root),
        ),
    ));
    let failed: Vec<&str> = steps
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    for (name, r) in &steps {
        match r {
            Ok(()) => eprintln!("ok      {name}"),
            Err(e) => eprintln!("FAILED  {name}: {e:#}"),
        }
    }
    for s in &skipped {
        eprintln!("SKIPPED {s}");
    }
    println!(
        "steps: {} passed, {} failed, {} skipped",
        steps.len() - failed.len(),
        failed.len(),
        skipped.len()
    );
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}
