//! Builds `netmon-ebpf` for the BPF target on every build of `netmon`, so the object
//! embedded with `include_bytes_aligned!` can never be stale (aya-template's approach).
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build and embeds an empty object: for work on the
//! pure modules without the eBPF toolchain. Such a binary refuses to `run` and says why.
//!
//! `NETMON_EBPF_NO_LOG=1` builds the programs without their `log` feature (every
//! aya-log call compiled out; `--ebpf-log` then only warns): the baseline of
//! `cargo xtask bench ebpf-log`, never a build to ship.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=NETMON_EBPF_NO_LOG");
    println!("cargo::rustc-check-cfg=cfg(netmon_ebpf_no_log)");
    let no_log = env::var("NETMON_EBPF_NO_LOG").is_ok_and(|v| v == "1");
    if no_log {
        println!("cargo:rustc-cfg=netmon_ebpf_no_log");
    }
    println!("cargo:rerun-if-changed=../netmon-common");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("netmon"), []).context("writing the empty eBPF stub")?;
        println!(
            "cargo:warning=AYA_BUILD_SKIP set: this netmon embeds no eBPF object and cannot trace"
        );
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "netmon-ebpf")
        .ok_or_else(|| anyhow!("netmon-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("netmon-ebpf manifest has no parent directory")?
        .as_str();
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir,
            no_default_features: no_log,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain's rust-src and bpf-linker",
    )
}
