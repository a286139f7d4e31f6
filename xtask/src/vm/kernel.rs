//! The kernels the VM tests boot: which Debian package holds each, downloading it with
//! `apt-get download`, extracting `vmlinuz` with `dpkg -x`, and caching it under
//! `<workspace>/.cache/kernels/<name>/` so a second run downloads nothing.
//!
//! Nothing is installed on the host, and the host's apt lists are never touched:
//! bullseye (5.10) gets its own source list, list directory and cache directory.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// One kernel the VM tests know how to fetch.
#[derive(Debug)]
pub struct Kernel {
    /// What `--kernels` calls it, and the name of its cache directory.
    pub name: &'static str,
    /// Where its package comes from.
    pub source: Source,
    /// What `auto` must pick on this kernel (`NETMON_EXPECT_AUTO`): all three kernels
    /// have fentry (5.5+), kprobes and BTF.
    pub expect_auto: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The host's own apt lists (bookworm, bookworm-security, bookworm-backports…).
    Host,
    /// A private bullseye list (the host is bookworm).
    Bullseye,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        source: Source::Bullseye,
        expect_auto: "fentry",
    },
    Kernel {
        name: "6.1",
        source: Source::Host,
        expect_auto: "fentry",
    },
    Kernel {
        name: "6.12",
        source: Source::Host,
        expect_auto: "fentry",
    },
];

pub fn by_name(name: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        format!("unknown kernel `{name}`: choose among {}", known.join(", "))
    })
}

/// A kernel image ready to boot.
#[derive(Debug, Clone)]
pub struct Cached {
    /// What to hand QEMU's `-kernel`: the uncompressed `vmlinux` when it could be
    /// extracted (see [`pvh_image`]), else the package's `vmlinuz`.
    pub image: PathBuf,
    /// The `.deb` it came from (name and version), for the report.
    pub package: String,
}

/// Returns the cached kernel, downloading it first if the cache has none.
pub fn fetch(kernel: &Kernel, cache_root: &Path) -> Result<Cached> {
    let dir = cache_root.join(kernel.name);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        download(kernel, cache_root, &dir)?;
    }
    let package = fs::read_to_string(dir.join("package"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "(unknown package)".into());
    let image = match pvh_image(&dir) {
        Ok(vmlinux) => vmlinux,
        Err(e) => {
            eprintln!(
                "vm: kernel {}: booting the compressed vmlinuz (slower under TCG): {e:#}",
                kernel.name
            );
            vmlinuz
        }
    };
    Ok(Cached { image, package })
}

/// Downloads the newest package of `kernel` and leaves `vmlinuz`, `config` and
/// `package` (the `.deb`'s file name) in `dir`.
fn download(kernel: &Kernel, cache_root: &Path, dir: &Path) -> Result<()> {
    let apt = Apt::new(kernel.source, cache_root)?;
    let search = apt.output(&[
        "apt-cache",
        "search",
        "--names-only",
        "^linux-image-.*-cloud-amd64",
    ])?;
    let candidates = candidates(&search, kernel.name);
    if candidates.is_empty() {
        bail!(
            "no linux-image-{}.*-cloud-amd64[-unsigned] package in {}: `apt-cache search` found none{}",
            kernel.name,
            apt.describe(),
            match kernel.source {
                Source::Host =>
                    " (run `apt-get update`, or add the suite that has it, e.g. bookworm-backports)",
                Source::Bullseye => "",
            }
        );
    }

    let work = cache_root.join(format!(".download-{}", kernel.name));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // A mirror may lack a package its index lists (seen: bullseye-security's
    // 5.10.0-46 `-unsigned` image answered 404 while the signed one downloaded), so the
    // next candidate is tried before giving up.
    let mut failures = Vec::new();
    for package in candidates.iter().take(MAX_ATTEMPTS) {
        eprintln!(
            "vm: kernel {}: downloading {package} from {}",
            kernel.name,
            apt.describe()
        );
        match apt.run_in(&work, &["apt-get", "download", "-q", package]) {
            Ok(()) => break,
            Err(e) => {
                eprintln!("vm: kernel {}: {e:#}", kernel.name);
                failures.push(package.as_str());
            }
        }
    }
    if failures.len() == candidates.len().min(MAX_ATTEMPTS) {
        bail!(
            "could not download any of {} from {} (see apt's messages above)",
            failures.join(", "),
            apt.describe()
        );
    }
    let deb = only_file_with_suffix(&work, ".deb")?;
    let root = work.join("root");
    exec::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let image = only_file_with_prefix(&boot, "vmlinuz-")
        .with_context(|| format!("{} holds no kernel image", deb.display()))?;

    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(config) = only_file_with_prefix(&boot, "config-") {
        // Kept for answering "is CONFIG_X on in this kernel?" without downloading again.
        fs::copy(&config, dir.join("config")).context("copying the kernel config")?;
    }
    let deb_name = deb.file_name().unwrap_or_default().to_string_lossy();
    fs::write(dir.join("package"), format!("{deb_name}\n")).context("writing the package name")?;
    // vmlinuz last, through a rename: its presence is what marks the cache complete.
    let partial = dir.join("vmlinuz.partial");
    fs::copy(&image, &partial).with_context(|| format!("copying {}", image.display()))?;
    fs::rename(&partial, dir.join("vmlinuz")).context("moving vmlinuz into the cache")?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// `dir/vmlinux`, extracted from `dir/vmlinuz` on first use, for QEMU's PVH entry.
///
/// With a bzImage, the guest first decompresses its kernel, which under TCG took 2 s
/// (LZ4, 5.10 and 6.1) to 5 s (zstd, 6.12) here; QEMU boots an uncompressed ELF
/// `vmlinux` directly through its PVH note (`CONFIG_PVH`, which Debian's kernels
/// set). Decompression uses the host's `gzip`/`xz`/`lz4`/`zstd`.
fn pvh_image(dir: &Path) -> Result<PathBuf> {
    let vmlinux = dir.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    let config = fs::read_to_string(dir.join("config")).context("no kernel config cached")?;
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        bail!("the kernel has no PVH entry (CONFIG_PVH)");
    }
    let bz = fs::read(dir.join("vmlinuz")).context("reading vmlinuz")?;
    let payload = payload(&bz).context("vmlinuz is not a bzImage with a known compression")?;
    let packed = dir.join("vmlinux.payload");
    let partial = dir.join("vmlinux.partial");
    fs::write(&packed, payload.data).context("writing the compressed kernel")?;
    let out = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let unpacked = exec::run(
        Command::new(payload.tool)
            .arg("-dc")
            .arg(&packed)
            .stdout(out),
    );
    let _ = fs::remove_file(&packed);
    unpacked?;
    let got = fs::read(&partial).context("reading the decompressed kernel")?;
    if got.len() as u64 != u64::from(payload.size) || !got.starts_with(b"\x7fELF") {
        let _ = fs::remove_file(&partial);
        bail!(
            "{} gave {} bytes, not the ELF file of {} bytes the bzImage announces",
            payload.tool,
            got.len(),
            payload.size
        );
    }
    fs::rename(&partial, &vmlinux).context("moving vmlinux into the cache")?;
    Ok(vmlinux)
}

/// The compressed kernel inside a bzImage, and how to decompress it.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    pub data: &'a [u8],
    /// The decompressor (all take `-dc FILE`).
    pub tool: &'static str,
    /// What the kernel's build recorded as the decompressed size.
    pub size: u32,
}

/// Finds the payload through the boot protocol header (2.08+: `payload_offset` and
/// `payload_length`; Documentation/arch/x86/boot.rst) and its compression by magic.
/// The build appends the decompressed size as 4 little-endian bytes; for gzip those
/// are the gzip trailer's own, for the others they follow the stream and are cut off.
pub fn payload(bz: &[u8]) -> Option<Payload<'_>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(bz.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bz.get(o..o + 4)?.try_into().ok()?));
    if bz.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let data = bz.get(start..start.checked_add(u32_at(0x24c)? as usize)?)?;
    let size = u32::from_le_bytes(data.get(data.len().checked_sub(4)?..)?.try_into().ok()?);
    let (tool, data) = if data.starts_with(&[0x1f, 0x8b]) {
        ("gzip", data)
    } else {
        let tool = if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            "xz"
        } else if data.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
            "lz4"
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            "zstd"
        } else {
            return None;
        };
        (tool, &data[..data.len() - 4])
    };
    Some(Payload { data, tool, size })
}

/// How many packages `fetch` tries before it gives up.
const MAX_ATTEMPTS: usize = 4;

/// The `linux-image-<name>.*-cloud-amd64` packages of `apt-cache search` output, best
/// first: newest release first and, within a release, the `-unsigned` image before the
/// signed one (the signature only matters to Secure Boot, which QEMU's direct kernel
/// boot skips). `name` is a series such as `6.1`: it matches `6.1.0-56` but not
/// `6.12.117+deb12`. Metapackages and `-dbg` packages never match.
pub fn candidates(apt_cache_search: &str, name: &str) -> Vec<String> {
    let series = format!("{name}.");
    let mut found: Vec<(Vec<u64>, bool, &str)> = Vec::new();
    for line in apt_cache_search.lines() {
        let package = line.split(" - ").next().unwrap_or("").trim();
        let Some(rest) = package.strip_prefix("linux-image-") else {
            continue;
        };
        let (rest, unsigned) = match rest.strip_suffix("-unsigned") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let Some(release) = rest.strip_suffix("-cloud-amd64") else {
            continue;
        };
        if release.starts_with(&series) {
            found.push((release_key(release), unsigned, package));
        }
    }
    found.sort_by(|a, b| (&b.0, b.1).cmp(&(&a.0, a.1)));
    found.dedup_by(|a, b| a.2 == b.2);
    found.into_iter().map(|(_, _, p)| p.to_owned()).collect()
}

/// `6.1.0-56` → [6, 1, 0, 56]; `6.12.117+deb12` → [6, 12, 117, 12].
fn release_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// How to call apt for one source: the host's lists as they are, or bullseye's
/// private ones (refreshed once, on first use).
struct Apt {
    options: Vec<String>,
    source: Source,
}

const BULLSEYE_SOURCES: &str = "\
deb {signed}http://deb.debian.org/debian bullseye main
deb {signed}http://deb.debian.org/debian-security bullseye-security main
";

impl Apt {
    fn new(source: Source, cache_root: &Path) -> Result<Apt> {
        // Downloads land in directories the `_apt` user cannot write; we are root anyway.
        let mut options = vec!["APT::Sandbox::User=root".to_owned()];
        if source == Source::Bullseye {
            let dir = cache_root.join("apt-bullseye");
            let lists = dir.join("lists");
            let cache = dir.join("cache");
            for d in [lists.join("partial"), cache.join("archives/partial")] {
                fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            }
            let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
            let signed = if keyring.is_file() {
                format!("[signed-by={}] ", keyring.display())
            } else {
                String::new()
            };
            let list = dir.join("sources.list");
            fs::write(&list, BULLSEYE_SOURCES.replace("{signed}", &signed))
                .with_context(|| format!("writing {}", list.display()))?;
            options.extend([
                format!("Dir::Etc::SourceList={}", list.display()),
                "Dir::Etc::SourceParts=/dev/null".to_owned(),
                format!("Dir::State::Lists={}", lists.display()),
                format!("Dir::Cache={}", cache.display()),
            ]);
            let apt = Apt { options, source };
            eprintln!(
                "vm: refreshing the private bullseye apt lists in {}",
                dir.display()
            );
            apt.run_in(cache_root, &["apt-get", "update", "-q"])?;
            return Ok(apt);
        }
        Ok(Apt { options, source })
    }

    fn describe(&self) -> &'static str {
        match self.source {
            Source::Host => "the host's apt sources",
            Source::Bullseye => "Debian bullseye and bullseye-security",
        }
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new(argv[0]);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.args(&argv[1..]);
        cmd
    }

    fn output(&self, argv: &[&str]) -> Result<String> {
        exec::output(&mut self.command(argv))
    }

    fn run_in(&self, dir: &Path, argv: &[&str]) -> Result<()> {
        exec::run(self.command(argv).current_dir(dir))
    }
}

fn only_file_with_suffix(dir: &Path, suffix: &str) -> Result<PathBuf> {
    only_file(dir, |n| n.ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

fn only_file_with_prefix(dir: &Path, prefix: &str) -> Result<PathBuf> {
    only_file(dir, |n| n.starts_with(prefix))
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

fn only_file(dir: &Path, want: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.is_file() && path.file_name().is_some_and(|n| want(&n.to_string_lossy())) {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("none found"),
        n => bail!("{n} candidates found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-47-cloud-amd64
linux-image-6.1.0-47-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-57-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-57-cloud-amd64
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.99+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.118+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
";

    #[test]
    fn picks_the_newest_unsigned_image_of_the_series() {
        assert_eq!(
            candidates(SEARCH, "6.1"),
            [
                "linux-image-6.1.0-56-cloud-amd64-unsigned",
                "linux-image-6.1.0-56-cloud-amd64",
                "linux-image-6.1.0-47-cloud-amd64-unsigned",
                "linux-image-6.1.0-9-cloud-amd64-unsigned",
            ]
        );
        assert_eq!(
            candidates(SEARCH, "6.12")[..2],
            [
                "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
                "linux-image-6.12.117+deb12-cloud-amd64",
            ]
        );
        assert!(candidates(SEARCH, "5.10").is_empty());
    }

    #[test]
    fn takes_the_signed_image_when_it_is_all_there_is() {
        let bullseye = "\
linux-image-5.10.0-30-cloud-amd64 - Linux 5.10 for x86-64 cloud
linux-image-5.10.0-35-cloud-amd64 - Linux 5.10 for x86-64 cloud
linux-image-5.10.0-35-cloud-amd64-dbg - Debug symbols for linux-image-5.10.0-35-cloud-amd64
linux-image-5.10.0-35-rt-amd64 - Linux 5.10 for 64-bit PCs, PREEMPT_RT
";
        assert_eq!(
            candidates(bullseye, "5.10"),
            [
                "linux-image-5.10.0-35-cloud-amd64",
                "linux-image-5.10.0-30-cloud-amd64"
            ]
        );
    }

    #[test]
    fn compares_release_numbers_not_strings() {
        assert!(release_key("6.1.0-56") > release_key("6.1.0-9"));
        assert!(release_key("6.12.117+deb12") > release_key("6.12.99+deb12"));
    }

    /// A bzImage header (protocol 2.15, 1 setup sector) followed by `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 1024];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0xee; 16]);
        bz.extend_from_slice(payload);
        bz.extend_from_slice(b"trailing setup data");
        bz
    }

    #[test]
    fn finds_the_compressed_kernel_in_a_bzimage() {
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 0x10, 0x20, 0, 0];
        let bz = bzimage(&zstd);
        assert_eq!(
            payload(&bz),
            Some(Payload {
                data: &zstd[..7],
                tool: "zstd",
                size: 0x2010
            })
        );
        let gzip = [0x1f, 0x8b, 8, 0, 9, 9, 0x00, 0x01, 0, 0];
        let bz = bzimage(&gzip);
        let p = payload(&bz).unwrap();
        assert_eq!((p.tool, p.data.len(), p.size), ("gzip", gzip.len(), 0x100));
        assert_eq!(
            payload(&bzimage(b"BZh91AY&SY")),
            None,
            "bzip2 is not handled"
        );
        let mut old = bzimage(&zstd);
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert_eq!(payload(&old), None, "protocol 2.07 has no payload fields");
        assert_eq!(payload(&old[..0x100]), None);
    }

    #[test]
    fn unknown_kernels_are_named_in_the_error() {
        let err = by_name("4.19").unwrap_err().to_string();
        assert!(err.contains("4.19") && err.contains("6.12"), "{err}");
    }
}
