//! `cargo xtask integration-test vm`: boots Debian kernels in QEMU and runs the suite
//! inside them. (Being built; see issue 3.)
use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Kernels to boot (`5.10`, `6.1`, `6.12`); all by default.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
}

/// Whether this build of xtask can run VM tests at all.
pub const AVAILABLE: bool = false;

pub fn run(_args: &VmArgs) -> Result<()> {
    bail!("VM tests are not implemented yet")
}
