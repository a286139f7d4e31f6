//! Per-process series with a bounded label set: at most `limit` exe names get their own
//! `process` label, everything else is summed under `process="~other"`.
//!
//! A name gets a slot when it first shows activity while a slot is free; it keeps it
//! while it is active. A name with no activity for the grace period (its processes
//! exited, or went quiet) loses its slot: its counts fold into `~other` and its series
//! disappear, freeing the slot for the next active name. Folding keeps every series
//! monotonic (`~other` only grows), so `rate()` stays right across the change. Pure
//! state; the clock is the events' own time.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus::{IntCounterVec, Opts, core::Desc, proto::MetricFamily};

use crate::event::ProcessInfo;

/// Processes with their own label by default.
pub const DEFAULT_LIMIT: usize = 20;
/// Seconds without activity after which a process's series disappear.
pub const DEFAULT_GRACE: f64 = 300.0;
/// The label value of everything without a slot.
pub const OTHER: &str = "~other";
/// Longest `process` label value, in bytes.
const MAX_NAME: usize = 64;

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
}

/// The state behind the per-process families.
pub struct TopProcesses {
    limit: usize,
    grace_s: f64,
    slots: HashMap<String, Slot>,
    other: Counts,
}

/// The label of a process: the file name of its exe (` (deleted)` cut), else its comm.
pub fn process_name(p: Option<&ProcessInfo>) -> String {
    let Some(p) = p else {
        return "unknown".into();
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
        format!("_{name}")
    } else {
        name.to_owned()
    }
}

impl TopProcesses {
    pub fn new(limit: usize, grace_s: f64) -> TopProcesses {
        TopProcesses {
            limit,
            grace_s,
            slots: HashMap::new(),
            other: Counts::default(),
        }
    }

    fn counts(&mut self, p: Option<&ProcessInfo>, now: f64) -> &mut Counts {
        let name = process_name(p);
        if !self.slots.contains_key(&name) && self.slots.len() >= self.limit {
            return &mut self.other;
        }
        let slot = self.slots.entry(name).or_insert(Slot {
            counts: Counts::default(),
            last_active: now,
        });
        slot.last_active = slot.last_active.max(now);
        &mut slot.counts
    }

    /// A connection (or UDP flow) began.
    pub fn connection(&mut self, p: Option<&ProcessInfo>, now: f64) {
        self.counts(p, now).connections += 1;
    }

    /// A flow ended having carried these bytes.
    pub fn bytes(&mut self, p: Option<&ProcessInfo>, sent: u64, received: u64, now: f64) {
        let c = self.counts(p, now);
        c.bytes_sent += sent;
        c.bytes_received += received;
    }

    /// Names idle for the grace period fold into `~other`.
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
    }

    /// Every series: the names with a slot, then `~other`.
    pub fn series(&self) -> Vec<(&str, Counts)> {
        let mut v: Vec<(&str, Counts)> = self
            .slots
            .iter()
            .map(|(n, s)| (n.as_str(), s.counts))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.push((OTHER, self.other));
        v
    }
}

/// Renders [`TopProcesses`] as `netmon_process_connections_total{process}` and
/// `netmon_process_bytes_total{process,direction}` at scrape time.
pub struct Collector {
    state: Arc<Mutex<TopProcesses>>,
    connections: IntCounterVec,
    bytes: IntCounterVec,
    render: Mutex<()>,
}

impl Collector {
    pub fn new(state: Arc<Mutex<TopProcesses>>) -> Collector {
        Collector {
            state,
            connections: IntCounterVec::new(
                Opts::new(
                    "netmon_process_connections_total",
                    "Connections and UDP flows begun, per process (exe name) for the most active ones, the rest under process=\"~other\".",
                ),
                &["process"],
            )
            .expect("valid family"),
            bytes: IntCounterVec::new(
                Opts::new(
                    "netmon_process_bytes_total",
                    "Payload bytes of ended flows per process (exe name), the rest under process=\"~other\".",
                ),
                &["process", "direction"],
            )
            .expect("valid family"),
            render: Mutex::new(()),
        }
    }
}

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.bytes.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        self.connections.reset();
        self.bytes.reset();
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (name, c) in state.series() {
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

    #[test]
    fn beyond_the_limit_names_are_summed_under_other() {
        let mut t = TopProcesses::new(2, 300.0);
        for name in ["a", "b", "c", "d", "a"] {
            t.connection(Some(&p(name)), 0.0);
        }
        let s = t.series();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            (
                "a",
                Counts {
                    connections: 2,
                    ..Counts::default()
                }
            )
        );
        assert_eq!(s[2].0, OTHER);
        assert_eq!(s[2].1.connections, 2);
    }

    #[test]
    fn idle_names_fold_into_other_after_the_grace_period_and_free_their_slot() {
        let mut t = TopProcesses::new(1, 10.0);
        t.bytes(Some(&p("old")), 5, 7, 0.0);
        t.expire(9.0);
        assert_eq!(t.series().len(), 2, "still inside the grace period");
        t.expire(10.0);
        let s = t.series();
        assert_eq!(
            s,
            vec![(
                OTHER,
                Counts {
                    connections: 0,
                    bytes_sent: 5,
                    bytes_received: 7
                }
            )]
        );
        t.connection(Some(&p("new")), 11.0);
        assert_eq!(t.series()[0].0, "new");
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
