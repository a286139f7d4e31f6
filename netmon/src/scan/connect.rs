//! The TCP connect scan: a full handshake per port through the ordinary socket API, so
//! it needs no privilege. Many connects are in flight at once (as many as the file
//! descriptor limit allows, see `net::concurrency_for`), each paced by the global rate
//! limiter and bounded by a timeout.
//!
//! Outcomes: handshake done → open (then reset at once, so the peer keeps no
//! TIME_WAIT); `ECONNREFUSED` → closed; timeout or an ICMP unreachable → filtered.
//! Running out of descriptors (`EMFILE`/`ENFILE`) or local ports (`EADDRNOTAVAIL`)
//! waits and retries instead of misreporting the port.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpSocket, sync::Semaphore, task::JoinSet};

use super::{PortState, Progress, rate::RateLimiter};

/// Counters of local trouble met during a connect scan (reported, never fatal).
#[derive(Debug, Default)]
pub struct LocalTrouble {
    /// Retries after `EMFILE`/`ENFILE`.
    pub fd_exhausted: AtomicU64,
    /// Retries after `EADDRNOTAVAIL` (no free local port).
    pub ports_exhausted: AtomicU64,
}

/// Scans every address in `jobs`; returns each one's state.
pub async fn scan(
    jobs: Vec<SocketAddr>,
    timeout: Duration,
    concurrency: usize,
    rate: Arc<RateLimiter>,
    progress: Arc<Progress>,
    trouble: Arc<LocalTrouble>,
) -> HashMap<SocketAddr, PortState> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut out = HashMap::with_capacity(jobs.len());
    for addr in jobs {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        rate.acquire().await;
        let (progress, trouble) = (progress.clone(), trouble.clone());
        set.spawn(async move {
            let state = probe(addr, timeout, &trouble).await;
            drop(permit);
            progress.done.fetch_add(1, Ordering::Relaxed);
            if state == PortState::Open {
                progress.open.fetch_add(1, Ordering::Relaxed);
            }
            (addr, state)
        });
        // Collect finished tasks as we go so the set stays small.
        while let Some(Ok((a, s))) = set.try_join_next() {
            out.insert(a, s);
        }
    }
    while let Some(r) = set.join_next().await {
        if let Ok((a, s)) = r {
            out.insert(a, s);
        }
    }
    out
}

/// One connect, with retries for local resource exhaustion.
pub async fn probe(addr: SocketAddr, timeout: Duration, trouble: &LocalTrouble) -> PortState {
    for attempt in 0..50u32 {
        match try_connect(addr, timeout).await {
            Ok(state) => return state,
            Err(e) if is_fd_exhaustion(&e) => {
                trouble.fd_exhausted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5 + u64::from(attempt) * 5)).await;
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                trouble.ports_exhausted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20 + u64::from(attempt) * 20)).await;
            }
            Err(_) => return PortState::Filtered,
        }
    }
    PortState::Filtered
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
    )
}

/// `Ok(state)` for an answer from the network, `Err` for local trouble.
async fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<PortState> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A reset instead of FIN on close: no TIME_WAIT piles up on either side.
    socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO))?;
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Err(_) => Ok(PortState::Filtered),
        Ok(Ok(stream)) => {
            // A connect from a local port to the same port on the same address meets
            // itself (TCP simultaneous open): that is not a listener.
            if stream.local_addr().ok() == Some(addr) {
                return Ok(PortState::Closed);
            }
            Ok(PortState::Open)
        }
        Ok(Err(e)) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Ok(PortState::Closed),
            Some(
                libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
                | libc::EACCES
                | libc::EPERM,
            ) => Ok(PortState::Filtered),
            Some(libc::ECONNRESET) => Ok(PortState::Closed),
            _ if is_fd_exhaustion(&e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Err(e),
            _ => Ok(PortState::Filtered),
        },
    }
}
