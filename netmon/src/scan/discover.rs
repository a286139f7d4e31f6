//! Host discovery: which of the target addresses answer. An ICMP echo sweep (a raw
//! socket with `CAP_NET_RAW`, else the unprivileged ping socket where
//! `net.ipv4.ping_group_range` allows, else none and a warning), then TCP connects to
//! a few common ports for the hosts that stayed silent (a refused connect proves a
//! host as well as an accepted one). Every probe takes a token from the rate limiter.
//! Addresses of this host are up without a probe.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use super::{
    net::{self, Icmp, IcmpMode, IcmpSocket},
    rate::RateLimiter,
};

/// TCP ports tried when a host does not answer ICMP.
pub const DEFAULT_TCP_PING_PORTS: &[u16] = &[80, 443, 22, 445, 3389];

/// Why a host counts as up.
#[derive(Clone, Debug, PartialEq)]
pub struct Alive {
    /// `localhost`, `echo-reply`, `tcp-<port>-open`, `tcp-<port>-refused`.
    pub reason: String,
    /// TTL / hop limit of the ICMP reply, when there was one.
    pub ttl: Option<u8>,
    pub rtt: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// How long to wait for answers after the last probe went out.
    pub timeout: Duration,
    pub tcp_ports: Vec<u16>,
    pub icmp: bool,
    pub concurrency: usize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            timeout: Duration::from_millis(1000),
            tcp_ports: DEFAULT_TCP_PING_PORTS.to_vec(),
            icmp: true,
            // Dead hosts hold their probe for the whole timeout; the rate limit, not
            // this, is what paces the sweep.
            concurrency: 4096,
        }
    }
}

/// The outcome of a sweep: the live hosts and anything the user should know.
#[derive(Debug, Default)]
pub struct Sweep {
    pub alive: HashMap<IpAddr, Alive>,
    pub warnings: Vec<String>,
    /// How ICMP was sent: `raw`, `datagram` or `none`.
    pub icmp_mode: &'static str,
}

/// Probes every address; returns those that answered.
pub async fn sweep(addrs: &[IpAddr], opts: &DiscoveryOptions, rate: Arc<RateLimiter>) -> Sweep {
    let mut out = Sweep {
        icmp_mode: "none",
        ..Sweep::default()
    };
    let alive: Arc<Mutex<HashMap<IpAddr, Alive>>> = Arc::default();
    let mut remote = Vec::new();
    for &a in addrs {
        if net::is_local(a) {
            alive.lock().unwrap().insert(
                a,
                Alive {
                    reason: "localhost".into(),
                    ttl: None,
                    rtt: Some(Duration::ZERO),
                },
            );
        } else {
            remote.push(a);
        }
    }
    let wanted: Arc<HashSet<IpAddr>> = Arc::new(remote.iter().copied().collect());
    let mut listeners = JoinSet::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut sent_at: Vec<(IpAddr, Instant)> = Vec::new();

    if opts.icmp && !remote.is_empty() {
        let ident = (std::process::id() as u16) ^ 0x6e6d;
        let mut sockets = Vec::new();
        for v6 in [false, true] {
            if !remote.iter().any(|a| a.is_ipv6() == v6) {
                continue;
            }
            match IcmpSocket::open(v6) {
                Ok(s) => {
                    out.icmp_mode = match s.mode {
                        IcmpMode::Raw => "raw",
                        IcmpMode::Datagram => "datagram",
                    };
                    sockets.push((v6, Arc::new(s)));
                }
                Err(e) => out.warnings.push(format!(
                    "no ICMP{} echo: cannot open a raw or ping socket ({e}); run as root or widen net.ipv4.ping_group_range. Using TCP probes only",
                    if v6 { "v6" } else { "" }
                )),
            }
        }
        let send_times: Arc<Mutex<HashMap<IpAddr, Instant>>> = Arc::default();
        for (_, sock) in &sockets {
            let (sock, alive, wanted, stop, times) = (
                sock.clone(),
                alive.clone(),
                wanted.clone(),
                stop.clone(),
                send_times.clone(),
            );
            listeners.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        r = sock.recv() => {
                            let Ok(r) = r else { continue };
                            if !wanted.contains(&r.from) {
                                continue;
                            }
                            if let Icmp::EchoReply { ident: id, .. } = net::parse_icmp(sock.v6, &r.data)
                                && (sock.mode == IcmpMode::Datagram || id == ident)
                            {
                                let rtt = times.lock().unwrap().get(&r.from).map(|t| t.elapsed());
                                alive.lock().unwrap().entry(r.from).or_insert(Alive {
                                    reason: "echo-reply".into(),
                                    ttl: r.ttl,
                                    rtt,
                                });
                            }
                        }
                    }
                }
            });
        }
        for (seq, &a) in remote.iter().enumerate() {
            let Some((_, sock)) = sockets.iter().find(|(v6, _)| *v6 == a.is_ipv6()) else {
                continue;
            };
            rate.acquire().await;
            let pkt = net::echo_request(a.is_ipv6(), ident, seq as u16, b"netmon-discovery");
            send_times.lock().unwrap().insert(a, Instant::now());
            // A send error (no route, EPERM from a firewall) just means no reply.
            let _ = sock.send_to(&pkt, a).await;
            sent_at.push((a, Instant::now()));
        }
        // Give fast repliers a moment before knocking on TCP ports (no longer than
        // it takes them all to answer).
        // (Not at all when no echo request could be sent: then nothing will answer.)
        let until = Instant::now() + opts.timeout.min(Duration::from_millis(150));
        while !sent_at.is_empty()
            && Instant::now() < until
            && alive.lock().unwrap().len() < addrs.len()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    // TCP probes for the hosts that have not answered yet.
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut probes = JoinSet::new();
    for &a in &remote {
        if alive.lock().unwrap().contains_key(&a) {
            continue;
        }
        for &port in &opts.tcp_ports {
            if alive.lock().unwrap().contains_key(&a) {
                break;
            }
            let permit = sem.clone().acquire_owned().await.expect("open semaphore");
            rate.acquire().await;
            let (alive, timeout) = (alive.clone(), opts.timeout);
            probes.spawn(async move {
                let started = Instant::now();
                let addr = SocketAddr::new(a, port);
                let reason =
                    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
                    {
                        Ok(Ok(s)) => {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            Some(format!("tcp-{port}-open"))
                        }
                        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                            Some(format!("tcp-{port}-refused"))
                        }
                        _ => None,
                    };
                drop(permit);
                if let Some(reason) = reason {
                    alive.lock().unwrap().entry(a).or_insert(Alive {
                        reason,
                        ttl: None,
                        rtt: Some(started.elapsed()),
                    });
                }
            });
        }
    }
    // Wait for the TCP probes (each bounded by the timeout), then for late echo replies
    // until `timeout` after the last echo request, or until every host answered.
    while probes.join_next().await.is_some() {}
    if let Some(&(_, last)) = sent_at.last() {
        let deadline = last + opts.timeout;
        while Instant::now() < deadline {
            if alive.lock().unwrap().len() >= addrs.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.notify_waiters();
    listeners.abort_all();
    while listeners.join_next().await.is_some() {}
    out.alive = std::mem::take(&mut *alive.lock().unwrap());
    out
}
