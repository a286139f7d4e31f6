//! `netmon run`: flags → checked [`pipeline::Options`] → [`pipeline::run`], which
//! attaches and moves events from the kernel to the sink (and every other consumer)
//! until a signal arrives or the reader of stdout goes away.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;

use crate::{
    flow::{FlowConfig, NS_PER_S},
    output::Format,
    pipeline,
    probe::BackendChoice,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Output format: `json` (JSON Lines, for log shippers) or `text` (for people).
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Append events to FILE instead of writing them to stdout. FILE is created private
    /// (0600) and may not be a symbolic link; SIGHUP reopens it (for logrotate: rename,
    /// then `kill -HUP`).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Which kernel hooks to use: `auto` picks the best the kernel accepts, per capability.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Seconds between `stats` lines.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stats_interval: u64,
    /// Ring buffer size in KiB: a power of two, at least 4. Bigger absorbs longer bursts.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// Longest an event waits in the kernel before netmon reads it, in milliseconds.
    /// The programs wake netmon only when the ring buffer fills up (a quarter full) and
    /// netmon otherwise reads it on this timer: far fewer wake-ups on a busy host.
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_latency_ms: u64,
    /// Forward the eBPF programs' own diagnostics to stderr (or as `log` events with
    /// `--events log`): `warn` (anomalies such as failed map inserts or a full ring
    /// buffer) or `debug` (also what they skip). `off` costs nothing: the programs do
    /// not even format their messages.
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "off")]
    pub ebpf_log: crate::probe::EbpfLog,
    /// Seconds between `flow` summaries of long-lived flows (bytes so far).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub flow_interval: u64,
    /// Seconds without a datagram after which a UDP flow is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub udp_timeout: u64,
    /// Most flows tracked at once; beyond it the flows idle the longest are dropped
    /// (and counted in `stats`).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_flows: u64,
    /// Keep every privilege netmon started with. By default, once its programs are
    /// attached, netmon keeps only CAP_SYS_PTRACE and CAP_SYS_ADMIN (and CAP_NET_RAW
    /// when the scanner runs) and sets no_new_privs (see docs/security.md).
    #[arg(long)]
    pub keep_privileges: bool,
    #[command(flatten)]
    pub config: super::ConfigArgs,
    /// Keep the history in FILE (SQLite) instead of `[history] path`. It is on by
    /// default, in /var/lib/netmon/netmon.db; when netmon cannot write there it warns
    /// once and keeps none. See docs/history.md.
    #[arg(long, value_name = "FILE", conflicts_with = "no_history")]
    pub history: Option<PathBuf>,
    /// Keep no history (also `[history] enabled = false`).
    #[arg(long)]
    pub no_history: bool,
    /// Serve Prometheus metrics (`GET /metrics`, text format 0.0.4) on ADDR, e.g.
    /// `127.0.0.1:9464`. Off by default. Any address given is used as is: one that is
    /// not loopback exposes the metrics to that network (see docs/metrics.md).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Event types to add to the stream beyond the default ones: `exec` (every program
    /// a process execs, with its lineage; also `[events] exec = true`), `log` (the
    /// eBPF programs' messages that `--ebpf-log` enables, instead of on stderr).
    #[arg(long, value_name = "TYPE", value_delimiter = ',')]
    pub events: Vec<ExtraEvent>,
    /// Serve the read-only HTTP API on ADDR (`IP:PORT`, `[IPv6]:PORT`, or an IP for
    /// port 9469); repeat for several addresses; `off` serves none. Default:
    /// 127.0.0.1:9469 only. See docs/api.md.
    #[arg(long, value_name = "ADDR")]
    pub api: Vec<String>,
    /// The API's bearer token file, made at first start (0600) when missing.
    #[arg(long, value_name = "FILE", default_value = crate::api::auth::DEFAULT_TOKEN_FILE)]
    pub api_token_file: PathBuf,
    /// Allow plain HTTP on a non-loopback `--api` address (prints a warning): anyone
    /// on the path can read the token and the data.
    #[arg(long)]
    pub api_insecure: bool,
    /// Serve the API over TLS with this certificate (PEM, leaf first; read again on
    /// SIGHUP). Needs --api-tls-key. Required for a non-loopback --api address unless
    /// --api-insecure.
    #[arg(long, value_name = "FILE", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key of --api-tls-cert (PEM; read again on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Most API event streams at once; more are refused with 503 (and counted).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub api_max_streams: u64,
    /// Recent events the API keeps so that a stream can resume (`Last-Event-ID`),
    /// about 1 KiB each (an event, and its JSON once a client has read it).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub api_replay: u64,
    /// The API thread's nice value (0–19). By default 19: on a saturated machine the
    /// API yields to the workload and to netmon's event loop, and streams that fall
    /// behind get `lagged` with the exact count; 0 serves observers at the workload's
    /// priority.
    #[arg(long, value_name = "N", default_value_t = crate::api::DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub api_nice: i32,
    /// Serve the API's `/metrics` without the token (for Prometheus scrapers that have
    /// none); every other endpoint still needs it. Off by default.
    #[arg(long)]
    pub api_metrics_open: bool,
    /// Test only: subscribe a consumer with a queue of N events that never reads, to
    /// show that a stalled consumer loses only its own events (`stats.consumers`).
    #[arg(long, value_name = "N", hide = true)]
    pub test_stalled_consumer: Option<usize>,
}

/// Event types off by default (`--events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtraEvent {
    /// `exec`: a process exec'd a program.
    Exec,
    /// `log`: a message of netmon's eBPF programs (with `--ebpf-log warn|debug`).
    Log,
}

/// The history `netmon run` keeps: `--no-history` or `enabled = false` keep none;
/// `--history FILE` overrides the configured file.
fn history_config(
    configured: &crate::history::HistoryConfig,
    file: Option<PathBuf>,
    off: bool,
) -> Option<crate::history::HistoryConfig> {
    if off || (!configured.enabled && file.is_none()) {
        return None;
    }
    let mut h = configured.clone();
    if let Some(file) = file {
        h.path = file;
    }
    Some(h)
}

/// The API to serve: the `--api` addresses (default 127.0.0.1:9469), or none for
/// `--api off`.
fn api_config(args: &RunArgs) -> Result<Option<crate::api::ApiConfig>> {
    let listen = if args.api.is_empty() {
        vec![crate::api::DEFAULT_LISTEN.to_owned()]
    } else {
        args.api.clone()
    };
    if listen.iter().any(|a| a == "off") {
        if listen.len() > 1 {
            anyhow::bail!(
                "--api off cannot be combined with an --api address; give one or the other"
            );
        }
        return Ok(None);
    }
    let listen = listen
        .iter()
        .map(|a| parse_api_addr(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(crate::api::ApiConfig {
        listen,
        token_file: args.api_token_file.clone(),
        insecure: args.api_insecure,
        tls: match (&args.api_tls_cert, &args.api_tls_key) {
            (Some(cert), Some(key)) => Some(crate::api::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        max_streams: args.api_max_streams as usize,
        replay: args.api_replay as usize,
        nice: args.api_nice,
        explicit: !args.api.is_empty()
            || args.api_token_file != std::path::Path::new(crate::api::auth::DEFAULT_TOKEN_FILE),
        metrics_open: args.api_metrics_open,
    }))
}

fn parse_api_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 9469));
    }
    Err(format!(
        "--api {}: not an address (127.0.0.1:9469, [::1]:9469, an IP, or off)",
        crate::escape::remote(s)
    ))
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: must be a power of two between 4 and 1048576"
        ));
    }
    Ok(kib)
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let api = api_config(&args)?;
    let opts = pipeline::Options {
        format: args.format,
        output: args.output,
        backend: args.backend,
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        stats_interval: Duration::from_secs(args.stats_interval),
        max_latency: Duration::from_millis(args.max_latency_ms),
        ebpf_log: args.ebpf_log,
        ebpf_log_events: args.events.contains(&ExtraEvent::Log),
        flows: FlowConfig {
            cap: args.max_flows as usize,
            udp_idle_ns: args.udp_timeout * NS_PER_S,
            summary_interval_ns: args.flow_interval * NS_PER_S,
        },
        flow_interval: Duration::from_secs(args.flow_interval),
        // Often enough that a UDP flow closes within a quarter of its timeout.
        udp_interval: Duration::from_secs((args.udp_timeout / 4).clamp(1, 15)),
        stalled_consumer: args.test_stalled_consumer,
        keep_privileges: args.keep_privileges,
        history: None,
        history_named: false,
        sink: true,
        consumer: None,
        metrics: args.metrics,
        api,
        config: args.config.load()?,
    };
    let mut opts = opts;
    if opts.ebpf_log_events && opts.ebpf_log == crate::probe::EbpfLog::Off {
        eprintln!(
            "netmon: warning: --events log: the programs log nothing with --ebpf-log off; add --ebpf-log warn or --ebpf-log debug"
        );
    }
    if args.events.contains(&ExtraEvent::Exec) {
        opts.config.events.exec = true;
    }
    opts.history_named = args.history.is_some()
        || opts.config.history.path != std::path::Path::new(crate::history::DEFAULT_PATH);
    opts.history = history_config(&opts.config.history, args.history, args.no_history);
    pipeline::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
