//! The agent's read-only HTTP API (`netmon run`, docs/api.md): axum on a small tokio
//! runtime of its own thread, fed by a hub subscription, so a slow client never delays
//! the event loop. Owns the listeners (bound before anything is attached, handed to
//! the thread after the privilege drop), the router and the handlers; the token is in
//! `api/auth.rs`, the numbered event ring in `api/feed.rs`, the query parameters in
//! `api/filter.rs`, the SSE stream in `api/sse.rs`, and its resuming from the history
//! in `api/replay.rs`.
//!
//! Nothing here can change what netmon monitors or scans: every endpoint only reads.
//!
//! Over 600 lines: the router and every endpoint's small handler (each 10 to 70 lines)
//! in one file, so the API's surface reads in one place; the parts with their own state
//! are in the submodules below.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::mpsc;

use crate::{event::Event, scan::HostState};

pub mod auth;
pub mod feed;
pub mod filter;
pub mod history;
pub mod processes;
pub mod replay;
pub mod serve;
pub mod sse;
pub mod tls;

/// The default listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";
/// The API's hub queue (events): the pump only numbers and serialises, so it keeps up.
pub const QUEUE: usize = 8192;

/// What the API serves, checked (see `cli/run.rs`).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: Vec<SocketAddr>,
    pub token_file: PathBuf,
    /// Serve plain HTTP on a non-loopback address (`--api-insecure`).
    pub insecure: bool,
    /// Serve every listener over TLS with these files (`--api-tls-cert`, `--api-tls-key`).
    pub tls: Option<tls::TlsFiles>,
    /// Most SSE streams at once; more are refused with 503.
    pub max_streams: usize,
    /// Events kept for resuming streams.
    pub replay: usize,
    /// The API thread's nice value (`--api-nice`).
    pub nice: i32,
    /// Asked for with `--api` or `--api-token-file`: a token that cannot be made is
    /// an error. Otherwise (the default API) it is a warning and no API.
    pub explicit: bool,
    /// Serve `/metrics` without the token (`--api-metrics-open`), for Prometheus
    /// scrapers that have none; every other endpoint still needs it.
    pub metrics_open: bool,
}

/// The API's listeners, bound, and its token: made before netmon attaches, so a
/// port in use fails with nothing attached.
pub struct Bound {
    listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    tls: Option<Arc<tls::Reloading>>,
    auth: auth::Auth,
    cfg: ApiConfig,
}

/// Binds every listener of `cfg` and reads (or makes) the token; `None` when the
/// default API cannot have a token (e.g. /var/lib/netmon not writable): netmon then
/// monitors without an API and says so.
pub fn bind(cfg: &ApiConfig) -> Result<Option<Bound>> {
    for addr in &cfg.listen {
        if !addr.ip().is_loopback() && !cfg.insecure && cfg.tls.is_none() {
            anyhow::bail!(
                "the API would serve {addr} without TLS: give --api-tls-cert FILE and --api-tls-key FILE (see docs/api.md), listen on a loopback address (--api 127.0.0.1:9469), or pass --api-insecure on a network you trust"
            );
        }
    }
    let tls = cfg
        .tls
        .clone()
        .map(tls::Reloading::new)
        .transpose()?
        .map(Arc::new);
    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "cannot listen on {addr} for the API; stop what uses it, choose another address with --api ADDR, or --api off"
            )
        })?;
        l.set_nonblocking(true)
            .context("cannot make the API listener non-blocking")?;
        listeners.push((l.local_addr().unwrap_or(*addr), l));
    }
    let token = match auth::load_or_create(&cfg.token_file) {
        Ok(t) => t,
        Err(e) if !cfg.explicit => {
            let e = anyhow::Error::from(e);
            eprintln!(
                "netmon: warning: the API is off: {e:#}; give a writable --api-token-file FILE, or --api off"
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    for (addr, _) in &listeners {
        if !addr.ip().is_loopback() && tls.is_none() {
            eprintln!(
                "netmon: warning: the API serves {addr} over plain HTTP (--api-insecure): anyone on the path can read the token and the data"
            );
        }
    }
    Ok(Some(Bound {
        listeners,
        tls,
        auth: auth::Auth::new(cfg.token_file.clone(), token),
        cfg: cfg.clone(),
    }))
}

/// Counters of the API itself (`/api/v1/stats` → `api`).
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub auth_failures: AtomicU64,
    pub streams: AtomicUsize,
    pub streams_refused: AtomicU64,
    /// Connections closed at accept: [`serve::MAX_CONNECTIONS`] were open.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed or timed out (plain HTTP to a TLS listener, say).
    pub tls_failures: AtomicU64,
}

/// What every handler reads.
struct Shared {
    auth: auth::Auth,
    failures: auth::Failures,
    feed: Arc<feed::Feed>,
    counters: Arc<Counters>,
    max_streams: usize,
    state_file: PathBuf,
    /// The history file this agent writes (`/api/v1/history/*`), if it keeps one.
    history: Option<PathBuf>,
    /// How far its writer has settled (streams resume from the file up to there).
    settled: Option<Arc<crate::history::Counters>>,
    /// Asks the event loop for the flow table (`pipeline/state.rs`).
    ask: mpsc::Sender<crate::pipeline::state::FlowsRequest>,
}

type AppState = Arc<Shared>;

/// The history this agent writes, as the API reads it.
pub struct HistoryLink {
    pub path: PathBuf,
    /// The writer's counters: [`crate::history::Counters::settled`].
    pub writer: Arc<crate::history::Counters>,
}

/// The running API: its thread ends once the hub closes its subscription.
pub struct Api {
    thread: thread::JoinHandle<()>,
}

impl Api {
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl Bound {
    /// Starts the API thread. Call after the privilege drop (it starts threads).
    pub fn spawn(
        self,
        events: crate::pipeline::hub::Subscription,
        state_file: PathBuf,
        history: Option<HistoryLink>,
        ask: mpsc::Sender<crate::pipeline::state::FlowsRequest>,
        metrics: Option<crate::metrics::Metrics>,
    ) -> Result<Api> {
        let metrics_open = self.cfg.metrics_open;
        // Ids are the hub's numbers: the first event is `events.seq() + 1`.
        let (feed, pump) = feed::start(self.cfg.replay, events.seq());
        let (history, settled) = match history {
            Some(h) => (Some(h.path), Some(h.writer)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            auth: self.auth,
            failures: auth::Failures::default(),
            feed,
            counters: Arc::default(),
            max_streams: self.cfg.max_streams,
            state_file,
            history,
            settled,
            ask,
        });
        let listeners = self.listeners;
        let tls = self.tls;
        let nice = self.cfg.nice;
        let thread = thread::Builder::new()
            .name("netmon-api".into())
            .spawn(move || {
                yield_to_the_workload(nice);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("netmon: warning: the API is off: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    for (addr, l) in listeners {
                        let l = match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                eprintln!("netmon: warning: the API does not serve {addr}: {e}");
                                continue;
                            }
                        };
                        let app = router(shared.clone(), metrics.clone(), metrics_open);
                        tokio::spawn(serve::listen(
                            addr,
                            l,
                            app,
                            tls.clone(),
                            shared.counters.clone(),
                        ));
                    }
                    pump.run(events).await;
                });
                // Open streams and connections end with the runtime.
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .context("cannot start the API thread")?;
        Ok(Api { thread })
    }
}

fn router(state: AppState, metrics: Option<crate::metrics::Metrics>, metrics_open: bool) -> Router {
    let api = Router::new()
        .route("/api/v1/events", get(sse::events))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/history/{kind}", get(history::history))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/hosts/{ip}", get(host));
    // `/metrics` (metrics.rs): behind the token, unless `--api-metrics-open`.
    let (guarded, open_metrics) = match metrics {
        Some(m) if metrics_open => (None, Some(crate::metrics::router(m))),
        Some(m) => (Some(crate::metrics::router(m)), None),
        None => (None, None),
    };
    let mut api = api.fallback(not_found).with_state(state.clone());
    if let Some(m) = guarded {
        api = api.merge(m);
    }
    let api = api.layer(middleware::from_fn_with_state(state, require_token));
    let mut open = Router::new().route("/healthz", get(healthz));
    if let Some(m) = open_metrics {
        open = open.merge(m);
    }
    open.merge(api)
}

/// A JSON error body: `{"error": "..."}`.
pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

fn json_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn require_token(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    s.counters.requests.fetch_add(1, Ordering::Relaxed);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if s.auth.check(presented) {
        s.failures.succeed(peer.ip());
        return next.run(req).await;
    }
    s.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
    let wait = s.failures.fail(peer.ip());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send `Authorization: Bearer <token>` (the token is in the agent's token file, see `netmon token`)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn healthz() -> Response {
    json_text(r#"{"status":"ok"}"#.into())
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/api.md: /api/v1/events, /flows, /processes, /hosts, /logs, /alerts, /stats, /history/{events,flows,alerts,hosts})",
    )
}

fn bad_request(e: filter::BadParam) -> Response {
    error(StatusCode::BAD_REQUEST, e)
}

async fn stats(State(s): State<AppState>) -> Response {
    let last = feed::lock(&s.feed.stats).clone();
    let c = &s.counters;
    let api = serde_json::json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "auth_failures": c.auth_failures.load(Ordering::Relaxed),
        "streams": c.streams.load(Ordering::Relaxed),
        "streams_refused": c.streams_refused.load(Ordering::Relaxed),
        "connections_refused": c.connections_refused.load(Ordering::Relaxed),
        "tls_failures": c.tls_failures.load(Ordering::Relaxed),
        "events": s.feed.latest.borrow().to_owned(),
    });
    json_text(format!(
        r#"{{"stats":{},"api":{api}}}"#,
        last.as_deref().unwrap_or("null")
    ))
}

/// `limit=`: a whole number from 1 to `max`, `default` when absent.
fn limit(
    q: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, filter::BadParam> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(filter::BadParam {
                param: "limit",
                why: format!("a whole number from 1 to {max}"),
            }),
    }
}

fn time_param(
    q: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, filter::BadParam> {
    q.get(name)
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.to_utc())
                .map_err(|_| filter::BadParam {
                    param: name,
                    why: "not an RFC 3339 time (2026-12-02T06:00:00Z)".into(),
                })
        })
        .transpose()
}

/// Recent alerts and inventory changes, newest first, as a JSON array.
fn recent_logs(
    s: &Shared,
    q: &HashMap<String, String>,
    only_alerts: bool,
) -> Result<(usize, String), filter::BadParam> {
    let f = filter::Filter::parse(q, &["limit", "since", "until"])?;
    let limit = limit(q, 100, 1000)?;
    let since = time_param(q, "since")?;
    let until = time_param(q, "until")?;
    let logs = feed::lock(&s.feed.logs);
    let mut n = 0;
    let mut body = String::from("[");
    for it in logs.iter_rev() {
        if n == limit {
            break;
        }
        if (only_alerts && it.kind != "alert")
            || !f.matches(it)
            || since.is_some_and(|t| it.ts < t)
            || until.is_some_and(|t| it.ts > t)
        {
            continue;
        }
        if n > 0 {
            body.push(',');
        }
        body.push_str(it.json());
        n += 1;
    }
    body.push(']');
    Ok((n, body))
}

async fn alerts(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match recent_logs(&s, &q, true) {
        Ok((n, list)) => json_text(format!(r#"{{"count":{n},"alerts":{list}}}"#)),
        Err(e) => bad_request(e),
    }
}

async fn logs(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match recent_logs(&s, &q, false) {
        Ok((n, list)) => json_text(format!(r#"{{"count":{n},"logs":{list}}}"#)),
        Err(e) => bad_request(e),
    }
}

/// The scanner's inventory (its state file), or an empty one when the scanner has
/// not written it (it is off).
async fn inventory(s: &Shared) -> Result<crate::scan::inventory::Inventory, Response> {
    let path = s.state_file.clone();
    let read = tokio::task::spawn_blocking(move || crate::scan::monitor::load_state(&path))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    match read {
        Ok(inv) => Ok(inv),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(crate::scan::inventory::Inventory::new())
        }
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the inventory {}: {e}", s.state_file.display()),
        )),
    }
}

async fn hosts(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(k) = q.keys().find(|k| *k != "state") {
        let _ = k;
        return bad_request(filter::BadParam {
            param: "(unknown)",
            why: "unknown parameter (hosts takes state=up|down)".into(),
        });
    }
    let want = match q.get("state").map(String::as_str) {
        None => None,
        Some("up") => Some(HostState::Up),
        Some("down") => Some(HostState::Down),
        Some(_) => {
            return bad_request(filter::BadParam {
                param: "state",
                why: "up or down".into(),
            });
        }
    };
    let inv = match inventory(&s).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let up = inv.hosts().filter(|h| h.state == HostState::Up).count();
    let total = inv.hosts().count();
    let list: Vec<_> = inv
        .hosts()
        .filter(|h| want.is_none_or(|w| h.state == w))
        .collect();
    axum::Json(serde_json::json!({
        "up": up,
        "down": total - up,
        "updated": inv.updated,
        "hosts": list,
    }))
    .into_response()
}

async fn host(State(s): State<AppState>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return bad_request(filter::BadParam {
            param: "ip",
            why: "not an IPv4 or IPv6 address".into(),
        });
    };
    let inv = match inventory(&s).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Some(h) = inv.get(&ip) else {
        return error(StatusCode::NOT_FOUND, "no such host in the inventory");
    };
    let mut q = HashMap::new();
    q.insert("host".to_owned(), ip.to_string());
    q.insert("limit".to_owned(), "1000".to_owned());
    let changes = recent_logs(&s, &q, false)
        .map(|(_, l)| l)
        .unwrap_or_else(|_| "[]".into());
    let host = serde_json::to_string(h).unwrap_or_else(|_| "null".into());
    json_text(format!(r#"{{"host":{host},"changes":{changes}}}"#))
}

/// How `/api/v1/flows` sorts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FlowSort {
    /// Most bytes (sent + received) first.
    Bytes,
    /// Longest-lived first.
    Duration,
    /// Newest first.
    Start,
}

/// `GET /api/v1/flows`: the live flow table (`flow` objects: bytes so far), asked of
/// the event loop in steps; filtered (`process=`, `host=`, `port=`, `proto=`),
/// sorted (`sort=bytes|duration|start`) and cut (`limit=`, default 1000).
async fn flows(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut q = q;
    let proto = q.remove("proto");
    let sort = q.remove("sort");
    let limit = limit(&q, 1000, 1_000_000);
    q.remove("limit");
    let f = match filter::Filter::parse(&q, &[]) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let proto = match proto.as_deref() {
        None => None,
        Some("tcp") => Some(crate::event::Proto::Tcp),
        Some("udp") => Some(crate::event::Proto::Udp),
        Some(_) => {
            return bad_request(filter::BadParam {
                param: "proto",
                why: "tcp or udp".into(),
            });
        }
    };
    let sort = match sort.as_deref() {
        None | Some("bytes") => FlowSort::Bytes,
        Some("duration") => FlowSort::Duration,
        Some("start") => FlowSort::Start,
        Some(_) => {
            return bad_request(filter::BadParam {
                param: "sort",
                why: "bytes, duration or start".into(),
            });
        }
    };
    let limit = match limit {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let Some(all) = crate::pipeline::state::all_flows(&s.ask).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "netmon is stopping");
    };
    let total = all.len();
    let mut hits: Vec<_> = all
        .into_iter()
        .filter(|ev| {
            let conn = ev.body.connection();
            proto.is_none_or(|p| conn.is_some_and(|c| c.proto == p))
                && f.matches_keys("flow", &feed::Keys::of(ev))
        })
        .collect();
    let key = |ev: &Arc<Event>| -> f64 {
        match &ev.body {
            crate::event::EventBody::Flow(fl) => match sort {
                FlowSort::Bytes => {
                    (fl.bytes_sent.unwrap_or(0) + fl.bytes_received.unwrap_or(0)) as f64
                }
                FlowSort::Duration => fl.duration_ms,
                FlowSort::Start => fl.start.timestamp_nanos_opt().unwrap_or(0) as f64,
            },
            _ => 0.0,
        }
    };
    hits.sort_by(|a, b| key(b).total_cmp(&key(a)));
    let matched = hits.len();
    hits.truncate(limit);
    let mut body = format!(r#"{{"total":{total},"matched":{matched},"flows":["#);
    for (i, ev) in hits.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&serde_json::to_string(&**ev).unwrap_or_else(|_| "null".into()));
    }
    body.push_str("]}");
    json_text(body)
}

/// `GET /api/v1/processes`: the flow table per process (`api/processes.rs`),
/// `process=` (name, executable name or path) and `limit=` (default 100).
async fn processes(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(k) = q.keys().find(|k| *k != "process" && *k != "limit") {
        return bad_request(filter::BadParam {
            param: "(unknown)",
            why: format!(
                "unknown parameter `{}` (processes takes process, limit)",
                crate::escape::remote(k)
            ),
        });
    }
    let limit = match limit(&q, 100, 1000) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let Some(all) = crate::pipeline::state::all_flows(&s.ask).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "netmon is stopping");
    };
    let mut rows = processes::fold(&all, q.get("process").map(String::as_str));
    let total = rows.len();
    rows.truncate(limit);
    axum::Json(serde_json::json!({ "total": total, "processes": rows })).into_response()
}

/// Headers an SSE request resumes with.
fn last_event_id(h: &HeaderMap) -> Option<&str> {
    h.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// The API thread's nice value by default (`--api-nice`): it serves observers, so on
/// a saturated machine it yields to the monitored workload and to netmon's own event
/// loop (whose nice value stays). Streams that fall behind meanwhile get `lagged`
/// with the exact count, as any slow client does; answers take longer but come.
/// Measured with `cargo xtask bench api` (50 streams, two busy cores): the storm kept
/// 0.861 of its rate at nice 0, 0.913 at 10, 0.972 at 19.
pub const DEFAULT_NICE: i32 = 19;

/// Sets the calling thread's nice value (on Linux the nice value is per thread).
/// Raising it needs no privilege; a failure changes nothing.
fn yield_to_the_workload(nice: i32) {
    // SAFETY: gettid and setpriority have no memory effects.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}
