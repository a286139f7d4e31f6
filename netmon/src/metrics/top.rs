//! Bounded series keyed by something open-ended (an exe name, a peer address): at most
//! `limit` keys get their own label, everything else is summed under `~other`. Used for
//! `process` (always) and `peer` (`[metrics] peers = N`).
//!
//! A key gets a slot when it first shows activity while a slot is free. At each
//! [`Top::expire`] (every `stats` line) the slots are ranked again: a key idle for the
//! grace period (its processes exited, the peer went quiet) gives its slot up, and a
//! key without a slot that was more than twice as active since the previous ranking
//! as the least active holder takes that holder's slot (the factor keeps two
//! similar keys from trading places every time). A key that loses its slot folds its
//! counts into `~other` and its series disappear; a key that gains one starts from 0
//! (what it did before stays in `~other`). So every series is monotonic (`~other` only
//! grows) and `rate()` stays right across the change. Keys waiting for a slot are
//! remembered up to a bound ([`MAX_CANDIDATES`]); beyond it a new key is only counted
//! under `~other`. Pure state; the clock is the events' own time.
use std::{
    borrow::{Borrow, Cow},
    fmt::Display,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use prometheus::{IntCounterVec, Opts, core::Desc, proto::MetricFamily};

use crate::event::ProcessInfo;

/// Processes with their own label by default.
pub const DEFAULT_LIMIT: usize = 20;
/// Seconds without activity after which a key's series disappear.
pub const DEFAULT_GRACE: f64 = 300.0;
/// The label value of everything without a slot.
pub const OTHER: &str = "~other";
/// Longest `process` label value, in bytes.
const MAX_NAME: usize = 64;
/// Keys without a slot whose activity is tracked between two rankings.
pub const MAX_CANDIDATES: usize = 16_384;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.connections += o.connections;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
    }
}

struct Slot {
    counts: Counts,
    last_active: f64,
    /// Updates since the previous ranking.
    recent: u64,
}

/// Looked up on every connection and close: foldhash, not SipHash (the keys are the
/// host's own process names and peers, and the map is bounded).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The state behind one bounded family pair.
pub struct Top<K> {
    limit: usize,
    grace_s: f64,
    slots: HashMap<K, Slot>,
    /// Keys without a slot: updates since the previous ranking.
    candidates: HashMap<K, u64>,
    other: Counts,
}

/// Per-process counts, keyed by [`process_name`].
pub type TopProcesses = Top<String>;
/// Per-peer counts, keyed by the remote address.
pub type TopPeers = Top<IpAddr>;

/// The label of a process: the file name of its exe (` (deleted)` cut), else its comm.
pub fn process_name(p: Option<&ProcessInfo>) -> String {
    process_label(p).into_owned()
}

/// [`process_name`], borrowed from the event unless it had to be changed: looked up
/// on every connection and close, and allocated only for a key seen the first time.
fn process_label(p: Option<&ProcessInfo>) -> Cow<'_, str> {
    let Some(p) = p else {
        return Cow::Borrowed("unknown");
    };
    let name = p
        .detail
        .exe
        .as_deref()
        .map(|e| e.strip_suffix(" (deleted)").unwrap_or(e))
        .and_then(|e| e.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or(&p.comm);
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = &name[..end];
    // `~other` is ours: a process named so is kept apart.
    if name == OTHER || name.is_empty() {
        Cow::Owned(format!("_{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

impl<K: Hash + Eq + Clone + Ord> Top<K> {
    pub fn new(limit: usize, grace_s: f64) -> Top<K> {
        Top {
            limit,
            grace_s,
            slots: HashMap::default(),
            candidates: HashMap::default(),
            other: Counts::default(),
        }
    }

    /// The counts `key` adds to; the key is copied only when it gets a slot or
    /// becomes a candidate.
    fn counts<Q>(&mut self, key: &Q, now: f64) -> &mut Counts
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.slots.contains_key(key) {
            if self.slots.len() >= self.limit {
                if self.limit > 0 {
                    let n = self.candidates.len();
                    match self.candidates.get_mut(key) {
                        Some(c) => *c += 1,
                        None if n < MAX_CANDIDATES => {
                            self.candidates.insert(key.to_owned(), 1);
                        }
                        None => {}
                    }
                }
                return &mut self.other;
            }
            self.slots.insert(
                key.to_owned(),
                Slot {
                    counts: Counts::default(),
                    last_active: now,
                    recent: 0,
                },
            );
        }
        let slot = self.slots.get_mut(key).expect("inserted above");
        slot.last_active = slot.last_active.max(now);
        slot.recent += 1;
        &mut slot.counts
    }

    /// A connection (or UDP flow) of `key` began.
    pub fn connection(&mut self, key: K, now: f64) {
        self.counts(&key, now).connections += 1;
    }

    /// A flow of `key` ended having carried these bytes.
    pub fn bytes(&mut self, key: K, sent: u64, received: u64, now: f64) {
        self.add_bytes(&key, sent, received, now);
    }

    fn add_bytes<Q>(&mut self, key: &Q, sent: u64, received: u64, now: f64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let c = self.counts(key, now);
        c.bytes_sent += sent;
        c.bytes_received += received;
    }

    /// Ranks the slots again (see the module's comment): idle keys fold into `~other`,
    /// keys much more active than the least active holder take its slot.
    pub fn expire(&mut self, now: f64) {
        let grace = self.grace_s;
        let other = &mut self.other;
        self.slots.retain(|_, s| {
            let keep = now - s.last_active < grace;
            if !keep {
                other.add(&s.counts);
            }
            keep
        });
        let mut challengers: Vec<(K, u64)> = self.candidates.drain().collect();
        // Most active first; the key breaks ties so the outcome does not depend on
        // the hash map's order.
        challengers.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (key, recent) in challengers {
            if self.slots.len() < self.limit {
                self.slots.insert(
                    key,
                    Slot {
                        counts: Counts::default(),
                        last_active: now,
                        recent: 0,
                    },
                );
                continue;
            }
            let weakest = self
                .slots
                .iter()
                .filter(|(_, s)| s.recent != u64::MAX)
                .min_by(|a, b| a.1.recent.cmp(&b.1.recent).then_with(|| b.0.cmp(a.0)))
                .map(|(k, s)| (k.clone(), s.recent));
            let Some((weak_key, weak_recent)) = weakest else {
                break;
            };
            if recent <= weak_recent.saturating_mul(2) {
                break;
            }
            if let Some(s) = self.slots.remove(&weak_key) {
                self.other.add(&s.counts);
            }
            // Marked so a key promoted in this ranking is not demoted by the next
            // challenger of the same ranking.
            self.slots.insert(
                key,
                Slot {
                    counts: Counts::default(),
                    last_active: now,
                    recent: u64::MAX,
                },
            );
        }
        for s in self.slots.values_mut() {
            s.recent = 0;
        }
    }

    /// Every series: the keys with a slot (in key order), then `~other`.
    pub fn series(&self) -> (Vec<(&K, Counts)>, Counts) {
        let mut v: Vec<(&K, Counts)> = self.slots.iter().map(|(k, s)| (k, s.counts)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        (v, self.other)
    }
}

impl Top<String> {
    /// A connection of this process began.
    pub fn process_connection(&mut self, p: Option<&ProcessInfo>, now: f64) {
        self.counts::<str>(&process_label(p), now).connections += 1;
    }

    /// A flow of this process ended having carried these bytes.
    pub fn process_bytes(&mut self, p: Option<&ProcessInfo>, sent: u64, received: u64, now: f64) {
        self.add_bytes::<str>(&process_label(p), sent, received, now);
    }
}

/// Names and help of one bounded family pair: `<prefix>_connections_total{label}` and
/// `<prefix>_bytes_total{label,direction}`.
pub struct FamilyNames {
    pub label: &'static str,
    pub connections: &'static str,
    pub connections_help: &'static str,
    pub bytes: &'static str,
    pub bytes_help: &'static str,
}

pub const PROCESS_FAMILIES: FamilyNames = FamilyNames {
    label: "process",
    connections: "netmon_process_connections_total",
    connections_help: "Connections and UDP flows begun, per process (exe name) for the most active ones, the rest under process=\"~other\".",
    bytes: "netmon_process_bytes_total",
    bytes_help: "Payload bytes of ended flows per process (exe name), the rest under process=\"~other\".",
};

pub const PEER_FAMILIES: FamilyNames = FamilyNames {
    label: "peer",
    connections: "netmon_peer_connections_total",
    connections_help: "Connections and UDP flows begun, per remote address for the most active ones ([metrics] peers), the rest under peer=\"~other\".",
    bytes: "netmon_peer_bytes_total",
    bytes_help: "Payload bytes of ended flows per remote address ([metrics] peers), the rest under peer=\"~other\".",
};

/// Renders a [`Top`] as its two families at scrape time.
pub struct Collector<K> {
    state: Arc<Mutex<Top<K>>>,
    connections: IntCounterVec,
    bytes: IntCounterVec,
    render: Mutex<()>,
}

impl<K> Collector<K> {
    pub fn new(state: Arc<Mutex<Top<K>>>, names: &FamilyNames) -> Collector<K> {
        Collector {
            state,
            connections: IntCounterVec::new(
                Opts::new(names.connections, names.connections_help),
                &[names.label],
            )
            .expect("valid family"),
            bytes: IntCounterVec::new(
                Opts::new(names.bytes, names.bytes_help),
                &[names.label, "direction"],
            )
            .expect("valid family"),
            render: Mutex::new(()),
        }
    }
}

impl<K> prometheus::core::Collector for Collector<K>
where
    K: Hash + Eq + Clone + Ord + Display + Send + 'static,
{
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.bytes.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        self.connections.reset();
        self.bytes.reset();
        let (slots, other) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (slots, other) = state.series();
            let slots: Vec<(String, Counts)> =
                slots.into_iter().map(|(k, c)| (k.to_string(), c)).collect();
            (slots, other)
        };
        let all = slots.iter().map(|(k, c)| (k.as_str(), *c));
        for (name, c) in all.chain(std::iter::once((OTHER, other))) {
            self.connections
                .with_label_values(&[name])
                .inc_by(c.connections);
            self.bytes
                .with_label_values(&[name, "sent"])
                .inc_by(c.bytes_sent);
            self.bytes
                .with_label_values(&[name, "received"])
                .inc_by(c.bytes_received);
        }
        let mut out = self.connections.collect();
        out.extend(self.bytes.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(comm: &str) -> ProcessInfo {
        ProcessInfo::kernel(1, 1, comm.into(), 0, 0, 0)
    }

    fn names(t: &TopProcesses) -> Vec<String> {
        t.series().0.into_iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn beyond_the_limit_names_are_summed_under_other() {
        let mut t = TopProcesses::new(2, 300.0);
        for name in ["a", "b", "c", "d", "a"] {
            t.process_connection(Some(&p(name)), 0.0);
        }
        let (slots, other) = t.series();
        assert_eq!(slots.len(), 2);
        assert_eq!(
            slots[0],
            (
                &"a".to_string(),
                Counts {
                    connections: 2,
                    ..Counts::default()
                }
            )
        );
        assert_eq!(other.connections, 2);
    }

    #[test]
    fn a_much_more_active_key_takes_the_slot_of_the_least_active_and_counts_stay_monotonic() {
        let mut t = TopPeers::new(2, 300.0);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        t.connection(ip(1), 0.0);
        t.connection(ip(2), 0.0);
        t.connection(ip(2), 0.0);
        for _ in 0..5 {
            t.connection(ip(3), 1.0);
        }
        // Not twice as active as 10.0.0.2 (2 updates)? 5 > 4: it is; 10.0.0.1 (1) goes.
        t.expire(2.0);
        let (slots, other) = t.series();
        let keys: Vec<IpAddr> = slots.iter().map(|(k, _)| **k).collect();
        assert_eq!(keys, vec![ip(2), ip(3)]);
        assert_eq!(slots[1].1.connections, 0, "a promoted key starts from 0");
        assert_eq!(other.connections, 6, "10.0.0.3's 5 and 10.0.0.1's 1");
        // A challenger only as active as the holders does not displace them.
        t.connection(ip(2), 3.0);
        t.connection(ip(3), 3.0);
        t.connection(ip(4), 3.0);
        t.connection(ip(4), 3.0);
        t.expire(4.0);
        let keys: Vec<IpAddr> = t.series().0.iter().map(|(k, _)| **k).collect();
        assert_eq!(keys, vec![ip(2), ip(3)]);
        assert_eq!(t.series().1.connections, 8);
    }

    #[test]
    fn a_zero_limit_keeps_everything_under_other_and_remembers_nothing() {
        let mut t = TopPeers::new(0, 300.0);
        for n in 0..=255u8 {
            t.connection(IpAddr::from([10, 0, 1, n]), 0.0);
        }
        t.expire(1.0);
        assert!(t.series().0.is_empty());
        assert_eq!(t.series().1.connections, 256);
        assert!(t.candidates.is_empty());
    }

    #[test]
    fn idle_names_fold_into_other_after_the_grace_period_and_free_their_slot() {
        let mut t = TopProcesses::new(1, 10.0);
        t.process_bytes(Some(&p("old")), 5, 7, 0.0);
        t.expire(9.0);
        assert_eq!(names(&t), vec!["old"], "still inside the grace period");
        t.expire(10.0);
        assert!(names(&t).is_empty());
        assert_eq!(
            t.series().1,
            Counts {
                connections: 0,
                bytes_sent: 5,
                bytes_received: 7
            }
        );
        t.process_connection(Some(&p("new")), 11.0);
        assert_eq!(names(&t), vec!["new"]);
    }

    #[test]
    fn names_are_bounded_and_cannot_pose_as_other() {
        let long = "x".repeat(500);
        assert_eq!(process_name(Some(&p(&long))).len(), MAX_NAME);
        assert_eq!(process_name(Some(&p(OTHER))), "_~other");
        let mut q = p("comm");
        q.detail = Arc::new(crate::event::ProcessDetail {
            exe: Some("/usr/bin/curl (deleted)".into()),
            ..Default::default()
        });
        assert_eq!(process_name(Some(&q)), "curl");
    }
}
