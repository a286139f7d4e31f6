//! `netmon doctor`: what this kernel and host offer netmon, what `auto` would pick, and
//! how to fix each missing piece. Exit 0 when netmon can run, 1 when it cannot.
//!
//! The backend choice is found the only reliable way: by really loading and attaching
//! (then detaching at once), exactly as `netmon run` would.
use std::{fmt::Write as _, process::ExitCode};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::{
    event::ProbeReport,
    kernel_btf,
    output::Format,
    probe::{self, BackendChoice, LoadOptions, Tracer},
    system,
};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// `text` (default) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Instead of the checks: attach as `netmon run` would, with the programs'
    /// diagnostics at `debug`, make a loopback TCP connection and a UDP exchange, and
    /// print for SECONDS what the programs logged (root).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub trace: Option<u64>,
}

/// One fact about the host: fine or not, what was seen, how to fix it.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// False only when netmon needs this and it is missing.
    pub ok: bool,
    /// True for features netmon can do without (kprobes, fentry).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub kernel: String,
    pub checks: Vec<Check>,
    /// What `netmon run --backend auto` attaches, when the probe could run.
    pub auto: Option<ProbeReport>,
    /// True when `netmon run` can observe at least one capability.
    pub can_run: bool,
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    if let Some(seconds) = args.trace {
        return trace(seconds);
    }
    let diagnosis = diagnose();
    let out = match args.format {
        Format::Json => serde_json::to_string_pretty(&diagnosis)? + "\n",
        Format::Text => render(&diagnosis),
    };
    print!("{out}");
    Ok(if diagnosis.can_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name,
        ok,
        optional: false,
        detail: detail.into(),
        fix: (!ok).then(|| fix.to_owned()),
    }
}

/// A feature netmon can do without: never "not ok", but the fix is still shown.
fn optional(name: &'static str, present: bool, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name,
        ok: true,
        optional: !present,
        detail: detail.into(),
        fix: (!present).then(|| fix.to_owned()),
    }
}

pub fn diagnose() -> Diagnosis {
    let kernel = system::kernel_release();
    let mut checks = Vec::new();
    let privileged = system::check_privileges().is_ok();
    checks.push(check(
        "privileges",
        privileged,
        if privileged {
            "root / CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN"
        } else {
            "missing"
        },
        "run netmon as root (sudo netmon …)",
    ));
    let btf = std::path::Path::new(kernel_btf::VMLINUX_BTF).exists();
    let btf_detail = match kernel_btf::resolve() {
        Ok(r) if r.missing.is_empty() => format!("{} (all offsets found)", kernel_btf::VMLINUX_BTF),
        Ok(r) => format!("missing: {}", r.missing.join(", ")),
        Err(e) => format!("unreadable: {e}"),
    };
    checks.push(check(
        "btf",
        btf,
        btf_detail,
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every current distribution kernel is)",
    ));
    let kprobes = probe::kprobes_available();
    checks.push(optional(
        "kprobes",
        kprobes,
        if kprobes { "kprobe PMU present" } else { "no /sys/bus/event_source/devices/kprobe (CONFIG_KPROBES off)" },
        "optional: netmon falls back to tracepoints; a kernel with CONFIG_KPROBES=y enables the kprobe backend",
    ));
    let tracefs = system::tracefs_path();
    checks.push(check(
        "tracefs",
        tracefs.is_some(),
        tracefs
            .as_ref()
            .map(|p| format!("mounted at {}", p.display()))
            .unwrap_or_else(|| "not mounted (netmon run mounts it at /sys/kernel/tracing)".into()),
        "mount -t tracefs tracefs /sys/kernel/tracing (netmon run does this itself when root)",
    ));
    let tp = tracefs
        .as_ref()
        .is_some_and(|p| p.join("events/sock/inet_sock_set_state").exists());
    checks.push(check(
        "tracepoint",
        tp || tracefs.is_none(),
        if tp {
            "present"
        } else if tracefs.is_none() {
            "unknown until tracefs is mounted"
        } else {
            "absent"
        },
        "needs Linux 4.16 or later",
    ));
    let cgroup = system::cgroup2_mount();
    checks.push(check(
        "cgroup v2",
        cgroup.is_ok(),
        match &cgroup {
            Ok(p) => format!("mounted at {}", p.display()),
            Err(e) => e.to_string(),
        },
        "mount -t cgroup2 none /sys/fs/cgroup/unified (UDP on the tracepoint backend needs it)",
    ));
    let bpffs = system::is_mounted("bpf");
    checks.push(Check {
        name: "bpffs",
        ok: true,
        optional: false,
        detail: if bpffs {
            "mounted".into()
        } else {
            "not mounted (netmon does not pin anything; not needed)".into()
        },
        fix: None,
    });
    checks.push(Check {
        name: "lockdown",
        ok: true,
        optional: false,
        detail: system::lockdown_mode()
            .unwrap_or_else(|| "unknown (securityfs not mounted)".into()),
        fix: None,
    });
    let memlock = system::memlock_limit();
    let memlock_ok = !system::memlock_charges_bpf() || memlock.is_none_or(|l| l >= 64 << 20);
    checks.push(check(
        "memlock",
        memlock_ok,
        match memlock {
            None => "unlimited".into(),
            Some(l) => format!(
                "{} KiB{}",
                l / 1024,
                if system::memlock_charges_bpf() {
                    " (this kernel charges BPF maps to it)"
                } else {
                    " (not used for BPF maps since 5.11)"
                }
            ),
        },
        "netmon raises it itself when it may (CAP_SYS_RESOURCE); otherwise `ulimit -l unlimited`",
    ));

    let auto = if privileged {
        match Tracer::start(&LoadOptions {
            backend: BackendChoice::Auto,
            ring_buffer_bytes: 4096 * 4,
            // Also try the optional DNS capability (port 53), as `run` does.
            dns_ports: vec![53],
            wakeup_bytes: None,
            ebpf_log: probe::EbpfLog::Off,
            ebpf_log_to_stdout: false,
            dns_rate: probe::DnsRate::UNLIMITED,
        }) {
            // Dropping the tracer detaches everything at once.
            Ok(tracer) => Some(tracer.report.clone()),
            Err(e) => {
                checks.push(check(
                    "attach",
                    false,
                    e.to_string(),
                    "see the checks above",
                ));
                None
            }
        }
    } else {
        None
    };
    let fentry = auto.as_ref().map(|r| used(r, "fentry"));
    checks.push(optional(
        "fentry",
        fentry != Some(false),
        match (&auto, fentry) {
            (_, Some(true)) => "usable".into(),
            (Some(r), _) => skipped_reason(r, "fentry").unwrap_or_else(|| "not used".into()),
            (None, _) => "not tested (needs root)".into(),
        },
        "optional: netmon falls back to kprobes or tracepoints",
    ));
    let can_run = auto
        .as_ref()
        .is_some_and(|r| r.capabilities.iter().any(|c| c.backend.is_some()));
    Diagnosis {
        kernel,
        checks,
        auto,
        can_run,
    }
}

/// `--trace SECONDS`: the programs' own log while netmon makes a little traffic.
fn trace(seconds: u64) -> Result<ExitCode> {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream, UdpSocket},
    };

    let tracer = Tracer::start(&LoadOptions {
        backend: BackendChoice::Auto,
        ring_buffer_bytes: 4096 * 4,
        dns_ports: vec![53],
        wakeup_bytes: None,
        ebpf_log: probe::EbpfLog::Debug,
        ebpf_log_to_stdout: true,
        dns_rate: probe::DnsRate::UNLIMITED,
    })?;
    println!(
        "netmon doctor --trace: attached ({}); the programs' messages for {seconds} s:",
        tracer
            .report
            .capabilities
            .iter()
            .map(|c| format!(
                "{}={}",
                c.capability,
                c.backend.as_deref().unwrap_or("none")
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Traffic of our own on loopback: the programs see it like any other (netmon's
    // own events are dropped in the kernel, after the checks that log).
    let exchange = || -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut client = TcpStream::connect(listener.local_addr()?)?;
        let (mut server, _) = listener.accept()?;
        client.write_all(b"netmon doctor")?;
        let mut buf = [0u8; 13];
        server.read_exact(&mut buf)?;
        drop(client);
        drop(server);
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let b = UdpSocket::bind("127.0.0.1:0")?;
        a.send_to(b"netmon doctor", b.local_addr()?)?;
        b.recv_from(&mut buf)?;
        Ok(())
    };
    if let Err(e) = exchange() {
        eprintln!("netmon: warning: the loopback exchange failed: {e}");
    }
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    // Dropping the tracer forwards what is left, then detaches everything.
    drop(tracer);
    println!("netmon doctor --trace: done");
    Ok(ExitCode::SUCCESS)
}

fn used(r: &ProbeReport, backend: &str) -> bool {
    r.capabilities
        .iter()
        .any(|c| c.backend.as_deref() == Some(backend))
}

fn skipped_reason(r: &ProbeReport, backend: &str) -> Option<String> {
    r.capabilities
        .iter()
        .flat_map(|c| c.skipped.iter())
        .find(|s| s.backend == backend)
        .map(|s| s.reason.clone())
}

/// The text report.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernel        {}", d.kernel);
    for c in &d.checks {
        let mark = match (c.ok, c.optional) {
            (false, _) => "MISSING",
            (true, true) => "absent",
            (true, false) => "ok",
        };
        let _ = writeln!(out, "{:<13} {mark:<7} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{:<13} fix:    {fix}", "");
        }
    }
    match &d.auto {
        Some(r) => {
            let _ = writeln!(out, "\n`netmon run --backend auto` would use:");
            for c in &r.capabilities {
                let _ = writeln!(
                    out,
                    "  {:<12} {:<10} {}",
                    c.capability,
                    c.backend.as_deref().unwrap_or("NONE"),
                    c.hooks.join(", ")
                );
                for s in &c.skipped {
                    let _ = writeln!(out, "  {:<12}   skipped {}: {}", "", s.backend, s.reason);
                }
            }
        }
        None => {
            let _ = writeln!(
                out,
                "\nnot probed: run as root to see what `auto` would attach"
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if d.can_run {
            "netmon can run on this host."
        } else {
            "netmon cannot run here as things are: see the fixes above."
        }
    );
    out
}
