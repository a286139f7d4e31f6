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

/// Scans every address in `jobs` on a thread of its own (`scan_blocking`); returns each
/// one's state. Falls back to one task per port if that thread cannot run.
pub async fn scan(
    jobs: Vec<SocketAddr>,
    timeout: Duration,
    concurrency: usize,
    rate: Arc<RateLimiter>,
    progress: Arc<Progress>,
    trouble: Arc<LocalTrouble>,
) -> HashMap<SocketAddr, PortState> {
    let (r, p, t) = (rate.clone(), progress.clone(), trouble.clone());
    let jobs = Arc::new(jobs);
    let j = jobs.clone();
    let fast =
        tokio::task::spawn_blocking(move || scan_sharded(&j, timeout, concurrency, &r, &p, &t))
            .await;
    match fast {
        Ok(Ok(states)) => states,
        _ => {
            progress.done.store(0, Ordering::Relaxed);
            scan_tasks(jobs.to_vec(), timeout, concurrency, rate, progress, trouble).await
        }
    }
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

/// The same scan with one tokio task per port.
pub async fn scan_tasks(
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

/// The connect scan proper: one thread of its own with an epoll set, plain
/// non-blocking sockets and no per-port task, so that the kernel's work (a SYN and a RST
/// per closed port) is most of what a port costs. Per closed port on a local or
/// namespace link this is four system calls: `socket`, `connect`, `getsockopt(SO_ERROR)`
/// (the RST has usually been processed before `connect` returns) and `close`; sockets
/// still waiting go into the epoll set with their deadline.
pub fn scan_blocking(
    jobs: &[SocketAddr],
    timeout: Duration,
    concurrency: usize,
    rate: &RateLimiter,
    progress: &Progress,
    trouble: &LocalTrouble,
) -> io::Result<HashMap<SocketAddr, PortState>> {
    use std::collections::VecDeque;
    use std::os::fd::RawFd;
    use std::time::Instant;

    // SAFETY: plain syscall; the fd is closed by `Epoll`'s drop.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    struct Epoll(RawFd);
    impl Drop for Epoll {
        fn drop(&mut self) {
            // SAFETY: our own fd.
            unsafe { libc::close(self.0) };
        }
    }
    let ep = Epoll(epfd);

    let mut out = HashMap::with_capacity(jobs.len());
    let mut in_flight: HashMap<RawFd, (SocketAddr, u64)> = HashMap::new();
    let mut deadlines: VecDeque<(RawFd, u64, Instant)> = VecDeque::new();
    let mut retry: Vec<SocketAddr> = Vec::new();
    let mut next = 0usize;
    let mut generation = 0u64;
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut backoff_until: Option<Instant> = None;
    // Reusable sockets, per family (see `start`).
    let (mut spare4, mut spare6): (Vec<RawFd>, Vec<RawFd>) = (Vec::new(), Vec::new());
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
        while may_start && in_flight.len() < concurrency && (next < jobs.len() || !retry.is_empty())
        {
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
                Started::Reusable(fd, st) => {
                    spare.push(fd);
                    record(&mut out, addr, st);
                }
                Started::Done(fd, st) => {
                    close_fd(fd, st == PortState::Open);
                    record(&mut out, addr, st);
                }
                Started::Pending(fd) => {
                    let mut ev = libc::epoll_event {
                        events: (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32,
                        u64: fd as u64,
                    };
                    // SAFETY: valid epoll fd, socket fd and event.
                    if unsafe { libc::epoll_ctl(ep.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                        close_fd(fd, false);
                        return Err(io::Error::last_os_error());
                    }
                    generation += 1;
                    in_flight.insert(fd, (addr, generation));
                    deadlines.push_back((fd, generation, Instant::now() + timeout));
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
        if in_flight.is_empty() && next >= jobs.len() && retry.is_empty() {
            break;
        }
        if backoff_until.is_some() {
            // Out of descriptors or ports: free the spares too.
            for fd in spare4.drain(..).chain(spare6.drain(..)) {
                close_fd(fd, false);
            }
        }
        let wait_ms = deadlines.front().map_or(10, |(_, _, d)| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(10) as i32
        });
        // SAFETY: events is a valid buffer of the length given.
        let n =
            unsafe { libc::epoll_wait(ep.0, events.as_mut_ptr(), events.len() as i32, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            let Some((addr, _)) = in_flight.remove(&fd) else {
                continue;
            };
            let st = match so_error(fd) {
                0 if is_self_connect(fd, addr) => PortState::Closed,
                0 => PortState::Open,
                e => state_of_errno(e),
            };
            close_fd(fd, st == PortState::Open);
            record(&mut out, addr, st);
        }
        let now = Instant::now();
        while let Some(&(fd, g, d)) = deadlines.front() {
            if d > now {
                break;
            }
            deadlines.pop_front();
            if in_flight.get(&fd).is_some_and(|(_, gen_)| *gen_ == g) {
                let (addr, _) = in_flight.remove(&fd).expect("checked");
                close_fd(fd, false);
                record(&mut out, addr, PortState::Filtered);
            }
        }
    }
    for fd in spare4.into_iter().chain(spare6) {
        close_fd(fd, false);
    }
    Ok(out)
}

enum Started {
    /// Answered at once and the socket is reusable (refused, unreachable).
    Reusable(i32, PortState),
    /// Answered at once (connected): the fd needs closing.
    Done(i32, PortState),
    Pending(i32),
    /// Out of descriptors or local ports: retry later.
    Exhausted(io::Error),
    Failed(io::Error),
}

/// Starts one connect, on a spare socket when there is one.
///
/// A second `connect` right after the first returns the outcome when it is already in
/// (on local and namespace links the RST has usually been processed before the first
/// call returns): `ECONNREFUSED` for a closed port, `EALREADY` while the handshake is
/// still going, `EISCONN` when it completed. A failed connect also returns the socket
/// to the unconnected state (Linux's `__inet_stream_connect`), so it can be reused for
/// the next port: no `socket`/`close` pair per closed port.
fn start(addr: SocketAddr, spare: &mut Vec<i32>) -> Started {
    let fd = match spare.pop() {
        Some(fd) => fd,
        None => {
            let family = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // SAFETY: plain syscall.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                return if is_fd_exhaustion(&e) {
                    Started::Exhausted(e)
                } else {
                    Started::Failed(e)
                };
            }
            fd
        }
    };
    let sa = socket2::SockAddr::from(addr);
    let connect = || {
        // SAFETY: sa is a valid sockaddr of the length given.
        let rc = unsafe { libc::connect(fd, sa.as_ptr().cast(), sa.len()) };
        if rc == 0 {
            0
        } else {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        }
    };
    let connected = |fd| {
        let st = if is_self_connect(fd, addr) {
            PortState::Closed
        } else {
            PortState::Open
        };
        Started::Done(fd, st)
    };
    match connect() {
        0 => connected(fd),
        libc::EINPROGRESS => match connect() {
            libc::EALREADY | libc::EINPROGRESS => Started::Pending(fd),
            libc::EISCONN | 0 => connected(fd),
            e => Started::Reusable(fd, state_of_errno(e)),
        },
        e @ (libc::EADDRNOTAVAIL | libc::EMFILE | libc::ENFILE | libc::ENOBUFS) => {
            close_fd(fd, false);
            Started::Exhausted(io::Error::from_raw_os_error(e))
        }
        e => Started::Reusable(fd, state_of_errno(e)),
    }
}

fn state_of_errno(e: i32) -> PortState {
    match e {
        libc::ECONNREFUSED | libc::ECONNRESET => PortState::Closed,
        _ => PortState::Filtered,
    }
}

fn so_error(fd: i32) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 { libc::EBADF } else { err }
}

/// A connect from a local port to the same port on the same address meets itself (TCP
/// simultaneous open): that is not a listener.
fn is_self_connect(fd: i32, addr: SocketAddr) -> bool {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd and a sockaddr_storage-sized buffer.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return false;
    }
    let port = match i32::from(ss.ss_family) {
        // SAFETY: the family says which struct it is.
        libc::AF_INET => u16::from_be(unsafe {
            (*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port
        }),
        libc::AF_INET6 => u16::from_be(unsafe {
            (*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()).sin6_port
        }),
        _ => return false,
    };
    // SAFETY: ss holds the sockaddr getsockname wrote.
    let ip = unsafe { super::net::sockaddr_ip(&ss) };
    ip == Some(addr.ip()) && port == addr.port()
}

/// Closes a probe socket; an open port's connection is reset (linger 0) so neither side
/// keeps a TIME_WAIT.
fn close_fd(fd: i32, reset: bool) {
    if reset {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and struct.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
}
