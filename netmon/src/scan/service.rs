//! Service detection: which protocol answers on an open port, and which version when
//! the server says. Server-first protocols (SSH, FTP, SMTP, POP3, IMAP, MySQL, VNC)
//! are read from their greeting; client-first ones get a small probe (an HTTP `GET`,
//! a TLS ClientHello, a Redis `INFO`, a PostgreSQL `SSLRequest`, a memcached `version`).
//!
//! The parsers (`identify_*`, `parse_*`) are pure; `detect` does the I/O, one short
//! connection per probe, the probes of a port in parallel after a head start for the
//! likely one, the whole bounded by `--service-timeout`.
//!
//! Over 600 lines: about twenty small pure parsers (one per protocol greeting or probe
//! answer) beside the one `detect` that runs them; its tests are in `service/tests.rs`.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
    time::{Instant, timeout_at},
};

use super::{ports::well_known, rate::RateLimiter};
use crate::event::Proto;

/// What answers on a port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Protocol name (`ssh`, `http`, `tls`…), or the port's usual service when nothing
    /// identified it (then `guessed` is true).
    pub name: Option<String>,
    /// Product and version as the server announced them.
    pub version: Option<String>,
    /// The first bytes the server sent, printable, at most `BANNER_MAX` characters.
    pub banner: Option<String>,
    /// True when `name` only comes from the port number.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guessed: bool,
}

/// Longest banner excerpt kept.
pub const BANNER_MAX: usize = 120;

/// Which probe produced a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing sent: the server spoke first.
    Greeting,
    Http,
    Tls,
    Redis,
    Postgres,
    Memcached,
}

/// Printable excerpt of a banner: control bytes become `.`, `\r\n` becomes ` | `.
pub fn excerpt(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut out = String::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(" | ");
        }
        out.extend(line.chars().map(|c| if c.is_control() { '.' } else { c }));
        if out.chars().count() >= BANNER_MAX {
            break;
        }
    }
    let out: String = out.chars().take(BANNER_MAX).collect();
    (!out.trim().is_empty()).then_some(out)
}

fn svc(name: &str, version: Option<String>) -> ServiceInfo {
    ServiceInfo {
        name: Some(name.to_owned()),
        version: version.filter(|v| !v.is_empty()),
        banner: None,
        guessed: false,
    }
}

/// Names the service from what it said, given the probe that was sent and the port
/// (a tie-breaker for greetings shared by protocols, such as FTP's and SMTP's `220`).
pub fn identify(probe: Probe, port: u16, data: &[u8]) -> Option<ServiceInfo> {
    if data.is_empty() {
        return None;
    }
    let mut found = match probe {
        Probe::Greeting => identify_greeting(port, data),
        Probe::Http => identify_http(data).or_else(|| identify_tls(data)),
        Probe::Tls => identify_tls(data).or_else(|| identify_http(data)),
        Probe::Redis => identify_redis(data),
        Probe::Postgres => identify_postgres(data),
        Probe::Memcached => identify_memcached(data),
    }?;
    if probe == Probe::Greeting || found.name.as_deref() != Some("tls") {
        found.banner = excerpt(&data[..data.len().min(512)]);
    }
    Some(found)
}

fn identify_greeting(port: u16, data: &[u8]) -> Option<ServiceInfo> {
    let text = String::from_utf8_lossy(data);
    let first = text.lines().next().unwrap_or("").trim_end();
    if let Some(rest) = first.strip_prefix("SSH-") {
        // SSH-protoversion-softwareversion SP comments
        let version = rest.split_once('-').map(|(_, v)| v.trim().to_owned());
        return Some(svc("ssh", version));
    }
    if first.starts_with("220") {
        let lower = first.to_ascii_lowercase();
        let smtp = ["smtp", "postfix", "exim", "sendmail", "mail"]
            .iter()
            .any(|k| lower.contains(k));
        let ftp = lower.contains("ftp");
        let name = match (smtp, ftp) {
            (true, false) => "smtp",
            (false, true) => "ftp",
            _ if [25, 465, 587, 2525].contains(&port) => "smtp",
            _ => "ftp",
        };
        let version = if name == "smtp" {
            smtp_version(first)
        } else {
            ftp_version(first)
        };
        return Some(svc(name, version));
    }
    if first.starts_with("+OK") {
        return Some(svc("pop3", product_after(first, &["Dovecot", "Cyrus"])));
    }
    if first.starts_with("* OK") || first.starts_with("* PREAUTH") {
        return Some(svc(
            "imap",
            product_after(first, &["Dovecot", "Cyrus", "Courier"]),
        ));
    }
    if let Some(v) = first.strip_prefix("RFB ") {
        let v = v.trim();
        let pretty = v.split_once('.').and_then(|(a, b)| {
            Some(format!(
                "protocol {}.{}",
                a.parse::<u32>().ok()?,
                b.parse::<u32>().ok()?
            ))
        });
        return Some(svc("vnc", pretty));
    }
    if let Some(v) = first.strip_prefix("@RSYNCD:") {
        return Some(svc("rsync", Some(format!("protocol {}", v.trim()))));
    }
    if data[0] == 0xff && data.len() >= 3 && (0xfb..=0xfe).contains(&data[1]) {
        return Some(svc("telnet", None));
    }
    if let Some(v) = parse_mysql_greeting(data) {
        return Some(v);
    }
    if first.starts_with("-ERR") || first.starts_with("-DENIED") {
        return Some(svc("redis", None));
    }
    None
}

fn smtp_version(line: &str) -> Option<String> {
    for product in [
        "Postfix",
        "Exim",
        "Sendmail",
        "OpenSMTPD",
        "Microsoft ESMTP MAIL Service",
    ] {
        if let Some(i) = line.find(product) {
            let rest = &line[i..];
            // "Exim 4.96", "Sendmail 8.17.1/8.17.1": keep the product and one token.
            let mut words = rest.split_whitespace();
            let first = words.next().unwrap_or(product);
            let next = words
                .next()
                .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
            return Some(match next {
                Some(v) => format!("{first} {v}"),
                None => first.trim_end_matches([';', ',']).to_owned(),
            });
        }
    }
    None
}

fn ftp_version(line: &str) -> Option<String> {
    // "220 (vsFTPd 3.0.3)", "220 ProFTPD 1.3.8 Server (Debian)", "220---------- Welcome to Pure-FTPd"
    for product in [
        "vsFTPd",
        "ProFTPD",
        "Pure-FTPd",
        "FileZilla Server",
        "Microsoft FTP Service",
    ] {
        if let Some(i) = line.find(product) {
            let rest = line[i..].trim_end_matches(')');
            let mut words = rest.split_whitespace();
            let p = words.next().unwrap_or(product);
            let v = words
                .next()
                .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .map(|w| w.trim_end_matches(')'));
            return Some(match v {
                Some(v) => format!("{p} {v}"),
                None => p.to_owned(),
            });
        }
    }
    None
}

fn product_after(line: &str, products: &[&str]) -> Option<String> {
    products
        .iter()
        .find(|p| line.contains(**p))
        .map(|p| (*p).to_owned())
}

/// The MySQL/MariaDB initial handshake packet (protocol 10): `len:3 seq:1 0x0a
/// version NUL …`; also an error packet (`0xff`), which MySQL sends to hosts it refuses.
pub fn parse_mysql_greeting(data: &[u8]) -> Option<ServiceInfo> {
    if data.len() < 5 {
        return None;
    }
    let len = usize::from(data[0]) | usize::from(data[1]) << 8 | usize::from(data[2]) << 16;
    if len == 0 || len > 1024 || data[3] != 0 {
        return None;
    }
    let body = &data[4..];
    match body[0] {
        0x0a => {
            let end = body[1..].iter().position(|&b| b == 0)?;
            let version = std::str::from_utf8(&body[1..1 + end]).ok()?;
            if version.is_empty() || !version.chars().next()?.is_ascii_digit() {
                return None;
            }
            // MariaDB prefixes "5.5.5-" for old clients' sake.
            let v = version.strip_prefix("5.5.5-").unwrap_or(version);
            let product = if v.contains("MariaDB") {
                "MariaDB"
            } else {
                "MySQL"
            };
            Some(svc("mysql", Some(format!("{product} {v}"))))
        }
        0xff if body.len() >= 3 => Some(svc("mysql", None)),
        _ => None,
    }
}

/// An HTTP response: `HTTP/1.x NNN` and the `Server` header.
pub fn identify_http(data: &[u8]) -> Option<ServiceInfo> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let status = lines.next()?;
    if !status.starts_with("HTTP/") {
        return None;
    }
    let server = lines.take_while(|l| !l.trim().is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("server")
            .then(|| v.trim().to_owned())
    });
    Some(svc("http", server))
}

/// A TLS record from the server: a ServerHello (version from `supported_versions` when
/// present, else the legacy field) or an alert.
pub fn identify_tls(data: &[u8]) -> Option<ServiceInfo> {
    if data.len() < 7 || data[1] != 3 || data[2] > 4 {
        return None;
    }
    match data[0] {
        0x15 => Some(svc("tls", Some("alert".into()))),
        0x16 => {
            let hs = &data[5..];
            if hs.first() != Some(&2) {
                return Some(svc("tls", None));
            }
            let version = server_hello_version(hs).map(tls_version_name);
            Some(svc("tls", version.map(str::to_owned)))
        }
        _ => None,
    }
}

fn server_hello_version(hs: &[u8]) -> Option<u16> {
    // type:1 len:3 version:2 random:32 sid_len:1 sid cipher:2 comp:1 ext_len:2 exts
    let legacy = u16::from_be_bytes([*hs.get(4)?, *hs.get(5)?]);
    let mut i = 4 + 2 + 32;
    let sid = usize::from(*hs.get(i)?);
    i += 1 + sid + 2 + 1;
    let Some(ext_len) = hs.get(i..i + 2) else {
        return Some(legacy);
    };
    let end = (i + 2 + usize::from(u16::from_be_bytes([ext_len[0], ext_len[1]]))).min(hs.len());
    i += 2;
    while i + 4 <= end {
        let kind = u16::from_be_bytes([hs[i], hs[i + 1]]);
        let len = usize::from(u16::from_be_bytes([hs[i + 2], hs[i + 3]]));
        if kind == 0x002b && len == 2 && i + 6 <= end {
            return Some(u16::from_be_bytes([hs[i + 4], hs[i + 5]]));
        }
        i += 4 + len;
    }
    Some(legacy)
}

fn tls_version_name(v: u16) -> &'static str {
    match v {
        0x0300 => "SSLv3",
        0x0301 => "TLSv1.0",
        0x0302 => "TLSv1.1",
        0x0303 => "TLSv1.2",
        0x0304 => "TLSv1.3",
        _ => "TLS (unknown version)",
    }
}

/// A reply to `INFO server`: a bulk string with `redis_version:`, or an error such as
/// `-NOAUTH` (a Redis that wants a password).
pub fn identify_redis(data: &[u8]) -> Option<ServiceInfo> {
    let text = String::from_utf8_lossy(data);
    if text.starts_with('$') || text.starts_with('+') {
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| format!("Redis {}", v.trim()));
        let valkey = text.lines().find_map(|l| l.strip_prefix("valkey_version:"));
        if let Some(v) = valkey {
            return Some(svc("redis", Some(format!("Valkey {}", v.trim()))));
        }
        return (version.is_some() || text.starts_with("+PONG")).then(|| svc("redis", version));
    }
    if text.starts_with("-NOAUTH") || text.starts_with("-DENIED") || text.starts_with("-ERR") {
        return Some(svc("redis", None));
    }
    None
}

/// PostgreSQL answers an `SSLRequest` with a single `S` or `N`.
pub fn identify_postgres(data: &[u8]) -> Option<ServiceInfo> {
    (data == b"S" || data == b"N").then(|| {
        let mut s = svc("postgresql", None);
        s.version = Some(
            if data == b"S" {
                "TLS offered"
            } else {
                "no TLS"
            }
            .into(),
        );
        s
    })
}

/// memcached answers `version` with `VERSION x.y.z`.
pub fn identify_memcached(data: &[u8]) -> Option<ServiceInfo> {
    let text = String::from_utf8_lossy(data);
    text.strip_prefix("VERSION ")
        .map(|v| svc("memcached", Some(format!("memcached {}", v.trim()))))
}

/// The bytes of each probe.
pub fn probe_bytes(probe: Probe, host: &str) -> Vec<u8> {
    match probe {
        Probe::Greeting => Vec::new(),
        Probe::Http => format!(
            "GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: netmon-scan\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes(),
        Probe::Tls => client_hello(host),
        Probe::Redis => b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n".to_vec(),
        Probe::Postgres => vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
        Probe::Memcached => b"version\r\n".to_vec(),
    }
}

/// A TLS 1.3-capable ClientHello (also offering TLS 1.2 suites), enough for any
/// server to answer with a ServerHello. The key share is random bytes: the handshake
/// is never finished, only the server's first flight is read.
pub fn client_hello(host: &str) -> Vec<u8> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
        | 1;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut ext = Vec::new();
    let mut push_ext = |kind: u16, body: &[u8]| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() {
        let name = host.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        push_ext(0x0000, &sni);
    }
    push_ext(0x000a, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    push_ext(0x000b, &[1, 0]);
    push_ext(
        0x000d,
        &[0, 16, 4, 3, 8, 4, 4, 1, 5, 3, 8, 5, 5, 1, 8, 6, 6, 1],
    );
    push_ext(0x002b, &[4, 3, 4, 3, 3]);
    let mut ks = vec![0, 36, 0x00, 0x1d, 0, 32];
    ks.extend(random(32));
    push_ext(0x0033, &ks);
    push_ext(0x002d, &[1, 1]);

    let suites: [u16; 13] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009c, 0x009d,
        0x002f, 0x0035,
    ];
    let mut body = vec![3, 3];
    body.extend(random(32));
    body.push(32);
    body.extend(random(32));
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend(ext);

    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// Ports where a client-first protocol is expected: send its probe before waiting for
/// a greeting.
fn preferred_probe(port: u16) -> Option<Probe> {
    match port {
        80 | 81 | 591 | 3000 | 5000 | 8000 | 8008 | 8080 | 8081 | 8088 | 8888 | 9000 | 9090 => {
            Some(Probe::Http)
        }
        443 | 465 | 636 | 853 | 993 | 995 | 8443 | 9443 | 6443 | 4443 => Some(Probe::Tls),
        6379 | 6380 => Some(Probe::Redis),
        5432 | 5433 => Some(Probe::Postgres),
        11211 => Some(Probe::Memcached),
        _ => None,
    }
}

/// Options for `detect`.
#[derive(Clone, Debug)]
pub struct DetectOptions {
    /// The whole detection of one port (`--service-timeout`): every probe's connect
    /// and read end by then.
    pub timeout: Duration,
    /// Sent as SNI and HTTP `Host` when the target was given by name.
    pub host_name: String,
}

/// The probes for a port, most likely first.
fn probe_order(port: u16) -> Vec<Probe> {
    let mut order = Vec::with_capacity(6);
    if let Some(p) = preferred_probe(port) {
        order.push(p);
    }
    order.push(Probe::Greeting);
    for p in [
        Probe::Http,
        Probe::Tls,
        Probe::Redis,
        Probe::Postgres,
        Probe::Memcached,
    ] {
        if !order.contains(&p) {
            order.push(p);
        }
    }
    order
}

/// The answer of the most likely probe that identified something, once every more
/// likely probe has finished (`done`: all have, and a missing outcome is silence).
fn winner(
    order: &[Probe],
    outcomes: &[Option<ProbeOutcome>],
    port: u16,
    done: bool,
) -> Option<ServiceInfo> {
    for (probe, outcome) in order.iter().zip(outcomes) {
        match outcome {
            None if !done => return None,
            Some(ProbeOutcome::Data(d)) => {
                if let Some(found) = identify(*probe, port, d) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

/// Identifies the service on an open TCP port: one short connection per probe, each
/// taking a token from the rate limiter, the whole bounded by `opts.timeout`. The
/// port's likely probe (its client-first protocol, else the greeting) goes first,
/// alone, so a server that serves one connection at a time answers it; when it has not
/// identified the service within a head start (half the timeout, at most 800 ms) the
/// other probes run in parallel, so a silent port costs one timeout, not one per probe.
/// A greeting is waited for a head start at most (a server-first protocol speaks at
/// once, and a silent connection would hold such a server). Never fails: a port
/// nothing identified gets the port's usual name, marked as a guess.
pub async fn detect(addr: SocketAddr, opts: &DetectOptions, rate: &RateLimiter) -> ServiceInfo {
    let port = addr.port();
    let order = probe_order(port);
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let head = (opts.timeout / 2).min(Duration::from_millis(800));
    let head_start = started + head;
    let opts = Arc::new(opts.clone());
    let mut outcomes: Vec<Option<ProbeOutcome>> = order.iter().map(|_| None).collect();
    let mut set = JoinSet::new();
    let launch = async |set: &mut JoinSet<_>, range: std::ops::Range<usize>| {
        for i in range {
            rate.acquire().await;
            let (probe, opts) = (order[i], opts.clone());
            let until = if probe == Probe::Greeting {
                deadline.min(Instant::now() + head)
            } else {
                deadline
            };
            set.spawn(async move { (i, run_probe(addr, probe, &opts, until).await) });
        }
    };
    launch(&mut set, 0..1).await;
    let mut launched = 1;
    loop {
        if let Some(found) = winner(&order, &outcomes, port, false) {
            return found;
        }
        let unreachable = outcomes
            .iter()
            .any(|o| matches!(o, Some(ProbeOutcome::Unreachable)));
        // The port stopped accepting: nothing more to learn from more probes.
        let more = launched < order.len() && !unreachable && Instant::now() < deadline;
        let wait_until = if more {
            head_start.min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait_until, set.join_next()).await {
            Ok(Some(Ok((i, outcome)))) => outcomes[i] = Some(outcome),
            // A probe task that failed is silence.
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) if more => {
                launch(&mut set, launched..order.len()).await;
                launched = order.len();
            }
            Ok(None) | Err(_) => break,
        }
    }
    set.abort_all();
    if let Some(found) = winner(&order, &outcomes, port, true) {
        return found;
    }
    let first_bytes = order.iter().zip(&outcomes).find_map(|(_, o)| match o {
        Some(ProbeOutcome::Data(d)) => Some(d.as_slice()),
        _ => None,
    });
    let mut out = ServiceInfo {
        banner: first_bytes.and_then(excerpt),
        ..ServiceInfo::default()
    };
    if let Some(name) = well_known(Proto::Tcp, port) {
        out.name = Some(name.to_owned());
        out.guessed = true;
    }
    out
}

enum ProbeOutcome {
    Data(Vec<u8>),
    Silent,
    Unreachable,
}

/// One probe on a connection of its own, ending by `deadline`.
async fn run_probe(
    addr: SocketAddr,
    probe: Probe,
    opts: &DetectOptions,
    deadline: Instant,
) -> ProbeOutcome {
    let mut stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        _ => return ProbeOutcome::Unreachable,
    };
    let host = if opts.host_name.is_empty() {
        addr.ip().to_string()
    } else {
        opts.host_name.clone()
    };
    if probe != Probe::Greeting && stream.write_all(&probe_bytes(probe, &host)).await.is_err() {
        return ProbeOutcome::Silent;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    // Read until the first bytes arrive, then briefly for more (a greeting may come in
    // two segments; an HTTP reply's headers in a few).
    while got < buf.len() {
        let limit = if got == 0 {
            deadline
        } else {
            deadline.min(Instant::now() + Duration::from_millis(60))
        };
        match timeout_at(limit, stream.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    if got == 0 {
        ProbeOutcome::Silent
    } else {
        buf.truncate(got);
        ProbeOutcome::Data(buf)
    }
}

#[cfg(test)]
mod tests;
