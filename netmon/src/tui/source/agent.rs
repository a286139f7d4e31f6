//! The agent source: one client task per `--agent URL` reading the agent's live SSE
//! stream (`GET /api/v1/events`, `Authorization: Bearer <token>`, each event's `data`
//! one netmon JSON line, `event: lagged` when the agent skipped some) and turning it
//! into [`Msg`]s. A client that loses its agent says why (one line, shown in the
//! Overview) and reconnects on its own with `Last-Event-ID`, so nothing the agent
//! still holds is missed.
//!
//! Runs its own current-thread tokio runtime on one thread; the UI reads a bounded
//! channel, and what does not fit is counted as skipped, never waited for.
//!
//! The time cursor's windows ([`Clients::ask`]) are asked of every agent's history
//! (`/api/v1/history/flows` and `/alerts`) on the same runtime; each answer, or why
//! there is none, comes back as a [`Msg::Past`].
use std::{
    sync::{Arc, mpsc as std_mpsc},
    thread::JoinHandle,
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Bytes};

use super::sse::Parser;
use crate::{
    client::{self, AgentUrl},
    query::{AlertRow, FlowRow},
    tui::{
        app::{AgentStatus, Msg},
        past::{self, Window},
    },
};

/// Messages waiting for the UI before a client counts what it drops.
const QUEUE: usize = 65_536;
/// Time allowed for TCP connect plus the response's headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Time allowed for one history answer.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(20);

/// One agent to watch.
#[derive(Clone)]
pub struct AgentSpec {
    pub url: String,
    pub token: String,
    /// Trust for `https://` agents (`client::tls_connector`).
    pub tls: Option<tokio_rustls::TlsConnector>,
}

/// The clients' thread (it lives as long as the process).
pub struct Clients {
    _thread: JoinHandle<()>,
    ask: tokio::sync::mpsc::UnboundedSender<Window>,
}

impl Clients {
    /// Asks every agent's history for `window`; the answers come as [`Msg::Past`].
    pub fn ask(&self, window: Window) {
        let _ = self.ask.send(window);
    }
}

/// Starts a client per agent; agent `i` of the messages is `agents[i]`.
pub fn start(agents: Vec<AgentSpec>) -> std::io::Result<(std_mpsc::Receiver<Msg>, Clients)> {
    let (tx, rx) = std_mpsc::sync_channel(QUEUE);
    let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<Window>();
    let thread = std::thread::Builder::new()
        .name("agents".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (i, spec) in agents.iter().cloned().enumerate() {
                    tasks.spawn(watch(i, spec, tx.clone()));
                }
                // The Overview's hour: each agent's connections per minute over the
                // last hour, from its history, once it answers.
                for (i, spec) in agents.iter().cloned().enumerate() {
                    tasks.spawn(timeline(i, spec, tx.clone()));
                }
                // The time cursor's questions: each window of every agent on a task
                // of its own, so a slow agent holds up no other.
                let history_tx = tx.clone();
                tasks.spawn(async move {
                    while let Some(window) = asked.recv().await {
                        for (i, spec) in agents.iter().cloned().enumerate() {
                            let tx = history_tx.clone();
                            tokio::spawn(async move {
                                let answer = history(&spec, window).await;
                                let _ = tx.try_send(Msg::Past {
                                    agent: i,
                                    window,
                                    answer,
                                });
                            });
                        }
                    }
                });
                drop(tx);
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok((
        rx,
        Clients {
            _thread: thread,
            ask,
        },
    ))
}

/// Why one connection to an agent ended.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Url(String),
    #[error("{0}")]
    Connect(#[from] client::ConnectError),
    #[error("no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("wrong or missing token (HTTP {0}): check --token-file or NETMON_TOKEN")]
    Unauthorized(u16),
    #[error("not a netmon agent: {0}")]
    NotNetmon(String),
    #[error("the agent closed the stream")]
    Closed,
    /// The UI is gone: the client stops.
    #[error("the UI stopped")]
    UiGone,
}

async fn watch(agent: usize, spec: AgentSpec, tx: std_mpsc::SyncSender<Msg>) {
    let mut last_id: Option<String> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let status = |s| Msg::Status { agent, status: s };
        if send(&tx, status(AgentStatus::Connecting)).is_err() {
            return;
        }
        let mut got_any = false;
        let err = stream(agent, &spec, &mut last_id, &tx, &mut got_any).await;
        if matches!(err, Failure::UiGone) {
            return;
        }
        if got_any {
            backoff = RETRY_MIN;
        }
        if send(&tx, status(AgentStatus::Unreachable(err.to_string()))).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn stream(
    agent: usize,
    spec: &AgentSpec,
    last_id: &mut Option<String>,
    tx: &std_mpsc::SyncSender<Msg>,
    got_any: &mut bool,
) -> Failure {
    match try_stream(agent, spec, last_id, tx, got_any).await {
        Ok(()) => Failure::Closed,
        Err(e) => e,
    }
}

async fn try_stream(
    agent: usize,
    spec: &AgentSpec,
    last_id: &mut Option<String>,
    tx: &std_mpsc::SyncSender<Msg>,
    got_any: &mut bool,
) -> Result<(), Failure> {
    let url = AgentUrl::parse(&spec.url).map_err(Failure::Url)?;
    let uri = format!(
        "{}://{}{}",
        if url.tls { "https" } else { "http" },
        url.authority,
        url.target("/api/v1/events")
    );
    let mut sender = client::connect(&url, spec.tls.as_ref(), CONNECT_TIMEOUT).await?;
    // Origin form (`/api/v1/events`): a conn-level hyper client sends the URI as given.
    let mut req = Request::get(url.target("/api/v1/events"))
        .header(hyper::header::HOST, url.authority.as_str())
        .header(hyper::header::ACCEPT, "text/event-stream")
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", spec.token),
        );
    if let Some(id) = last_id.as_deref() {
        req = req.header("Last-Event-ID", id);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Url(e.to_string()))?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| Failure::Timeout)??;
    match resp.status() {
        StatusCode::OK => {}
        s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(Failure::Unauthorized(s.as_u16()));
        }
        s => return Err(Failure::NotNetmon(format!("HTTP {s} for {uri}"))),
    }
    let ctype = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !ctype.starts_with("text/event-stream") {
        return Err(Failure::NotNetmon(format!(
            "{uri} answered `{}`, not an event stream",
            crate::escape::remote(&ctype)
        )));
    }
    send(
        tx,
        Msg::Status {
            agent,
            status: AgentStatus::Live,
        },
    )?;
    let mut body = resp.into_body();
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut skipped = 0u64;
    let mut bad = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        parser.feed(data, &mut events);
        for e in events.drain(..) {
            if let Some(id) = e.id {
                *last_id = Some(id);
            }
            let msg = if e.event == "lagged" {
                let missed = serde_json::from_str::<serde_json::Value>(&e.data)
                    .ok()
                    .and_then(|v| v["missed"].as_u64())
                    .unwrap_or(0);
                Msg::Status {
                    agent,
                    status: AgentStatus::Lagged(missed),
                }
            } else {
                match crate::event::read::from_json(&e.data) {
                    Ok(event) => {
                        *got_any = true;
                        Msg::Event {
                            agent,
                            event: Arc::new(event),
                        }
                    }
                    Err(_) => {
                        bad += 1;
                        if bad == 1 && !*got_any {
                            return Err(Failure::NotNetmon(format!(
                                "{uri} sends events that are not netmon's"
                            )));
                        }
                        continue;
                    }
                }
            };
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(std_mpsc::TrySendError::Full(_)) => skipped += 1,
                Err(std_mpsc::TrySendError::Disconnected(_)) => return Err(Failure::UiGone),
            }
        }
        if skipped > 0
            && tx
                .try_send(Msg::Status {
                    agent,
                    status: AgentStatus::Lagged(skipped),
                })
                .is_ok()
        {
            skipped = 0;
        }
    }
    Ok(())
}

/// The agent's connections per minute over the last hour, sent once; retried while
/// the agent cannot be reached (a minute at most), not when it keeps no history.
async fn timeline(agent: usize, spec: AgentSpec, tx: std_mpsc::SyncSender<Msg>) {
    #[derive(serde::Deserialize)]
    struct Rows {
        rows: Vec<crate::query::TimelineRow>,
    }
    let since =
        chrono::Utc::now() - chrono::Duration::minutes(crate::tui::app::HOUR_MINUTES as i64);
    let query = serde_urlencoded::to_string([(
        "since",
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )])
    .unwrap_or_default();
    for _ in 0..12 {
        match get(&spec, &format!("/api/v1/history/timeline?{query}")).await {
            Ok(body) => {
                if let Ok(r) = serde_json::from_slice::<Rows>(&body) {
                    let rows = r.rows.into_iter().map(|r| (r.t, r.connections)).collect();
                    let _ = tx.try_send(Msg::Timeline { agent, rows });
                }
                return;
            }
            Err(why) if why.contains("keeps no history") => return,
            Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}

/// One agent's history for `window`: its biggest flows and newest alerts.
async fn history(spec: &AgentSpec, window: Window) -> Result<past::Answer, String> {
    #[derive(serde::Deserialize)]
    struct Rows<R> {
        rows: Vec<R>,
    }
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let query = serde_urlencoded::to_string([
        ("since", time(window.since)),
        ("until", time(window.until)),
        ("limit", past::LIMIT.to_string()),
    ])
    .unwrap_or_default();
    let flows = get(spec, &format!("/api/v1/history/flows?{query}")).await?;
    let alerts = get(spec, &format!("/api/v1/history/alerts?{query}")).await?;
    let not_netmon = |_| "its history answers are not netmon's".to_owned();
    Ok(past::Answer {
        flows: serde_json::from_slice::<Rows<FlowRow>>(&flows)
            .map_err(not_netmon)?
            .rows,
        alerts: serde_json::from_slice::<Rows<AlertRow>>(&alerts)
            .map_err(not_netmon)?
            .rows,
    })
}

/// The body of a 200 answer to `GET path`, or one line saying why not.
async fn get(spec: &AgentSpec, path: &str) -> Result<Bytes, String> {
    let url = AgentUrl::parse(&spec.url)?;
    let ask = async {
        let mut sender = client::connect(&url, spec.tls.as_ref(), CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let req = Request::get(url.target(path))
            .header(hyper::header::HOST, url.authority.as_str())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", spec.token),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != StatusCode::OK {
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(why);
        }
        Ok(body)
    };
    tokio::time::timeout(HISTORY_TIMEOUT, ask)
        .await
        .map_err(|_| format!("no history answer within {}s", HISTORY_TIMEOUT.as_secs()))?
}

fn send(tx: &std_mpsc::SyncSender<Msg>, msg: Msg) -> Result<(), Failure> {
    match tx.try_send(msg) {
        Err(std_mpsc::TrySendError::Disconnected(_)) => Err(Failure::UiGone),
        _ => Ok(()),
    }
}
