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
    /// diagnostics at `debug`; close a TCP connection opened before attaching (which
    /// they log), make a loopback TCP connection and a UDP exchange (which they should
    /// not), and print for SECONDS what they logged (root). Exit 1 if the first never
    /// shows.
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
            ebpf_log_to: probe::LogTo::Stderr,
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
///
/// First a canary: a TCP connection opened before the programs attach and closed after,
/// whose two closes the programs log at `debug` (a flow they did not see begin, see
/// `netmon-ebpf/src/tcp.rs`): it shows that the log path works end to end. Then clean
/// traffic (a loopback TCP connection, a UDP exchange), which should log nothing.
/// Exit 1 when the canary's messages never came.
fn trace(seconds: u64) -> Result<ExitCode> {
    use std::net::{TcpListener, TcpStream};

    let canary_listener = TcpListener::bind("127.0.0.1:0")?;
    let canary = TcpStream::connect(canary_listener.local_addr()?)?;
    let (canary_server, _) = canary_listener.accept()?;
    let ports = (
        canary.local_addr()?.port(),
        canary_server.local_addr()?.port(),
    );
    let mut tracer = Tracer::start(&LoadOptions {
        backend: BackendChoice::Auto,
        ring_buffer_bytes: 4096 * 4,
        dns_ports: vec![53],
        wakeup_bytes: None,
        ebpf_log: probe::EbpfLog::Debug,
        ebpf_log_to: probe::LogTo::Queue,
        dns_rate: probe::DnsRate::UNLIMITED,
    })?;
    let Some(mut queue) = tracer.take_log_queue() else {
        anyhow::bail!(
            "netmon doctor --trace: the programs' log cannot be read ({})",
            tracer.report.warnings.join("; ")
        );
    };
    println!(
        "netmon doctor --trace: attached ({}), the programs logging at debug, for {seconds} s",
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
    println!(
        "  closing a TCP connection opened before attaching (127.0.0.1:{} → 127.0.0.1:{}): the programs should log that they did not see it begin",
        ports.0, ports.1
    );
    drop(canary);
    drop(canary_server);
    drop(canary_listener);
    println!(
        "  making clean traffic: a loopback TCP connection with 13 bytes each way, a UDP datagram between two loopback sockets (nothing to log)"
    );
    if let Err(e) = clean_exchange() {
        eprintln!("netmon: warning: the loopback exchange failed: {e}");
    }
    let mut tally = Tally::new(ports);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        while let Ok(log) = queue.messages.try_recv() {
            tally.print(&log);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Dropping the tracer forwards what is left (into the queue), then detaches.
    drop(tracer);
    while let Ok(log) = queue.messages.try_recv() {
        tally.print(&log);
    }
    let dropped = queue.dropped.load(std::sync::atomic::Ordering::Relaxed);
    println!("{}", tally.summary(dropped));
    Ok(if tally.canary > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A fresh loopback TCP connection and a UDP exchange: traffic the programs see whole,
/// so nothing for them to log (netmon's own events are dropped in the kernel, after
/// the checks that log).
fn clean_exchange() -> std::io::Result<()> {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream, UdpSocket},
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let mut buf = [0u8; 13];
    client.write_all(b"netmon doctor")?;
    server.read_exact(&mut buf)?;
    server.write_all(b"netmon doctor")?;
    client.read_exact(&mut buf)?;
    drop(client);
    drop(server);
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    a.send_to(b"netmon doctor", b.local_addr()?)?;
    b.recv_from(&mut buf)?;
    Ok(())
}

/// What `--trace` printed: the canary's messages and the others.
struct Tally {
    /// The canary's ports (client, server): its two closes name them in both orders.
    ports: (u16, u16),
    canary: u64,
    others: u64,
}

impl Tally {
    fn new(ports: (u16, u16)) -> Tally {
        Tally {
            ports,
            canary: 0,
            others: 0,
        }
    }

    fn is_canary(&self, message: &str) -> bool {
        let (a, b) = self.ports;
        message.contains("did not see begin")
            && (message.contains(&format!("port {a} → {b},"))
                || message.contains(&format!("port {b} → {a},")))
    }

    fn print(&mut self, log: &crate::event::log::KernelLog) {
        let canary = self.is_canary(&log.message);
        if canary {
            self.canary += 1;
        } else {
            self.others += 1;
        }
        println!(
            "  ebpf {} {}: {}{}",
            log.level.as_str(),
            crate::escape::for_terminal(&log.target),
            crate::escape::for_terminal(&log.message),
            if canary {
                "  (expected: the canary)"
            } else {
                ""
            }
        );
    }

    fn summary(&self, dropped: u64) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "netmon doctor --trace: done: {} message(s) about the connection opened before attaching",
            self.canary
        );
        if self.canary == 0 {
            out.push_str(
                " -- NONE: the programs' log does not reach netmon on this host (see the warnings above)",
            );
        } else {
            out.push_str(" (the log path works)");
        }
        if self.others == 0 {
            out.push_str(
                "; nothing else: the clean traffic (and whatever else ran here meanwhile) met no anomaly the programs report",
            );
        } else {
            let _ = write!(
                out,
                "; {} other message(s), about any traffic on this host during the trace",
                self.others
            );
        }
        if dropped > 0 {
            let _ = write!(out, "; {dropped} message(s) dropped (queue full)");
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_tells_the_canary_from_other_messages_and_says_when_nothing_else_came() {
        let mut t = Tally::new((41000, 5555));
        assert!(
            t.is_canary("close of a flow netmon did not see begin: port 41000 → 5555, state 1")
        );
        assert!(
            t.is_canary("close of a flow netmon did not see begin: port 5555 → 41000, state 4")
        );
        assert!(
            !t.is_canary("close of a flow netmon did not see begin: port 41000 → 55550, state 1")
        );
        assert!(!t.is_canary("TCP_FLOWS insert failed (-7): pid 41000"));
        assert!(
            t.summary(0)
                .contains("0 message(s) about the connection opened before attaching -- NONE")
        );
        t.canary = 2;
        let s = t.summary(0);
        assert!(
            s.contains("2 message(s)") && s.contains("the log path works"),
            "{s}"
        );
        assert!(s.contains("nothing else: the clean traffic"), "{s}");
        t.others = 3;
        let s = t.summary(4);
        assert!(
            s.contains("3 other message(s)") && s.contains("4 message(s) dropped"),
            "{s}"
        );
    }
}
