//! The TCP and UDP sockets that exist right now (IPv4 and IPv6, every state, listeners
//! included), read with netlink sock_diag (`NETLINK_SOCK_DIAG`, the interface `ss`
//! uses) through the rust-netlink crates, and their owning processes, found by matching
//! socket inodes against the `socket:[N]` links in `/proc/<pid>/fd`.
//!
//! sock_diag answers for the network namespace of the asking socket; [`dump_in_netns_of`]
//! asks from another namespace by opening the socket in a thread that joined it.
//! Parsing is pure and unit-tested; the rest is thin I/O. Nothing here needs root
//! except reading other users' `/proc/<pid>/fd` (what could not be read is counted).
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::Path,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket as NlSocket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use crate::event::{Family, Proto};

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub proto: Proto,
    pub family: Family,
    /// Kernel TCP state number (`include/net/tcp_states.h`); UDP uses ESTABLISHED for
    /// connected sockets and CLOSE for the others.
    pub state: u8,
    /// v4-mapped IPv6 addresses are given as IPv4, as in events.
    pub local: SocketAddr,
    /// Unspecified address and port 0 for listeners and unconnected UDP sockets.
    pub remote: SocketAddr,
    /// Socket inode: 0 for sockets no file refers to any more (TIME_WAIT, orphans).
    pub inode: u32,
    pub uid: u32,
    /// TCP counters, when they were asked for.
    pub tcp: Option<TcpCounters>,
    /// Network namespace inode, when the caller knows it (dumps do not say).
    pub netns: Option<u32>,
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

impl SocketInfo {
    /// `listen` for TCP listeners; for UDP, `unconn` (no peer) or `established`; the
    /// kernel's state names otherwise, lower case.
    pub fn state_name(&self) -> &'static str {
        match (self.proto, self.state) {
            (Proto::Udp, TCP_CLOSE) => "unconn",
            (_, s) => tcp_state_name(s),
        }
    }

    /// A TCP listener, or a UDP socket without a peer (which receives from anyone).
    pub fn is_listener(&self) -> bool {
        match self.proto {
            Proto::Tcp => self.state == TCP_LISTEN,
            Proto::Udp => self.remote.port() == 0,
        }
    }
}

/// Names of the kernel's TCP states, as `ss` spells them but in lower case with `_`.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        _ => "unknown",
    }
}

/// Counters from `struct tcp_info` (`INET_DIAG_INFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `tcpi_bytes_acked` (RFC 4898 sequence space: a SYN or FIN counts as one byte).
    pub bytes_acked: u64,
    /// `tcpi_bytes_received` (same convention).
    pub bytes_received: u64,
    /// `tcpi_data_segs_out` / `tcpi_data_segs_in` (4.6+; 0 before).
    pub data_segs_out: u32,
    pub data_segs_in: u32,
}

// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h). The struct only grows at its
// end; `bytes_acked`/`bytes_received` arrived in 4.1/4.2, `data_segs_*` in 4.6.
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_DATA_SEGS_IN: usize = 152;
const TCPI_DATA_SEGS_OUT: usize = 156;

/// Reads the counters out of a raw `tcp_info`; `None` when it is too short to have them.
pub fn parse_tcp_info(raw: &[u8]) -> Option<TcpCounters> {
    let u64_at = |o: usize| {
        raw.get(o..o + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    let u32_at = |o: usize| {
        raw.get(o..o + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    Some(TcpCounters {
        bytes_acked: u64_at(TCPI_BYTES_ACKED)?,
        bytes_received: u64_at(TCPI_BYTES_RECEIVED)?,
        data_segs_in: u32_at(TCPI_DATA_SEGS_IN).unwrap_or(0),
        data_segs_out: u32_at(TCPI_DATA_SEGS_OUT).unwrap_or(0),
    })
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0} (is the sock_diag module missing?)")]
    Open(#[source] io::Error),
    #[error("sock_diag request for {what} failed: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag answered {what} with a message netmon cannot parse: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("cannot enter the network namespace of pid {pid}: {source}")]
    Netns {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// What to ask for.
#[derive(Clone, Copy, Debug, Default)]
pub struct DumpOptions {
    /// Ask for `tcp_info` (byte counters) with every TCP socket.
    pub tcp_info: bool,
    pub tcp: bool,
    pub udp: bool,
}

impl DumpOptions {
    pub const ALL: DumpOptions = DumpOptions {
        tcp_info: false,
        tcp: true,
        udp: true,
    };
}

/// Every TCP and/or UDP socket (IPv4 and IPv6) of the calling thread's network
/// namespace; the first failure fails the whole dump.
pub fn dump(opts: DumpOptions) -> Result<Vec<SocketInfo>, SockDiagError> {
    let (sockets, mut errors) = dump_partial(opts);
    match errors.is_empty() {
        true => Ok(sockets),
        false => Err(errors.swap_remove(0)),
    }
}

/// As [`dump`], but a failing part (say UDP over IPv6) does not stop the others: what
/// could be read, and why the rest could not.
pub fn dump_partial(opts: DumpOptions) -> (Vec<SocketInfo>, Vec<SockDiagError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let nl = match open_sock_diag() {
        Ok(nl) => nl,
        Err(e) => return (out, vec![e]),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut seq = 0;
    for (proto, proto_num, wanted) in [
        (Proto::Tcp, IPPROTO_TCP, opts.tcp),
        (Proto::Udp, IPPROTO_UDP, opts.udp),
    ] {
        if !wanted {
            continue;
        }
        for family in [AF_INET, AF_INET6] {
            seq += 1;
            let what = what(proto, family);
            let ext = if proto == Proto::Tcp && opts.tcp_info {
                ExtensionFlags::INFO
            } else {
                ExtensionFlags::empty()
            };
            let result = request(&nl, family, proto_num, ext, seq)
                .map_err(|source| SockDiagError::Request { what, source })
                .and_then(|()| receive(&nl, &mut buf, proto, what, &mut out));
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }
    (out, errors)
}

fn open_sock_diag() -> Result<NlSocket, SockDiagError> {
    let mut nl = NlSocket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Open)?;
    nl.bind_auto().map_err(SockDiagError::Open)?;
    nl.connect(&NlAddr::new(0, 0))
        .map_err(SockDiagError::Open)?;
    // Big dumps arrive faster than they are parsed; a larger receive buffer avoids
    // ENOBUFS on hosts with many sockets.
    let _ = nl.set_rx_buf_sz(4 * 1024 * 1024);
    Ok(nl)
}

/// The same dump, from inside the network namespace of `pid` (for flows in other
/// namespaces than netmon's). A short-lived thread joins the namespace, so netmon's
/// own threads never change namespace.
pub fn dump_in_netns_of(pid: u32, opts: DumpOptions) -> Result<Vec<SocketInfo>, SockDiagError> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| SockDiagError::Netns { pid, source })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(SockDiagError::Netns {
                    pid,
                    source: io::Error::last_os_error(),
                });
            }
            dump(opts)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(SockDiagError::Netns {
                pid,
                source: io::Error::other("dump thread panicked"),
            })
        })
    })
}

/// Inode of the calling thread's network namespace (what events report as `netns`).
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// One process in each network namespace, from `<proc>/*/ns/net` (inode → lowest pid).
/// Namespaces no process is in (kept by a bind mount only) are not found.
pub fn namespaces(proc_root: &Path) -> BTreeMap<u32, u32> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    let Ok(dir) = fs::read_dir(proc_root) else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(m) = fs::metadata(entry.path().join("ns/net")) {
            let e = found.entry(m.ino() as u32).or_insert(pid);
            *e = (*e).min(pid);
        }
    }
    found
}

/// Inode of the network namespace of `pid`.
pub fn netns_of(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino() as u32)
}

fn what(proto: Proto, family: u8) -> &'static str {
    match (proto, family) {
        (Proto::Tcp, AF_INET) => "tcp/ipv4",
        (Proto::Tcp, _) => "tcp/ipv6",
        (Proto::Udp, AF_INET) => "udp/ipv4",
        (Proto::Udp, _) => "udp/ipv6",
    }
}

fn request(
    nl: &NlSocket,
    family: u8,
    protocol: u8,
    ext: ExtensionFlags,
    seq: u32,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ext,
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    nl.send(&buf, 0)?;
    Ok(())
}

/// Reads one dump's answer up to its `NLMSG_DONE`.
fn receive(
    nl: &NlSocket,
    buf: &mut [u8],
    proto: Proto,
    what: &'static str,
    out: &mut Vec<SocketInfo>,
) -> Result<(), SockDiagError> {
    loop {
        let n = nl
            .recv(&mut &mut buf[..], 0)
            .map_err(|source| SockDiagError::Request { what, source })?;
        if n == 0 {
            return Ok(());
        }
        match parse_batch(&buf[..n], proto, out) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(Batch::Kernel(source)) => return Err(SockDiagError::Request { what, source }),
            Err(Batch::Parse(reason)) => return Err(SockDiagError::Parse { what, reason }),
        }
    }
}

enum Batch {
    Kernel(io::Error),
    Parse(String),
}

/// Parses the netlink messages of one `recv`; `Ok(true)` at the end of the dump.
fn parse_batch(mut bytes: &[u8], proto: Proto, out: &mut Vec<SocketInfo>) -> Result<bool, Batch> {
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        if len < 16 || len > bytes.len() {
            return Err(Batch::Parse(format!(
                "message length {len} of {}",
                bytes.len()
            )));
        }
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&bytes[..len])
            .map_err(|e| Batch::Parse(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(Batch::Kernel(e.to_io())),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                out.push(socket_of(&r, proto));
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        bytes = bytes.get(step..).unwrap_or(&[]);
    }
    Ok(false)
}

fn socket_of(r: &InetResponse, proto: Proto) -> SocketInfo {
    let h = &r.header;
    let id = &h.socket_id;
    let tcp = r.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(raw) => parse_tcp_info(raw),
        _ => None,
    });
    let local = SocketAddr::new(canonical(id.source_address), id.source_port);
    let remote = SocketAddr::new(canonical(id.destination_address), id.destination_port);
    SocketInfo {
        proto,
        family: Family::of(&local.ip()),
        state: h.state,
        local,
        remote,
        inode: h.inode,
        uid: h.uid,
        tcp,
        netns: None,
    }
}

/// v4-mapped IPv6 becomes IPv4, as in events (a dual-stack socket reached over IPv4).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Which processes hold each socket inode, from `/proc/<pid>/fd`.
#[derive(Clone, Debug, Default)]
pub struct Owners {
    /// Socket inode → pids holding a descriptor to it (ascending).
    pub by_inode: HashMap<u32, Vec<u32>>,
    /// Processes looked at.
    pub processes: u64,
    /// `/proc/<pid>/fd` directories that could not be read, by reason (`gone`,
    /// `permission`, `other`).
    pub unreadable: BTreeMap<String, u64>,
}

/// Scans `<proc>/*/fd` for `socket:[N]` links. Only inodes in `wanted` are kept when it
/// is given (saves memory on hosts with many sockets in other namespaces).
pub fn socket_owners(proc_root: &Path, wanted: Option<&std::collections::HashSet<u32>>) -> Owners {
    let mut owners = Owners::default();
    let Ok(dir) = fs::read_dir(proc_root) else {
        *owners.unreadable.entry("other".into()).or_default() += 1;
        return owners;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        owners.processes += 1;
        let fd_dir = entry.path().join("fd");
        let fds = match fs::read_dir(&fd_dir) {
            Ok(d) => d,
            Err(e) => {
                *owners.unreadable.entry(reason(&e).into()).or_default() += 1;
                continue;
            }
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            if wanted.is_some_and(|w| !w.contains(&inode)) {
                continue;
            }
            let pids = owners.by_inode.entry(inode).or_default();
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    for pids in owners.by_inode.values_mut() {
        pids.sort_unstable();
    }
    owners
}

/// Why `/proc` could not be read: `gone` (the process exited), `permission`, `other`.
pub fn reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "gone",
        io::ErrorKind::PermissionDenied => "permission",
        _ if e.raw_os_error() == Some(libc::ESRCH) => "gone",
        _ => "other",
    }
}

/// `N` of a `socket:[N]` link target.
pub fn socket_inode(link: &[u8]) -> Option<u32> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
