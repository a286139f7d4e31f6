//! The scanner's part of the event contract (`docs/events.md`, "Scanner events"):
//! `host` and `port` from `netmon scan`, and the inventory's change events `host_up`,
//! `host_down`, `port_opened`, `port_closed`, `service_changed`. Like every event they
//! travel in `event::Event`, so each line has `ts`, `type` and `host` (the local
//! hostname); the scanned host's address is `addr`. Also `stats.scan` of `netmon run`
//! ([`MonitorCounters`]).
//!
//! Plain data: this module depends on nothing but `event` itself, and the scanner
//! (`scan/`) builds these values; the arrows point from the scanner down to here.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortState {
    #[serde(rename = "open")]
    Open,
    #[serde(rename = "closed")]
    Closed,
    /// No answer, or an ICMP unreachable: something drops the probes.
    #[serde(rename = "filtered")]
    Filtered,
    /// UDP without a reply: open or filtered, UDP cannot tell.
    #[serde(rename = "open|filtered")]
    OpenFiltered,
}

impl PortState {
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
            PortState::OpenFiltered => "open|filtered",
        }
    }
}

/// `host`: one scanned host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanHost {
    /// The scanned address.
    pub addr: IpAddr,
    /// Every address known for this host (`addr` first; more when a name resolved to
    /// several).
    pub addresses: Vec<IpAddr>,
    /// The target the user gave that produced this address.
    pub target: String,
    pub state: HostState,
    /// What proved the host up: `localhost`, `echo-reply`, `tcp-<port>-open`,
    /// `tcp-<port>-refused`, `port-scan`, `user` (discovery skipped); null when down.
    pub reason: Option<String>,
    /// MAC address from the neighbour (ARP/NDP) table, for hosts on a local link.
    pub mac: Option<String>,
    /// Reverse DNS name.
    pub name: Option<String>,
    /// Round trip of the probe that proved the host up, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Hops away, from the reply TTL (1 = same link, 0 = this host).
    pub distance: Option<u8>,
    /// Operating-system family guess from TTL (and TCP window): only a hint.
    pub os_hint: Option<String>,
    /// `--traceroute`: the routers on the way, nearest first (null address = no reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<TraceHop>>,
    /// OS fingerprint of a SYN-ACK (SYN scan only), matched against p0f signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsGuess>,
    /// Uptime guess from the TCP timestamps of two or more SYN-ACKs (SYN scan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<UptimeGuess>,
    /// Ports scanned and how many were in each state.
    pub ports_scanned: usize,
    pub open: usize,
    pub closed: usize,
    pub filtered: usize,
}

/// The best signature match for a host's SYN-ACK.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OsGuess {
    /// OS name as the signature gives it (`Linux`, `Windows`, `FreeBSD`…).
    pub family: String,
    /// Name and flavour (`Linux 3.x`).
    pub label: String,
    /// p0f's class: `unix`, `win`, `other`…
    pub class: String,
    /// 0 to 1: the weighted share of the signature's fields the reply matched.
    pub confidence: f64,
    /// Every field matched.
    pub exact: bool,
    /// Where the signature came from: a p0f.fp path or `built-in`.
    pub source: String,
    /// What was seen, in p0f's notation (`4:64+1:0:1460:65160,7:mss,sok,ts,nop,ws:df:0`).
    pub observed: String,
}

/// `uptime` of a `host` event (see `scan/uptime.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UptimeGuess {
    /// The timestamp clock's rate (100, 250 or 1000).
    pub clock_hz: u32,
    /// TSval / clock_hz at the end of the scan: the uptime, modulo the wrap, if the
    /// clock started at boot.
    pub seconds: u64,
    /// When the host booted on that reading (RFC 3339).
    pub booted: String,
    /// Always starts "guess, modulo wrap"; says why the figure may not be the uptime.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceHop {
    pub ttl: u8,
    pub addr: Option<IpAddr>,
    pub rtt_ms: Option<f64>,
}

/// `port`: one port found open (UDP: or open|filtered).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanPort {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub state: PortState,
    /// Protocol name (`ssh`, `http`, `tls`…).
    pub service: Option<String>,
    /// Product and version as the service announced them.
    pub version: Option<String>,
    /// The start of what the service sent, printable, at most 120 characters.
    pub banner: Option<String>,
    /// True when `service` only comes from the port number.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub service_guessed: bool,
}

/// `host_up` and `host_down` from the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostChange {
    pub addr: IpAddr,
    pub mac: Option<String>,
    pub name: Option<String>,
    /// `host_up`: what proved it up; `host_down`: what failed.
    pub reason: String,
    /// RFC 3339: when the host was last seen up (for `host_down`, before this check).
    pub last_seen: Option<String>,
}

/// `port_opened` and `port_closed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortChange {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub service: Option<String>,
    pub version: Option<String>,
}

/// `service_changed`: an open port now answers with another service or version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub old_service: Option<String>,
    pub old_version: Option<String>,
    pub service: Option<String>,
    pub version: Option<String>,
}

/// The scanner monitor's counters: `stats.scan` of `netmon run` (filled in by
/// `scan/monitor.rs`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorCounters {
    /// Hosts in the inventory (up or down).
    pub hosts: u64,
    /// Of those, hosts up at the last check.
    pub hosts_up: u64,
    /// Flow peers ignored because they are outside `scan.allow`.
    pub peers_outside_allow: u64,
    /// Peers ignored because the inventory is full (`scan.max_hosts`).
    pub peers_over_limit: u64,
    pub sweeps: u64,
    pub pings: u64,
    pub port_scans: u64,
    pub state_write_errors: u64,
    /// Sweeps whose neighbour (ARP/NDP) table could not be read, so their hosts have
    /// no MAC address.
    #[serde(default)]
    pub neighbour_errors: u64,
}
