//! `netmon-storm`: the load generator of `cargo xtask bench`. A bounded TCP connection
//! storm plus a UDP sender, on loopback, inside a network namespace of its own that
//! disappears with the process. Needs root (it unshares the network namespace).
//!
//! - **TCP**: `--listeners` listeners on 127.0.0.1, one accepting thread each;
//!   `--clients` threads loop connect → write 32 bytes → read to EOF → close, while the
//!   server side accepts → reads the 32 bytes → closes. It runs for `--duration-ms` and
//!   starts at most `--max-connections` connections, whichever ends first; every
//!   connection that was started is finished before the storm reports.
//! - **UDP**: one thread sends 32-byte datagrams round-robin to `--udp-ports` ports of
//!   127.0.0.1 (nobody listens: the datagrams cross the stack and are dropped), for the
//!   same time and at most `--max-datagrams` datagrams.
//!
//! On exit it prints one JSON object on stdout: what it did, its network namespace inode
//! and pid (to pick its events out of a tracer's output), and the exact number of events
//! netmon's kernel side generates for that work:
//!
//! | kind      | per                                                                  |
//! |-----------|----------------------------------------------------------------------|
//! | `listen`  | listener                                                             |
//! | `connect` | TCP connection (the client's SYN_SENT → ESTABLISHED)                 |
//! | `accept`  | TCP connection (the child socket's SYN_RECV → ESTABLISHED)           |
//! | `close`   | 2 per TCP connection, one per side                                   |
//! | `udp`     | distinct (process, peer): this process, one per port it sent to      |
//!
//! The counts are exact only when no connection failed (`tcp_failed` is 0); `exact`
//! says so.
use std::{
    ffi::CString,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::json;

/// Bounded loopback connection storm in a private network namespace (root only).
#[derive(Debug, Parser)]
#[command(name = "netmon-storm")]
struct Args {
    /// How long the storm runs, in milliseconds (at most 10 minutes).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    duration_ms: u64,
    /// Hard cap on TCP connections started.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    max_connections: u64,
    /// Parallel TCP client threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// TCP listeners (one accepting thread each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    listeners: u32,
    /// Distinct UDP destination ports (0: no UDP sender).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    udp_ports: u32,
    /// Hard cap on UDP datagrams sent.
    #[arg(long, default_value_t = 50_000_000)]
    max_datagrams: u64,
}

/// First UDP destination port; the storm sends to `UDP_BASE_PORT..UDP_BASE_PORT + udp_ports`.
const UDP_BASE_PORT: u16 = 20000;
/// Bytes each client writes and each datagram carries.
const PAYLOAD: usize = 32;
/// A connection that makes no progress for this long counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the last FIN/ACK exchanges after the storm (TCP retransmits at
/// 200 ms, 400 ms, 800 ms, … so a few dropped segments settle within seconds).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netmon-storm: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Default)]
struct Counters {
    /// Connections claimed (started) by clients.
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    datagrams: AtomicU64,
    server_errors: AtomicU64,
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root: it creates a network namespace".into());
    }
    // SAFETY: unshare affects this thread; threads spawned later inherit the namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    set_lo_up()?;
    let netns = netns_inode()?;

    let listeners: Vec<TcpListener> = (0..args.listeners)
        .map(|_| listen_loopback())
        .collect::<Result<_, _>>()?;
    let addrs: Arc<Vec<SocketAddr>> =
        Arc::new(listeners.iter().map(|l| l.local_addr().unwrap()).collect());
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let udp = args.udp_ports > 0;
    // Clients, the UDP sender and this thread start together.
    let start = Arc::new(Barrier::new(args.clients as usize + udp as usize + 1));

    let listener_fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let (c, stop) = (counters.clone(), stop.clone());
            thread::spawn(move || serve(l, &c, &stop))
        })
        .collect();

    let duration = Duration::from_millis(args.duration_ms);
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let (c, addrs, start) = (counters.clone(), addrs.clone(), start.clone());
            let max = args.max_connections;
            thread::spawn(move || {
                start.wait();
                client(&addrs, &c, Instant::now() + duration, max)
            })
        })
        .collect();
    let sender = udp.then(|| {
        let (c, start) = (counters.clone(), start.clone());
        let (ports, max) = (args.udp_ports, args.max_datagrams);
        thread::spawn(move || {
            start.wait();
            udp_sender(ports, max, &c, Instant::now() + duration)
        })
    });

    start.wait();
    let began = Instant::now();
    let mut first_error = None;
    for c in clients {
        if let Err(e) = c.join().map_err(|_| "client thread panicked".to_string())? {
            first_error.get_or_insert(e);
        }
    }
    let tcp_elapsed = began.elapsed();
    let udp_ports_hit = match sender {
        Some(s) => s.join().map_err(|_| "UDP thread panicked".to_string())??,
        None => 0,
    };
    let elapsed = began.elapsed();
    // Every client has read EOF and closed, but a FIN or ACK dropped by a full loopback
    // backlog is retransmitted later: wait until every socket reached its last state, so
    // every `close` the storm causes has happened before it reports.
    let (settle, unsettled) = settle_sockets(SETTLE_TIMEOUT)?;
    // Wake the accepting threads and let them go.
    stop.store(true, Ordering::SeqCst);
    for fd in listener_fds {
        // SAFETY: the listeners are still open (their threads own them until they return).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    for s in servers {
        s.join().map_err(|_| "server thread panicked".to_string())?;
    }

    let completed = counters.completed.load(Ordering::SeqCst);
    let failed = counters.failed.load(Ordering::SeqCst);
    let datagrams = counters.datagrams.load(Ordering::SeqCst);
    let listen = args.listeners as u64;
    let events = json!({
        "listen": listen,
        "connect": completed,
        "accept": completed,
        "close": 2 * completed,
        "udp": udp_ports_hit,
    });
    Ok(json!({
        "pid": std::process::id(),
        "netns": netns,
        "duration_s": elapsed.as_secs_f64(),
        "tcp_duration_s": tcp_elapsed.as_secs_f64(),
        "tcp_connections": completed,
        "tcp_failed": failed,
        "tcp_per_s": completed as f64 / tcp_elapsed.as_secs_f64(),
        "udp_datagrams": datagrams,
        "udp_per_s": datagrams as f64 / elapsed.as_secs_f64(),
        "udp_ports": udp_ports_hit,
        "listeners": listen,
        "events": events,
        "events_total": listen + 4 * completed + udp_ports_hit,
        "settle_s": settle.as_secs_f64(),
        "unsettled_sockets": unsettled,
        "exact": failed == 0 && unsettled == 0 && counters.server_errors.load(Ordering::SeqCst) == 0,
        "first_error": first_error,
    }))
}

/// One client thread: connections until the deadline or the cap.
fn client(addrs: &[SocketAddr], c: &Counters, deadline: Instant, max: u64) -> Result<(), String> {
    let mut first_error = None;
    while Instant::now() < deadline {
        let n = c.claimed.fetch_add(1, Ordering::SeqCst);
        if n >= max {
            break;
        }
        match one_connection(addrs[n as usize % addrs.len()]) {
            Ok(()) => c.completed.fetch_add(1, Ordering::SeqCst),
            Err(e) => {
                first_error.get_or_insert(e);
                c.failed.fetch_add(1, Ordering::SeqCst)
            }
        };
    }
    first_error.map_or(Ok(()), Err)
}

fn one_connection(to: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(&[b'c'; PAYLOAD])
        .map_err(|e| format!("write: {e}"))?;
    // The server closes after reading: EOF means both sides are done with the data.
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One accepting thread: accept → read the client's bytes → close, until shut down.
fn serve(listener: TcpListener, c: &Counters, stop: &AtomicBool) {
    let mut buf = [0u8; PAYLOAD];
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                let ok =
                    s.set_read_timeout(Some(IO_TIMEOUT)).is_ok() && s.read_exact(&mut buf).is_ok();
                if !ok {
                    c.server_errors.fetch_add(1, Ordering::SeqCst);
                }
                drop(s); // close: the server ends the connection (FIN first)
            }
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.server_errors.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Sends round-robin to `ports` ports; returns how many distinct ports got a datagram.
fn udp_sender(ports: u32, max: u64, c: &Counters, deadline: Instant) -> Result<u64, String> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("UDP bind: {e}"))?;
    let payload = [b'u'; PAYLOAD];
    let mut sent: u64 = 0;
    let mut i: u32 = 0;
    // Check the clock every 64 datagrams: a syscall per datagram already dominates.
    while sent < max && (!sent.is_multiple_of(64) || Instant::now() < deadline) {
        let port = UDP_BASE_PORT + (i % ports) as u16;
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        match sock.send_to(&payload, to) {
            Ok(_) => sent += 1,
            // An ICMP port-unreachable from an earlier datagram can surface here.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(format!("UDP send to {to}: {e}")),
        }
        i = i.wrapping_add(1);
    }
    c.datagrams.store(sent, Ordering::SeqCst);
    Ok(sent.min(ports as u64))
}

/// Waits until the namespace holds no TCP socket between ESTABLISHED and CLOSE other
/// than listeners and TIME_WAIT (which fire no more state changes netmon reports).
/// Returns the time it took and how many sockets were still in flight at the timeout.
fn settle_sockets(timeout: Duration) -> Result<(Duration, u64), String> {
    let start = Instant::now();
    loop {
        let busy = busy_tcp_sockets()?;
        if busy == 0 || start.elapsed() >= timeout {
            return Ok((start.elapsed(), busy));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// TCP sockets of this thread's namespace that are not listening, closed or in TIME_WAIT.
fn busy_tcp_sockets() -> Result<u64, String> {
    // /proc/thread-self/net is the calling thread's network namespace.
    let text = std::fs::read_to_string("/proc/thread-self/net/tcp")
        .map_err(|e| format!("read /proc/thread-self/net/tcp: {e}"))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        // 06 TIME_WAIT, 07 CLOSE, 0A LISTEN (include/net/tcp_states.h)
        .filter(|st| !matches!(*st, "06" | "07" | "0A"))
        .count() as u64)
}

/// A listener on 127.0.0.1 with a deep accept queue.
fn listen_loopback() -> Result<TcpListener, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    // std listens with a backlog of 128; calling listen() again on a listening socket
    // only resizes its queue (no state change, so no second `listen` event).
    // SAFETY: a valid listening socket.
    if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    Ok(l)
}

fn netns_inode() -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| format!("stat /proc/thread-self/ns/net: {e}"))
}

fn set_lo_up() -> Result<(), String> {
    // SAFETY: a plain socket + ioctl on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        let name = CString::new("lo").unwrap();
        for (i, b) in name.as_bytes_with_nul().iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if ok {
            Ok(())
        } else {
            Err(format!("bring lo up: {err}"))
        }
    }
}
