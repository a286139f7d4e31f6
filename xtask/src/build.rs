//! Builds: the eBPF object alone, and the host binaries the tests run.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::exec;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cargo arguments that select the eBPF crate for the BPF target (after the
/// `+nightly <command>`).
pub const EBPF_CARGO_ARGS: &[&str] = &[
    "-p",
    "netmon-ebpf",
    "--release",
    "--target",
    "bpfel-unknown-none",
    "-Z",
    "build-std=core",
];

pub fn build_ebpf() -> Result<()> {
    exec::run(
        Command::new("cargo")
            .args(["+nightly", "build"])
            .args(EBPF_CARGO_ARGS)
            .current_dir(workspace_root()),
    )?;
    eprintln!(
        "built {}",
        workspace_root()
            .join("target/bpfel-unknown-none/release/netmon")
            .display()
    );
    Ok(())
}

/// Builds the `netmon` binary (release) and returns its path.
pub fn netmon_binary() -> Result<PathBuf> {
    exec::run(
        Command::new("cargo")
            .args(["build", "--release", "-p", "netmon", "--bin", "netmon"])
            .current_dir(workspace_root()),
    )?;
    Ok(workspace_root().join("target/release/netmon"))
}
