//! Prometheus metrics (`GET /metrics`, text format 0.0.4): the registry, its HTTP
//! route and the thread that keeps it current.
//!
//! Everything but the host statistics comes from the event stream: a hub subscription
//! ([`crate::pipeline::hub::Hub::subscribe`]) read on the `netmon-metrics` thread, so
//! the event loop does nothing per event beyond the hub's fan-out, and a slow scrape
//! can only make this consumer drop (`stats.consumers.metrics.dropped`). Counters the
//! pipeline already keeps (events by type, losses, skipped runs, consumer drops) are
//! taken from the periodic `stats` events; the backend per capability from `probe`.
//! Host statistics are read from `/proc` at scrape time ([`host`]).
//!
//! The ring buffer's fill is read from the ring's positions at scrape time ([`ring`]).
//!
//! - [`families`]: the families and their update from one event (pure);
//! - [`top`]: the bounded per-process and per-peer series (`~other` for the rest);
//! - [`risk`]: the scanner's open ports and per-host risk score (top hosts, `~other`);
//! - [`ring`]: the ring buffer's fill;
//! - [`host`]: CPU, load, memory, swap, filesystems, disks, interfaces (procfs).
use std::{net::TcpListener, thread::JoinHandle};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use serde::{Deserialize, Serialize};

pub mod families;
pub mod host;
pub mod ring;
pub mod risk;
pub mod top;

/// Most peers `[metrics] peers` may give their own label (3 series each).
pub const MAX_PEERS: usize = 100;

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Remote addresses with their own `peer` label (`netmon_peer_*`), the most active
    /// ones; the rest summed under `peer="~other"`. 0 (the default): no peer families.
    pub peers: usize,
}

impl MetricsConfig {
    /// The dotted key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.peers > MAX_PEERS {
            return Err((
                "metrics.peers".into(),
                format!(
                    "{} is over the limit of {MAX_PEERS} (each peer adds 3 series)",
                    self.peers
                ),
            ));
        }
        Ok(())
    }
}

/// What the metrics read besides the event stream.
#[derive(Clone, Default)]
pub struct Sources {
    /// The ring buffer's positions (`netmon run`).
    pub ring: Option<crate::pipeline::reader::fill::RingFill>,
    pub config: MetricsConfig,
    /// `[[rules.port_risk.ports]]`: the risk scores of the per-host score.
    pub port_risk: Vec<crate::rules::ports::RiskEntry>,
    /// The scanner's state file, when the scanner runs: the open ports at start.
    pub state_file: Option<std::path::PathBuf>,
}

/// Events the metrics consumer may hold before the hub drops for it.
pub const QUEUE: usize = 16_384;

/// The registry a scrape reads; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry holding every family, the host statistics among them, and the
    /// [`families::Families`] that update it from events.
    pub fn new(host_stats: bool, sources: &Sources) -> (Metrics, families::Families) {
        let registry = Registry::new();
        let mut families =
            families::Families::register(&registry, top::DEFAULT_LIMIT, top::DEFAULT_GRACE);
        if sources.config.peers > 0 {
            families.enable_peers(&registry, sources.config.peers, top::DEFAULT_GRACE);
        }
        // The monitor read (and, if corrupt, set aside) the same file at start; a file
        // it cannot read counts as empty here.
        let inventory = sources
            .state_file
            .as_deref()
            .and_then(|p| crate::scan::monitor::load_state(p).ok());
        families.set_risk(&sources.port_risk, inventory.as_ref());
        if let Some(fill) = &sources.ring {
            registry
                .register(Box::new(ring::Collector::new(fill.clone())))
                .expect("ring families are registered once, with unique names");
        }
        if host_stats {
            registry
                .register(Box::new(host::HostStats::new()))
                .expect("host families are registered once, with unique names");
        }
        (Metrics { registry }, families)
    }

    /// The text exposition (format 0.0.4) of every family.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(64 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// `GET /metrics`; mount it on any axum listener (the API's, or `--metrics ADDR`).
pub fn router(state: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

async fn scrape(State(m): State<Metrics>) -> impl IntoResponse {
    // Reading /proc for the host statistics blocks briefly; fine on this thread.
    match m.render() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("netmon: cannot render the metrics: {e}\n"),
        ),
    }
}

/// The `netmon-metrics` thread: applies events to the families and, when `listener`
/// is given (`--metrics ADDR`), serves [`router`] on it. Ends once the hub closes.
/// Start it after the privilege drop (it is a thread).
pub fn spawn(
    listener: Option<TcpListener>,
    mut events: crate::pipeline::hub::Subscription,
    sources: Sources,
) -> std::io::Result<(Metrics, JoinHandle<()>)> {
    let (metrics, mut families) = Metrics::new(true, &sources);
    let served = metrics.clone();
    if let Some(l) = &listener {
        l.set_nonblocking(true)?;
    }
    let thread = std::thread::Builder::new()
        .name("netmon-metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .expect("a current-thread runtime starts");
            rt.block_on(async move {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let server = listener.map(|l| {
                    let app = router(served);
                    tokio::spawn(async move {
                        let listener = match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => l,
                            Err(e) => {
                                eprintln!("netmon: warning: cannot serve --metrics: {e}");
                                return;
                            }
                        };
                        let stop = async {
                            let _ = done_rx.await;
                        };
                        if let Err(e) = axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                        {
                            eprintln!("netmon: warning: the --metrics listener failed: {e}");
                        }
                    })
                });
                while let Some(event) = events.recv_ref().await {
                    families.observe(event);
                }
                let _ = done_tx.send(());
                if let Some(server) = server {
                    // Open scrapes finish; a stuck client does not hold netmon up.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
                }
            });
        })?;
    Ok((metrics, thread))
}
