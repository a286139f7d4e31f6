//! The other side of an integration test, as a separate process with its own pid and
//! comm (`netmon-testpeer`). Prints what it did on stdout, one fact per line.
//!
//! - `tcp-server ADDR SEND`: listen on ADDR (port 0 = any), print `port N`, accept one
//!   connection, send SEND bytes, read to EOF, print `received N`, close.
//! - `tcp-client ADDR SEND [BIND]`: connect (from BIND if given), print `local PORT`,
//!   send SEND bytes, shut down writing, read to EOF, print `received N`.
//! - `udp-send ADDR COUNT SIZE [BIND]`: send COUNT datagrams of SIZE bytes (from BIND if
//!   given), print `local PORT`.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmon-testpeer: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).ok_or_else(|| "missing argument".to_string());
    let addr = |i: usize| -> Result<SocketAddr, String> {
        arg(i)?.parse().map_err(|e| format!("bad address: {e}"))
    };
    let num = |i: usize| -> Result<usize, String> {
        arg(i)?.parse().map_err(|e| format!("bad number: {e}"))
    };
    match arg(0)?.as_str() {
        "tcp-server" => {
            let listener = TcpListener::bind(addr(1)?).map_err(|e| e.to_string())?;
            say(format!("port {}", listener.local_addr().unwrap().port()));
            let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
            conn.write_all(&vec![b's'; num(2)?])
                .map_err(|e| e.to_string())?;
            let received = drain(&mut conn)?;
            say(format!("received {received}"));
            Ok(())
        }
        "tcp-client" => {
            let mut conn = match args.get(3) {
                None => TcpStream::connect(addr(1)?).map_err(|e| e.to_string())?,
                Some(_) => connect_from(addr(3)?, addr(1)?)?,
            };
            say(format!("local {}", conn.local_addr().unwrap().port()));
            conn.write_all(&vec![b'c'; num(2)?])
                .map_err(|e| e.to_string())?;
            conn.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            let received = drain(&mut conn)?;
            say(format!("received {received}"));
            Ok(())
        }
        "udp-send" => {
            let to = addr(1)?;
            let bind: SocketAddr = match args.get(4) {
                Some(_) => addr(4)?,
                None => if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .unwrap(),
            };
            let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
            say(format!("local {}", sock.local_addr().unwrap().port()));
            let payload = vec![b'u'; num(3)?];
            for _ in 0..num(2)? {
                sock.send_to(&payload, to).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}

/// A TCP connection from a chosen local address (std has no bind-then-connect).
fn connect_from(local: SocketAddr, remote: SocketAddr) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (l, llen) = sockaddr(&local);
    let (r, rlen) = sockaddr(&remote);
    // SAFETY: plain socket calls on a descriptor we own; sockaddr buffers outlive them.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if libc::bind(fd, l.as_ptr().cast(), llen) != 0
            || libc::connect(fd, r.as_ptr().cast(), rlen) != 0
        {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(stream)
    }
}

/// `sockaddr_in`/`sockaddr_in6` bytes of `a`.
fn sockaddr(a: &SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut buf = [0u8; 28];
    match a {
        SocketAddr::V4(v4) => {
            buf[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            buf[2..4].copy_from_slice(&v4.port().to_be_bytes());
            buf[4..8].copy_from_slice(&v4.ip().octets());
            (buf, 16)
        }
        SocketAddr::V6(v6) => {
            buf[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            buf[2..4].copy_from_slice(&v6.port().to_be_bytes());
            buf[8..24].copy_from_slice(&v6.ip().octets());
            (buf, 28)
        }
    }
}

fn drain(conn: &mut TcpStream) -> Result<usize, String> {
    let mut buf = [0u8; 65536];
    let mut total = 0;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
