//! `cargo xtask integration-test local|vm`: the root-only suite in `tests/`, run against
//! a real `netmon` binary, once per backend, on this host or inside VMs on real kernels.
use std::process::Command;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::{build, exec, vm};

#[derive(Debug, Subcommand)]
pub enum Where {
    /// On this host (needs root).
    Local(LocalArgs),
    /// Inside QEMU on Debian's 5.10, 6.1 and 6.12 kernels.
    Vm(vm::VmArgs),
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Backends to run the suite with (`auto`, `fentry`, `kprobe`, `tracepoint`).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    pub backends: Vec<String>,
}

pub fn run(w: Where) -> Result<()> {
    match w {
        Where::Local(args) => local(&args),
        Where::Vm(args) => vm::run(&args),
    }
}

pub fn local(args: &LocalArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!(
            "the integration tests need root (they load eBPF programs and create network namespaces): run as root"
        );
    }
    let netmon = build::netmon_binary()?;
    let auto_picks = auto_backends(&netmon);
    // Every backend runs even when one fails, and the error names each failure.
    let mut failed = Vec::new();
    for backend in &args.backends {
        // On a kernel where `auto` picks this one backend for every capability (this
        // machine: tracepoint, no kprobes, no fentry), the `auto` run already ran the
        // suite on it; the explicit choice is covered by tests/backends.rs.
        if backend != "auto"
            && args.backends.iter().any(|b| b == "auto")
            && auto_picks.as_deref() == Some(std::slice::from_ref(backend))
        {
            eprintln!(
                "integration-test local: backend {backend}: not run again: `auto` picks {backend} for every capability on this kernel (netmon doctor)"
            );
            continue;
        }
        eprintln!("integration-test local: backend {backend}");
        let run = exec::run_tests(
            Command::new("cargo")
                .args([
                    "test",
                    "--release",
                    "--no-fail-fast",
                    "-p",
                    "netmon-tests",
                    "--",
                    "--test-threads=1",
                ])
                .env("NETMON_BIN", &netmon)
                .env("NETMON_BACKEND", backend)
                .current_dir(build::workspace_root()),
        );
        if let Err(e) = run {
            failed.push(format!("backend {backend}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// The hook families `auto` picks on this kernel (`netmon doctor --format json`),
/// distinct and sorted, leaving out what every backend shares (`dns` is always
/// cgroup programs); `None` when doctor cannot say.
fn auto_backends(netmon: &std::path::Path) -> Option<Vec<String>> {
    let out = exec::capture(Command::new(netmon).args(["doctor", "--format", "json"])).ok()?;
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut picked: Vec<String> = doctor["auto"]["capabilities"]
        .as_array()?
        .iter()
        .map(|c| c["backend"].as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .filter(|b| ["fentry", "kprobe", "tracepoint"].contains(&b.as_str()))
        .collect();
    picked.sort();
    picked.dedup();
    (!picked.is_empty()).then_some(picked)
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
