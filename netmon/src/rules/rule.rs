//! What every rule is made of, and nothing else: the [`Rule`] trait and its [`Hit`]s,
//! the [`RuleSpec`] a built-in rule describes itself with, the [`RuleSection`] trait its
//! `[rules.<section>]` table implements, and the small helpers rules share (views of
//! connection events, samples, names for summaries).
//!
//! The bottom of `rules/`: the rule files import from here and from `matchers`, never
//! from `config` (which imports them) or from the engine in `rules.rs`.
use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};

use super::{connections::ActiveConnections, matchers::ProcessResolver};
use crate::config::Span;
use crate::event::{
    Connection, Direction, Endpoint, Event, EventBody, FlowSample, ProcessInfo, Severity,
};

/// Flows an alert carries at most.
pub const MAX_SAMPLES: usize = 5;

/// One rule firing on one condition, before the cooldown decides whether it alerts.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The rule's name: borrowed for a built-in rule (a busy server makes a hit per
    /// event, nearly all held back by the cooldown), owned for a custom one.
    pub rule: std::borrow::Cow<'static, str>,
    pub severity: Severity,
    /// What the hit is about (`pid=42 port=31337`); with the rule, the cooldown's key.
    pub condition: String,
    pub summary: String,
    pub recommendation: String,
    pub process: Option<ProcessInfo>,
    pub flows: Vec<FlowSample>,
    pub score: Option<u32>,
    pub details: BTreeMap<String, serde_json::Value>,
    /// Seconds this condition stays quiet after an alert.
    pub cooldown_s: u64,
}

/// Where a rule puts its hits, with the engine's cooldowns to ask first.
pub struct Hits<'a> {
    list: &'a mut Vec<Hit>,
    cooldowns: Option<&'a mut dyn Cooldowns>,
}

/// The engine's cooldowns, as a rule asks them ([`Hits::held_back`]).
pub trait Cooldowns {
    /// Whether a hit of `rule` on `condition` now is held back by its cooldown; if so,
    /// it is counted as held back, exactly as a pushed hit would have been.
    fn hold(&mut self, rule: &str, condition: &str) -> bool;
}

impl<'a> Hits<'a> {
    /// Hits into `list`, none held back before they are pushed (tests, one rule alone).
    pub fn new(list: &'a mut Vec<Hit>) -> Hits<'a> {
        Hits {
            list,
            cooldowns: None,
        }
    }

    /// Hits into `list`, asking `cooldowns`.
    pub fn with_cooldowns(list: &'a mut Vec<Hit>, cooldowns: &'a mut dyn Cooldowns) -> Hits<'a> {
        Hits {
            list,
            cooldowns: Some(cooldowns),
        }
    }

    pub fn push(&mut self, hit: Hit) {
        self.list.push(hit);
    }

    /// Whether a hit of `rule` on `condition` would only be held back by its cooldown
    /// (then it is counted, and the rule need not build it). A rule that may fire on
    /// every event of a busy process asks this first: building a hit, only for the
    /// cooldown to drop it, was most of what such a rule cost per event.
    pub fn held_back(&mut self, rule: &str, condition: &str) -> bool {
        self.cooldowns
            .as_deref_mut()
            .is_some_and(|c| c.hold(rule, condition))
    }
}

/// A detection rule.
pub trait Rule {
    fn name(&self) -> &str;
    /// Looks at one event; pushes a hit for each condition it fires on. `now` is the
    /// engine's monotonic rule time ([`super::RuleClock`]): windows are measured on it,
    /// never on `ev.ts` (which steps back with the wall clock).
    fn check(
        &mut self,
        ev: &Event,
        now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    );

    /// Fills in a hit of this rule's that passed its cooldown and becomes an alert,
    /// called by the engine right after [`Rule::check`] on the same event. A rule
    /// whose hits are costly to describe (and may fire on every event of a busy
    /// process, only to be held back by the cooldown) pushes them with the cooldown's
    /// fields only (`rule`, `condition`, `cooldown_s`) and describes them here.
    fn complete(&mut self, _ev: &Event, _hit: &mut Hit) {}
}

/// What a built-in rule says about itself. Each rule file defines one per rule; the
/// registry in `config.rs` reaches them through [`RuleSection::spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// The rule's name in alerts (`SUSPICIOUS_PORT`).
    pub name: &'static str,
    /// Its table in the configuration: `suspicious_port` is `[rules.suspicious_port]`.
    pub section: &'static str,
    /// The severity of its alerts when the table sets none; `None` when each hit
    /// decides (PORT_RISK's severity follows the service's score).
    pub default_severity: Option<Severity>,
    /// One line on what the rule looks for, as `netmon snapshot` prints it. `{key}` is
    /// replaced by that setting of [`RuleSection::settings`] (a list joined by `, `).
    pub purpose: &'static str,
}

impl RuleSpec {
    /// The severity of the rule's alerts: `set` in its table, else its default (a rule
    /// without a default decides per hit and does not ask).
    pub fn severity(&self, set: Option<Severity>) -> Severity {
        set.or(self.default_severity).unwrap_or(Severity::Medium)
    }

    /// [`RuleSpec::purpose`] with its `{key}`s filled from `settings` (`?` when absent).
    pub fn purpose_with(&self, settings: &BTreeMap<String, serde_json::Value>) -> String {
        fill(self.purpose, settings)
    }
}

/// Replaces each `{key}` of `template` by the setting `key`: a string as it is, a list
/// joined by `, `, anything else as JSON; `?` when there is no such setting.
pub fn fill(template: &str, settings: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        let key = &rest[open + 1..open + close];
        out.push_str(&match settings.get(key) {
            Some(v) => shown(v),
            None => "?".into(),
        });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// What the engine hands a rule's constructor besides the rule's own table.
pub struct Build {
    /// `[rules] cooldown_s`: the cooldown when the table sets none.
    pub cooldown_s: u64,
    /// Active connections for HIGH_CONNECTION_COUNT when the caller counts them itself
    /// (`netmon snapshot`); taken by the first rule that wants it.
    pub connections: Option<Box<dyn ActiveConnections>>,
}

/// A built-in rule's `[rules.<section>]` table: what the registry needs to run the
/// rule, list it, and check it.
pub trait RuleSection {
    /// The rule this table configures.
    fn spec(&self) -> &'static RuleSpec;
    /// `enabled` in the table.
    fn enabled(&self) -> bool;
    /// `severity` in the table (overrides [`RuleSpec::default_severity`]).
    fn severity(&self) -> Option<Severity>;
    /// `cooldown_s` in the table (overrides `[rules] cooldown_s`).
    fn cooldown_s(&self) -> Option<u64>;
    /// The rule's effective parameters, for `netmon rules list` (a JSON object).
    fn settings(&self) -> serde_json::Value;
    /// Checks what serde cannot: the key under the table (`window`) and the problem.
    fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
    /// Moves deprecated keys to their current form; for each, the key under the table
    /// and a warning saying what to write instead.
    fn upgrade(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The running rule.
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule>;
}

/// Validation shared by the tables that have a `window` (the error names `window_s`
/// when that is what the file wrote).
pub fn check_window(w: Span, window_s: Option<u64>) -> Result<(), (String, String)> {
    let key = if window_s.is_some() {
        "window_s"
    } else {
        "window"
    };
    if w.as_std() < std::time::Duration::from_secs(1) {
        return Err((key.into(), "expected at least 1 second".into()));
    }
    if w.as_std().as_secs() > MAX_SPAN_S {
        return Err((
            key.into(),
            format!("{w} is too long: expected at most {MAX_SPAN_S}s (366 days)"),
        ));
    }
    Ok(())
}

/// The longest window or cooldown a rule accepts, in seconds (366 days): longer ones
/// would overflow the arithmetic on timestamps, and mean nothing for a live monitor.
pub const MAX_SPAN_S: u64 = 366 * 86_400;

/// The largest count (threshold) a rule accepts: above it a rule could never fire
/// within the state it keeps, so it is a mistake.
pub const MAX_COUNT: usize = 1_000_000;

/// Validation of a `cooldown_s` (at most [`MAX_SPAN_S`]).
pub fn check_cooldown(key: &str, secs: Option<u64>) -> Result<(), (String, String)> {
    match secs {
        Some(s) if s > MAX_SPAN_S => Err((
            key.into(),
            format!("{s} is too long: expected at most {MAX_SPAN_S} seconds (366 days)"),
        )),
        _ => Ok(()),
    }
}

/// Validation of a count: between `min` and [`MAX_COUNT`].
pub fn check_count(key: &str, n: usize, min: usize) -> Result<(), (String, String)> {
    if n < min || n > MAX_COUNT {
        return Err((
            key.into(),
            format!("{n} is out of range: expected {min} to {MAX_COUNT}"),
        ));
    }
    Ok(())
}

/// The `window_s = N` of older configurations, copied to `window` (it wins); the
/// warning to show.
pub fn upgrade_window(window_s: Option<u64>, window: &mut Span) -> Vec<(String, String)> {
    let Some(secs) = window_s else {
        return Vec::new();
    };
    *window = Span::from_secs(secs);
    vec![(
        "window_s".into(),
        format!("`window_s` is deprecated and will be removed: write `window = \"{secs}s\"`"),
    )]
}

/// The parts of a connection event rules look at.
pub struct FlowView<'a> {
    pub kind: &'static str,
    pub conn: &'a Connection,
    /// The other side (null for `listen`).
    pub remote: Option<&'a IpAddr>,
    /// The service's port: destination of an outbound flow, local port of an inbound
    /// one or a listener.
    pub service_port: u16,
}

/// Connection events rules check: connect, accept, udp, listen (not close).
pub fn flow_view(ev: &Event) -> Option<FlowView<'_>> {
    let (kind, conn) = match &ev.body {
        EventBody::Connect(c) => ("connect", c),
        EventBody::Accept(c) => ("accept", c),
        EventBody::Udp(c) => ("udp", c),
        EventBody::Listen(c) => ("listen", c),
        _ => return None,
    };
    let remote = match kind {
        "accept" => conn.src.as_ref().map(|e| &e.ip),
        "listen" => None,
        _ => Some(&conn.dst.ip),
    };
    Some(FlowView {
        kind,
        conn,
        remote,
        service_port: conn.dst.port,
    })
}

/// The sample an alert carries for a connection event.
pub fn sample_of(ev: &Event) -> Option<FlowSample> {
    match &ev.body {
        EventBody::Dns(d) => Some(FlowSample {
            ts: ev.ts,
            kind: "dns".into(),
            proto: d.proto,
            direction: Some(match d.role {
                crate::event::DnsRole::Client => Direction::Outbound,
                crate::event::DnsRole::Server => Direction::Inbound,
            }),
            src: Some(d.src.clone()),
            dst: Endpoint {
                name: Some(d.query.clone()),
                ..d.dst.clone()
            },
        }),
        _ => {
            let c = ev.body.connection()?;
            Some(FlowSample {
                ts: ev.ts,
                kind: ev.body.type_name().into(),
                proto: c.proto,
                direction: c.direction,
                src: c.src.clone(),
                dst: c.dst.clone(),
            })
        }
    }
}

/// `comm[pid]`, or `an unknown process`, for summaries.
pub fn who(p: Option<&ProcessInfo>) -> String {
    match p {
        Some(p) => format!("{}[{}]", p.comm, p.pid),
        None => "an unknown process".into(),
    }
}

/// `pid=42`: the condition of a rule that fires per process, written into `buf`
/// (no allocation: such a rule asks the cooldown with it on every event).
pub fn pid_condition(buf: &mut [u8; 14], pid: u32) -> &str {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(pid).as_bytes();
    let len = 4 + digits.len();
    buf[..4].copy_from_slice(b"pid=");
    buf[4..len].copy_from_slice(digits);
    // "pid=" and itoa's digits: ASCII.
    std::str::from_utf8(&buf[..len]).unwrap_or("pid=?")
}

pub fn pid_of(p: Option<&ProcessInfo>) -> String {
    p.map_or_else(|| "unknown".into(), |p| p.pid.to_string())
}

/// Keeps the last `MAX_SAMPLES` items.
pub fn push_sample(samples: &mut Vec<FlowSample>, s: FlowSample) {
    if samples.len() >= MAX_SAMPLES {
        samples.remove(0);
    }
    samples.push(s);
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_condition_is_what_format_writes() {
        for pid in [0, 7, 10, 42, 99_999, 4_194_304, u32::MAX] {
            assert_eq!(
                super::pid_condition(&mut [0; 14], pid),
                format!("pid={pid}")
            );
        }
    }
}
