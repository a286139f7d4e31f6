//! The API's connections: accepted from a bound listener, wrapped in TLS when
//! configured, and served by hyper's HTTP/1.1 with limits a hostile or broken client
//! cannot get past: at most [`MAX_CONNECTIONS`] at once, [`HANDSHAKE_TIMEOUT`] for
//! TLS, [`HEADER_TIMEOUT`] to send a request's headers (also the idle time allowed
//! between requests on a kept-alive connection), [`MAX_HEADER_BYTES`] of headers.
//! The router (`api.rs`) sees each request with the peer's address (`ConnectInfo`).
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{Counters, tls::Reloading};

/// Connections served at once per listener; more are closed at accept (and counted).
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers, from the connection's start or the
/// end of the previous response.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most header bytes a request may have (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `listener` until the runtime ends.
pub async fn listen(
    addr: SocketAddr,
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Reloading>>,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                crate::eline!("netmon: warning: the API on {addr} cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve(tcp, peer, app).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(tcp);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve(stream, peer, app).await,
                        // A plain-HTTP request, a scanner, a client that distrusts the
                        // certificate: the connection just ends.
                        _ => {
                            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
}

/// One connection's requests, each handed to the router with the peer's address.
async fn serve<S>(stream: S, peer: SocketAddr, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
