//! The TCP connect scan: a full handshake per port through the ordinary socket API, so
//! it needs no privilege. Many connects are in flight at once (as many as the file
//! descriptor limit allows, see `net::concurrency_for`), each paced by the global rate
//! limiter and bounded by a timeout.
//!
//! Outcomes: handshake done → open (then reset at once, so the peer keeps no
//! TIME_WAIT); `ECONNREFUSED` → closed; timeout or an ICMP unreachable → filtered.
//! Running out of descriptors (`EMFILE`/`ENFILE`) or local ports (`EADDRNOTAVAIL`)
//! waits and retries instead of misreporting the port.
//!
//! Sockets are `socket2::Socket`s (owned: closed on drop) and the handshakes still in
//! flight wait in a `mio::Poll`; this module has no `unsafe`.
use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, unix::SourceFd};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{PortState, Progress, rate::RateLimiter};

/// Counters of local trouble met during a connect scan (reported, never fatal).
#[derive(Debug, Default)]
pub struct LocalTrouble {
    /// Retries after `EMFILE`/`ENFILE`.
    pub fd_exhausted: AtomicU64,
    /// Retries after `EADDRNOTAVAIL` (no free local port).
    pub ports_exhausted: AtomicU64,
}

/// Scans every address in `jobs` on threads of their own (`scan_sharded`), off the
/// async runtime; returns each one's state, or why the scan could not run (no poll
/// instance, a socket that could not be made).
pub async fn scan(
    jobs: Vec<SocketAddr>,
    timeout: Duration,
    concurrency: usize,
    rate: Arc<RateLimiter>,
    progress: Arc<Progress>,
    trouble: Arc<LocalTrouble>,
) -> io::Result<HashMap<SocketAddr, PortState>> {
    tokio::task::spawn_blocking(move || {
        scan_sharded(&jobs, timeout, concurrency, &rate, &progress, &trouble)
    })
    .await
    .map_err(|e| io::Error::other(format!("the connect scan thread failed: {e}")))?
}

/// `scan_blocking` on one thread per CPU (at most 4), each with its share of the ports
/// (interleaved) and of the concurrency: most of a connect's cost is kernel work done in
/// the calling thread, so this is what uses more than one core.
pub fn scan_sharded(
    jobs: &[SocketAddr],
    timeout: Duration,
    concurrency: usize,
    rate: &RateLimiter,
    progress: &Progress,
    trouble: &LocalTrouble,
) -> io::Result<HashMap<SocketAddr, PortState>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(jobs.len().div_ceil(256).max(1));
    if threads == 1 {
        return scan_blocking(jobs, timeout, concurrency, rate, progress, trouble);
    }
    let shards: Vec<Vec<SocketAddr>> = (0..threads)
        .map(|i| jobs.iter().skip(i).step_by(threads).copied().collect())
        .collect();
    let per = (concurrency / threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .map(|shard| {
                s.spawn(move || scan_blocking(shard, timeout, per, rate, progress, trouble))
            })
            .collect();
        let mut out = HashMap::with_capacity(jobs.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| io::Error::other("a scan thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// The connect scan proper: one thread of its own with a `mio::Poll`, plain
/// non-blocking sockets and no per-port task, so that the kernel's work (a SYN and a RST
/// per closed port) is most of what a port costs. Per closed port on a local or
/// namespace link this is two system calls on a reused socket (see `start`); sockets
/// still waiting go into the poll set with their deadline.
pub fn scan_blocking(
    jobs: &[SocketAddr],
    timeout: Duration,
    concurrency: usize,
    rate: &RateLimiter,
    progress: &Progress,
    trouble: &LocalTrouble,
) -> io::Result<HashMap<SocketAddr, PortState>> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut out = HashMap::with_capacity(jobs.len());
    // Handshakes in flight, by slot (the poll token); `free` holds empty slots.
    let mut slots: Vec<Option<InFlight>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut in_flight = 0usize;
    // (slot, generation, deadline) in start order, so the front expires first.
    let mut deadlines: VecDeque<(usize, u64, Instant)> = VecDeque::new();
    let mut retry: Vec<SocketAddr> = Vec::new();
    let mut next = 0usize;
    let mut generation = 0u64;
    let mut backoff_until: Option<Instant> = None;
    // Reusable sockets, per family (see `start`).
    let (mut spare4, mut spare6): (Vec<Socket>, Vec<Socket>) = (Vec::new(), Vec::new());
    let record = |out: &mut HashMap<SocketAddr, PortState>, addr: SocketAddr, st: PortState| {
        progress.done.fetch_add(1, Ordering::Relaxed);
        if st == PortState::Open {
            progress.open.fetch_add(1, Ordering::Relaxed);
        }
        out.insert(addr, st);
    };

    loop {
        // Start as many connects as the window allows.
        let may_start = backoff_until.is_none_or(|t| Instant::now() >= t);
        if may_start {
            backoff_until = None;
        }
        while may_start && in_flight < concurrency && (next < jobs.len() || !retry.is_empty()) {
            let addr = retry.pop().unwrap_or_else(|| {
                next += 1;
                jobs[next - 1]
            });
            let wait = rate.reserve();
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let spare = if addr.is_ipv4() {
                &mut spare4
            } else {
                &mut spare6
            };
            match start(addr, spare) {
                Started::Reusable(sock, st) => {
                    spare.push(sock);
                    record(&mut out, addr, st);
                }
                Started::Done(sock, st) => {
                    close(sock, st == PortState::Open);
                    record(&mut out, addr, st);
                }
                Started::Pending(sock) => {
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    poll.registry().register(
                        &mut SourceFd(&sock.as_raw_fd()),
                        Token(slot),
                        Interest::WRITABLE,
                    )?;
                    generation += 1;
                    slots[slot] = Some(InFlight {
                        sock,
                        addr,
                        generation,
                    });
                    in_flight += 1;
                    deadlines.push_back((slot, generation, Instant::now() + timeout));
                }
                Started::Exhausted(e) => {
                    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                        trouble.ports_exhausted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        trouble.fd_exhausted.fetch_add(1, Ordering::Relaxed);
                    }
                    retry.push(addr);
                    // Let connections in flight finish and free what we ran out of.
                    backoff_until = Some(Instant::now() + Duration::from_millis(20));
                    break;
                }
                Started::Failed(e) => return Err(e),
            }
        }
        if in_flight == 0 && next >= jobs.len() && retry.is_empty() {
            break;
        }
        if backoff_until.is_some() {
            // Out of descriptors or ports: free the spares too.
            spare4.clear();
            spare6.clear();
        }
        let wait = deadlines
            .front()
            .map_or(Duration::from_millis(10), |(_, _, d)| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10))
            });
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in &events {
            // The slot's socket is closed below, which also takes it out of the poll
            // set (epoll forgets a descriptor once its last reference is closed).
            let Some(f) = slots.get_mut(ev.token().0).and_then(Option::take) else {
                continue;
            };
            free.push(ev.token().0);
            in_flight -= 1;
            let st = match f.sock.take_error() {
                Ok(None) if is_self_connect(&f.sock, f.addr) => PortState::Closed,
                Ok(None) => PortState::Open,
                Ok(Some(e)) => state_of_errno(e.raw_os_error().unwrap_or(libc::EIO)),
                Err(_) => PortState::Filtered,
            };
            close(f.sock, st == PortState::Open);
            record(&mut out, f.addr, st);
        }
        let now = Instant::now();
        while let Some(&(slot, g, d)) = deadlines.front() {
            if d > now {
                break;
            }
            deadlines.pop_front();
            if slots[slot].as_ref().is_some_and(|f| f.generation == g) {
                let f = slots[slot].take().expect("checked");
                free.push(slot);
                in_flight -= 1;
                record(&mut out, f.addr, PortState::Filtered);
            }
        }
    }
    Ok(out)
}

/// A handshake waiting in the poll set.
struct InFlight {
    sock: Socket,
    addr: SocketAddr,
    /// Tells this use of the slot from a later one (for the deadline queue).
    generation: u64,
}

enum Started {
    /// Answered at once and the socket is reusable (refused, unreachable).
    Reusable(Socket, PortState),
    /// Answered at once (connected): the socket must be closed.
    Done(Socket, PortState),
    Pending(Socket),
    /// Out of descriptors or local ports: retry later.
    Exhausted(io::Error),
    Failed(io::Error),
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
    )
}

/// Starts one connect, on a spare socket when there is one.
///
/// A second `connect` right after the first returns the outcome when it is already in
/// (on local and namespace links the RST has usually been processed before the first
/// call returns): `ECONNREFUSED` for a closed port, `EALREADY` while the handshake is
/// still going, `EISCONN` when it completed. A failed connect also returns the socket
/// to the unconnected state (Linux's `__inet_stream_connect`), so it can be reused for
/// the next port: no `socket`/`close` pair per closed port.
fn start(addr: SocketAddr, spare: &mut Vec<Socket>) -> Started {
    let sock = match spare.pop() {
        Some(s) => s,
        None => match Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        ) {
            Ok(s) => s,
            Err(e) if is_fd_exhaustion(&e) => return Started::Exhausted(e),
            Err(e) => return Started::Failed(e),
        },
    };
    let sa = SockAddr::from(addr);
    let connect = |sock: &Socket| match sock.connect(&sa) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    };
    let connected = |sock: Socket| {
        let st = if is_self_connect(&sock, addr) {
            PortState::Closed
        } else {
            PortState::Open
        };
        Started::Done(sock, st)
    };
    match connect(&sock) {
        0 => connected(sock),
        libc::EINPROGRESS => match connect(&sock) {
            libc::EALREADY | libc::EINPROGRESS => Started::Pending(sock),
            libc::EISCONN | 0 => connected(sock),
            e => Started::Reusable(sock, state_of_errno(e)),
        },
        e @ (libc::EADDRNOTAVAIL | libc::EMFILE | libc::ENFILE | libc::ENOBUFS) => {
            Started::Exhausted(io::Error::from_raw_os_error(e))
        }
        e => Started::Reusable(sock, state_of_errno(e)),
    }
}

fn state_of_errno(e: i32) -> PortState {
    match e {
        libc::ECONNREFUSED | libc::ECONNRESET => PortState::Closed,
        _ => PortState::Filtered,
    }
}

/// A connect from a local port to the same port on the same address meets itself (TCP
/// simultaneous open): that is not a listener.
fn is_self_connect(sock: &Socket, addr: SocketAddr) -> bool {
    sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr)
}

/// Closes a probe socket; an open port's connection is reset (linger 0) so neither side
/// keeps a TIME_WAIT.
fn close(sock: Socket, reset: bool) {
    if reset {
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
    drop(sock);
}
