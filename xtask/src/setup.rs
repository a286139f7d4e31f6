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
    // tests/shipper.rs: the log shipper users put behind `--output` (imfile, mmjsonparse).
    "rsyslog",
    // The VM runner unpacks Debian's compressed kernels once to boot them faster.
    "lz4",
    "zstd",
    "xz-utils",
    // The scanner's tests and benchmark: real listeners (`python3 -m http.server`, a TLS
    // listener from `openssl s_server`).
    "python3",
    "openssl",
    // tests/scan.rs: packet loss on a test namespace's link where the kernel has no netem
    // (`nft … numgen random … drop`), and the ICMP-rate-limited host (`limit rate`).
    "nftables",
    // `netmon scan`'s OS fingerprint reads p0f's SYN-ACK signatures at run time
    // (/etc/p0f/p0f.fp, LGPL: never embedded); the fingerprint tests use it when present.
    "p0f",
    // The tests' HTTP clients.
    "curl",
    // Benchmarks: per-program run times (`bpftool prog show`), instruction counts.
    "bpftool",
    "valgrind",
    // bench overhead's syscall counts (`perf stat`); tests/tests/history.rs reads the
    // database back with the sqlite3 command-line tool.
    "linux-perf",
    "sqlite3",
    // tests/tests/top.rs drives `netmon top` in tmux (send-keys, capture-pane).
    "tmux",
    // `bench overhead`'s web workload: wrk against nginx on 127.0.0.1.
    "wrk",
    "nginx-light",
    // tests/tests/report.rs: the HTML report loaded in headless Chromium (DOM dump,
    // screenshot).
    "chromium",
    // tests/tests/metrics.rs: a real Prometheus scraping `--metrics`, `promtool check
    // metrics`, and node-exporter to compare the host statistics with.
    "prometheus",
    "prometheus-node-exporter",
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
    let prefix = cache_dir().join(format!("llvm-{major}"));
    install_bpf_linker(&lib, major, &prefix, &cargo_home())?;
    fs::write(&stamp_path, format!("{want}\n")).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// Where the set-up keeps what it builds (the LLVM prefix, bpf-linker's build).
fn cache_dir() -> PathBuf {
    home().join(".cache/netmon")
}

/// Builds bpf-linker against the shared object `lib` (LLVM `major`) and installs it
/// into `root/bin`, through an LLVM prefix made at `prefix`.
///
/// The one path that both the set-up and the from-scratch check
/// ([`check_from_scratch`]) take. Cargo's build of bpf-linker is kept in the cache
/// so a second build only re-runs what depends on the prefix: bpf-linker's build
/// script declares `rerun-if-env-changed=LLVM_PREFIX`, so a new prefix re-runs it and
/// links bpf-linker against that prefix again.
pub fn install_bpf_linker(lib: &Path, major: u32, prefix: &Path, root: &Path) -> Result<()> {
    make_llvm_prefix(lib, prefix)?;
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
        "--root",
    ])
    .arg(root)
    .arg("--target-dir")
    .arg(cache_dir().join("bpf-linker-build"))
    .env("LLVM_PREFIX", prefix);
    exec::run(&mut cmd)
}

/// `cargo xtask setup --from-scratch` (a step of `cargo xtask test`): proves the path a
/// fresh machine takes, whatever this machine already has. It picks the toolchain's
/// libLLVM, makes a new LLVM prefix, builds and installs bpf-linker into a throw-away
/// root (no stamp is read or written), checks that the linker starts, and builds the
/// eBPF object with it into a throw-away target directory.
pub fn check_from_scratch() -> Result<()> {
    let started = std::time::Instant::now();
    ensure_nightly()?;
    let (sysroot, major) = nightly_llvm()?;
    let lib = find_libllvm(&sysroot.join("lib"), major)?;
    eprintln!(
        "setup --from-scratch: libLLVM for LLVM {major} is {}",
        lib.display()
    );
    let scratch = tempfile::Builder::new()
        .prefix("netmon-setup-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = scratch.path().join("root");
    install_bpf_linker(&lib, major, &scratch.path().join("llvm"), &root)?;
    let linker = root.join("bin/bpf-linker");
    let version = exec::output(Command::new(&linker).arg("--version"))
        .with_context(|| format!("the freshly built {} does not start", linker.display()))?;
    eprintln!("setup --from-scratch: {}", version.trim());
    // The eBPF build finds bpf-linker on PATH: the new one comes first.
    let path = std::env::join_paths(std::iter::once(root.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .context("building PATH")?;
    let target = scratch.path().join("target");
    exec::run(
        Command::new("cargo")
            .args(["+nightly", "build"])
            .args(crate::build::EBPF_CARGO_ARGS)
            .arg("--target-dir")
            .arg(&target)
            .env("PATH", path)
            .current_dir(crate::build::workspace_root()),
    )?;
    let object = target.join("bpfel-unknown-none/release/netmon");
    if !is_bpf_elf(&object) {
        bail!(
            "{} is not a BPF ELF object after building with the new bpf-linker",
            object.display()
        );
    }
    eprintln!(
        "setup --from-scratch: ok, bpf-linker built and the eBPF object linked with it in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An ELF file whose machine is EM_BPF (247).
fn is_bpf_elf(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    bytes.len() > 20
        && bytes[..4] == *b"\x7fELF"
        && u16::from_le_bytes([bytes[18], bytes[19]]) == 247
}

/// bpf-linker's build finds LLVM as `<prefix>/lib/libLLVM.so` and the loader finds it
/// at run time by its own name (its soname): both are links to the real object.
fn make_llvm_prefix(lib: &Path, prefix: &Path) -> Result<()> {
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = lib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(lib, &link)
            .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    }
    Ok(())
}

/// The real shared object of LLVM `major` in a toolchain's `lib` directory.
///
/// Toolchains name it differently: older nightlies ship one ELF file
/// `libLLVM-<major>-rust-<version>-nightly.so`; newer ones (1.97, LLVM 22) ship the ELF
/// as `libLLVM.so.<major>.<minor>-rust-<version>-nightly` beside a 43-byte *linker
/// script* under the old name that says `INPUT(<the ELF's name>)`. Linking against the
/// script from another directory fails, so a script is followed to the file it names
/// and only an ELF file is ever returned.
pub fn find_libllvm(dir: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}");
    let alt = format!("libLLVM-{major}");
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut candidates: Vec<PathBuf> = entries
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
    candidates.sort();
    let mut seen = Vec::new();
    for candidate in &candidates {
        match shared_object_of(candidate, dir) {
            Some(elf) => return Ok(elf),
            None => seen.push(candidate.display().to_string()),
        }
    }
    if seen.is_empty() {
        bail!(
            "the nightly toolchain in {} ships no libLLVM for LLVM {major}; bpf-linker cannot be built against it",
            dir.display()
        )
    }
    bail!(
        "no file for LLVM {major} in {} is a shared object or a linker script naming one (looked at {}); bpf-linker cannot be built against it",
        dir.display(),
        seen.join(", ")
    )
}

/// `path` itself when it is an ELF file, the ELF file a linker script's `INPUT(...)`
/// names (looked up in `dir`), or nothing.
fn shared_object_of(path: &Path, dir: &Path) -> Option<PathBuf> {
    let resolved = fs::canonicalize(path).ok()?;
    if is_elf(&resolved) {
        return Some(resolved);
    }
    // A linker script is a few bytes of text; anything big and not ELF is neither.
    if fs::metadata(&resolved).ok()?.len() > 4096 {
        return None;
    }
    let script = fs::read_to_string(&resolved).ok()?;
    let named = linker_script_input(&script)?;
    let target = fs::canonicalize(dir.join(named)).ok()?;
    is_elf(&target).then_some(target)
}

/// The first file named by `INPUT(...)` or `GROUP(...)` in a GNU ld script.
fn linker_script_input(script: &str) -> Option<&str> {
    let start = script
        .find("INPUT(")
        .map(|i| i + "INPUT(".len())
        .or_else(|| script.find("GROUP(").map(|i| i + "GROUP(".len()))?;
    let rest = &script[start..];
    let inner = &rest[..rest.find(')')?];
    inner
        .split(|c: char| c.is_whitespace() || c == ',')
        .find(|w| !w.is_empty() && *w != "AS_NEEDED" && !w.starts_with('('))
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
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

    /// A fake toolchain `lib/` per layout nightlies have shipped.
    fn toolchain_lib(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0 a shared object";

    #[test]
    fn follows_the_linker_script_to_the_shared_object() {
        // rust 1.97 nightly, LLVM 22: the script sorts first.
        let lib = toolchain_lib(&[
            (
                "libLLVM-22-rust-1.97.0-nightly.so",
                b"INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n",
            ),
            ("libLLVM.so.22.1-rust-1.97.0-nightly", ELF),
            ("librustc_driver-b5a965480ee51f9a.so", ELF),
        ]);
        let found = find_libllvm(lib.path(), 22).unwrap();
        assert!(
            found.ends_with("libLLVM.so.22.1-rust-1.97.0-nightly"),
            "{found:?}"
        );
    }

    #[test]
    fn a_script_alone_is_followed_and_a_dangling_one_refused() {
        let lib = toolchain_lib(&[
            ("libLLVM-22-rust-1.97.0-nightly.so", b"/* GNU ld script */\nGROUP ( AS_NEEDED ( x ) )\nINPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n"),
            ("libLLVM.so.22.1-rust-1.97.0-nightly", ELF),
        ]);
        assert!(
            find_libllvm(lib.path(), 22)
                .unwrap()
                .ends_with("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        let dangling = toolchain_lib(&[(
            "libLLVM-22-rust-1.97.0-nightly.so",
            b"INPUT(libLLVM.so.22.1-missing)\n",
        )]);
        let err = find_libllvm(dangling.path(), 22).unwrap_err().to_string();
        assert!(err.contains("linker script"), "{err}");
    }

    #[test]
    fn older_layouts_pick_their_elf_file() {
        // rust 1.8x nightlies, LLVM 19/20: one ELF file under the dashed name.
        let old = toolchain_lib(&[("libLLVM-19-rust-1.84.0-nightly.so", ELF)]);
        assert!(
            find_libllvm(old.path(), 19)
                .unwrap()
                .ends_with("libLLVM-19-rust-1.84.0-nightly.so")
        );
        // Only the dotted name.
        let dotted = toolchain_lib(&[("libLLVM.so.20.1-rust-1.88.0-nightly", ELF)]);
        assert!(
            find_libllvm(dotted.path(), 20)
                .unwrap()
                .ends_with("libLLVM.so.20.1-rust-1.88.0-nightly")
        );
        // A symlink to the ELF resolves to the ELF itself.
        let linked = toolchain_lib(&[("libLLVM.so.21.1-rust-1.90.0-nightly", ELF)]);
        std::os::unix::fs::symlink(
            linked.path().join("libLLVM.so.21.1-rust-1.90.0-nightly"),
            linked.path().join("libLLVM-21.so"),
        )
        .unwrap();
        assert!(
            find_libllvm(linked.path(), 21)
                .unwrap()
                .ends_with("libLLVM.so.21.1-rust-1.90.0-nightly")
        );
    }

    #[test]
    fn another_major_is_not_taken() {
        let lib = toolchain_lib(&[("libLLVM.so.21.1-rust-1.90.0-nightly", ELF)]);
        let err = find_libllvm(lib.path(), 22).unwrap_err().to_string();
        assert!(err.contains("ships no libLLVM for LLVM 22"), "{err}");
    }
}
