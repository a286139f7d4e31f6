//! `netmon scan TARGET…`: discover hosts, scan their ports, name their services.
//!
//! Output: `--format text` (a report per host, then a summary line) or `--format json`
//! (JSON Lines: a `host` event per host, then a `port` event per open port; the
//! summary goes to stderr). See `docs/events.md`, "Scanner events".
use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use chrono::Utc;
use clap::Args;

use crate::{
    event::{Event, EventBody, Proto},
    output::Format,
    scan::{
        self, HostState, Method, ScanOptions,
        config::parse_duration,
        discover::DiscoveryOptions,
        ports::{self, PortList},
        target,
    },
    system,
};

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// What to scan: IPv4/IPv6 addresses, CIDRs (10.0.0.0/24), ranges (10.0.0.1-20,
    /// 10.0.0.1-10.0.0.9, 10.0.1-2.*) or hostnames. Public addresses need --allow-public.
    #[arg(required = true, value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Ports: `22,80,1000-2000`, `-` for all (`-p-`), `U:53,T:22` per protocol,
    /// service names (`ssh`). Default: the 1000 most common TCP ports.
    #[arg(
        short = 'p',
        long = "ports",
        value_name = "SPEC",
        allow_hyphen_values = true,
        conflicts_with = "top_ports"
    )]
    pub ports: Option<String>,
    /// Scan the N most common TCP ports (netmon's ranked list).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub top_ports: Option<u32>,
    /// Also probe the N most common UDP ports (DNS, NTP, SNMP… get real requests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub top_udp_ports: Option<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// TCP scan method: `auto` uses a SYN scan when the process has CAP_NET_RAW.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// Allow targets outside private, loopback and link-local ranges. Only scan what
    /// you are allowed to.
    #[arg(long)]
    pub allow_public: bool,
    /// Hard cap on packets per second, all probes together (0: none). Without it the
    /// SYN scan paces itself by a congestion window (as nmap's) and the connect scan by
    /// its connects in flight.
    #[arg(long, value_name = "PPS", default_value_t = scan::DEFAULT_RATE_PPS)]
    pub rate: u32,
    /// How long to wait for each answer: seconds, or with a unit (`500ms`, `2s`).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Skip host discovery: treat every target as up (nmap's -Pn).
    #[arg(long = "no-discovery", visible_alias = "Pn")]
    pub no_discovery: bool,
    /// Only discover hosts, scan no ports (nmap's -sn).
    #[arg(long = "discovery-only", visible_alias = "sn", conflicts_with_all = ["ports", "top_ports"])]
    pub discovery_only: bool,
    /// Skip service detection (report port states only).
    #[arg(long)]
    pub no_service: bool,
    /// How long service detection of one open port may take, all its probes together
    /// (the ports are detected in parallel, so this bounds the whole phase).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_timeout)]
    pub service_timeout: Duration,
    /// Send timing probes for the uptime guess even with --no-service (three SYNs 100 ms
    /// apart to one open port per host; they run beside service detection otherwise).
    /// SYN scan only.
    #[arg(short = 'O', long = "os")]
    pub os: bool,
    /// p0f signature file for the OS fingerprint (p0f 3's format, `[tcp:response]`).
    /// Default: Debian's /etc/p0f/p0f.fp when installed; netmon's built-in signatures
    /// are used beside it, or alone.
    #[arg(long = "p0f-fp", value_name = "FILE")]
    pub p0f_fp: Option<std::path::PathBuf>,
    /// Skip reverse DNS (nmap's -n).
    #[arg(short = 'n', long = "no-dns")]
    pub no_dns: bool,
    /// Trace the route to each live host (ICMP echo with growing TTLs).
    #[arg(long)]
    pub traceroute: bool,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Some(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(60) => Ok(d),
        Some(_) => Err(format!("`{s}`: must be between 10ms and 60s")),
        None => Err(format!("`{s}` is not a duration (try `500ms`, `2s`)")),
    }
}

impl ScanArgs {
    /// Flags → checked options (the one place raw flags are interpreted).
    fn options(&self) -> Result<ScanOptions> {
        let mut ports = match (&self.ports, self.top_ports) {
            (Some(spec), _) => ports::parse(spec)?,
            (None, Some(n)) => PortList {
                tcp: ports::top(Proto::Tcp, n as usize),
                udp: Vec::new(),
            },
            (None, None) => PortList {
                tcp: ports::top(Proto::Tcp, 1000),
                udp: Vec::new(),
            },
        };
        if let Some(n) = self.top_udp_ports {
            ports.udp.extend(ports::top(Proto::Udp, n as usize));
            ports.udp.sort_unstable();
            ports.udp.dedup();
        }
        if self.discovery_only {
            ports = PortList::default();
        }
        Ok(ScanOptions {
            ports,
            method: self.method,
            rate_pps: self.rate,
            timeout: self.timeout,
            discovery: !self.no_discovery,
            discovery_opts: DiscoveryOptions {
                timeout: self.timeout,
                ..DiscoveryOptions::default()
            },
            service_detection: !self.no_service,
            service_timeout: self.service_timeout,
            os_probes: self.os || !self.no_service,
            signatures: Default::default(),
            reverse_dns: !self.no_dns,
            traceroute: self.traceroute,
            allow_public: self.allow_public,
            allow: None,
            progress: true,
        })
    }
}

pub fn run(args: ScanArgs) -> Result<ExitCode> {
    let mut opts = args.options()?;
    let (path, required) = match &args.p0f_fp {
        Some(p) => (p.clone(), true),
        None => (std::path::PathBuf::from(scan::DEFAULT_P0F_FP), false),
    };
    let (signatures, sig_warnings) =
        scan::fingerprint::load(Some(&path), required).map_err(anyhow::Error::msg)?;
    opts.signatures = std::sync::Arc::new(signatures);
    for w in &sig_warnings {
        crate::eline!("netmon: warning: {w}");
    }
    let targets = target::parse_all(&args.targets)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let host = system::hostname();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let format = args.format;
    let mut total_open = 0usize;
    // Each host is written as its group finishes (and flushed, so a reader sees the
    // first hosts of a large range at once); the summary comes last.
    let mut write = |found: scan::Found| -> std::io::Result<()> {
        let h = match found {
            scan::Found::Warning(w) => {
                crate::eline!("netmon: warning: {w}");
                return Ok(());
            }
            scan::Found::Host(h) => h,
        };
        total_open += h.ports.len();
        match format {
            Format::Json => {
                let ts = Utc::now();
                let mut line = |body: EventBody| -> std::io::Result<()> {
                    serde_json::to_writer(
                        &mut out,
                        &Event {
                            ts,
                            host: host.clone().into(),
                            body,
                        },
                    )?;
                    out.write_all(b"\n")
                };
                line(EventBody::Host(Box::new(h.host.clone())))?;
                for p in &h.ports {
                    line(EventBody::Port(p.clone()))?;
                }
            }
            Format::Text => write_host_text(&mut out, &h)?,
        }
        out.flush()
    };
    let scanned = runtime.block_on(async {
        let plan = scan::plan(&targets, opts.allow_public, None).await?;
        anyhow::Ok(scan::run(&plan, &opts, &mut write).await)
    })?;
    let outcome = match scanned {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).context("cannot write the scan results"),
    };
    let per_host = opts.ports.len();
    let summary = format!(
        "netmon scan: {} host{} up, {} down; {} open port{}; {} port{} per host, {} scan; {:.2} s",
        outcome.up,
        if outcome.up == 1 { "" } else { "s" },
        outcome.down,
        total_open,
        if total_open == 1 { "" } else { "s" },
        per_host,
        if per_host == 1 { "" } else { "s" },
        outcome.method,
        outcome.elapsed.as_secs_f64()
    );
    match args.format {
        Format::Json => crate::eline!("{summary}"),
        Format::Text => {
            let written = writeln!(out, "{summary}").and_then(|()| out.flush());
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e).context("cannot write the scan results"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_host_text(out: &mut impl std::io::Write, h: &scan::HostResult) -> std::io::Result<()> {
    use crate::escape::remote;
    let s = &h.host;
    let mut head = s.addr.to_string();
    if let Some(n) = &s.name {
        head.push_str(&format!(" ({})", remote(n)));
    }
    if s.state == HostState::Down {
        return writeln!(out, "{head}: down (no answer to discovery probes)\n");
    }
    let mut facts = vec![format!(
        "up ({})",
        remote(s.reason.as_deref().unwrap_or("?"))
    )];
    if let Some(ms) = s.rtt_ms {
        facts.push(format!("{ms:.2} ms"));
    }
    if let Some(m) = &s.mac {
        facts.push(format!("MAC {}", remote(m)));
    }
    if let Some(d) = s.distance {
        facts.push(format!("{d} hop{}", if d == 1 { "" } else { "s" }));
    }
    writeln!(out, "{head}: {}", facts.join(", "))?;
    match &s.os {
        Some(o) => writeln!(
            out,
            "  OS: {} ({}, confidence {:.0}%, {}; signature {})",
            remote(&o.label),
            if o.exact {
                "exact match"
            } else {
                "closest match"
            },
            o.confidence * 100.0,
            remote(&o.source),
            remote(&o.observed)
        )?,
        None => {
            if let Some(o) = &s.os_hint {
                writeln!(out, "  OS: {}", remote(o))?;
            }
        }
    }
    if let Some(u) = &s.uptime {
        writeln!(
            out,
            "  Uptime: {:.2} days (since {}; {} Hz clock; {})",
            u.seconds as f64 / 86_400.0,
            remote(&u.booted),
            u.clock_hz,
            remote(&u.note)
        )?;
    }
    if let Some(trace) = &s.trace {
        for hop in trace {
            let addr = hop.addr.map_or("*".to_owned(), |a| a.to_string());
            let rtt = hop.rtt_ms.map_or(String::new(), |r| format!(" {r:.2} ms"));
            writeln!(out, "  hop {:>2} {addr}{rtt}", hop.ttl)?;
        }
    }
    if !h.ports.is_empty() {
        writeln!(
            out,
            "  {:<11} {:<14} {:<14} VERSION",
            "PORT", "STATE", "SERVICE"
        )?;
        for p in &h.ports {
            let proto = match p.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            let svc = match (&p.service, p.service_guessed) {
                (Some(n), true) => format!("{n}?"),
                (Some(n), false) => n.clone(),
                (None, _) => "unknown".into(),
            };
            writeln!(
                out,
                "  {:<11} {:<14} {:<14} {}",
                format!("{}/{proto}", p.port),
                p.state.as_str(),
                remote(&svc),
                remote(p.version.as_deref().unwrap_or(""))
            )?;
        }
    }
    if s.ports_scanned > 0 {
        writeln!(
            out,
            "  {} open, {} closed, {} filtered of {} scanned",
            s.open, s.closed, s.filtered, s.ports_scanned
        )?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn args(argv: &[&str]) -> super::ScanArgs {
        let mut full = vec!["netmon", "scan"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Scan(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn nmap_style_flags() {
        let o = args(&["10.0.0.1", "-p-"]).options().unwrap();
        assert_eq!(o.ports.tcp.len(), 65535);
        let o = args(&["10.0.0.1", "-p", "22,U:53"]).options().unwrap();
        assert_eq!(
            (o.ports.tcp.as_slice(), o.ports.udp.as_slice()),
            (&[22][..], &[53][..])
        );
        let o = args(&["10.0.0.1", "--top-ports", "10", "--top-udp-ports", "3"])
            .options()
            .unwrap();
        assert_eq!((o.ports.tcp.len(), o.ports.udp.len()), (10, 3));
        let o = args(&["10.0.0.1"]).options().unwrap();
        assert_eq!(o.ports.tcp.len(), 1000);
        assert_eq!(o.rate_pps, crate::scan::DEFAULT_RATE_PPS);
        let o = args(&["10.0.0.1", "--sn", "--timeout", "250ms", "-n"])
            .options()
            .unwrap();
        assert!(o.ports.is_empty() && !o.reverse_dns);
        assert_eq!(o.timeout, std::time::Duration::from_millis(250));
        assert!(!args(&["10.0.0.1", "--Pn"]).options().unwrap().discovery);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Cli::try_parse_from(["netmon", "scan"]).is_err(),
            "a target is required"
        );
        assert!(Cli::try_parse_from(["netmon", "scan", "x", "--top-ports", "0"]).is_err());
        assert!(Cli::try_parse_from(["netmon", "scan", "x", "--timeout", "2h"]).is_err());
        let err = args(&["10.0.0.1", "-p", "1,2,x"])
            .options()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`x`"), "{err}");
    }
}
