//! `netmon report`: flags → a checked plan → the report written. The data comes from
//! the current sockets (what `netmon snapshot` gathers, by its own code) or, with
//! `--since`/`--until`/`--history`, from the history through `crate::query`'s typed
//! questions (no SQL here). `crate::report` turns it into HTML or CSV; this file only
//! gathers, enriches with `crate::geoip`, and writes: atomically (a temporary file in
//! the same directory, fsync, rename), mode 0600, once or `--every` period.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, DurationRound as _, Utc};
use clap::{Args, ValueEnum};

use crate::{
    config::Config,
    geoip::GeoIp,
    history::{Span, query::Store},
    query::{self, Filter, Question, Source as _, Window},
    report::{self, Data, csv::Table, from},
    system,
};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// `html` (one self-contained page) or `csv` (one table, see --table).
    #[arg(long, value_enum, default_value = "html")]
    pub format: ReportFormat,
    /// The CSV table: connections, flows (per process and remote end), hosts (the
    /// scanner's inventory), alerts, dns.
    #[arg(long, value_enum, default_value = "connections")]
    pub table: Table,
    /// Where to write: a file name (overwritten atomically), a template with `{host}`,
    /// `{time}` (UTC, `20261202T101500Z`) or `{date}`, or `-` for stdout.
    /// Default: `netmon-{host}-{time}.html` (`.csv`). With `{time}`, a report never
    /// overwrites another: a second one within the same second is `…-2.html`.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<String>,
    /// Report over the history from this time: a span back from now (`24h`) or a UTC
    /// time (`2026-12-01T10:00Z`). Without --since/--until/--history: the current sockets.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// End of the history window (exclusive), same forms. Default: now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// The history file (default: `[history] path` of the configuration).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Write a new report every period (`10m`, `1h`) until stopped (SIGINT/SIGTERM).
    #[arg(long, value_name = "SPAN", value_parser = Span::parse)]
    pub every: Option<Span>,
    /// With --every: stop after this many reports.
    #[arg(long, value_name = "N", requires = "every")]
    pub count: Option<u64>,
    /// Current sockets: also every other network namespace a process is in (root).
    #[arg(long)]
    pub all_netns: bool,
    /// Most connections read from the history (the biggest first).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub limit: usize,
    #[command(flatten)]
    pub config: super::ConfigArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Csv,
}

/// Where reports go, checked once.
#[derive(Debug, PartialEq)]
enum Output {
    Stdout,
    /// A template or a fixed name.
    File(String),
}

fn check_template(t: &str) -> Result<()> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            bail!("--output {t}: an unclosed `{{`; use {{host}}, {{time}} or {{date}}");
        };
        let key = &after[..j];
        if !matches!(key, "host" | "time" | "date") {
            bail!(
                "--output {t}: unknown placeholder {{{key}}}; use {{host}}, {{time}} or {{date}}"
            );
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

/// A host name as a file name's part: letters, digits, `.`, `-`, `_` only.
fn safe(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "host".into()
    } else {
        s.into()
    }
}

pub fn expand(template: &str, host: &str, t: DateTime<Utc>) -> String {
    template
        .replace("{host}", &safe(host))
        .replace("{time}", &t.format("%Y%m%dT%H%M%SZ").to_string())
        .replace("{date}", &t.format("%Y-%m-%d").to_string())
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never
/// half of it: a 0600 temporary file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

struct Plan {
    config: Config,
    history: Option<PathBuf>,
    since: Option<String>,
    until: Option<String>,
    output: Output,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let config = args.config.load()?;
    let from_history = args.since.is_some() || args.until.is_some() || args.history.is_some();
    let now = Utc::now();
    for (flag, v) in [("since", &args.since), ("until", &args.until)] {
        if let Some(v) = v {
            query::parse_time(v, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
        }
    }
    let output = match args.output.as_deref() {
        Some("-") => {
            if args.every.is_some() {
                bail!(
                    "--every writes one file per report: give --output a file name or template, not `-`"
                );
            }
            Output::Stdout
        }
        Some(t) => {
            check_template(t)?;
            Output::File(t.into())
        }
        None => Output::File(match args.format {
            ReportFormat::Html => "netmon-{host}-{time}.html".into(),
            ReportFormat::Csv => "netmon-{host}-{time}.csv".into(),
        }),
    };
    let plan = Plan {
        history: from_history.then(|| {
            args.history
                .clone()
                .unwrap_or_else(|| config.history.path.clone())
        }),
        config,
        since: args.since.clone(),
        until: args.until.clone(),
        output,
    };
    let mut written = 0u64;
    loop {
        let started = std::time::Instant::now();
        let path = once(&args, &plan)?;
        written += 1;
        if let Some(p) = path {
            eprintln!("netmon: report written to {}", p.display());
        }
        let Some(every) = args.every else { break };
        if args.count.is_some_and(|c| written >= c) {
            break;
        }
        std::thread::sleep(
            every
                .0
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(10)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One report: gathered, enriched, rendered, written. The path written, if a file.
fn once(args: &ReportArgs, plan: &Plan) -> Result<Option<PathBuf>> {
    let mut data = match &plan.history {
        Some(path) => from_store(args, plan, path)?,
        None => from_sockets(args, &plan.config),
    };
    let (geo, warnings) = GeoIp::open(&plan.config.geoip);
    for w in &warnings {
        eprintln!("netmon: {w}");
    }
    data.notes.extend(warnings);
    data.enrich(&geo);
    let bytes = match args.format {
        ReportFormat::Html => report::html::render(&data).into_bytes(),
        ReportFormat::Csv => report::csv::render(&data, args.table).context("rendering the CSV")?,
    };
    match &plan.output {
        Output::Stdout => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the report to stdout")
                }
                _ => Ok(None),
            }
        }
        Output::File(t) => {
            let mut path = PathBuf::from(expand(t, &data.host, data.generated));
            // One file per report was asked for: two reports within one second (a slow
            // gather under `--every 1s`) must not overwrite each other.
            if t.contains("{time}") {
                path = unused(path);
            }
            write_atomic(&path, &bytes).with_context(|| {
                format!(
                    "cannot write the report to {} (does the directory exist and is it writable?)",
                    path.display()
                )
            })?;
            Ok(Some(path))
        }
    }
}

/// `path`, or the first of `name-2.ext`, `name-3.ext`, … that does not exist yet.
fn unused(path: PathBuf) -> PathBuf {
    if !path.exists() {
        return path;
    }
    let stem = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()));
    (2u32..)
        .map(|n| path.with_file_name(format!("{stem}-{n}{}", ext.as_deref().unwrap_or(""))))
        .find(|p| !p.exists())
        .expect("a free name")
}

fn from_sockets(args: &ReportArgs, config: &Config) -> Data {
    let rules = super::snapshot::snapshot_rules(&config.rules);
    // A failed sock_diag part is a note in the report (`from::snapshot`).
    let (mut snap, _errors) = super::snapshot::gather(&rules, args.all_netns, true, 20);
    snap.host = system::hostname();
    // The scanner's inventory, when `netmon run` keeps one.
    let inventory = crate::scan::monitor::load_state(&config.scan.state_file).ok();
    let mut d = from::snapshot(&snap, inventory.as_ref());
    d.generated = Utc::now();
    d
}

/// The bucket of the connections-over-time chart: at most ~96 bars over the window.
fn bucket(span: chrono::Duration) -> chrono::Duration {
    let m = chrono::Duration::minutes;
    [m(1), m(5), m(15), m(60), m(360), m(1440)]
        .into_iter()
        .find(|b| span.num_seconds() / b.num_seconds().max(1) <= 96)
        .unwrap_or(m(1440 * 7))
}

fn from_store(args: &ReportArgs, plan: &Plan, path: &Path) -> Result<Data> {
    let now = Utc::now();
    let time = |v: &Option<String>| v.as_deref().and_then(|s| query::parse_time(s, now).ok());
    let until = time(&plan.until).unwrap_or(now);
    let since = time(&plan.since);
    if let Some(s) = since
        && s >= until
    {
        bail!("--since {s} is not before --until {until}: the window is empty");
    }
    let store = Store::open(path)?;
    let ask = |window: Window, types: &[&str], limit: usize| Question {
        window,
        filter: Filter {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            limit,
            ..Filter::default()
        },
    };
    let window = Window {
        since,
        until: Some(until),
    };
    let asked = |what: &str| format!("cannot read {what} from the history {}", path.display());
    let flows = store
        .flows(&ask(window, &[], args.limit))
        .with_context(|| asked("flows"))?;
    let alerts = store
        .alerts(&ask(window, &[], 10_000))
        .with_context(|| asked("alerts"))?;
    let hosts = store
        .hosts(&ask(Window::default(), &[], 10_000))
        .with_context(|| asked("hosts"))?;
    let dns = store
        .dns_names(&ask(window, &["dns"], 50))
        .with_context(|| asked("DNS names"))?;
    // The chart: connections per bucket, one question for all the buckets.
    let first = since.unwrap_or_else(|| flows.iter().map(|f| f.first).min().unwrap_or(until));
    let size = bucket(until - first);
    let counted = store
        .connections_over_time(
            &Window {
                since: Some(first),
                until: Some(until),
            },
            size.num_seconds(),
        )
        .with_context(|| asked("connections over time"))?;
    let mut timeline = Vec::new();
    let mut t = first.duration_trunc(size).unwrap_or(first);
    while t < until {
        let connections = counted
            .iter()
            .filter(|(start, _)| *start >= t && *start < t + size)
            .map(|(_, n)| n)
            .sum();
        timeline.push(report::Bucket {
            start: t,
            connections,
        });
        t += size;
    }
    Ok(from::history(
        system::hostname(),
        now,
        format!("history {}", path.display()),
        since,
        Some(until),
        from::HistoryRows {
            flows,
            alerts,
            hosts,
            dns,
            timeline,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_report_in_the_same_second_gets_a_name_of_its_own() {
        let dir = std::env::temp_dir().join(format!("netmon-report-unused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("netmon-h-20261202T101500Z.html");
        assert_eq!(unused(first.clone()), first);
        std::fs::write(&first, b"1").unwrap();
        let second = unused(first.clone());
        assert_eq!(second, dir.join("netmon-h-20261202T101500Z-2.html"));
        std::fs::write(&second, b"2").unwrap();
        assert_eq!(unused(first), dir.join("netmon-h-20261202T101500Z-3.html"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn templates_expand_and_unknown_placeholders_are_refused() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            expand("out/netmon-{host}-{time}.html", "web/../1 x", t),
            "out/netmon-web_.._1_x-20261202T101500Z.html"
        );
        assert_eq!(expand("r-{date}.csv", "h", t), "r-2026-12-02.csv");
        assert!(check_template("a-{host}-{time}-{date}.html").is_ok());
        assert!(check_template("a-{hots}.html").is_err());
        assert!(check_template("a-{host.html").is_err());
    }

    #[test]
    fn files_are_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("netmon-report-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.html");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Nothing left beside it.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
