//! The host inventory: every host ever seen (hosts that went away stay, marked down),
//! its ports and services, and the change events each observation causes:
//! `host_up`, `host_down`, `port_opened`, `port_closed`, `service_changed`.
//!
//! Pure: observations and the time come in, events come out; no sockets, no clock,
//! no files. The monitor feeds it and persists `Inventory` as JSON (the state file
//! that `netmon hosts` reads).
use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{HostState, PortState, service::ServiceInfo};
use crate::event::{
    EventBody, Proto,
    scan::{HostChange, PortChange, ServiceChange},
};

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub version: u32,
    pub updated: Option<DateTime<Utc>>,
    pub hosts: BTreeMap<IpAddr, HostRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub addr: IpAddr,
    pub state: HostState,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub os_hint: Option<String>,
    pub distance: Option<u8>,
    /// How netmon learnt of it: `network` (a configured network's sweep), `flow` (a
    /// peer in a flow), `scan`.
    pub source: String,
    pub first_seen: DateTime<Utc>,
    /// Last time it answered.
    pub last_seen: Option<DateTime<Utc>>,
    /// Last time it changed state.
    pub last_change: DateTime<Utc>,
    pub last_port_scan: Option<DateTime<Utc>>,
    /// Failed liveness checks in a row.
    #[serde(default)]
    pub misses: u32,
    /// Keyed `"<port>/<proto>"`: every port ever found open (closed ones stay, marked).
    pub ports: BTreeMap<String, PortRecord>,
    /// The OS fingerprint of the last SYN scan that saw a SYN-ACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<crate::event::scan::OsGuess>,
    /// The last uptime guess (a guess: see its `note`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<crate::event::scan::UptimeGuess>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortRecord {
    pub port: u16,
    pub proto: Proto,
    /// `open` or `closed` (filtered counts as closed once it was open).
    pub state: PortState,
    pub service: Option<String>,
    pub version: Option<String>,
    pub banner: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_change: DateTime<Utc>,
}

/// What a discovery or liveness probe learnt about a live host.
#[derive(Clone, Debug, Default)]
pub struct Sighting {
    pub reason: String,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub os_hint: Option<String>,
    pub distance: Option<u8>,
    pub source: String,
}

/// One port's result from a port scan.
#[derive(Clone, Debug)]
pub struct PortObservation {
    pub port: u16,
    pub proto: Proto,
    pub state: PortState,
    pub service: ServiceInfo,
}

fn key(port: u16, proto: Proto) -> String {
    match proto {
        Proto::Tcp => format!("{port}/tcp"),
        Proto::Udp => format!("{port}/udp"),
    }
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Inventory {
    pub fn new() -> Inventory {
        Inventory {
            version: STATE_VERSION,
            ..Inventory::default()
        }
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&HostRecord> {
        self.hosts.get(addr)
    }

    /// A host answered. New hosts and hosts that were down give `host_up`.
    pub fn host_alive(&mut self, addr: IpAddr, s: &Sighting, now: DateTime<Utc>) -> Vec<EventBody> {
        self.updated = Some(now);
        let rec = self.hosts.entry(addr).or_insert_with(|| HostRecord {
            addr,
            state: HostState::Down,
            mac: None,
            name: None,
            os_hint: None,
            distance: None,
            source: s.source.clone(),
            first_seen: now,
            last_seen: None,
            last_change: now,
            last_port_scan: None,
            misses: 0,
            ports: BTreeMap::new(),
            os: None,
            uptime: None,
        });
        let was_known_up = rec.state == HostState::Up && rec.last_seen.is_some();
        let previous_seen = rec.last_seen;
        rec.misses = 0;
        rec.last_seen = Some(now);
        if s.mac.is_some() {
            rec.mac.clone_from(&s.mac);
        }
        if s.name.is_some() {
            rec.name.clone_from(&s.name);
        }
        if s.os_hint.is_some() {
            rec.os_hint.clone_from(&s.os_hint);
        }
        if s.distance.is_some() {
            rec.distance = s.distance;
        }
        if was_known_up {
            return Vec::new();
        }
        rec.state = HostState::Up;
        rec.last_change = now;
        vec![EventBody::HostUp(HostChange {
            addr,
            mac: rec.mac.clone(),
            name: rec.name.clone(),
            reason: s.reason.clone(),
            last_seen: previous_seen.as_ref().map(rfc3339),
        })]
    }

    /// A liveness check of a known host failed. After `down_after` failures in a row an
    /// up host becomes down (`host_down`); the record stays. Unknown hosts are not
    /// added: the inventory holds hosts that were seen.
    pub fn host_silent(
        &mut self,
        addr: IpAddr,
        reason: &str,
        down_after: u32,
        now: DateTime<Utc>,
    ) -> Vec<EventBody> {
        let Some(rec) = self.hosts.get_mut(&addr) else {
            return Vec::new();
        };
        self.updated = Some(now);
        rec.misses = rec.misses.saturating_add(1);
        if rec.state == HostState::Down || rec.misses < down_after.max(1) {
            return Vec::new();
        }
        rec.state = HostState::Down;
        rec.last_change = now;
        vec![EventBody::HostDown(HostChange {
            addr,
            mac: rec.mac.clone(),
            name: rec.name.clone(),
            reason: reason.to_owned(),
            last_seen: rec.last_seen.as_ref().map(rfc3339),
        })]
    }

    /// A port scan of a known host finished. Only ports in `results` are compared:
    /// ports not scanned this time keep their state.
    pub fn ports_scanned(
        &mut self,
        addr: IpAddr,
        results: &[PortObservation],
        now: DateTime<Utc>,
    ) -> Vec<EventBody> {
        let Some(rec) = self.hosts.get_mut(&addr) else {
            return Vec::new();
        };
        self.updated = Some(now);
        rec.last_port_scan = Some(now);
        let mut events = Vec::new();
        for r in results {
            let k = key(r.port, r.proto);
            let open = matches!(r.state, PortState::Open);
            let change = || PortChange {
                addr,
                port: r.port,
                proto: r.proto,
                service: r.service.name.clone(),
                version: r.service.version.clone(),
            };
            match rec.ports.get_mut(&k) {
                None if open => {
                    events.push(EventBody::PortOpened(change()));
                    rec.ports.insert(
                        k,
                        PortRecord {
                            port: r.port,
                            proto: r.proto,
                            state: PortState::Open,
                            service: r.service.name.clone(),
                            version: r.service.version.clone(),
                            banner: r.service.banner.clone(),
                            first_seen: now,
                            last_change: now,
                        },
                    );
                }
                None => {}
                Some(p) if open && p.state != PortState::Open => {
                    p.state = PortState::Open;
                    p.last_change = now;
                    if !r.service.guessed || p.service.is_none() {
                        p.service.clone_from(&r.service.name);
                        p.version.clone_from(&r.service.version);
                        p.banner.clone_from(&r.service.banner);
                    }
                    events.push(EventBody::PortOpened(change()));
                }
                Some(p) if open => {
                    // Still open: did the service change? A probe that identified
                    // nothing this time (a guess) is not a change.
                    let differs = p.service != r.service.name || p.version != r.service.version;
                    if !r.service.guessed && differs {
                        events.push(EventBody::ServiceChanged(ServiceChange {
                            addr,
                            port: r.port,
                            proto: r.proto,
                            old_service: p.service.clone(),
                            old_version: p.version.clone(),
                            service: r.service.name.clone(),
                            version: r.service.version.clone(),
                        }));
                        p.service.clone_from(&r.service.name);
                        p.version.clone_from(&r.service.version);
                        p.banner.clone_from(&r.service.banner);
                        p.last_change = now;
                    }
                }
                Some(p) if p.state == PortState::Open => {
                    p.state = PortState::Closed;
                    p.last_change = now;
                    events.push(EventBody::PortClosed(PortChange {
                        addr,
                        port: r.port,
                        proto: r.proto,
                        service: p.service.clone(),
                        version: p.version.clone(),
                    }));
                }
                Some(_) => {}
            }
        }
        events
    }

    /// Hosts in a stable order, for display.
    /// Keeps a port scan's OS fingerprint and uptime guess (when it had them).
    pub fn host_details(
        &mut self,
        addr: IpAddr,
        os: Option<&crate::event::scan::OsGuess>,
        uptime: Option<&crate::event::scan::UptimeGuess>,
    ) {
        if let Some(rec) = self.hosts.get_mut(&addr) {
            if let Some(os) = os {
                rec.os = Some(os.clone());
            }
            if let Some(u) = uptime {
                rec.uptime = Some(u.clone());
            }
        }
    }

    pub fn hosts(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn seen(reason: &str) -> Sighting {
        Sighting {
            reason: reason.into(),
            source: "network".into(),
            ..Sighting::default()
        }
    }

    fn obs(port: u16, state: PortState, service: Option<(&str, &str)>) -> PortObservation {
        PortObservation {
            port,
            proto: Proto::Tcp,
            state,
            service: ServiceInfo {
                name: service.map(|s| s.0.to_owned()),
                version: service.map(|s| s.1.to_owned()),
                banner: None,
                guessed: false,
            },
        }
    }

    fn types(ev: &[EventBody]) -> Vec<&'static str> {
        ev.iter().map(|e| e.type_name()).collect()
    }

    #[test]
    fn host_up_once_then_down_after_misses_and_kept() {
        let mut inv = Inventory::new();
        let a = ip("10.200.0.2");
        assert_eq!(
            types(&inv.host_alive(a, &seen("echo-reply"), t(0))),
            ["host_up"]
        );
        assert!(inv.host_alive(a, &seen("echo-reply"), t(10)).is_empty());
        assert!(inv.host_silent(a, "no reply", 2, t(20)).is_empty());
        let ev = inv.host_silent(a, "no reply", 2, t(30));
        assert_eq!(types(&ev), ["host_down"]);
        let EventBody::HostDown(c) = &ev[0] else {
            unreachable!()
        };
        assert_eq!(c.last_seen.as_deref(), Some("2027-01-15T08:00:10Z"));
        assert!(
            inv.host_silent(a, "no reply", 2, t(40)).is_empty(),
            "down only once"
        );
        assert_eq!(inv.get(&a).unwrap().state, HostState::Down);
        // It comes back.
        assert_eq!(
            types(&inv.host_alive(a, &seen("tcp-22-open"), t(50))),
            ["host_up"]
        );
        // A silent unknown host is not added.
        assert!(inv.host_silent(ip("10.200.0.9"), "x", 1, t(60)).is_empty());
        assert_eq!(inv.hosts.len(), 1);
    }

    #[test]
    fn a_reply_resets_the_miss_count() {
        let mut inv = Inventory::new();
        let a = ip("10.200.0.2");
        inv.host_alive(a, &seen("echo-reply"), t(0));
        inv.host_silent(a, "x", 2, t(1));
        inv.host_alive(a, &seen("echo-reply"), t(2));
        assert!(inv.host_silent(a, "x", 2, t(3)).is_empty());
    }

    #[test]
    fn port_diffs() {
        let mut inv = Inventory::new();
        let a = ip("10.200.0.2");
        inv.host_alive(a, &seen("echo-reply"), t(0));
        let ev = inv.ports_scanned(
            a,
            &[
                obs(22, PortState::Open, Some(("ssh", "OpenSSH_9.2"))),
                obs(80, PortState::Open, Some(("http", "nginx"))),
                obs(81, PortState::Closed, None),
            ],
            t(1),
        );
        assert_eq!(types(&ev), ["port_opened", "port_opened"]);
        // Same again: nothing.
        let again = [
            obs(22, PortState::Open, Some(("ssh", "OpenSSH_9.2"))),
            obs(80, PortState::Open, Some(("http", "nginx"))),
        ];
        assert!(inv.ports_scanned(a, &again, t(2)).is_empty());
        // 80 closes, 22 upgrades.
        let ev = inv.ports_scanned(
            a,
            &[
                obs(22, PortState::Open, Some(("ssh", "OpenSSH_9.3"))),
                obs(80, PortState::Closed, None),
            ],
            t(3),
        );
        assert_eq!(types(&ev), ["service_changed", "port_closed"]);
        let EventBody::ServiceChanged(c) = &ev[0] else {
            unreachable!()
        };
        assert_eq!(c.old_version.as_deref(), Some("OpenSSH_9.2"));
        assert_eq!(c.version.as_deref(), Some("OpenSSH_9.3"));
        let EventBody::PortClosed(c) = &ev[1] else {
            unreachable!()
        };
        assert_eq!(
            c.service.as_deref(),
            Some("http"),
            "closed port keeps its service"
        );
        // Filtered after closed: nothing new; reopened: port_opened.
        assert!(
            inv.ports_scanned(a, &[obs(80, PortState::Filtered, None)], t(4))
                .is_empty()
        );
        assert_eq!(
            types(&inv.ports_scanned(
                a,
                &[obs(80, PortState::Open, Some(("http", "nginx")))],
                t(5)
            )),
            ["port_opened"]
        );
        // A guess is not a service change.
        let mut guess = obs(22, PortState::Open, Some(("ssh", "")));
        guess.service.guessed = true;
        guess.service.version = None;
        assert!(inv.ports_scanned(a, &[guess], t(6)).is_empty());
        // The record keeps every port.
        assert_eq!(inv.get(&a).unwrap().ports.len(), 2);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut inv = Inventory::new();
        let a = ip("fd00::2");
        inv.host_alive(a, &seen("echo-reply"), t(0));
        inv.ports_scanned(
            a,
            &[obs(443, PortState::Open, Some(("tls", "TLSv1.3")))],
            t(1),
        );
        let json = serde_json::to_string(&inv).unwrap();
        let back: Inventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inv);
        assert!(json.contains("\"443/tcp\""));
    }
}
