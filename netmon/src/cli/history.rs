//! `netmon history`: asks `crate::query`'s questions of the history file (or, with
//! `--agent`, of an agent's API through `cli/history_agent.rs`) on a
//! read-only connection (so it works while `netmon run` writes, and for any user who
//! can read the file) and renders the rows as text, JSON Lines or CSV. Only translates
//! flags and renders: no SQL here.
use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand, ValueEnum};

use crate::{
    history::query::Store,
    query::{self, AlertRow, EventRow, FlowRow, HostRow, Question, Source, Window},
};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// Raw events (connect, accept, udp, listen, close, flow, dns, alert, scanner
    /// changes), oldest first; the newest --limit of the window.
    Events(QueryArgs),
    /// Traffic per process and remote service over the window (per-minute and hourly
    /// totals), biggest first.
    Flows(QueryArgs),
    /// Alerts of the detection rules, oldest first (--type filters by rule name).
    Alerts(QueryArgs),
    /// The scanner's host inventory with each host's ports (--since/--until: last change).
    Hosts(QueryArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The history file (default: `[history] path` of the configuration, else
    /// /var/lib/netmon/netmon.db).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Start of the window: a span back from now (`1h`, `30m`, `7d`) or a UTC time
    /// (`2026-12-01T10:00Z`). Default: everything kept.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// End of the window (exclusive), same forms. Default: now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only this process: its name (comm), executable file name or executable path.
    #[arg(long, value_name = "NAME")]
    pub process: Option<String>,
    /// Only flows with an end in this address or network (`10.0.0.5`, `10.0.0.0/8`).
    #[arg(long, value_name = "IP|CIDR", value_parser = query::parse_host)]
    pub host: Option<ipnet::IpNet>,
    /// Only flows with an end on this port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only these event types (`connect,close`), or for alerts these rules; repeatable.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Most rows printed.
    #[arg(long, value_name = "N", default_value_t = query::DEFAULT_LIMIT)]
    pub limit: usize,
    /// `text` for people, `json` (JSON Lines, one object per row) or `csv`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Ask the agent at URL (`https://HOST:9469`, or `http://` on loopback) instead
    /// of a local file: the same question over its API (`/api/v1/history/…`).
    #[arg(long, value_name = "URL", conflicts_with = "history")]
    pub agent: Option<String>,
    /// With --agent: the API token (a file holding it); NETMON_TOKEN overrides.
    #[arg(long, value_name = "FILE", default_value = crate::api::auth::DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// With --agent: trust only this CA (PEM) for an https agent (a self-signed
    /// deployment's); default: the system's CA certificates.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub config: super::ConfigArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Csv,
}

pub fn run(args: HistoryArgs) -> Result<ExitCode> {
    let (kind, a) = match &args.what {
        What::Events(a) => ("events", a),
        What::Flows(a) => ("flows", a),
        What::Alerts(a) => ("alerts", a),
        What::Hosts(a) => ("hosts", a),
    };
    let now = Utc::now();
    let time = |flag: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>> {
        v.as_deref()
            .map(|s| query::parse_time(s, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    let window = Window {
        since: time("since", &a.since)?,
        until: Some(time("until", &a.until)?.unwrap_or(now)),
    };
    if let (Some(s), Some(u)) = (window.since, window.until) {
        anyhow::ensure!(
            s < u,
            "--since {s} is not before --until {u}: the window is empty"
        );
    }
    let q = Question {
        window,
        filter: query::Filter {
            process: a.process.clone(),
            host: a.host,
            port: a.port,
            types: a
                .types
                .iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            limit: a.limit,
        },
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if let Some(url) = &a.agent {
        let body = super::history_agent::ask(url, &a.token_file, a.ca_cert.as_deref(), kind, &q)?;
        let rows = |what| format!("the agent {url} answered with {what} that are not netmon's");
        match &args.what {
            What::Events(_) => render(
                &mut out,
                a.format,
                &parse::<EventRow>(&body).with_context(|| rows("events"))?,
            ),
            What::Flows(_) => render(
                &mut out,
                a.format,
                &parse::<FlowRow>(&body).with_context(|| rows("flows"))?,
            ),
            What::Alerts(_) => render(
                &mut out,
                a.format,
                &parse::<AlertRow>(&body).with_context(|| rows("alerts"))?,
            ),
            What::Hosts(_) => render(
                &mut out,
                a.format,
                &parse::<HostRow>(&body).with_context(|| rows("hosts"))?,
            ),
        }
    } else {
        let path = match &a.history {
            Some(p) => p.clone(),
            None => a.config.load()?.history.path,
        };
        let store = Store::open(&path)?;
        let asked = || format!("cannot read {kind} from {}", path.display());
        match &args.what {
            What::Events(_) => render(&mut out, a.format, &store.events(&q).with_context(asked)?),
            What::Flows(_) => render(&mut out, a.format, &store.flows(&q).with_context(asked)?),
            What::Alerts(_) => render(&mut out, a.format, &store.alerts(&q).with_context(asked)?),
            What::Hosts(_) => render(&mut out, a.format, &store.hosts(&q).with_context(asked)?),
        }
    };
    match written.and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.context("cannot write the answer")),
    }
}

/// The rows of an agent's `{"count": N, "rows": [...]}`.
fn parse<R: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Vec<R>> {
    #[derive(serde::Deserialize)]
    struct Answer<R> {
        rows: Vec<R>,
    }
    Ok(serde_json::from_slice::<Answer<R>>(body)?.rows)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<csv::Error>().is_some_and(|e| {
                matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe)
            })
    })
}

/// A row as text (one line), as CSV (a header and fields) and as JSON (serde).
trait Row: serde::Serialize {
    const HEADER: &'static [&'static str];
    fn fields(&self) -> Vec<String>;
    fn text(&self) -> String;
}

fn render<R: Row>(out: &mut impl Write, format: OutputFormat, rows: &[R]) -> Result<()> {
    match format {
        OutputFormat::Json => {
            for r in rows {
                serde_json::to_writer(&mut *out, r)?;
                out.write_all(b"\n")?;
            }
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(R::HEADER)?;
            for r in rows {
                w.write_record(r.fields())?;
            }
            w.flush()?;
        }
        OutputFormat::Text => {
            for r in rows {
                out.write_all(clean(&r.text()).as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

/// Control and bidi characters (a hostile process name, a DNS name) escaped, so a
/// line stays one line and cannot drive the terminal (`crate::escape`).
pub fn clean(s: &str) -> String {
    crate::escape::for_terminal(s).into_owned()
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

fn endpoint(ip: &Option<String>, port: &Option<u16>) -> String {
    match (ip, port) {
        (Some(ip), Some(p)) if ip.contains(':') => format!("[{ip}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (Some(ip), None) => ip.clone(),
        _ => "-".into(),
    }
}

impl Row for EventRow {
    const HEADER: &'static [&'static str] = &[
        "ts",
        "type",
        "pid",
        "comm",
        "exe",
        "user",
        "uid",
        "cmdline",
        "proto",
        "direction",
        "src_ip",
        "src_port",
        "dst_ip",
        "dst_port",
        "remote_name",
        "bytes_sent",
        "bytes_received",
        "packets_sent",
        "packets_received",
        "duration_ms",
        "detail",
    ];
    fn fields(&self) -> Vec<String> {
        vec![
            ts(&self.ts),
            self.kind.clone(),
            opt(&self.pid),
            opt(&self.comm),
            opt(&self.exe),
            opt(&self.user),
            opt(&self.uid),
            opt(&self.cmdline),
            opt(&self.proto),
            opt(&self.direction),
            opt(&self.src_ip),
            opt(&self.src_port),
            opt(&self.dst_ip),
            opt(&self.dst_port),
            opt(&self.remote_name),
            opt(&self.bytes_sent),
            opt(&self.bytes_received),
            opt(&self.packets_sent),
            opt(&self.packets_received),
            opt(&self.duration_ms),
            opt(&self.detail),
        ]
    }
    fn text(&self) -> String {
        let mut s = format!("{} {:<8}", ts(&self.ts), self.kind);
        if let Some(p) = &self.proto {
            s.push_str(&format!(" {p}"));
        }
        if self.src_ip.is_some() {
            s.push_str(&format!(" {} ->", endpoint(&self.src_ip, &self.src_port)));
        }
        if self.dst_ip.is_some() {
            s.push_str(&format!(" {}", endpoint(&self.dst_ip, &self.dst_port)));
        }
        if let Some(n) = &self.remote_name {
            s.push_str(&format!(" ({n})"));
        }
        if let Some(comm) = &self.comm {
            s.push_str(&format!(" {comm}[{}]", opt(&self.pid)));
            if let Some(u) = self
                .user
                .as_ref()
                .map(|u| u.to_string())
                .or(self.uid.map(|u| u.to_string()))
            {
                s.push_str(&format!(" user={u}"));
            }
        }
        if self.bytes_sent.is_some() || self.bytes_received.is_some() {
            s.push_str(&format!(
                " sent={} received={}",
                opt(&self.bytes_sent),
                opt(&self.bytes_received)
            ));
        }
        if let Some(d) = &self.detail {
            match self.kind.as_str() {
                "alert" => {
                    let f = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    s.push_str(&format!(
                        " {} {}: {}",
                        f("severity"),
                        f("rule"),
                        f("summary")
                    ));
                }
                "dns" => {
                    let f = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                    s.push_str(&format!(" {} {}", f("qtype"), f("rcode")));
                }
                _ => s.push_str(&format!(" {d}")),
            }
        }
        s
    }
}

impl Row for FlowRow {
    const HEADER: &'static [&'static str] = &[
        "first",
        "last",
        "comm",
        "exe",
        "user",
        "proto",
        "direction",
        "local_ip",
        "local_port",
        "remote_ip",
        "remote_port",
        "remote_name",
        "connections",
        "bytes_sent",
        "bytes_received",
        "packets_sent",
        "packets_received",
    ];
    fn fields(&self) -> Vec<String> {
        vec![
            ts(&self.first),
            ts(&self.last),
            self.comm.clone(),
            self.exe.clone(),
            self.user.clone(),
            self.proto.clone(),
            self.direction.clone(),
            self.local_ip.clone(),
            self.local_port.to_string(),
            self.remote_ip.clone(),
            self.remote_port.to_string(),
            self.remote_name.clone(),
            self.connections.to_string(),
            self.bytes_sent.to_string(),
            self.bytes_received.to_string(),
            self.packets_sent.to_string(),
            self.packets_received.to_string(),
        ]
    }
    fn text(&self) -> String {
        let port = |p: u16| {
            if p == 0 {
                "*".to_owned()
            } else {
                p.to_string()
            }
        };
        let side = |ip: &str, p: u16| {
            if ip.contains(':') {
                format!("[{ip}]:{}", port(p))
            } else {
                format!("{ip}:{}", port(p))
            }
        };
        let name = if self.remote_name.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.remote_name)
        };
        format!(
            "{} {:<8} {} {} {} -> {}{} conns={} sent={} received={} user={} exe={} [{} .. {}]",
            self.comm,
            self.direction,
            self.proto,
            if self.direction == "inbound" {
                "local"
            } else {
                "from"
            },
            side(&self.local_ip, self.local_port),
            side(&self.remote_ip, self.remote_port),
            name,
            self.connections,
            self.bytes_sent,
            self.bytes_received,
            self.user,
            if self.exe.is_empty() { "-" } else { &self.exe },
            ts(&self.first),
            ts(&self.last),
        )
    }
}

impl Row for AlertRow {
    const HEADER: &'static [&'static str] = &[
        "ts", "rule", "severity", "summary", "key", "hits", "pid", "comm", "exe", "detail",
    ];
    fn fields(&self) -> Vec<String> {
        vec![
            ts(&self.ts),
            self.rule.clone(),
            self.severity.clone(),
            self.summary.clone(),
            self.key.clone(),
            self.hits.to_string(),
            opt(&self.pid),
            opt(&self.comm),
            opt(&self.exe),
            opt(&self.detail),
        ]
    }
    fn text(&self) -> String {
        let who = match &self.comm {
            Some(c) => format!(" {c}[{}]", opt(&self.pid)),
            None => String::new(),
        };
        format!(
            "{} {:<8} {}{}: {} (hits={})",
            ts(&self.ts),
            self.severity,
            self.rule,
            who,
            self.summary,
            self.hits
        )
    }
}

impl Row for HostRow {
    const HEADER: &'static [&'static str] = &[
        "ip",
        "state",
        "mac",
        "name",
        "first_seen",
        "last_seen",
        "last_change",
        "ports",
    ];
    fn fields(&self) -> Vec<String> {
        vec![
            self.ip.clone(),
            self.state.clone(),
            opt(&self.mac),
            opt(&self.name),
            ts(&self.first_seen),
            self.last_seen.as_ref().map(ts).unwrap_or_default(),
            ts(&self.last_change),
            self.ports_text(),
        ]
    }
    fn text(&self) -> String {
        format!(
            "{} {} mac={} name={} last_seen={} ports: {}",
            self.ip,
            self.state,
            self.mac.as_deref().unwrap_or("-"),
            self.name.as_deref().unwrap_or("-"),
            self.last_seen
                .as_ref()
                .map(ts)
                .unwrap_or_else(|| "-".into()),
            if self.ports.is_empty() {
                "-".to_owned()
            } else {
                self.ports_text()
            }
        )
    }
}

impl HostRow {
    fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|p| {
                let mut s = format!("{}/{} {}", p.port, p.proto, p.state);
                if let Some(svc) = &p.service {
                    s.push_str(&format!(" {svc}"));
                }
                if let Some(v) = &p.version {
                    s.push_str(&format!(" {v}"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(!clean("evil\x1b[2Jname\nnext").contains(['\x1b', '\n']));
        assert_eq!(clean("plain é"), "plain é");
    }
}
