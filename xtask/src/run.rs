//! `cargo xtask run [-- ARGS…]`: set up, build netmon (release) and start
//! `netmon run ARGS…`, through sudo when not already root.
use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{Result, bail};

use crate::{build, exec};

pub fn run(args: &[String]) -> Result<()> {
    let netmon = build::netmon_binary()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { geteuid() } == 0;
    let mut cmd = if root {
        Command::new(&netmon)
    } else if exec::on_path("sudo") {
        let mut c = Command::new("sudo");
        c.arg(&netmon);
        c
    } else {
        bail!(
            "netmon needs root to load eBPF programs and sudo is not installed: run this as root"
        );
    };
    cmd.arg("run").args(args);
    eprintln!("running {}", exec::describe(&cmd));
    // Replace xtask so signals (Ctrl-C) reach netmon directly.
    let err = cmd.exec();
    bail!("cannot start {}: {err}", netmon.display())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
