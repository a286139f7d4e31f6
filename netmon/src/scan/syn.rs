//! The SYN ("half-open") scan: a raw `IPPROTO_TCP` socket sends bare SYNs and reads
//! the answers, so no connection is ever completed. Needs `CAP_NET_RAW`.
//!
//! Answers: SYN-ACK → open; RST → closed; nothing after three tries → filtered.
//!
//! Pacing: a congestion window (`rate::Window`) bounds the probes unanswered at once;
//! it grows with answers and is cut when many probes of an epoch needed a retry, and
//! the retransmission timeout follows the measured round trip (bounded by `--timeout`,
//! seeded by discovery's), so a fast link is scanned at the speed it answers and a
//! lossy one is retried instead of reading filtered. `--rate` caps the whole on top.
//!
//! The engine is one thread of its own that sends with `sendmmsg` and reads with
//! `recvmmsg` (`batch.rs`) and polls only when it has nothing to do: no task, lock or
//! wake-up per probe. ICMP unreachables quoting a probe read filtered at once (a raw
//! ICMP socket beside the TCP one). Each
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
//!
//! Over 600 lines: the SYN engine's one loop (`scan_blocking`: send, pace, read, judge,
//! retry over shared per-probe state) with the packet, cookie and socket-filter code
//! only it uses; its tests are in `syn/tests.rs`.
use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use super::{
    PortState, Progress,
    batch::{RecvBatch, SendBatch},
    connect,
    net::{self, Icmp, checksum_add, checksum_finish, pseudo_header_sum},
    rate::{RateLimiter, Window},
    reply::{self, Reply, TCP_ACK, TCP_RST, TCP_SYN},
    tcpopt,
};

pub struct SynResult {
    /// Every job's state (each once).
    pub states: Vec<(SocketAddr, PortState)>,
    /// Per host: the reply the fingerprint reads (a SYN-ACK when a port was open, else
    /// the first RST).
    pub replies: HashMap<IpAddr, Reply, FastHash>,
    /// Window cuts and retransmissions (for `NETMON_SCAN_TIMING`).
    pub cuts: u64,
    pub retransmissions: u64,
}

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

/// A SYN with a Linux client's options (`tcpopt::syn_options`), window 1024, checksum
/// filled in, written into `p`.
pub fn syn_packet_into(p: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr, seq: u32, tsval: u32) {
    p.clear();
    p.extend(src.port().to_be_bytes());
    p.extend(dst.port().to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(0u32.to_be_bytes());
    p.push(10 << 4); // data offset: 10 words
    p.push(TCP_SYN);
    p.extend(1024u16.to_be_bytes());
    p.extend([0, 0, 0, 0]); // checksum, urgent pointer
    p.extend(tcpopt::syn_options(tsval));
    let sum = pseudo_header_sum(src.ip(), dst.ip(), 6, p.len());
    let c = checksum_finish(checksum_add(sum, p));
    p[16..18].copy_from_slice(&c.to_be_bytes());
}

pub fn syn_packet(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    syn_packet_into(&mut p, src, dst, seq, 1);
    p
}

/// What a reply means for the port, if it is an answer to our SYN.
pub fn judge(r: &Reply, our_port: u16, expected_seq: u32) -> Option<PortState> {
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
    sock: Socket,
    /// ICMP errors quoting our probes (optional: without it they just time out).
    icmp: Option<Socket>,
    /// Keep the source ports reserved for the scan.
    _reservations: Vec<Socket>,
    /// One source port per try (`ports[0]` is `port`): a retry from a new port is a new
    /// connection to the target. From the same port it would meet the half-open request
    /// the lost first answer left there, and Linux answers a repeated SYN on one at most
    /// every `net.ipv4.tcp_invalid_ratelimit` (500 ms): a third try would go unanswered.
    ports: Vec<u16>,
    port: u16,
    v6: bool,
}

fn open_family(v6: bool) -> io::Result<Family> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("valid");
    let mut reservations = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..MAX_TRIES {
        let reservation = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        reservation.bind(&any.into())?;
        ports.push(
            reservation
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("no local port"))?,
        );
        reservations.push(reservation);
    }
    let port = ports[0];
    let raw = Socket::new(domain, Type::RAW.nonblocking(), Some(Protocol::TCP))?;
    // Only segments to our ports are queued (every raw TCP socket sees every segment).
    attach_port_filter(&raw, v6, &ports)?;
    // Many replies can arrive at once on a fast link: a big buffer avoids drops.
    if !force_recv_buffer(&raw, 8 << 20) {
        let _ = raw.set_recv_buffer_size(8 << 20);
    }
    let _ = raw.set_send_buffer_size(4 << 20);
    if v6 {
        net::enable_ttl_cmsg(&raw, true)?;
        enable_tclass_cmsg(&raw);
    }
    let icmp_proto = if v6 {
        Protocol::ICMPV6
    } else {
        Protocol::ICMPV4
    };
    let icmp = Socket::new(domain, Type::RAW.nonblocking(), Some(icmp_proto)).ok();
    Ok(Family {
        sock: raw,
        icmp,
        _reservations: reservations,
        ports,
        port,
        v6,
    })
}

/// A classic BPF filter that keeps TCP segments to one of `ports`: IPv4 raw sockets
/// see the IP header first (its length from the IHL), IPv6 ones the TCP header.
fn attach_port_filter(sock: &Socket, v6: bool, ports: &[u16]) -> io::Result<()> {
    const LDX_MSH: u16 = 0x01 | 0x10 | 0xa0; // BPF_LDX | BPF_B | BPF_MSH
    const LDH_IND: u16 = 0x08 | 0x40; // BPF_LD (0) | BPF_H | BPF_IND
    const LDH_ABS: u16 = 0x08 | 0x20; // BPF_LD (0) | BPF_H | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog: Vec<libc::sock_filter> = if v6 {
        vec![op(LDH_ABS, 0, 0, 2)]
    } else {
        vec![op(LDX_MSH, 0, 0, 0), op(LDH_IND, 0, 0, 2)]
    };
    // One comparison per port, each jumping to the accept on a match; the last falls
    // through to the drop.
    let n = ports.len().min(8);
    for (i, &p) in ports[..n].iter().enumerate() {
        let jt = (n - 1 - i) as u8;
        let jf = u8::from(i == n - 1);
        prog.push(op(JEQ_K, jt, jf, u32::from(p)));
    }
    prog.push(op(RET_K, 0, 0, 0xffff));
    prog.push(op(RET_K, 0, 0, 0));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a valid fd and a pointer to a sock_fprog whose program outlives the call
    // (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A fast hash for the probe index (SocketAddr keys we made ourselves; no
/// attacker-chosen keys, so no need for SipHash's flood resistance).
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FastHash = std::hash::BuildHasherDefault<FastHasher>;

/// `SO_RCVBUFFORCE` (past `net.core.rmem_max`; needs `CAP_NET_ADMIN`).
fn force_recv_buffer(sock: &Socket, bytes: usize) -> bool {
    let v = bytes as libc::c_int;
    // SAFETY: a valid fd and a pointer to an int of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn enable_tclass_cmsg(sock: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to an int of the size given. Failure only
    // loses the ECN bits of IPv6 replies.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVTCLASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Tries per port (nmap's `--max-retries 2`): a port unanswered after the last reads
/// filtered.
const MAX_TRIES: u8 = 3;
/// The congestion window's start, floor and ceiling (probes unanswered at once).
const INITIAL_WINDOW: usize = 64;
const MIN_WINDOW: usize = 8;
const MAX_WINDOW: usize = 16_384;
/// Packets per `sendmmsg` / `recvmmsg`.
const BATCH: usize = 64;
/// Probes sent between two reads of the answers.
const SENDS_PER_TURN: usize = 4 * BATCH;
/// Bytes of receive buffer one queued answer takes (its `truesize`, about).
const ANSWER_TRUESIZE: usize = 1024;
/// Timestamps kept per host for the uptime guess.
const MAX_STAMPS: usize = 16;

/// One port to probe.
struct Probe {
    dst: SocketAddr,
    src: IpAddr,
    v6: bool,
    tries: u8,
    /// When the last try went out (`None`: waiting to be sent).
    sent: Option<Instant>,
    done: bool,
}

/// Scans `jobs` with SYNs on a thread of its own; `Err` when no raw socket could be
/// opened. `rtt_hint` (discovery's round trip) seeds the retransmission timeout.
pub async fn scan(
    jobs: &[SocketAddr],
    timeout: Duration,
    rtt_hint: Option<Duration>,
    rate: Arc<RateLimiter>,
    progress: Arc<Progress>,
) -> io::Result<SynResult> {
    let jobs = jobs.to_vec();
    tokio::task::spawn_blocking(move || scan_sharded(&jobs, timeout, rtt_hint, &rate, &progress))
        .await
        .map_err(|e| io::Error::other(format!("the SYN scan thread failed: {e}")))?
}

/// `scan_blocking` on one thread per CPU (at most 4) for big scans, each with its own
/// sockets, source port, window and an interleaved share of the ports: most of a
/// probe's cost is kernel work done in the sending thread (routing, and on local links
/// the target's answer too), so this is what uses more than one core.
pub fn scan_sharded(
    jobs: &[SocketAddr],
    timeout: Duration,
    rtt_hint: Option<Duration>,
    rate: &RateLimiter,
    progress: &Progress,
) -> io::Result<SynResult> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(jobs.len().div_ceil(4096).max(1));
    if threads == 1 {
        return scan_blocking(jobs, timeout, rtt_hint, rate, progress);
    }
    let shards: Vec<Vec<SocketAddr>> = (0..threads)
        .map(|i| jobs.iter().skip(i).step_by(threads).copied().collect())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .map(|shard| s.spawn(move || scan_blocking(shard, timeout, rtt_hint, rate, progress)))
            .collect();
        let mut all: Option<SynResult> = None;
        for h in handles {
            let r = h
                .join()
                .map_err(|_| io::Error::other("a SYN scan thread panicked"))??;
            match &mut all {
                None => all = Some(r),
                Some(a) => {
                    a.states.extend(r.states);
                    for (ip, reply) in r.replies {
                        let keep = a.replies.get(&ip).is_none_or(|old| !old.is_syn_ack());
                        if keep && (reply.is_syn_ack() || !a.replies.contains_key(&ip)) {
                            a.replies.insert(ip, reply);
                        }
                    }
                    a.cuts += r.cuts;
                    a.retransmissions += r.retransmissions;
                }
            }
        }
        Ok(all.expect("at least one shard"))
    })
}

pub fn scan_blocking(
    jobs: &[SocketAddr],
    timeout: Duration,
    rtt_hint: Option<Duration>,
    rate: &RateLimiter,
    progress: &Progress,
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
    let family_of = |v6: bool| {
        families
            .iter()
            .position(|f| f.v6 == v6)
            .expect("a socket per family")
    };
    // Where each probe goes from; unroutable ones read filtered, and on loopback the
    // reserved port itself is checked with a connect (see the module's comment).
    let mut sources: HashMap<IpAddr, Option<IpAddr>> = HashMap::new();
    let mut own_port_jobs = Vec::new();
    let mut probes: Vec<Probe> = Vec::with_capacity(jobs.len());
    let mut index: HashMap<SocketAddr, u32, FastHash> =
        HashMap::with_capacity_and_hasher(jobs.len(), FastHash::default());
    for &dst in jobs {
        let f = &families[family_of(dst.is_ipv6())];
        let src = *sources
            .entry(dst.ip())
            .or_insert_with(|| net::source_for(dst.ip()).ok());
        let Some(src) = src else { continue };
        if f.ports.contains(&dst.port()) && net::is_local(dst.ip()) {
            own_port_jobs.push(dst);
            continue;
        }
        if index.insert(dst, probes.len() as u32).is_none() {
            probes.push(Probe {
                dst,
                src,
                v6: dst.is_ipv6(),
                tries: 0,
                sent: None,
                done: false,
            });
        }
    }
    let mut out = SynResult {
        states: Vec::with_capacity(jobs.len()),
        replies: HashMap::default(),
        cuts: 0,
        retransmissions: 0,
    };
    let mut queue: VecDeque<u32> = (0..probes.len() as u32).collect();
    // Tries in flight in send order (probe, when): stale entries are skipped.
    let mut flight: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut window = Window::new(INITIAL_WINDOW, MIN_WINDOW, MAX_WINDOW);
    if let Some(rtt) = rtt_hint {
        window.seed_rtt(rtt);
    }
    // Never more probes unanswered than the receive buffers can hold answers for.
    let max_window = families
        .iter()
        .map(|f| f.sock.recv_buffer_size().unwrap_or(212_992) / ANSWER_TRUESIZE)
        .min()
        .unwrap_or(MAX_WINDOW)
        .clamp(MIN_WINDOW, MAX_WINDOW);
    let mut recv = RecvBatch::new(BATCH);
    let mut sends: Vec<SendBatch> = families.iter().map(|_| SendBatch::new(BATCH)).collect();
    let started = Instant::now();
    let tsval = |now: Instant| now.saturating_duration_since(started).as_millis() as u32 + 1;
    let mut remaining = probes.len();

    // Records an answer for probe `i`.
    let answer = |probes: &mut [Probe],
                  i: u32,
                  st: PortState,
                  at: Instant,
                  window: &mut Window,
                  in_flight: &mut usize,
                  out: &mut SynResult| {
        let p = &mut probes[i as usize];
        if p.done {
            return false;
        }
        p.done = true;
        if let Some(sent) = p.sent {
            *in_flight -= 1;
            let rtt = (p.tries == 0).then(|| at.saturating_duration_since(sent));
            window.on_answer(rtt, p.tries > 0 && st != PortState::Filtered, at);
        }
        out.states.push((p.dst, st));
        progress.done.fetch_add(1, Ordering::Relaxed);
        if st == PortState::Open {
            progress.open.fetch_add(1, Ordering::Relaxed);
        }
        true
    };

    while remaining > 0 {
        let mut busy = false;
        // 1. Answers.
        for f in &families {
            for _ in 0..16 {
                let n = recv.recv(f.sock.as_raw_fd())?;
                if n == 0 {
                    break;
                }
                busy = true;
                let now = Instant::now();
                for k in 0..n {
                    let Some(d) = recv.get(k) else { continue };
                    let r = if f.v6 {
                        reply::parse_v6(d.data, d.hop_limit, d.tclass)
                    } else {
                        reply::parse_v4(d.data)
                    };
                    let Some(r) = r else { continue };
                    if !f.ports.contains(&r.dport) {
                        continue;
                    }
                    let from = SocketAddr::new(d.from, r.sport);
                    let Some(&i) = index.get(&from) else { continue };
                    let Some(st) = judge(&r, r.dport, cookie(key, from)) else {
                        continue;
                    };
                    if answer(
                        &mut probes,
                        i,
                        st,
                        now,
                        &mut window,
                        &mut in_flight,
                        &mut out,
                    ) {
                        remaining -= 1;
                    }
                    // The first reply of a host, replaced once by its first SYN-ACK.
                    match out.replies.entry(d.from) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(r);
                        }
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            if st == PortState::Open && !e.get().is_syn_ack() {
                                e.insert(r);
                            }
                        }
                    }
                }
                if n < BATCH {
                    break;
                }
            }
            let Some(icmp) = &f.icmp else { continue };
            for _ in 0..4 {
                let n = recv.recv(icmp.as_raw_fd())?;
                if n == 0 {
                    break;
                }
                busy = true;
                let now = Instant::now();
                for k in 0..n {
                    let Some(d) = recv.get(k) else { continue };
                    let msg = if f.v6 {
                        d.data
                    } else {
                        let ihl = d.data.first().map_or(0, |b| usize::from(b & 0xf) * 4);
                        if ihl < 20 || d.data.len() < ihl {
                            continue;
                        }
                        &d.data[ihl..]
                    };
                    if let Icmp::Error {
                        quoted_proto: 6,
                        quoted_dst,
                        quoted_dport,
                        quoted_ident,
                        ..
                    } = net::parse_icmp(f.v6, msg)
                    {
                        let dst = SocketAddr::new(quoted_dst, quoted_dport);
                        // The quoted header's bytes 4-5: our sequence number's top half.
                        if (cookie(key, dst) >> 16) as u16 != quoted_ident {
                            continue;
                        }
                        if let Some(&i) = index.get(&dst)
                            && answer(
                                &mut probes,
                                i,
                                PortState::Filtered,
                                now,
                                &mut window,
                                &mut in_flight,
                                &mut out,
                            )
                        {
                            remaining -= 1;
                        }
                    }
                }
            }
        }
        // 2. Tries unanswered for a retransmission timeout are sent again (at most
        //    MAX_TRIES in all); after the last one the port reads filtered.
        let now = Instant::now();
        let rto = window.retransmit_timeout(timeout);
        while let Some(&(i, when)) = flight.front() {
            let p = &mut probes[i as usize];
            if p.done || p.sent != Some(when) {
                flight.pop_front();
                continue;
            }
            if now.saturating_duration_since(when) < rto {
                break;
            }
            flight.pop_front();
            in_flight -= 1;
            p.sent = None;
            if p.tries + 1 < MAX_TRIES {
                p.tries += 1;
                out.retransmissions += 1;
                queue.push_front(i);
            } else {
                p.done = true;
                remaining -= 1;
                out.states.push((p.dst, PortState::Filtered));
                progress.done.fetch_add(1, Ordering::Relaxed);
                window.on_silence(now);
            }
            busy = true;
        }
        // 3. Send while the window has room, a few batches per turn: the answers come
        //    back as fast as the probes go out and must be read before the socket's
        //    buffer overflows.
        let mut budget = SENDS_PER_TURN;
        while in_flight < window.size().min(max_window) && budget > 0 {
            budget -= 1;
            let Some(i) = queue.pop_front() else { break };
            let p = &mut probes[i as usize];
            if p.done {
                continue;
            }
            let wait = rate.reserve();
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let fi = family_of(p.v6);
            let f = &families[fi];
            let now = Instant::now();
            let buf = sends[fi].push(p.dst.ip());
            syn_packet_into(
                buf,
                SocketAddr::new(p.src, f.ports[usize::from(p.tries).min(f.ports.len() - 1)]),
                p.dst,
                cookie(key, p.dst),
                tsval(now),
            );
            p.sent = Some(now);
            flight.push_back((i, now));
            in_flight += 1;
            busy = true;
            if sends[fi].is_full() {
                flush(&f.sock, &mut sends[fi], &mut window)?;
            }
        }
        for (fi, f) in families.iter().enumerate() {
            flush(&f.sock, &mut sends[fi], &mut window)?;
        }
        if !busy {
            // Nothing came and nothing could go: wait for an answer or the oldest
            // try's timeout.
            let next = flight
                .front()
                .map_or(Duration::from_millis(20), |&(_, when)| {
                    (when + rto).saturating_duration_since(Instant::now())
                });
            wait_readable(
                &families,
                next.clamp(Duration::from_micros(100), Duration::from_millis(20)),
            );
        }
    }
    out.cuts = window.cuts;
    if !own_port_jobs.is_empty() {
        // Counted in `progress` by the connect scan itself.
        let trouble = connect::LocalTrouble::default();
        let n = own_port_jobs.len();
        let own = own_port_jobs.clone();
        out.states.extend(connect::scan_blocking(
            &own, timeout, n, rate, progress, &trouble,
        )?);
    }
    // Unroutable jobs (no source address) were never probes: filtered.
    for &dst in jobs {
        if !index.contains_key(&dst) && !own_port_jobs.contains(&dst) {
            out.states.push((dst, PortState::Filtered));
            progress.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(out)
}

/// Per host: (TSval, arrival) samples of one four-tuple, and the last SYN-ACK.
pub type TimingProbes = (HashMap<IpAddr, Vec<(u32, Instant)>>, HashMap<IpAddr, Reply>);

/// Timing probes for the uptime guess (nmap sends six, 100 ms apart, for the same
/// reason): `count` SYNs to one open port of each host, `spacing` apart, on sockets of
/// their own, so that the timestamps of the SYN-ACKs span a measurable time. All from
/// one source port to one port: Linux 6.x offsets each connection's timestamps by a
/// hash of its four-tuple, so only samples of one four-tuple share a clock (the
/// answers of the port scan, one per port, never do). Runs
/// while service detection does, so it costs a typed scan no time. Returns each
/// host's (TSval, arrival) samples and its last SYN-ACK.
pub fn timestamp_probes(
    targets: &[SocketAddr],
    count: u32,
    spacing: Duration,
    rate: &RateLimiter,
) -> io::Result<TimingProbes> {
    let mut stamps: HashMap<IpAddr, Vec<(u32, Instant)>> = HashMap::new();
    let mut replies: HashMap<IpAddr, Reply> = HashMap::new();
    if targets.is_empty() || count == 0 {
        return Ok((stamps, replies));
    }
    let mut families = Vec::new();
    for v6 in [false, true] {
        if targets.iter().any(|t| t.is_ipv6() == v6) {
            families.push(open_family(v6)?);
        }
    }
    let key = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        .rotate_left(17);
    let sources: Vec<Option<IpAddr>> = targets
        .iter()
        .map(|t| net::source_for(t.ip()).ok())
        .collect();
    let mut recv = RecvBatch::new(BATCH);
    let mut batch = SendBatch::new(BATCH);
    let mut window = Window::new(1, 1, 1);
    let started = Instant::now();
    let end = started + spacing * count + Duration::from_millis(200);
    let mut next_round = started;
    let mut round = 0;
    while Instant::now() < end {
        if round < count && Instant::now() >= next_round {
            for f in &families {
                for (t, src) in targets.iter().zip(&sources) {
                    let Some(src) = src else { continue };
                    if t.is_ipv6() != f.v6 || (f.ports.contains(&t.port()) && net::is_local(t.ip()))
                    {
                        continue;
                    }
                    if batch.is_full() {
                        flush(&f.sock, &mut batch, &mut window)?;
                    }
                    let wait = rate.reserve();
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    let seq = cookie(key ^ u64::from(round), *t);
                    let tsval = started.elapsed().as_millis() as u32 + 1;
                    syn_packet_into(
                        batch.push(t.ip()),
                        SocketAddr::new(*src, f.port),
                        *t,
                        seq,
                        tsval,
                    );
                }
                flush(&f.sock, &mut batch, &mut window)?;
            }
            round += 1;
            next_round += spacing;
        }
        let mut got = false;
        for f in &families {
            let n = recv.recv(f.sock.as_raw_fd())?;
            got |= n > 0;
            let now = Instant::now();
            for k in 0..n {
                let Some(d) = recv.get(k) else { continue };
                let r = if f.v6 {
                    reply::parse_v6(d.data, d.hop_limit, d.tclass)
                } else {
                    reply::parse_v4(d.data)
                };
                let Some(r) = r else { continue };
                let from = SocketAddr::new(d.from, r.sport);
                if !r.is_syn_ack() || !targets.contains(&from) {
                    continue;
                }
                // Which round this answers (its cookie), so a late answer is dated
                // by its own TSval and never counted twice.
                let fresh = (0..round).any(|k| {
                    judge(&r, f.port, cookie(key ^ u64::from(k), from)) == Some(PortState::Open)
                });
                if !fresh {
                    continue;
                }
                if let Some((ts, _)) = r.options.timestamp {
                    let v = stamps.entry(d.from).or_default();
                    if v.len() < MAX_STAMPS {
                        v.push((ts, now));
                    }
                }
                replies.insert(d.from, r);
            }
        }
        if !got {
            let until_next = if round < count {
                next_round.saturating_duration_since(Instant::now())
            } else {
                end.saturating_duration_since(Instant::now())
            };
            wait_readable(
                &families,
                until_next.clamp(Duration::from_millis(1), Duration::from_millis(20)),
            );
        }
    }
    Ok((stamps, replies))
}

/// Sends what waits in `batch`. A full device queue (`ENOBUFS`) cuts the window and
/// waits a moment; a refusal for one destination (no route, a local firewall) drops
/// that packet (its port will read filtered).
fn flush(sock: &Socket, batch: &mut SendBatch, window: &mut Window) -> io::Result<()> {
    let mut full = 0;
    while !batch.is_empty() {
        match batch.send(sock.as_raw_fd()) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                window.on_full_queue(Instant::now());
                full += 1;
                if full > 1000 {
                    return Err(io::Error::other("the send queue stayed full for a second"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EPERM | libc::EACCES)
                ) =>
            {
                batch.drop_first();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until a reply socket is readable or `timeout` passes.
fn wait_readable(families: &[Family], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = families
        .iter()
        .flat_map(|f| std::iter::once(&f.sock).chain(f.icmp.as_ref()))
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfds of the length given.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis().clamp(1, 1000) as libc::c_int,
        )
    };
}

#[cfg(test)]
mod tests;
