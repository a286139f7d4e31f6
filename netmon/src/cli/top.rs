//! `netmon top`: flags → where the events come from (agents, the local agent, or the
//! in-process pipeline) → [`crate::tui::run`].
use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    flow::{FlowConfig, NS_PER_S},
    output::Format,
    pipeline,
    probe::BackendChoice,
    tui::{
        self,
        app::{App, Caps},
        source::{Source, agent},
    },
};

/// Where a local agent's API listens by default.
pub const LOCAL_AGENT: &str = "127.0.0.1:9469";
/// The local agent's token file by default.
pub const TOKEN_FILE: &str = "/var/lib/netmon/api.token";

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Watch the agent at URL (`http://HOST:PORT`, or `https://` when it serves TLS);
    /// repeat to watch several at once, merged with a host column. Without it netmon
    /// top watches the local agent, or traces by itself when none runs and it is root.
    #[arg(long, value_name = "URL")]
    pub agent: Vec<String>,
    /// The agents' API token (a file holding it); NETMON_TOKEN overrides.
    #[arg(long, value_name = "FILE", default_value = TOKEN_FILE)]
    pub token_file: PathBuf,
    /// Trust only this CA (PEM) for `https://` agents, e.g. a self-signed
    /// deployment's (see docs/api.md); default: the system's CA certificates.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Start with the time cursor this far back (`2h`, `30m`) or at this UTC time
    /// (`2026-12-01T10:00Z`): Processes, Connections and Alerts show the 5 minutes
    /// from then on, from the agents' history; `[`/`]` move it 5 minutes, and `]`
    /// up to now is live again.
    #[arg(long, value_name = "SPAN|TIME")]
    pub since: Option<String>,
    /// Trace in-process even if a local agent answers (needs root).
    #[arg(long, conflicts_with = "agent")]
    pub in_process: bool,
    /// In-process only: which kernel hooks to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    #[command(flatten)]
    pub config: super::ConfigArgs,
}

pub fn run(args: TopArgs) -> Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "netmon top needs a terminal: stdout is not one (run it in a terminal; for a stream use `netmon run`)"
        );
    }
    let since = args
        .since
        .as_deref()
        .map(|s| crate::query::parse_time(s, chrono::Utc::now()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let agents = if !args.agent.is_empty() {
        args.agent.clone()
    } else if !args.in_process && local_agent_answers() {
        vec![format!("http://{LOCAL_AGENT}")]
    } else {
        Vec::new()
    };
    if !agents.is_empty() {
        let token = crate::client::token(&args.token_file)?;
        for url in &agents {
            crate::client::AgentUrl::parse(url).map_err(|e| anyhow::anyhow!("--agent {e}"))?;
        }
        let tls = if agents.iter().any(|a| a.starts_with("https:")) {
            Some(crate::client::tls_connector(args.ca_cert.as_deref())?)
        } else {
            None
        };
        let specs = agents
            .iter()
            .map(|url| agent::AgentSpec {
                url: url.clone(),
                token: token.clone(),
                tls: tls.clone(),
            })
            .collect();
        let (rx, clients) = agent::start(specs).context("cannot start the agent clients")?;
        let labels = agents.iter().map(|a| crate::escape::remote(a)).collect();
        let mut app = App::new(labels, Caps::default());
        app.set_cursor(since);
        tui::run(app, Source::Agents(rx, clients))?;
        return Ok(ExitCode::SUCCESS);
    }
    if since.is_some() {
        bail!(
            "--since needs an agent's history: start an agent (`sudo netmon run`) and run `netmon top --since …`, or watch one with --agent URL"
        );
    }
    if crate::system::check_privileges().is_err() {
        bail!(
            "no netmon agent answers on {LOCAL_AGENT}, and tracing in-process needs root: start an agent (`sudo netmon run`) and run `netmon top`, run `sudo netmon top`, or watch a remote one with `netmon top --agent http://HOST:9469`"
        );
    }
    let opts = pipeline::Options {
        format: Format::Json,
        output: None,
        backend: args.backend,
        ring_buffer_bytes: 4096 * 1024,
        // Often, so the Overview's uptime and losses stay current.
        stats_interval: Duration::from_secs(2),
        max_latency: Duration::from_millis(50),
        ebpf_log: crate::probe::EbpfLog::Off,
        ebpf_log_events: false,
        flows: FlowConfig {
            cap: 100_000,
            udp_idle_ns: 60 * NS_PER_S,
            summary_interval_ns: 5 * NS_PER_S,
        },
        // Bytes per flow and process come from `flow` summaries: every few seconds.
        flow_interval: Duration::from_secs(5),
        udp_interval: Duration::from_secs(15),
        stalled_consumer: None,
        keep_privileges: false,
        history: None,
        history_named: false,
        sink: false,
        metrics: None,
        api: None,
        consumer: Some(pipeline::Consumer {
            name: "tui",
            capacity: 65_536,
            run: Box::new(|events| {
                let app = App::new(vec!["local (in-process)".into()], Caps::default());
                tui::run(app, Source::InProcess(events))
            }),
        }),
        config: args.config.load()?,
    };
    pipeline::run(opts)?;
    Ok(ExitCode::SUCCESS)
}

/// True when something accepts connections on the local agent's port.
fn local_agent_answers() -> bool {
    let addr = LOCAL_AGENT.parse().expect("a socket address");
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
