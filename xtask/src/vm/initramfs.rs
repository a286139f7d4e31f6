//! The VM's root file system: a gzip'd newc cpio archive holding busybox (with its
//! applet links), netmon, the test binaries, their shared libraries and loader, and an
//! `/init` that mounts what netmon needs, runs every test binary once per backend and
//! prints the markers [`super::report`] reads.
//!
//! Binaries keep their host paths inside the guest: the integration tests find the
//! package's helper binaries through `env!("CARGO_BIN_EXE_…")`, an absolute host path
//! compiled into them.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use flate2::{Compression, write::GzEncoder};

use crate::exec;

use super::report::MARK;

/// One file-system object of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// A host file copied in (following symlinks), with this mode.
    File {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
    CharDevice {
        major: u32,
        minor: u32,
        mode: u32,
    },
}

/// An archive being assembled: guest path → entry. Parent directories are added as
/// needed; a `BTreeMap` writes every directory before what it contains, which the
/// kernel's unpacker requires.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Initramfs {
    pub fn add(&mut self, guest: impl AsRef<Path>, entry: Entry) {
        let guest = relative(guest.as_ref());
        for parent in guest.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            self.entries
                .entry(parent.to_path_buf())
                .or_insert(Entry::Dir);
        }
        self.entries.insert(guest, entry);
    }

    /// Adds the host file `path` at the same path in the guest.
    pub fn copy(&mut self, path: &Path, mode: u32) {
        self.add(
            path,
            Entry::File {
                source: path.to_path_buf(),
                mode,
            },
        );
    }

    /// Adds an executable and every shared library `ldd` says it loads, loader included.
    pub fn copy_dynamic_executable(&mut self, path: &Path) -> Result<()> {
        self.copy(path, 0o755);
        let out = exec::capture(Command::new("ldd").arg(path))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // ldd fails on static executables ("not a dynamic executable"): nothing to add.
            if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
                return Ok(());
            }
            bail!(
                "ldd {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let libs = parse_ldd(&stdout).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for lib in libs {
            self.copy(&lib, 0o755);
        }
        Ok(())
    }

    /// Writes the archive as gzip'd newc cpio.
    pub fn write_gz(&self, out: &Path) -> Result<()> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        // Level 1: the archive is rebuilt on every run and the guest decompresses it
        // under emulation; higher levels cost seconds for little.
        let mut gz = GzEncoder::new(BufWriter::new(file), Compression::fast());
        write_newc(&self.entries, &mut gz).with_context(|| format!("writing {}", out.display()))?;
        gz.finish()
            .and_then(|mut w| w.flush())
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }
}

/// `/a/b` → `a/b`: archive names are relative to the root.
fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Writes `entries` in the "new ASCII" cpio format the kernel unpacks (see the kernel's
/// Documentation/driver-api/early-userspace/buffer-format.rst), owned by root, mtime 0.
pub fn write_newc(entries: &BTreeMap<PathBuf, Entry>, w: &mut impl Write) -> io::Result<()> {
    for (ino, (path, entry)) in (1u32..).zip(entries) {
        let name = path.to_string_lossy();
        let (mode, nlink, rdev, data): (u32, u32, (u32, u32), Data) = match entry {
            Entry::Dir => (0o040_755, 2, (0, 0), Data::None),
            Entry::File { source, mode } => {
                let f = File::open(source)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
                let len = f.metadata()?.len();
                (0o100_000 | mode, 1, (0, 0), Data::File(f, len))
            }
            Entry::Bytes { data, mode } => (0o100_000 | mode, 1, (0, 0), Data::Bytes(data)),
            Entry::Symlink { target } => (
                0o120_777,
                1,
                (0, 0),
                Data::Owned(target.to_string_lossy().into_owned().into_bytes()),
            ),
            Entry::CharDevice { major, minor, mode } => {
                (0o020_000 | mode, 1, (*major, *minor), Data::None)
            }
        };
        let size = match &data {
            Data::None => 0,
            Data::File(_, len) => *len,
            Data::Bytes(b) => b.len() as u64,
            Data::Owned(b) => b.len() as u64,
        };
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: too big for newc cpio"),
            )
        })?;
        write_header(w, ino, mode, nlink, size, rdev, &name)?;
        match data {
            Data::None => {}
            Data::File(f, len) => {
                let copied = io::copy(&mut f.take(len), w)?;
                if copied != len {
                    return Err(io::Error::other(format!(
                        "{name}: changed while being archived"
                    )));
                }
            }
            Data::Bytes(b) => w.write_all(b)?,
            Data::Owned(b) => w.write_all(&b)?,
        }
        pad4(w, size as usize)?;
    }
    write_header(w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

enum Data<'a> {
    None,
    File(File, u64),
    Bytes(&'a [u8]),
    Owned(Vec<u8>),
}

fn write_header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    (rmajor, rminor): (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        check = 0,
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    // The 110-byte header plus the name is padded to a multiple of 4.
    pad4(w, 110 + namesize)
}

fn pad4(w: &mut impl Write, len: usize) -> io::Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])
}

/// The libraries (absolute paths) in `ldd` output, the dynamic loader included and the
/// vDSO left out. A library ldd could not find is an error.
pub fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("shared library {} not found", name.trim()));
                }
                rest.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        // `linux-vdso.so.1 (0x…)` has no path: the kernel provides it.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// What `/init` runs.
#[derive(Debug)]
pub struct InitPlan<'a> {
    pub backends: &'a [String],
    /// (marker name, absolute path) of every test binary.
    pub tests: &'a [(String, PathBuf)],
    pub netmon: &'a Path,
    /// Where the tests run (cargo runs them in the package's directory).
    pub workdir: &'a Path,
    /// Directories added to PATH (the package's binaries).
    pub path_dirs: &'a [PathBuf],
    /// Seconds one test binary may take before busybox `timeout` kills it.
    pub test_timeout: u64,
}

/// A fresh tmpfs on `/tmp`, unless the workspace itself is under `/tmp` (a clone
/// there): the tmpfs would hide the test binaries the archive carries at their host
/// paths. The archive's root is in memory already, so `/tmp` stays writable.
fn tmp_mount(plan: &InitPlan) -> &'static str {
    let under_tmp = |p: &Path| p.starts_with("/tmp");
    if under_tmp(plan.workdir)
        || under_tmp(plan.netmon)
        || plan.tests.iter().any(|(_, bin)| under_tmp(bin))
    {
        "# The workspace is under /tmp: no tmpfs over it.\n"
    } else {
        "mount -t tmpfs tmpfs /tmp\n"
    }
}

/// The `/init` script. The kernel name and what `auto` must pick come from the kernel
/// command line (`netmon_kernel=… netmon_expect_auto=…`, which the kernel hands to init
/// as environment variables), so one archive serves every kernel.
pub fn init_script(plan: &InitPlan) -> String {
    let mut path = String::from("/usr/sbin:/usr/bin:/sbin:/bin");
    for d in plan.path_dirs {
        path.push(':');
        path.push_str(&d.to_string_lossy());
    }
    let mut s = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask integration-test vm`.
export PATH={path}
export HOME=/root
export RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{tmp}mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
# Before 5.11, BPF maps are charged to RLIMIT_MEMLOCK; creating them fails with EPERM
# under the default 8 MiB.
ulimit -l unlimited
export NETMON_BIN={netmon}
[ -n "$netmon_expect_auto" ] && export NETMON_EXPECT_AUTO="$netmon_expect_auto"
echo "{MARK}BOOTED kernel=$netmon_kernel release=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
cd {workdir}
run_test() {{
    echo "{MARK}RUN kernel=$netmon_kernel backend=$1 test=$2"
    NETMON_BACKEND=$1 timeout -s KILL {timeout} "$3" --test-threads=1 --color never
    status=$?
    echo "{MARK}RESULT kernel=$netmon_kernel backend=$1 test=$2 status=$status"
}}
"#,
        netmon = plan.netmon.display(),
        workdir = plan.workdir.display(),
        timeout = plan.test_timeout,
        tmp = tmp_mount(plan),
    );
    for backend in plan.backends {
        for (name, bin) in plan.tests {
            s.push_str(&format!("run_test {backend} {name} {}\n", bin.display()));
        }
    }
    s.push_str(&format!(
        "echo \"{MARK}DONE kernel=$netmon_kernel uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         poweroff -f\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libraries_and_loader_from_ldd() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f3e1c5e0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e1c3ff000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3e1c6a1000)
";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let out =
            "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        assert!(parse_ldd(out).unwrap_err().contains("libfoo.so.1"));
    }

    #[test]
    fn parents_come_before_children_and_everything_is_aligned() {
        let mut fs = Initramfs::default();
        fs.add(
            "/usr/bin/x",
            Entry::Bytes {
                data: b"hello".to_vec(),
                mode: 0o755,
            },
        );
        fs.add(
            "/bin/sh",
            Entry::Symlink {
                target: "/bin/busybox".into(),
            },
        );
        let names: Vec<String> = fs.entries.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["bin", "bin/sh", "usr", "usr/bin", "usr/bin/x"]);

        let mut buf = Vec::new();
        write_newc(&fs.entries, &mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(
            text.matches("070701").count(),
            6,
            "5 entries and the trailer"
        );
        // The file: regular, 0755, 5 bytes, name "usr/bin/x" (10 bytes with its NUL).
        let at = text.find("usr/bin/x\0").unwrap();
        let header = &text[at - 110..at];
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "00000005");
        assert_eq!(&header[94..102], "0000000a");
        // 110 + 10 is already a multiple of 4; the 5 data bytes are padded to 8.
        assert!(text[at..].starts_with("usr/bin/x\0hello\0\0\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn init_runs_every_binary_for_every_backend_and_powers_off() {
        let backends = ["auto".to_owned(), "kprobe".to_owned()];
        let tests = [
            (
                "probe".to_owned(),
                PathBuf::from("/w/target/release/deps/probe-1"),
            ),
            (
                "flows".to_owned(),
                PathBuf::from("/w/target/release/deps/flows-2"),
            ),
        ];
        let s = init_script(&InitPlan {
            backends: &backends,
            tests: &tests,
            netmon: Path::new("/w/target/release/netmon"),
            workdir: Path::new("/w/tests"),
            path_dirs: &[PathBuf::from("/w/target/release")],
            test_timeout: 60,
        });
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("ulimit -l unlimited"));
        assert!(s.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(s.contains("export NETMON_BIN=/w/target/release/netmon"));
        assert!(s.contains("timeout -s KILL 60"));
        let runs: Vec<&str> = s.lines().filter(|l| l.starts_with("run_test ")).collect();
        assert_eq!(
            runs,
            [
                "run_test auto probe /w/target/release/deps/probe-1",
                "run_test auto flows /w/target/release/deps/flows-2",
                "run_test kprobe probe /w/target/release/deps/probe-1",
                "run_test kprobe flows /w/target/release/deps/flows-2",
            ]
        );
        assert!(s.trim_end().ends_with("poweroff -f"));
        assert!(s.contains("mount -t tmpfs tmpfs /tmp\n"));

        // A workspace cloned under /tmp keeps its files visible.
        let tests = [(
            "flows".to_owned(),
            PathBuf::from("/tmp/ci/main/target/release/deps/flows-2"),
        )];
        let s = init_script(&InitPlan {
            backends: &backends,
            tests: &tests,
            netmon: Path::new("/tmp/ci/main/target/release/netmon"),
            workdir: Path::new("/tmp/ci/main/tests"),
            path_dirs: &[],
            test_timeout: 60,
        });
        assert!(!s.contains("tmpfs /tmp"), "{s}");
        assert!(s.contains("mount -t tmpfs tmpfs /run"));
    }
}
