//! The workloads of `tests/tests/blind.rs`: what an unprivileged local user can do to
//! churn or fill netmon's kernel maps. Started as root, it raises its soft file limit
//! to the hard one (as any user may) and then runs as `nobody` (uid/gid 65534); the
//! tests start several when one process may not hold enough sockets. Prints
//! what it did, one fact per line; commands that hold sockets keep them until stdin
//! closes (at most 120 s). Every loop is bounded in count and time.
//!
//! - `udp-sockets ADDR COUNT hold|close`: COUNT UDP sockets, one datagram each to ADDR;
//!   kept open (`hold`) or closed at once (`close`); prints `sent N`.
//! - `udp-victim ADDR`: a UDP socket connected to ADDR (its owner recorded now);
//!   prints `local PORT`, sends one datagram once stdin gets a line, prints `sent 1`.
//! - `connect-flood ADDR COUNT`: COUNT non-blocking TCP connects to ADDR (a listener
//!   that does not answer keeps them in SYN_SENT); prints `open N`.
//! - `syn-stall ADDR`: listens with a backlog of 0 and does not accept, so SYNs beyond
//!   the first connection are dropped; prints `port N`; accepts everything once stdin
//!   gets a line, until stdin closes.
//! - `listen-many ADDR FIRST COUNT`: listens on COUNT ports from FIRST; prints
//!   `listening N`.
//! - `udp-peers A.B COUNT PORT`: one datagram to each of COUNT peers A.B.x.y:PORT
//!   (x, y < 250; PORT, PORT+1… once those are used) from one socket; prints `sent N`.
//! - `tcp-hold ADDR1,ADDR2,… PORT COUNT`: COUNT established connections from this
//!   process to listeners of its own on each ADDR:PORT (both ends kept open); prints
//!   `open N`.
//! - `dns-forks ADDR COUNT`: COUNT child processes, one after the other, each sending
//!   one DNS query to ADDR and exiting; prints `forked N`.
//! - `dns-flood ADDR SECONDS`: DNS queries to ADDR from one socket as fast as it can
//!   for SECONDS (at most 2,000,000); prints `sent N`.
//! - `connects ADDR COUNT`: COUNT TCP connections to ADDR one after the other, each
//!   closed at once; prints `connected N`.
use std::{
    io::{BufRead as _, Read as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
    time::{Duration, Instant},
};

/// The longest a command holds its sockets.
const HOLD_MAX: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmon-blind: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    become_nobody()?;
    let arg = |i: usize| args.get(i).ok_or_else(|| "missing argument".to_string());
    let addr = |i: usize| -> Result<SocketAddr, String> {
        arg(i)?.parse().map_err(|e| format!("bad address: {e}"))
    };
    let num = |i: usize| -> Result<usize, String> {
        arg(i)?.parse().map_err(|e| format!("bad number: {e}"))
    };
    match arg(0)?.as_str() {
        "udp-sockets" => {
            let to = addr(1)?;
            let hold = arg(3)? == "hold";
            let mut kept = Vec::new();
            for i in 0..num(2)? {
                // Spread over local addresses (one set per process): each has its
                // own port space.
                let from = format!("127.3.{}.{}:0", std::process::id() % 250, i / 20_000 + 1);
                let s = UdpSocket::bind(from.as_str()).map_err(|e| format!("bind {from}: {e}"))?;
                s.send_to(b"x", to).map_err(|e| e.to_string())?;
                if hold {
                    kept.push(s);
                }
            }
            say(format!("sent {}", num(2)?));
            if hold {
                wait_for_stdin_close();
            }
            Ok(())
        }
        "udp-victim" => {
            let to = addr(1)?;
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.connect(to).map_err(|e| e.to_string())?;
            say(format!("local {}", s.local_addr().unwrap().port()));
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            s.send(b"v").map_err(|e| e.to_string())?;
            say("sent 1".into());
            Ok(())
        }
        "connect-flood" => {
            let to = addr(1)?;
            let mut kept = Vec::new();
            for _ in 0..num(2)? {
                kept.push(connect_nonblocking(to)?);
            }
            say(format!("open {}", kept.len()));
            wait_for_stdin_close();
            Ok(())
        }
        "syn-stall" => {
            let listener = TcpListener::bind(addr(1)?).map_err(|e| e.to_string())?;
            // A second listen() changes the backlog: 0 leaves room for one connection.
            // SAFETY: a listening socket we own.
            unsafe { libc::listen(listener.as_raw_fd(), 0) };
            say(format!("port {}", listener.local_addr().unwrap().port()));
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = std::io::stdin().read_to_end(&mut Vec::new());
                let _ = tx.send(());
            });
            let deadline = Instant::now() + HOLD_MAX;
            let mut accepted = Vec::new();
            while rx.try_recv().is_err() && Instant::now() < deadline {
                match listener.accept() {
                    Ok((c, _)) => accepted.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            Ok(())
        }
        "listen-many" => {
            let base = addr(1)?;
            let first = num(2)?;
            let mut kept = Vec::new();
            for port in first..first + num(3)? {
                let mut at = base;
                at.set_port(u16::try_from(port).map_err(|_| "port past 65535")?);
                kept.push(TcpListener::bind(at).map_err(|e| format!("listen {at}: {e}"))?);
            }
            say(format!("listening {}", kept.len()));
            wait_for_stdin_close();
            Ok(())
        }
        "udp-peers" => {
            let prefix = arg(1)?;
            let (count, first_port) = (num(2)?, num(3)?);
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            for i in 0..count {
                let port = first_port + i / 62_500;
                let to: SocketAddr = format!("{prefix}.{}.{}:{port}", (i / 250) % 250, i % 250 + 1)
                    .parse()
                    .map_err(|e| format!("bad address: {e}"))?;
                sock.send_to(b"x", to).map_err(|e| e.to_string())?;
            }
            say(format!("sent {count}"));
            Ok(())
        }
        "tcp-hold" => {
            let port = num(2)? as u16;
            let listeners: Vec<TcpListener> = arg(1)?
                .split(',')
                .map(|a| {
                    let at: SocketAddr =
                        format!("{a}:{port}").parse().map_err(|e| format!("{e}"))?;
                    let l = TcpListener::bind(at).map_err(|e| format!("listen {at}: {e}"))?;
                    // SAFETY: a listening socket we own; a deep queue for the burst.
                    unsafe { libc::listen(l.as_raw_fd(), 65535) };
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok(l)
                })
                .collect::<Result<_, String>>()?;
            let targets: Vec<SocketAddr> =
                listeners.iter().map(|l| l.local_addr().unwrap()).collect();
            let count = num(3)?;
            let mut clients = Vec::with_capacity(count);
            let mut servers = Vec::with_capacity(count);
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..count {
                if Instant::now() > deadline {
                    return Err(format!("only {i} connections in 60 s"));
                }
                clients.push(
                    TcpStream::connect(targets[i % targets.len()])
                        .map_err(|e| format!("connection {i}: {e}"))?,
                );
                if i % 256 == 255 || i + 1 == count {
                    for l in &listeners {
                        while let Ok((c, _)) = l.accept() {
                            servers.push(c);
                        }
                    }
                }
            }
            while servers.len() < count && Instant::now() < deadline {
                for l in &listeners {
                    while let Ok((c, _)) = l.accept() {
                        servers.push(c);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            say(format!("open {}", clients.len().min(servers.len())));
            wait_for_stdin_close();
            Ok(())
        }
        "dns-forks" => {
            let to = addr(1)?;
            let count = num(2)?;
            let query = dns_query(0x4e4d);
            for _ in 0..count {
                // SAFETY: the child only sends a datagram and calls _exit.
                match unsafe { libc::fork() } {
                    0 => {
                        let ok = UdpSocket::bind("0.0.0.0:0")
                            .and_then(|s| s.send_to(&query, to))
                            .is_ok();
                        // SAFETY: ends the child without running the parent's destructors.
                        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
                    }
                    -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
                    child => {
                        let mut status = 0;
                        // SAFETY: waiting for our own child.
                        unsafe { libc::waitpid(child, &mut status, 0) };
                    }
                }
            }
            say(format!("forked {count}"));
            Ok(())
        }
        "dns-flood" => {
            let to = addr(1)?;
            let until = Instant::now() + Duration::from_secs(num(2)?.min(30) as u64);
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            let mut sent = 0u64;
            for attempt in 0..2_000_000u64 {
                if attempt % 1024 == 0 && Instant::now() >= until {
                    break;
                }
                if sock.send_to(&dns_query(attempt as u16), to).is_ok() {
                    sent += 1;
                }
            }
            say(format!("sent {sent}"));
            Ok(())
        }
        "connects" => {
            let to = addr(1)?;
            let count = num(2)?;
            for i in 0..count {
                TcpStream::connect(to).map_err(|e| format!("connect {i}: {e}"))?;
            }
            say(format!("connected {count}"));
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}

/// Raises the file limit (hard limit included, while still root) and drops to nobody.
fn become_nobody() -> Result<(), String> {
    // SAFETY: plain system calls on values we own.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(());
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            return Err(format!(
                "drop to nobody: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// A TCP socket whose connect to `to` is under way (EINPROGRESS).
fn connect_nonblocking(to: SocketAddr) -> Result<OwnedFd, String> {
    let SocketAddr::V4(v4) = to else {
        return Err("connect-flood takes an IPv4 address".into());
    };
    // SAFETY: a new socket, a sockaddr_in built here, plain calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(format!("connect {to}: {err}"));
        }
        Ok(fd)
    }
}

/// An A query for `blind.example` with message id `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["blind", "example"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn wait_for_stdin_close() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(HOLD_MAX);
}

fn say(line: String) {
    println!("{line}");
}
