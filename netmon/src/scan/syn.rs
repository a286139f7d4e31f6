//! The SYN ("half-open") scan: a raw `IPPROTO_TCP` socket sends bare SYNs and reads
//! the answers, so no connection is ever completed. Needs `CAP_NET_RAW`.
//!
//! Answers: SYN-ACK → open; RST → closed; nothing after three tries → filtered.
//!
//! Pacing: a congestion window (`rate::Window`) bounds the probes unanswered at once;
//! it grows with answers and halves on a proven loss, and the retransmission timeout
//! follows the measured round trip (bounded by `--timeout`), so a fast link is scanned
//! at the speed it answers and a lossy one is retried instead of reading filtered.
//! `--rate` caps the whole on top. Each
//! SYN's sequence number is a keyed hash of the target address and port, so a reply
//! is accepted only when its acknowledgement number matches (`ack == cookie + 1`): no
//! per-probe state, no confusion with unrelated traffic.
//!
//! The kernel's own RSTs: a SYN-ACK arrives for a connection the kernel knows nothing
//! about, so it answers with a RST. That is wanted (it tears down the half-open
//! connection on the target, as nmap's scans do) and harmless to the scan: the raw
//! socket sees incoming packets only, and even on loopback, where our outgoing packets
//! come back in, the kernel's RST goes *from* our source port *to* the target port and
//! the filter takes only packets *to* our source port. What must not happen is a local
//! connection sharing that source port, whose packets would then be misread: so the
//! port is reserved for the scan by binding an ordinary TCP socket to it (bound, never
//! listening, so the kernel still resets SYN-ACKs sent there). No firewall rule is
//! needed or added. On loopback the reserved port itself cannot be SYN-scanned (its
//! own SYN would come back to it), so it is checked with a connect instead.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::unix::AsyncFd, sync::Notify, time::Instant};

use super::{
    PortState, Progress, connect,
    net::{self, checksum_add, checksum_finish, pseudo_header_sum},
    rate::{RateLimiter, Window},
};

pub struct SynResult {
    pub states: HashMap<SocketAddr, PortState>,
    /// Per host: TTL (hop limit) and TCP window of a SYN-ACK (or RST when no port was
    /// open), for the distance and OS hints.
    pub replies: HashMap<IpAddr, (u8, u16)>,
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The sequence number sent to `dst`: a keyed hash (FNV-1a over key, address, port).
pub fn cookie(key: u64, dst: SocketAddr) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ key;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match dst.ip() {
        IpAddr::V4(v) => v.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(v) => v.octets().into_iter().for_each(&mut eat),
    }
    dst.port().to_be_bytes().into_iter().for_each(&mut eat);
    (h ^ (h >> 32)) as u32
}

/// A SYN with an MSS option (1460), window 1024, checksum filled in.
pub fn syn_packet(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(0u32.to_be_bytes());
    p.push(6 << 4); // data offset: 6 words
    p.push(TCP_SYN);
    p.extend(1024u16.to_be_bytes());
    p.extend([0, 0, 0, 0]); // checksum, urgent pointer
    p.extend([2, 4, 0x05, 0xb4]); // MSS 1460
    let sum = pseudo_header_sum(src.ip(), dst.ip(), 6, p.len());
    let c = checksum_finish(checksum_add(sum, &p));
    p[16..18].copy_from_slice(&c.to_be_bytes());
    p
}

/// The TCP fields a reply is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpReply {
    pub sport: u16,
    pub dport: u16,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

pub fn parse_tcp(seg: &[u8]) -> Option<TcpReply> {
    if seg.len() < 20 {
        return None;
    }
    Some(TcpReply {
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        ack: u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]),
        flags: seg[13],
        window: u16::from_be_bytes([seg[14], seg[15]]),
    })
}

/// What a reply means for the port, if it is an answer to our SYN.
pub fn judge(r: &TcpReply, our_port: u16, expected_seq: u32) -> Option<PortState> {
    if r.dport != our_port || r.ack != expected_seq.wrapping_add(1) {
        return None;
    }
    if r.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        Some(PortState::Open)
    } else if r.flags & TCP_RST != 0 {
        Some(PortState::Closed)
    } else {
        None
    }
}

struct Family {
    sock: Arc<AsyncFd<Socket>>,
    /// Keeps the source port reserved for the scan.
    _reservation: Socket,
    port: u16,
    v6: bool,
}

fn open_family(v6: bool) -> io::Result<Family> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let raw = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
    raw.set_nonblocking(true)?;
    // Many replies can arrive at once on a fast link: a big buffer avoids drops.
    let _ = raw.set_recv_buffer_size(8 << 20);
    if v6 {
        net::enable_ttl_cmsg(&raw, true)?;
    }
    let reservation = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("valid");
    reservation.bind(&any.into())?;
    let port = reservation
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no local port"))?;
    // SAFETY: the socket stays open and owned by the AsyncFd while registered.
    let sock = unsafe { AsyncFd::register(raw) }.map_err(|e| e.into_parts().1)?;
    Ok(Family {
        sock: Arc::new(sock),
        _reservation: reservation,
        port,
        v6,
    })
}

type Shared = Arc<Mutex<(HashMap<SocketAddr, PortState>, HashMap<IpAddr, (u8, u16)>)>>;
/// The probes of this scan (what a reply must answer), the first answers with when
/// they came, for the sender's window (drained each turn), and a wake-up for the
/// sender when one comes.
#[derive(Default)]
struct AnswerLog {
    pending: HashSet<SocketAddr>,
    log: Mutex<Vec<(SocketAddr, Instant)>>,
    notify: Notify,
}
type Answers = Arc<AnswerLog>;

/// Tries per port (nmap's `--max-retries 2`): a port unanswered after the last reads
/// filtered.
const MAX_TRIES: u8 = 3;
/// The congestion window's start, floor and ceiling (probes unanswered at once).
const INITIAL_WINDOW: usize = 64;
const MIN_WINDOW: usize = 8;
const MAX_WINDOW: usize = 16_384;

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Now,
    /// The device queue was full first (`ENOBUFS`): a congestion signal.
    AfterFullQueue,
}

/// Scans `jobs` with SYNs; `Err` when no raw socket could be opened.
pub async fn scan(
    jobs: &[SocketAddr],
    timeout: Duration,
    rate: Arc<RateLimiter>,
    progress: Arc<Progress>,
) -> io::Result<SynResult> {
    let key = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    let mut families = Vec::new();
    for v6 in [false, true] {
        if jobs.iter().any(|j| j.is_ipv6() == v6) {
            families.push(open_family(v6)?);
        }
    }
    let shared: Shared = Arc::default();
    let answers: Answers = Arc::new(AnswerLog {
        pending: jobs.iter().copied().collect(),
        ..AnswerLog::default()
    });
    let mut receivers = Vec::new();
    for f in &families {
        let (sock, shared, answers, progress, port, v6) = (
            f.sock.clone(),
            shared.clone(),
            answers.clone(),
            progress.clone(),
            f.port,
            f.v6,
        );
        receivers.push(tokio::spawn(async move {
            receive(sock, v6, port, key, shared, answers, progress).await
        }));
    }
    // Where each probe goes from; unroutable ones read filtered, and on loopback the
    // reserved port itself is checked with a connect (see the module's comment).
    let mut sources: HashMap<IpAddr, Option<IpAddr>> = HashMap::new();
    let mut own_port_jobs = Vec::new();
    let mut queue: VecDeque<(SocketAddr, IpAddr, u8)> = VecDeque::with_capacity(jobs.len());
    for &dst in jobs {
        let f = families
            .iter()
            .find(|f| f.v6 == dst.is_ipv6())
            .expect("a socket per family");
        let src_ip = *sources
            .entry(dst.ip())
            .or_insert_with(|| net::source_for(dst.ip()).ok());
        let Some(src_ip) = src_ip else { continue };
        if dst.port() == f.port && net::is_local(dst.ip()) {
            own_port_jobs.push(dst);
            continue;
        }
        queue.push_back((dst, src_ip, 0));
    }
    // Probes unanswered now: when each was sent, and which try it was.
    let mut sent: HashMap<SocketAddr, (Instant, u8)> = HashMap::new();
    // The same in send order, for the retransmission timeouts.
    let mut flight: VecDeque<(SocketAddr, IpAddr, Instant, u8)> = VecDeque::new();
    let mut window = Window::new(INITIAL_WINDOW, MIN_WINDOW, MAX_WINDOW);
    let mut fresh: Vec<(SocketAddr, Instant)> = Vec::new();
    loop {
        // Answers since the last turn: each frees its place and grows the window; an
        // answer to a retransmission proves a loss.
        std::mem::swap(&mut fresh, &mut *answers.log.lock().unwrap());
        for (from, at) in fresh.drain(..) {
            if let Some((when, tries)) = sent.remove(&from) {
                if tries == 0 {
                    window.on_answer(Some(at.saturating_duration_since(when)));
                } else {
                    window.on_answer(None);
                    window.on_loss(at.into_std());
                }
            }
        }
        // Probes unanswered for a retransmission timeout are sent again (at most
        // MAX_TRIES in all); after the last try the port reads filtered.
        let now = Instant::now();
        let rto = window.retransmit_timeout(timeout);
        while let Some(&(dst, src, when, tries)) = flight.front() {
            if sent.get(&dst).is_none_or(|s| s.0 != when) {
                flight.pop_front();
                continue;
            }
            if now.saturating_duration_since(when) < rto {
                break;
            }
            flight.pop_front();
            sent.remove(&dst);
            if tries + 1 < MAX_TRIES {
                queue.push_front((dst, src, tries + 1));
            }
        }
        if queue.is_empty() && sent.is_empty() {
            break;
        }
        // Send while the window has room.
        while sent.len() < window.size() {
            let Some((dst, src_ip, tries)) = queue.pop_front() else {
                break;
            };
            if shared.lock().unwrap().0.contains_key(&dst) {
                continue;
            }
            let f = families
                .iter()
                .find(|f| f.v6 == dst.is_ipv6())
                .expect("a socket per family");
            rate.acquire().await;
            let pkt = syn_packet(SocketAddr::new(src_ip, f.port), dst, cookie(key, dst));
            if send(&f.sock, &pkt, dst.ip()).await? == Sent::AfterFullQueue {
                window.on_loss(std::time::Instant::now());
            }
            let when = Instant::now();
            sent.insert(dst, (when, tries));
            flight.push_back((dst, src_ip, when, tries));
        }
        // Wait for an answer, or for the oldest probe's timeout.
        let next_timeout = flight.front().map_or(rto, |f| {
            (f.2 + rto).saturating_duration_since(Instant::now())
        });
        let _ = tokio::time::timeout(
            next_timeout.clamp(Duration::from_micros(200), Duration::from_millis(20)),
            answers.notify.notified(),
        )
        .await;
    }
    for r in receivers {
        r.abort();
    }
    let (mut states, replies) = std::mem::take(&mut *shared.lock().unwrap());
    if !own_port_jobs.is_empty() {
        // Counted in `progress` by the connect scan itself.
        let trouble = Arc::new(connect::LocalTrouble::default());
        let n = own_port_jobs.len();
        states.extend(
            connect::scan(
                own_port_jobs,
                timeout,
                n,
                rate.clone(),
                progress.clone(),
                trouble,
            )
            .await?,
        );
    }
    for &dst in jobs {
        if let std::collections::hash_map::Entry::Vacant(e) = states.entry(dst) {
            e.insert(PortState::Filtered);
            progress.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(SynResult { states, replies })
}

async fn send(sock: &AsyncFd<Socket>, pkt: &[u8], dst: IpAddr) -> io::Result<Sent> {
    let addr = SockAddr::from(SocketAddr::new(dst, 0));
    let mut sent = Sent::Now;
    for _ in 0..1000 {
        let mut guard = sock.writable().await?;
        match guard.try_io(|s| s.get_ref().send_to(pkt, &addr)) {
            Ok(Ok(_)) => return Ok(sent),
            // The device queue is full: let it drain.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                sent = Sent::AfterFullQueue;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Unreachable networks and firewall refusals: the port will read filtered.
            Ok(Err(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EPERM | libc::EACCES)
                ) =>
            {
                return Ok(sent);
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(sent)
}

async fn receive(
    sock: Arc<AsyncFd<Socket>>,
    v6: bool,
    port: u16,
    key: u64,
    shared: Shared,
    answers: Answers,
    progress: Arc<Progress>,
) {
    loop {
        let Ok(mut guard) = sock.readable().await else {
            return;
        };
        loop {
            match net::recv_with_ttl(guard.get_inner()) {
                Ok(r) => {
                    let (seg, ttl) = if v6 {
                        (&r.data[..], r.ttl.unwrap_or(0))
                    } else {
                        let ihl = r.data.first().map_or(0, |b| usize::from(b & 0xf) * 4);
                        if ihl < 20 || r.data.len() < ihl {
                            continue;
                        }
                        (&r.data[ihl..], r.data[8])
                    };
                    let Some(tcp) = parse_tcp(seg) else { continue };
                    if tcp.dport != port {
                        continue;
                    }
                    let from = SocketAddr::new(r.from, tcp.sport);
                    if !answers.pending.contains(&from) {
                        continue;
                    }
                    let Some(state) = judge(&tcp, port, cookie(key, from)) else {
                        continue;
                    };
                    let mut s = shared.lock().unwrap();
                    if s.0.insert(from, state).is_none() {
                        answers.log.lock().unwrap().push((from, Instant::now()));
                        answers.notify.notify_one();
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        if state == PortState::Open {
                            progress.open.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let prefer = state == PortState::Open || !s.1.contains_key(&r.from);
                    if prefer {
                        s.1.insert(r.from, (ttl, tcp.window));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_packet_checksums_to_zero_with_the_pseudo_header() {
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:22".parse().unwrap();
        let p = syn_packet(src, dst, 0x1234_5678);
        assert_eq!(p.len(), 24);
        assert_eq!(p[13], TCP_SYN);
        let sum = pseudo_header_sum(src.ip(), dst.ip(), 6, p.len());
        assert_eq!(checksum_finish(checksum_add(sum, &p)), 0);
        let src6: SocketAddr = "[fd00::1]:40000".parse().unwrap();
        let dst6: SocketAddr = "[fd00::2]:443".parse().unwrap();
        let p = syn_packet(src6, dst6, 7);
        let sum = pseudo_header_sum(src6.ip(), dst6.ip(), 6, p.len());
        assert_eq!(checksum_finish(checksum_add(sum, &p)), 0);
    }

    #[test]
    fn replies_are_judged_by_port_and_cookie() {
        let dst: SocketAddr = "10.0.0.2:22".parse().unwrap();
        let seq = cookie(42, dst);
        assert_ne!(seq, cookie(42, "10.0.0.2:23".parse().unwrap()));
        assert_ne!(seq, cookie(43, dst));
        let mk = |flags, ack| TcpReply {
            sport: 22,
            dport: 40000,
            ack,
            flags,
            window: 65160,
        };
        let next = seq.wrapping_add(1);
        assert_eq!(
            judge(&mk(TCP_SYN | TCP_ACK, next), 40000, seq),
            Some(PortState::Open)
        );
        assert_eq!(
            judge(&mk(TCP_RST | TCP_ACK, next), 40000, seq),
            Some(PortState::Closed)
        );
        assert_eq!(
            judge(&mk(TCP_SYN | TCP_ACK, seq), 40000, seq),
            None,
            "wrong ack"
        );
        assert_eq!(
            judge(&mk(TCP_SYN | TCP_ACK, next), 40001, seq),
            None,
            "not our port"
        );
        assert_eq!(judge(&mk(TCP_ACK, next), 40000, seq), None);
        let parsed = parse_tcp(&syn_packet("10.0.0.1:5".parse().unwrap(), dst, 9)).unwrap();
        assert_eq!((parsed.sport, parsed.dport, parsed.flags), (5, 22, TCP_SYN));
    }
}
