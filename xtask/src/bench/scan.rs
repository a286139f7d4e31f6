//! `cargo xtask bench scan`: the scanner's benchmark, side by side with nmap in one
//! run, interleaved (netmon, nmap, netmon, nmap…), medians reported as a markdown table
//! (section `scan` of `docs/benchmarks.md`).
//!
//! 1. A full TCP connect scan of all 65,535 ports of one host: `netmon scan -p-
//!    --method connect` vs `nmap -sT -p- -T4 -n`, on a host in a test network namespace
//!    (over veth and a bridge) and on the scanner namespace's own loopback; both tools
//!    must report the same open ports (the listeners the lab started). Targets (the
//!    issue allows either place): under 2 s and at least 2x faster than nmap.
//! 2. Discovery of a /24 holding 10 live hosts (namespaces): `netmon scan
//!    --discovery-only` (nmap `-sn` alongside for reference). Target: under 5 s, exactly
//!    the 10 hosts (the scanner's own address is kept outside the /24 so it cannot count).
//!
//! 3. Default settings (issue 21): `netmon scan HOST -p- --no-service -n` against
//!    `nmap -p- -n HOST`, both with nothing else: as root (both SYN scans), as a user
//!    without CAP_NET_RAW (`setpriv` to nobody: both connect scans), and as root against
//!    a host whose link loses 2% of the packets each way (an nftables `numgen random`
//!    rule in its namespace; plus 20 ms each way of netem delay where the kernel has
//!    netem). Targets: the listeners found exactly, every round, at least 2x faster.
//!
//! 4. An ICMP-rate-limited host (issue 21): ports 1-10000 of a host that rejects all
//!    but its listeners with ICMP port unreachables and lets 5 ICMP messages a second
//!    out (nftables `limit`), `netmon scan -p 1-10000 --no-service -n` against `nmap -p
//!    1-10000 -n`; the same open ports, at least 2x faster (it must not stall).
//! 5. The service phase (issue 21): `netmon scan -p 22,80,443,9999 -n` on that host, 9999
//!    a listener that never speaks, minus the same scan with `--no-service`: at most 1.5 x
//!    `--service-timeout` (2 s).
//! 6. The OS fingerprint of the namespace host (`-O`) beside `nmap -O`'s, once.
//!
//! Every packet stays inside namespaces this task creates (10.201.0.0/24, 10.202.0.0/24,
//! 10.203.0.1 for the scanner) and deletes on exit, panics included. Needs root, `ip`,
//! `nmap`, `socat`, `nft` and `setpriv`.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    Env, proc,
    report::{Section, median},
};
use crate::exec;
use std::fmt::Write as _;

/// The TCP ports the port-scan target listens on.
const OPEN_PORTS: &[u16] = &[22, 80, 443, 5432, 8080, 31337, 65535];
/// The ICMP-rate-limited host's listeners in 1-10000 (9999 never says anything).
const ICMP_HOST_PORTS: &[u16] = &[22, 80, 443, 5432, 8080, 9999];
const ICMP_HOST: &str = "10.201.0.4";
/// `--service-timeout` of the service-phase row.
const SERVICE_TIMEOUT_S: f64 = 2.0;
const LIVE_HOSTS: usize = 10;

struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    fn ns(&mut self, name: String) -> Result<String> {
        exec::run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Ok(out) = exec::capture(Command::new("ip").args(["netns", "pids", ns])) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = exec::capture(Command::new("kill").args(["-9", pid]));
                }
            }
            let _ = exec::capture(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    exec::run(Command::new("ip").args(["-n", ns]).args(args))
}

/// Scanner namespace with a bridge; hosts `10.20X.0.(2..)` attached to it. The scanner
/// is 10.203.0.1, outside both /24s, routed to them through the bridge.
fn build_lab(lab: &mut Lab, tag: &str, port_hosts: usize, disc_hosts: usize) -> Result<String> {
    let s = lab.ns(format!("{tag}-s"))?;
    ip(&s, &["link", "add", "br0", "type", "bridge"])?;
    ip(&s, &["addr", "add", "10.203.0.1/32", "dev", "br0"])?;
    ip(&s, &["link", "set", "br0", "up"])?;
    for net in ["10.201.0.0/24", "10.202.0.0/24"] {
        ip(
            &s,
            &["route", "add", net, "dev", "br0", "src", "10.203.0.1"],
        )?;
    }
    let mut n = 0;
    for (net, count) in [("10.201.0", port_hosts), ("10.202.0", disc_hosts)] {
        for i in 0..count {
            let h = lab.ns(format!("{tag}-h{n}"))?;
            let v = format!("v{n}");
            ip(
                &s,
                &[
                    "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &h,
                ],
            )?;
            ip(&s, &["link", "set", &v, "master", "br0", "up"])?;
            ip(
                &h,
                &["addr", "add", &format!("{net}.{}/24", i + 2), "dev", "eth0"],
            )?;
            ip(&h, &["link", "set", "eth0", "up"])?;
            ip(&h, &["route", "add", "10.203.0.1/32", "dev", "eth0"])?;
            n += 1;
        }
    }
    Ok(s)
}

/// The default-settings comparisons: label, target, run as nobody (no CAP_NET_RAW).
const DEFAULTS: [(&str, &str, bool); 3] = [
    ("as root (SYN), namespace host", "10.201.0.2", false),
    (
        "as a user without CAP_NET_RAW (connect), namespace host",
        "10.201.0.2",
        true,
    ),
    (
        "as root, 2% loss each way, 20 ms delay each way",
        "10.201.0.3",
        false,
    ),
];

/// 2% loss each way on namespace `ns`'s link (nftables), and 40 ms of netem delay on
/// its egress (20 ms each way) where the kernel has netem; returns whether it has.
fn lossy_link(ns: &str) -> Result<bool> {
    let delayed = exec::capture(Command::new("ip").args([
        "-n", ns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "40ms",
    ]))
    .is_ok_and(|o| o.status.success());
    let rules = "table inet lossy {
        chain in { type filter hook input priority 0; numgen random mod 50 0 drop; }
        chain out { type filter hook output priority 0; numgen random mod 50 0 drop; }
    }";
    let file = std::env::temp_dir().join(format!("{ns}-lossy.nft"));
    std::fs::write(&file, rules).context("cannot write the nftables rules")?;
    let r = exec::run(
        Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f"])
            .arg(&file),
    );
    let _ = std::fs::remove_file(&file);
    r?;
    Ok(delayed)
}

/// CPU seconds (user + system) used by finished children so far.
fn children_cpu() -> f64 {
    #[repr(C)]
    struct Timeval {
        sec: i64,
        usec: i64,
    }
    #[repr(C)]
    struct Rusage {
        utime: Timeval,
        stime: Timeval,
        rest: [i64; 14],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    const RUSAGE_CHILDREN: i32 = -1;
    let mut r = Rusage {
        utime: Timeval { sec: 0, usec: 0 },
        stime: Timeval { sec: 0, usec: 0 },
        rest: [0; 14],
    };
    // SAFETY: a valid out-pointer to a struct of the kernel's `struct rusage` layout
    // (x86_64 and aarch64 Linux).
    unsafe { getrusage(RUSAGE_CHILDREN, &mut r) };
    let t = |tv: &Timeval| tv.sec as f64 + tv.usec as f64 / 1e6;
    t(&r.utime) + t(&r.stime)
}

/// Runs a command; returns wall seconds, CPU seconds and stdout.
fn timed(cmd: &mut Command) -> Result<(f64, f64, String)> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let out = exec::capture(cmd)?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            exec::describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((secs, cpu, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn in_ns(ns: &str, program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program).args(args);
    c
}

/// Open ports from netmon's JSON Lines.
fn netmon_open(json: &str) -> Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).context("netmon printed a bad JSON line")?;
        if v["type"] == "port" && v["state"] == "open" {
            out.insert(v["port"].as_u64().context("port without a number")? as u16);
        }
    }
    Ok(out)
}

fn netmon_up(json: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["type"] == "host" && v["state"] == "up" {
            out.insert(v["addr"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(out)
}

/// Open ports from nmap's grepable output.
fn nmap_open(grep: &str) -> BTreeSet<u16> {
    grep.lines()
        .filter_map(|l| l.split_once("Ports: "))
        .flat_map(|(_, p)| p.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .filter(|p| p.contains("/open/"))
        .filter_map(|p| p.split('/').next()?.trim().parse().ok())
        .collect()
}

fn nmap_up(grep: &str) -> BTreeSet<String> {
    grep.lines()
        .filter(|l| l.contains("Status: Up"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Runs `rounds` interleaved rounds; the section, and whether every target was met.
pub fn run(env: &Env, rounds: u32) -> Result<(Section, bool)> {
    let load = proc::load_average();
    let netmon = env.netmon.as_path();
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { geteuid() } == 0,
        "bench scan needs root (it creates network namespaces)"
    );
    for tool in ["ip", "nmap", "socat", "nft", "setpriv"] {
        ensure!(
            exec::on_path(tool),
            "bench scan needs `{tool}` (cargo xtask setup installs it)"
        );
    }
    let nmap = PathBuf::from("nmap");
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    let tag = format!("nmb{}", std::process::id());
    let scanner = build_lab(&mut lab, &tag, 3, LIVE_HOSTS)?;
    let target_ns = format!("{tag}-h0");
    // 10.201.0.3: the same listeners behind a lossy (and, with netem, slow) link.
    let lossy_ns = format!("{tag}-h1");
    let delayed = lossy_link(&lossy_ns)?;
    // The listeners on the target hosts, and the same on the scanner namespace's own
    // loopback.
    for (ns, bind) in [
        (&target_ns, ""),
        (&lossy_ns, ""),
        (&scanner, ",bind=127.0.0.1"),
    ] {
        for &port in OPEN_PORTS {
            lab.children.push(
                Command::new("ip")
                    .args(["netns", "exec", ns, "socat"])
                    .arg(format!("TCP-LISTEN:{port},fork,reuseaddr{bind}"))
                    .arg("SYSTEM:echo hello")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start socat")?,
            );
        }
    }
    // 10.201.0.4: ICMP errors for every other port, at most 5 ICMP messages a second.
    let icmp_ns = format!("{tag}-h2");
    let allowed: Vec<String> = ICMP_HOST_PORTS.iter().map(u16::to_string).collect();
    let rules = format!(
        "table inet icmplimit {{
        chain in {{ type filter hook input priority 0; tcp dport != {{ {} }} reject with icmp type port-unreachable; }}
        chain out {{ type filter hook output priority 0; meta l4proto icmp limit rate 5/second burst 5 packets accept; meta l4proto icmp drop; }}
    }}",
        allowed.join(", ")
    );
    let file = std::env::temp_dir().join(format!("{icmp_ns}-icmp.nft"));
    std::fs::write(&file, rules).context("cannot write the nftables rules")?;
    let r = exec::run(
        Command::new("ip")
            .args(["netns", "exec", &icmp_ns, "nft", "-f"])
            .arg(&file),
    );
    let _ = std::fs::remove_file(&file);
    r?;
    for &port in ICMP_HOST_PORTS {
        let reply = if port == 9999 {
            "SYSTEM:sleep 30"
        } else {
            "SYSTEM:echo hello"
        };
        lab.children.push(
            Command::new("ip")
                .args(["netns", "exec", &icmp_ns, "socat"])
                .arg(format!("TCP-LISTEN:{port},fork,reuseaddr"))
                .arg(reply)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start socat")?,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let expected_ports: BTreeSet<u16> = OPEN_PORTS.iter().copied().collect();
    let icmp_expected: BTreeSet<u16> = ICMP_HOST_PORTS.iter().copied().collect();
    let (mut icmp_ours, mut icmp_theirs) = (Vec::new(), Vec::new());
    let mut service_phase = Vec::new();
    let expected_hosts: BTreeSet<String> = (0..LIVE_HOSTS)
        .map(|i| format!("10.202.0.{}", i + 2))
        .collect();

    // (label, target): the full connect scan runs on both.
    let scans = [
        ("namespace host over veth + bridge", "10.201.0.2"),
        ("loopback (inside the scanner namespace)", "127.0.0.1"),
    ];
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); scans.len()];
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); scans.len()];
    let mut ours_cpu: Vec<Vec<f64>> = vec![Vec::new(); scans.len()];
    let mut theirs_cpu: Vec<Vec<f64>> = vec![Vec::new(); scans.len()];
    let (mut d_ours, mut d_theirs) = (Vec::new(), Vec::new());
    let mut def_ours: Vec<Vec<f64>> = vec![Vec::new(); DEFAULTS.len()];
    let mut def_theirs: Vec<Vec<f64>> = vec![Vec::new(); DEFAULTS.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (k, (label, target)) in scans.iter().enumerate() {
            let (t, c, out) = timed(&mut in_ns(
                &scanner,
                netmon,
                &[
                    "scan",
                    target,
                    "-p-",
                    "--method",
                    "connect",
                    "--rate",
                    "0",
                    "-n",
                    "--no-service",
                    "--format",
                    "json",
                ],
            ))?;
            let found = netmon_open(&out)?;
            ensure!(
                found == expected_ports,
                "round {round}, {label}: netmon found {found:?}, expected {expected_ports:?}"
            );
            ours[k].push(t);
            ours_cpu[k].push(c);
            let (t2, c2, out) = timed(&mut in_ns(
                &scanner,
                &nmap,
                &["-sT", "-p-", "-T4", "-n", "-oG", "-", target],
            ))?;
            let found = nmap_open(&out);
            ensure!(
                found == expected_ports,
                "round {round}, {label}: nmap found {found:?}, expected {expected_ports:?}"
            );
            theirs[k].push(t2);
            theirs_cpu[k].push(c2);
            line.push_str(&format!(" {target} netmon {t:.2} s nmap {t2:.2} s;"));
        }

        for (k, (_, target, user)) in DEFAULTS.iter().enumerate() {
            let as_user = |program: &Path, args: &[&str]| {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &scanner]);
                if *user {
                    c.args([
                        "setpriv",
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                    ]);
                    c.args(["--inh-caps=-all", "--bounding-set=-all"]);
                }
                c.arg(program).args(args);
                c
            };
            let (t, _, out) = timed(&mut as_user(
                netmon,
                &[
                    "scan",
                    target,
                    "-p-",
                    "--no-service",
                    "-n",
                    "--format",
                    "json",
                ],
            ))?;
            let found = netmon_open(&out)?;
            ensure!(
                found == expected_ports,
                "round {round}, defaults {target}: netmon found {found:?}, expected {expected_ports:?}"
            );
            let (t2, _, out) = timed(&mut as_user(&nmap, &["-p-", "-n", "-oG", "-", target]))?;
            let found = nmap_open(&out);
            if found != expected_ports {
                eprintln!("round {round}, defaults {target}: nmap found {found:?}");
            }
            def_ours[k].push(t);
            def_theirs[k].push(t2);
            line.push_str(&format!(
                " defaults{} {target} netmon {t:.2} s nmap {t2:.2} s;",
                if *user { " (user)" } else { "" }
            ));
        }

        // The ICMP-rate-limited host.
        let (t, _, out) = timed(&mut in_ns(
            &scanner,
            netmon,
            &[
                "scan",
                ICMP_HOST,
                "-p",
                "1-10000",
                "--no-service",
                "-n",
                "--format",
                "json",
            ],
        ))?;
        let found = netmon_open(&out)?;
        ensure!(
            found == icmp_expected,
            "round {round}, ICMP-limited host: netmon found {found:?}, expected {icmp_expected:?}"
        );
        let (t2, _, out) = timed(&mut in_ns(
            &scanner,
            &nmap,
            &["-p", "1-10000", "-n", "-oG", "-", ICMP_HOST],
        ))?;
        let found = nmap_open(&out);
        if found != icmp_expected {
            eprintln!("round {round}, ICMP-limited host: nmap found {found:?}");
        }
        icmp_ours.push(t);
        icmp_theirs.push(t2);
        line.push_str(&format!(" icmp-limited netmon {t:.2} s nmap {t2:.2} s;"));
        // The service phase: with services minus without.
        let svc = |extra: &[&str]| -> Result<f64> {
            let mut args = vec![
                "scan",
                ICMP_HOST,
                "-p",
                "22,80,443,9999",
                "-n",
                "--format",
                "json",
            ];
            args.extend_from_slice(extra);
            let (t, _, out) = timed(&mut in_ns(&scanner, netmon, &args))?;
            let found = netmon_open(&out)?;
            ensure!(
                found == [22, 80, 443, 9999].into(),
                "round {round}, service phase: netmon found {found:?}"
            );
            Ok(t)
        };
        let bare = svc(&["--no-service"])?;
        let with = svc(&["--service-timeout", "2s"])?;
        service_phase.push((with - bare).max(0.0));
        line.push_str(&format!(" service phase {:.2} s;", (with - bare).max(0.0)));

        let (t, _, out) = timed(&mut in_ns(
            &scanner,
            netmon,
            &[
                "scan",
                "10.202.0.0/24",
                "--discovery-only",
                "-n",
                "--format",
                "json",
            ],
        ))?;
        let up = netmon_up(&out)?;
        ensure!(
            up == expected_hosts,
            "round {round}: netmon discovery found {up:?}, expected {expected_hosts:?}"
        );
        d_ours.push(t);
        let (t2, _, out) = timed(&mut in_ns(
            &scanner,
            &nmap,
            &["-sn", "-T4", "-n", "-oG", "-", "10.202.0.0/24"],
        ))?;
        let up = nmap_up(&out);
        ensure!(
            up == expected_hosts,
            "round {round}: nmap discovery found {up:?}, expected {expected_hosts:?}"
        );
        d_theirs.push(t2);
        eprintln!("{line} discovery netmon {t:.2} s nmap {t2:.2} s");
    }
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let mut md = String::new();
    let _ = writeln!(md, "## 4. Scanner\n");
    let _ = writeln!(
        md,
        "`netmon scan` against `nmap` from Debian's packages, interleaved (netmon, nmap, \
         netmon, nmap…) in network namespaces this benchmark creates: a full TCP connect scan \
         of all 65,535 ports (a host over veth and a bridge, and the scanner namespace's own \
         loopback; {} listeners, both tools must report exactly them) and discovery of a /24 \
         holding {LIVE_HOSTS} live hosts (both must report exactly them). Wall time per run, \
         medians of {rounds} rounds.\n",
        OPEN_PORTS.len()
    );
    let _ = writeln!(
        md,
        "| benchmark | netmon | nmap | nmap / netmon | target | result |\n| --- | --- | --- | --- | --- | --- |"
    );
    let mut scan_ok = false;
    for (k, (label, _)) in scans.iter().enumerate() {
        let (m_ours, m_theirs) = (median(&ours[k]), median(&theirs[k]));
        let ok = m_ours < 2.0 && m_theirs / m_ours >= 2.0;
        scan_ok |= ok;
        let _ = writeln!(
            md,
            "| TCP connect scan, 65535 ports, {label} | {m_ours:.2} s | {m_theirs:.2} s (`-sT -p- -T4 -n`) | {:.1}x | < 2 s, >= 2x | {} |",
            m_theirs / m_ours,
            verdict(ok)
        );
        let (c_ours, c_theirs) = (median(&ours_cpu[k]), median(&theirs_cpu[k]));
        let _ = writeln!(
            md,
            "| ↳ CPU time (user + system) of that scan | {c_ours:.2} s | {c_theirs:.2} s | {:.1}x | (information) | |",
            c_theirs / c_ours
        );
    }
    let mut defaults_ok = true;
    for (k, (label, _, _)) in DEFAULTS.iter().enumerate() {
        let (m_ours, m_theirs) = (median(&def_ours[k]), median(&def_theirs[k]));
        let ok = m_theirs / m_ours >= 2.0;
        defaults_ok &= ok;
        let label = if k == 2 && !delayed {
            label.replace(", 20 ms delay each way", " (no netem here: no delay)")
        } else {
            label.to_string()
        };
        let _ = writeln!(
            md,
            "| defaults, 65535 ports, {label} | {m_ours:.2} s | {m_theirs:.2} s (`-p- -n`) | {:.1}x | >= 2x, same open ports | {} |",
            m_theirs / m_ours,
            verdict(ok)
        );
    }
    let (i_ours, i_theirs) = (median(&icmp_ours), median(&icmp_theirs));
    let icmp_ok = i_theirs / i_ours >= 2.0;
    let _ = writeln!(
        md,
        "| ICMP-rate-limited host (REJECT with ICMP, 5 ICMP/s), ports 1-10000, defaults as root | {i_ours:.2} s | {i_theirs:.2} s (`-p 1-10000 -n`) | {:.1}x | >= 2x, same open ports | {} |",
        i_theirs / i_ours,
        verdict(icmp_ok)
    );
    let phase = median(&service_phase);
    let phase_ok = phase <= 1.5 * SERVICE_TIMEOUT_S;
    let _ = writeln!(
        md,
        "| service phase, 4 open ports, one silent, `--service-timeout 2s` | {phase:.2} s | | | <= {:.1} s | {} |",
        1.5 * SERVICE_TIMEOUT_S,
        verdict(phase_ok)
    );
    let (d_m_ours, d_m_theirs) = (median(&d_ours), median(&d_theirs));
    let disc_ok = d_m_ours < 5.0;
    let _ = writeln!(
        md,
        "| discovery of a /24 with {LIVE_HOSTS} live hosts, exact set | {d_m_ours:.2} s | {d_m_theirs:.2} s (`-sn -T4 -n`) | {:.1}x | < 5 s, no false positives | {} |",
        d_m_theirs / d_m_ours,
        verdict(disc_ok)
    );
    let _ = writeln!(
        md,
        "\nThe connect-scan target holds when either place meets it (the issue allows a \
         namespace host or loopback).\n\n**Commands**\n\n```sh\n{}\n# which runs, per round:\n\
         netmon scan TARGET -p- --method connect --rate 0 -n --no-service --format json\n\
         nmap -sT -p- -T4 -n -oG - TARGET\n\
         netmon scan TARGET -p- --no-service -n --format json   # defaults (also as nobody)\n\
         nmap -p- -n -oG - TARGET\n\
         netmon scan 10.201.0.4 -p 1-10000 --no-service -n --format json   # ICMP-limited\n\
         nmap -p 1-10000 -n -oG - 10.201.0.4\n\
         netmon scan 10.201.0.4 -p 22,80,443,9999 -n [--no-service | --service-timeout 2s]\n\
         netmon scan 10.202.0.0/24 --discovery-only -n --format json\n\
         nmap -sn -T4 -n -oG - 10.202.0.0/24\n```\n",
        env.command_line
    );
    // The OS fingerprint beside nmap's, once.
    let (_, _, out) = timed(&mut in_ns(
        &scanner,
        netmon,
        &[
            "scan",
            "10.201.0.2",
            "-p",
            "22,80,81",
            "--no-service",
            "-O",
            "-n",
            "--format",
            "json",
        ],
    ))?;
    let ours_os = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "host")
        .map(|v| {
            format!(
                "{} (confidence {}, {}; observed `{}`)",
                v["os"]["label"].as_str().unwrap_or("none"),
                v["os"]["confidence"],
                v["os"]["source"].as_str().unwrap_or("-"),
                v["os"]["observed"].as_str().unwrap_or("-")
            )
        })
        .unwrap_or_else(|| "none".into());
    let (_, _, out) = timed(&mut in_ns(
        &scanner,
        &nmap,
        &["-O", "-n", "-p", "22,80,81", "10.201.0.2"],
    ))?;
    let theirs_os = out
        .lines()
        .filter(|l| {
            [
                "Running",
                "OS details",
                "Aggressive OS",
                "No exact OS",
                "Too many",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(
        md,
        "**OS fingerprint** of the namespace host (Linux {}): netmon `-O`: {ours_os}; `nmap -O`: {theirs_os}.\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(md, "**Machine**\n");
    md.push_str(&env.machine);
    let _ = writeln!(md, "- load average when this section started: {load}");
    let _ = writeln!(md, "- load average when it ended: {}", proc::load_average());
    Ok((
        Section {
            id: "scan",
            markdown: md,
        },
        scan_ok && disc_ok && defaults_ok && icmp_ok && phase_ok,
    ))
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
