//! `cargo xtask integration-test vm`: boots Debian's cloud kernels (5.10, 6.1, 6.12)
//! in QEMU and runs the root integration suite (`tests/`, package `netmon-tests`)
//! inside each, once per backend, then prints a kernel × backend matrix.
//!
//! This file decides what runs and judges the result; the pieces know nothing of each
//! other: [`kernel`] fetches and caches kernel images, [`initramfs`] packs the guest's
//! files and `/init`, [`qemu`] boots one VM and records its console, [`report`] reads
//! the console's markers and renders the matrix. It never installs anything on the
//! host (`setup` does) and never gives a guest a network card.
//!
//! Over 600 lines: one flow, build → fetch → pack → boot → judge, and the tests of its
//! choices; what each step needs beyond the flow is in the modules above.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build, exec};

mod initramfs;
mod kernel;
mod qemu;
mod report;

use initramfs::{Entry, InitPlan, Initramfs};
use report::{Marker, Row};

/// The integration-test files (`tests/tests/<name>.rs`) that exercise the kernel side
/// and so run in every VM. The others (the scanner's, which need `ip netns`, nmap and
/// python in the guest) test userspace and run on the host only.
pub const KERNEL_SUITES: &[&str] = &["trace", "backends"];

pub const BACKENDS: &[&str] = &["auto", "fentry", "kprobe", "tracepoint"];

/// The default set. These kernels all allow fentry and the suite asserts that `auto`
/// picks fentry for every capability (`NETMON_EXPECT_AUTO`), so the `auto` run is the
/// fentry run; a separate `--backend fentry` pass would repeat it and push the VM step
/// past its 10-minute budget on two cores. `--backends fentry` still runs it on demand.
pub const DEFAULT_BACKENDS: &[&str] = &["auto", "kprobe", "tracepoint"];

#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Kernels to boot (`5.10`, `6.1`, `6.12`); all by default.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Backends to run the suite with (`auto`, `fentry`, `kprobe`, `tracepoint`);
    /// default `auto,kprobe,tracepoint` (`auto` is asserted to be fentry there).
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<String>,
    /// How many VMs run at the same time.
    #[arg(long, default_value_t = VmArgs::default().jobs, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub jobs: u32,
    /// Seconds one VM may take, boot and every test included, before it is killed. (A VM
    /// that has not started /init after 120 s is killed sooner.)
    #[arg(long, value_name = "SECONDS", default_value_t = VmArgs::default().timeout)]
    pub timeout: u64,
    /// Seconds one test binary may take inside the VM before it is killed (the rest
    /// still run).
    #[arg(long, value_name = "SECONDS", default_value_t = VmArgs::default().test_timeout)]
    pub test_timeout: u64,
    /// Print every VM's whole serial console as it runs (it is always in target/vm-logs).
    #[arg(long)]
    pub verbose: bool,
}

impl Default for VmArgs {
    fn default() -> Self {
        VmArgs {
            kernels: Vec::new(),
            backends: Vec::new(),
            jobs: 2,
            timeout: 600,
            test_timeout: 300,
            verbose: false,
        }
    }
}

pub fn run(args: &VmArgs) -> Result<()> {
    let started = Instant::now();
    let (kernels, backends) = selection(args)?;
    let root = build::workspace_root();

    let suite = build_suite(&root)?;
    let built = Instant::now();

    let cache = root.join(".cache/kernels");
    let mut images = Vec::new();
    for k in &kernels {
        let image =
            kernel::fetch(k, &cache).with_context(|| format!("getting kernel {}", k.name))?;
        eprintln!(
            "vm: kernel {}: {} ({})",
            k.name,
            image.package,
            image.image.display()
        );
        images.push(image);
    }
    let fetched = Instant::now();

    let vm_dir = root.join("target/vm");
    let logs = root.join("target/vm-logs");
    for d in [&vm_dir, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let initrd = vm_dir.join("initramfs.cpio.gz");
    pack(&suite, &backends, args.test_timeout, &initrd)?;
    let packed = Instant::now();
    eprintln!(
        "vm: {} ({:.1} MiB): netmon, {} test binaries, {} helper binaries",
        initrd.display(),
        std::fs::metadata(&initrd).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64),
        suite.tests.len(),
        suite.bins.len()
    );

    let plan = Plan {
        initrd: &initrd,
        logs: &logs,
        backends: &backends,
        tests: suite.tests.iter().map(|(n, _)| n.clone()).collect(),
        args,
    };
    let jobs = (args.jobs as usize).clamp(1, kernels.len().max(1));
    let results = boot_all(&plan, &kernels, &images, jobs);
    let booted = Instant::now();

    let mut rows = Vec::new();
    for (k, r) in kernels.iter().zip(results) {
        let judged = r.with_context(|| format!("booting kernel {}", k.name))?;
        print_failures(&judged, &backends);
        rows.push(judged.row);
    }
    println!("\n{}", report::render_matrix(&backends, &rows));
    println!(
        "vm: {:.0}s in all: build {:.0}s, kernels {:.0}s, initramfs {:.0}s, VMs {:.0}s ({jobs} at a time); logs in {}",
        started.elapsed().as_secs_f64(),
        (built - started).as_secs_f64(),
        (fetched - built).as_secs_f64(),
        (packed - fetched).as_secs_f64(),
        (booted - packed).as_secs_f64(),
        logs.display()
    );
    let cells = rows.len() * backends.len();
    let failed_cells: usize = rows
        .iter()
        .map(|r| r.cells.iter().filter(|c| !c.ok()).count())
        .sum();
    let failed_vms = rows.iter().filter(|r| !r.problems.is_empty()).count();
    if failed_cells > 0 || failed_vms > 0 {
        bail!(
            "VM integration tests failed: {failed_cells} of {cells} kernel × backend runs, \
             {failed_vms} of {} VMs (see the matrix above and {})",
            rows.len(),
            logs.display()
        );
    }
    Ok(())
}

/// The kernels and backends `args` asks for, checked, each once, in the order given.
fn selection(args: &VmArgs) -> Result<(Vec<&'static kernel::Kernel>, Vec<String>)> {
    let mut kernels: Vec<&kernel::Kernel> = if args.kernels.is_empty() {
        kernel::KERNELS.iter().collect()
    } else {
        args.kernels
            .iter()
            .map(|k| kernel::by_name(k))
            .collect::<Result<_>>()?
    };
    // Each kernel has one log file: booting it twice would interleave them.
    let mut seen = Vec::new();
    kernels.retain(|k| {
        let first = !seen.contains(&k.name);
        seen.push(k.name);
        first
    });
    let mut backends: Vec<String> = Vec::new();
    for b in &args.backends {
        if !BACKENDS.contains(&b.as_str()) {
            bail!(
                "unknown backend `{b}`: choose among {}",
                BACKENDS.join(", ")
            );
        }
        if !backends.contains(b) {
            backends.push(b.clone());
        }
    }
    if backends.is_empty() {
        backends = DEFAULT_BACKENDS.iter().map(|b| (*b).to_owned()).collect();
    }
    Ok((kernels, backends))
}

/// What every VM runs and where its log goes.
struct Plan<'a> {
    initrd: &'a Path,
    logs: &'a Path,
    backends: &'a [String],
    /// Marker names of the test binaries.
    tests: Vec<String>,
    args: &'a VmArgs,
}

/// Boots `kernels`, `jobs` at a time, and returns their verdicts in the same order.
fn boot_all(
    plan: &Plan,
    kernels: &[&kernel::Kernel],
    images: &[kernel::Cached],
    jobs: usize,
) -> Vec<Result<Judged>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Judged>>>> =
        Mutex::new(kernels.iter().map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let (Some(k), Some(image)) = (kernels.get(i), images.get(i)) else {
                        break;
                    };
                    let r = boot_and_judge(plan, k, image);
                    results.lock().expect("no worker panics holding it")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("the workers are done")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("no VM worker took it"))))
        .collect()
}

/// The binaries the guest runs, at their host paths.
#[derive(Debug)]
struct Suite {
    netmon: PathBuf,
    /// (marker name, path) of every test binary of netmon-tests.
    tests: Vec<(String, PathBuf)>,
    /// The package's own binaries (helpers the tests spawn).
    bins: Vec<PathBuf>,
    /// The package's directory, where cargo would run its tests.
    workdir: PathBuf,
}

const TESTS_PACKAGE: &str = "netmon-tests";

fn build_suite(root: &Path) -> Result<Suite> {
    let netmon = cargo_artifacts(
        root,
        &["build", "--release", "-p", "netmon", "--bin", "netmon"],
    )?
    .into_iter()
    .find(|a| a.name == "netmon" && a.kind == "bin")
    .context("cargo built no `netmon` binary")?
    .executable;
    let bins: Vec<PathBuf> =
        cargo_artifacts(root, &["build", "--release", "-p", TESTS_PACKAGE, "--bins"])?
            .into_iter()
            .filter(|a| a.kind == "bin" && !a.test)
            .map(|a| a.executable)
            .collect();
    let tests: Vec<Artifact> = cargo_artifacts(
        root,
        &["test", "--release", "-p", TESTS_PACKAGE, "--no-run"],
    )?
    .into_iter()
    .filter(|a| a.test && (a.kind != "test" || KERNEL_SUITES.contains(&a.name.as_str())))
    .collect();
    if tests.is_empty() {
        bail!("`cargo test -p {TESTS_PACKAGE} --no-run` built no test binaries");
    }
    let workdir = tests[0].manifest_dir.clone();
    Ok(Suite {
        netmon,
        tests: tests
            .into_iter()
            .map(|a| (a.marker_name(), a.executable))
            .collect(),
        bins,
        workdir,
    })
}

/// An executable cargo built, from its `compiler-artifact` JSON message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Artifact {
    name: String,
    /// The target's first kind: `bin`, `test`, `lib`…
    kind: String,
    executable: PathBuf,
    /// Built with the test harness (`profile.test`).
    test: bool,
    manifest_dir: PathBuf,
}

impl Artifact {
    /// Integration tests by their name; the lib's and bins' unit tests as `lib:name`.
    fn marker_name(&self) -> String {
        if self.kind == "test" {
            self.name.clone()
        } else {
            format!("{}:{}", self.kind, self.name)
        }
    }
}

/// The executables among cargo's `--message-format=json` messages.
fn executables(messages: &str) -> Vec<Artifact> {
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = msg["manifest_path"].as_str().unwrap_or("");
        found.push(Artifact {
            name: msg["target"]["name"].as_str().unwrap_or("").to_owned(),
            kind: msg["target"]["kind"][0].as_str().unwrap_or("").to_owned(),
            executable: executable.into(),
            test: msg["profile"]["test"].as_bool().unwrap_or(false),
            manifest_dir: Path::new(manifest)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        });
    }
    found
}

fn cargo_artifacts(root: &Path, args: &[&str]) -> Result<Vec<Artifact>> {
    let out = exec::output(
        Command::new("cargo")
            .args(args)
            .arg("--message-format=json-render-diagnostics")
            .current_dir(root)
            // Progress and diagnostics go to the terminal; stdout is the JSON.
            .stderr(Stdio::inherit()),
    )?;
    Ok(executables(&out))
}

/// Writes the initramfs: busybox, /init, the suite and the libraries it loads.
fn pack(suite: &Suite, backends: &[String], test_timeout: u64, out: &Path) -> Result<()> {
    let mut fs = Initramfs::default();
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "var/tmp"] {
        fs.add(dir, Entry::Dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    fs.add(
        "dev/console",
        Entry::CharDevice {
            major: 5,
            minor: 1,
            mode: 0o600,
        },
    );
    let etc: [(&str, &str); 4] = [
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
    ];
    for (path, text) in etc {
        fs.add(
            path,
            Entry::Bytes {
                data: text.as_bytes().to_vec(),
                mode: 0o644,
            },
        );
    }

    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!(
            "{} is missing: install busybox-static (`cargo xtask setup`)",
            busybox.display()
        );
    }
    fs.copy(busybox, 0o755);
    let applets = exec::output(Command::new(busybox).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "bin/busybox" {
            fs.add(
                applet,
                Entry::Symlink {
                    target: busybox.to_path_buf(),
                },
            );
        }
    }

    fs.copy_dynamic_executable(&suite.netmon)?;
    for (_, t) in &suite.tests {
        fs.copy_dynamic_executable(t)?;
    }
    for b in &suite.bins {
        fs.copy_dynamic_executable(b)?;
    }
    fs.add(&suite.workdir, Entry::Dir);

    let path_dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = suite
            .bins
            .iter()
            .filter_map(|b| b.parent())
            .map(Path::to_path_buf)
            .collect();
        d.dedup();
        d
    };
    let init = initramfs::init_script(&InitPlan {
        backends,
        tests: &suite.tests,
        netmon: &suite.netmon,
        workdir: &suite.workdir,
        path_dirs: &path_dirs,
        test_timeout,
    });
    fs.add(
        "init",
        Entry::Bytes {
            data: init.into_bytes(),
            mode: 0o755,
        },
    );
    fs.write_gz(out)
}

/// How long a VM may take to start /init: 5 to 25 s seen under TCG on a busy 2-core
/// machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One VM's verdict, and its console for showing what failed.
struct Judged {
    row: Row,
    console: report::Console,
    log: PathBuf,
}

/// How many times a kernel that panics before `/init` is booted. Under QEMU's TCG,
/// Debian's 6.12.118 sometimes dies at boot with `Oops: int3` in `sched_clock_cpu` on
/// both vCPUs: a stale breakpoint from the kernel patching its own text (a static key)
/// met after the patching ended. Seen in 1 of 20 boots beside two VMs running the
/// suite, never in 82 boots on their own. No test has run then, so booting again
/// judges nothing twice; every such boot is named under the matrix and its console kept.
const BOOT_ATTEMPTS: u32 = 3;

fn boot_and_judge(plan: &Plan, k: &kernel::Kernel, image: &kernel::Cached) -> Result<Judged> {
    let (args, backends, tests) = (plan.args, plan.backends, &plan.tests);
    let log = plan.logs.join(format!("{}.log", k.name));
    let name = k.name;
    for attempt in 1..BOOT_ATTEMPTS {
        // A kept console from an earlier run of the matrix would be mistaken for this one's.
        let _ = std::fs::remove_file(plan.logs.join(format!("{name}.panic-{attempt}.log")));
    }
    let mut notes = Vec::new();
    let mut attempt = 1;
    let (outcome, console) = loop {
        let (outcome, console) = boot_once(plan, k, image, &log)?;
        match console.panicked_before_init() {
            Some(why) if attempt < BOOT_ATTEMPTS => {
                let kept = plan.logs.join(format!("{name}.panic-{attempt}.log"));
                std::fs::rename(&log, &kept)
                    .with_context(|| format!("keeping {}", kept.display()))?;
                let note = format!(
                    "boot {attempt} of {BOOT_ATTEMPTS}: the kernel panicked before /init \
                     ({why}; console in {}); booted again",
                    kept.display()
                );
                eprintln!("vm {name}: {note}");
                notes.push(note);
                attempt += 1;
            }
            _ => break (outcome, console),
        }
    };
    let mut problems = Vec::new();
    match outcome.killed {
        Some(qemu::Killed::Boot) => problems.push(format!(
            "VM killed: /init had not started after {} s",
            BOOT_TIMEOUT.as_secs()
        )),
        Some(qemu::Killed::Run) => problems.push(format!(
            "VM killed after the {} s timeout (--timeout)",
            args.timeout
        )),
        None => {}
    }
    match (&console.booted, console.done) {
        (None, _) if outcome.killed != Some(qemu::Killed::Boot) => {
            let qemu_said = outcome.stderr.lines().next().unwrap_or("").trim();
            let why = match (console.panicked_before_init(), qemu_said) {
                (Some(panic), _) => {
                    format!(": the kernel panicked ({panic}) on each of {attempt} boots")
                }
                (None, "") => String::new(),
                (None, said) => format!(": qemu: {said}"),
            };
            problems.push(format!("/init never started (no BOOTED marker){why}"));
        }
        (Some(_), None) if outcome.killed.is_none() => {
            let why = console
                .panic
                .as_ref()
                .map_or(String::new(), |p| format!(": the kernel panicked ({p})"));
            problems.push(format!(
                "/init stopped before the end (no DONE marker){why}"
            ));
        }
        _ => {}
    }
    let boot = console.booted.as_ref().map(|(at, _)| *at);
    let row = Row {
        kernel: name.to_owned(),
        release: console
            .booted
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default(),
        boot,
        tests: boot.zip(console.done).map(|(b, d)| d.saturating_sub(b)),
        problems,
        notes,
        cells: backends
            .iter()
            .map(|b| report::cell(&console, b, tests))
            .collect(),
    };
    eprintln!("vm {name}: finished in {:.1}s", outcome.wall.as_secs_f64());
    Ok(Judged { row, console, log })
}

/// Boots `k` once, logging its console to `log`, and reads what the console said.
fn boot_once(
    plan: &Plan,
    k: &kernel::Kernel,
    image: &kernel::Cached,
    log: &Path,
) -> Result<(qemu::Outcome, report::Console)> {
    let (args, name) = (plan.args, k.name);
    eprintln!(
        "vm {name}: booting {} (log {})",
        image.package,
        log.display()
    );
    let outcome = qemu::boot(
        &qemu::Boot {
            kernel: &image.image,
            initrd: plan.initrd,
            cmdline_extra: format!("netmon_kernel={name} netmon_expect_auto={}", k.expect_auto),
            ready: &format!("{}BOOTED", report::MARK),
            boot_timeout: BOOT_TIMEOUT,
            timeout: Duration::from_secs(args.timeout),
            log: log.to_owned(),
        },
        |line| {
            if args.verbose {
                eprintln!("[{name}] {}", line.text);
            }
            match report::marker(&line.text) {
                Some(Marker::Booted { release }) => {
                    eprintln!(
                        "vm {name}: {release} booted in {:.1}s",
                        line.at.as_secs_f64()
                    );
                }
                Some(Marker::Result {
                    backend,
                    test,
                    status,
                }) => {
                    let verdict = if status == 0 { "ok" } else { "FAILED" };
                    eprintln!(
                        "vm {name}: {backend:<10} {test}: {verdict} (exit {status}) at {:.1}s",
                        line.at.as_secs_f64()
                    );
                }
                _ => {}
            }
        },
    )?;
    let console = report::read_console(&outcome.lines);
    Ok((outcome, console))
}

/// The output of every test binary that did not pass, so failures read without the log.
fn print_failures(j: &Judged, backends: &[String]) {
    const TAIL: usize = 60;
    for run in &j.console.runs {
        if run.status == Some(0) || !backends.contains(&run.backend) {
            continue;
        }
        let status = run
            .status
            .map_or("did not finish".to_owned(), |s| format!("exit {s}"));
        println!(
            "\n--- {} {} {}: {status} ---",
            j.row.kernel, run.backend, run.test
        );
        let skip = run.output.len().saturating_sub(TAIL);
        if skip > 0 {
            println!("[… {skip} earlier lines in {}]", j.log.display());
        }
        for line in &run.output[skip..] {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_binaries_and_bins_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/netmon#0.1.0","manifest_path":"/w/netmon/Cargo.toml","target":{"kind":["lib"],"name":"netmon"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["lib"],"name":"netmon_tests"},"profile":{"test":true},"executable":"/w/target/release/deps/netmon_tests-1"}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"probe"},"profile":{"test":true},"executable":"/w/target/release/deps/probe-2"}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["bin"],"name":"netmon-testpeer"},"profile":{"test":false},"executable":"/w/target/release/netmon-testpeer"}
{"reason":"build-finished","success":true}
not json at all
"#;
        let found = executables(messages);
        assert_eq!(found.len(), 3);
        let tests: Vec<String> = found
            .iter()
            .filter(|a| a.test)
            .map(Artifact::marker_name)
            .collect();
        assert_eq!(tests, ["lib:netmon_tests", "probe"]);
        let bin = &found[2];
        assert_eq!((bin.kind.as_str(), bin.test), ("bin", false));
        assert_eq!(
            bin.executable,
            Path::new("/w/target/release/netmon-testpeer")
        );
        assert_eq!(bin.manifest_dir, Path::new("/w/tests"));
    }

    #[test]
    fn the_default_arguments_match_the_command_line_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            vm: VmArgs,
        }
        let parsed = Cli::parse_from(["vm"]).vm;
        let default = VmArgs::default();
        assert_eq!(
            (
                parsed.jobs,
                parsed.timeout,
                parsed.test_timeout,
                parsed.kernels,
                parsed.backends
            ),
            (
                default.jobs,
                default.timeout,
                default.test_timeout,
                default.kernels,
                default.backends
            )
        );
        let parsed = Cli::parse_from(["vm", "--kernels", "5.10,6.12", "--backends", "kprobe"]).vm;
        assert_eq!(parsed.kernels, ["5.10", "6.12"]);
        assert_eq!(parsed.backends, ["kprobe"]);
    }
}
