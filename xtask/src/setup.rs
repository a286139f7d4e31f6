//! `cargo xtask setup`: installs what building and testing netmon needs, and does
//! nothing (in well under 2 s) when everything is there. Called by the other tasks.
//!
//! - the nightly toolchain with `rust-src` (for `-Z build-std=core` on bpfel);
//! - `bpf-linker` built against the LLVM of that nightly: Debian has no LLVM of the
//!   version nightly uses, so it links the toolchain's own `libLLVM.so` (see
//!   shared/PLATFORM.md). A stamp records which LLVM it was built for;
//! - the Debian packages the tests and benchmarks use.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// Debian packages used by tests and benchmarks (not by netmon itself).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "bpftrace",
    "nmap",
    "dnsmasq",
    "dnsutils",
    "socat",
    "jq",
    // The VM runner unpacks Debian's compressed kernels once to boot them faster.
    "lz4",
    "zstd",
    "xz-utils",
];

pub const NIGHTLY: &str = "nightly";

pub fn setup() -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()?;
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    Ok(())
}

fn ensure_nightly() -> Result<()> {
    let toolchains = exec::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains
        .lines()
        .any(|l| l.starts_with("nightly-") || l.starts_with("nightly "))
    {
        eprintln!("setup: installing the nightly toolchain");
        exec::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = exec::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        exec::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

/// The nightly toolchain's directory and LLVM major version.
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let vv = exec::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let major = llvm_major(&vv).context("`rustc +nightly -vV` printed no LLVM version")?;
    let sysroot =
        exec::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    Ok((PathBuf::from(sysroot.trim()), major))
}

/// The major of the `LLVM version: 22.1.4` line of `rustc -vV`.
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn ensure_bpf_linker() -> Result<()> {
    let (sysroot, major) = nightly_llvm()?;
    let lib = find_libllvm(&sysroot.join("lib"), major)?;
    let stamp_path = cargo_home().join("netmon-bpf-linker.stamp");
    let want = lib.display().to_string();
    let linker = cargo_home().join("bin/bpf-linker");
    if linker.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker against {} (LLVM {major}); this takes a few minutes",
        lib.display()
    );
    // bpf-linker's build finds LLVM through LLVM_PREFIX/lib/libLLVM.so.
    let prefix = home().join(format!(".cache/netmon/llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = lib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    }
    exec::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp_path, format!("{want}\n")).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// `libLLVM.so.<major>…` shipped in the toolchain's lib directory.
fn find_libllvm(dir: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}");
    let alt = format!("libLLVM-{major}");
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with(&prefix) || n.starts_with(&alt)
        })
        .collect();
    found.sort();
    match found.into_iter().next() {
        Some(p) => Ok(p),
        None => bail!(
            "the nightly toolchain in {} ships no libLLVM for LLVM {major}; bpf-linker cannot be built against it",
            dir.display()
        ),
    }
}

/// Installs the packages of `wanted` that dpkg does not report as installed.
pub fn ensure_debian_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    exec::run(Command::new("apt-get").args(["update", "-q"]))?;
    exec::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    exec::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }
}
