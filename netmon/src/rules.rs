//! Detection rules: events in, alerts out. Pure: no aya, no I/O (what a rule needs to
//! know about a process beyond the event comes through [`ProcessResolver`]); time is
//! [`RuleClock`], monotonic time made from the events' own `ts`, so `netmon replay`
//! gives the same alerts as the live run and a wall-clock step back hides none.
//!
//! Each rule turns an event into zero or more [`Hit`]s; the [`Engine`] applies the
//! cooldown per condition (rule plus what it is about) and counts the hits it held
//! back, reporting them in the next alert's `hits`.
//!
//! A built-in rule is one file here: the rule, its `[rules.<section>]` table, and the
//! [`RuleSpec`] it describes itself with (name, default severity, purpose, section);
//! plus one line in the registry in `config.rs`. The engine, [`describe`], the
//! configuration's checks and `netmon snapshot` all read that registry. Arrows point
//! down: `rule.rs` and `matchers.rs` at the bottom, the rule files above them,
//! `config.rs` above those, this file on top; `clock.rs` (the rule time) beside them.
//!
//! Over 600 lines: about 340 of code (the engine and its cooldowns), the rest its
//! tests and their event builders.
use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

pub mod clock;
pub mod config;
pub mod connections;
pub mod custom;
pub mod dns_tunnel;
pub mod listeners;
pub mod matchers;
pub mod ports;
pub mod rule;

pub use clock::RuleClock;
pub use config::RulesConfig;
pub use matchers::{NoResolver, ProcessResolver};
pub use rule::{
    FlowView, Hit, Hits, MAX_SAMPLES, Rule, RuleSection, RuleSpec, flow_view, pid_of, push_sample,
    sample_of, who,
};

use crate::event::{Alert, Event, EventBody, RuleStats};

/// The state of one condition's cooldown.
struct Cooldown {
    /// Rule time until which hits are held back: the last alert plus its cooldown.
    quiet_until: DateTime<Utc>,
    /// Hits since the last alert.
    held: u64,
}

/// The end of a cooldown of `secs` seconds that starts at `t`.
fn quiet_until(t: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    i64::try_from(secs)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// All enabled rules, the cooldowns and the counters.
pub struct Engine {
    rules: Vec<Box<dyn Rule>>,
    cooldowns: CooldownTable,
    resolver: Box<dyn ProcessResolver>,
    pub stats: RuleStats,
    hits: Vec<Hit>,
    clock: RuleClock,
}

const MAX_COOLDOWNS: usize = 100_000;

impl Engine {
    /// The rules `cfg` enables (none when `rules.enabled` is false).
    pub fn new(cfg: &RulesConfig, resolver: Box<dyn ProcessResolver>) -> Engine {
        Engine::with_connections(cfg, resolver, Box::new(connections::ConnTable::default()))
    }

    /// As [`Engine::new`], with HIGH_CONNECTION_COUNT counting active connections with
    /// `table` (`netmon snapshot` knows them all at once).
    pub fn with_connections(
        cfg: &RulesConfig,
        resolver: Box<dyn ProcessResolver>,
        table: Box<dyn connections::ActiveConnections>,
    ) -> Engine {
        let mut rules: Vec<Box<dyn Rule>> = Vec::new();
        if cfg.enabled {
            let mut ctx = rule::Build {
                cooldown_s: cfg.cooldown_s,
                connections: Some(table),
            };
            for section in cfg.builtin().filter(|s| s.enabled()) {
                rules.push(section.build(&mut ctx));
            }
            for c in cfg.custom.iter().filter(|c| c.enabled) {
                rules.push(Box::new(custom::CustomRule::new(c, cfg.cooldown_s)));
            }
        }
        Engine {
            rules,
            cooldowns: CooldownTable::default(),
            resolver,
            stats: RuleStats::default(),
            hits: Vec::new(),
            clock: RuleClock::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Names of the rules that run, in the order they run.
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name().to_owned()).collect()
    }

    /// Runs every rule on `ev`; pushes the alerts that pass their cooldown to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<Event>) {
        if matches!(
            ev.body,
            EventBody::Alert(_) | EventBody::Stats(_) | EventBody::Probe(_)
        ) {
            return;
        }
        let now = self.clock.tick(ev.ts);
        let mut hits = std::mem::take(&mut self.hits);
        for i in 0..self.rules.len() {
            let first = hits.len();
            let mut asking = Asking {
                table: &mut self.cooldowns,
                now,
                suppressed: &mut self.stats.suppressed,
            };
            self.rules[i].check(
                ev,
                now,
                self.resolver.as_mut(),
                &mut Hits::with_cooldowns(&mut hits, &mut asking),
            );
            if hits.len() == first {
                continue;
            }
            for hit in hits.drain(first..) {
                // In rule order, each rule's hits in its order, as before.
                let Some(mut hit) = self.cool(now, hit) else {
                    continue;
                };
                self.rules[i].complete(ev, &mut hit.hit);
                out.push(Event {
                    ts: ev.ts,
                    host: ev.host.clone(),
                    body: EventBody::Alert(hit.into_alert()),
                });
            }
        }
        self.hits = hits;
    }

    /// Applies the condition's cooldown at rule time `ts`: the hit to alert with (its
    /// `hits` and `key` in [`Cooled`]), or `None` for a counted hit held back.
    fn cool(&mut self, ts: DateTime<Utc>, hit: Hit) -> Option<Cooled> {
        let table = &mut self.cooldowns;
        if table.hold(ts, &hit.rule, &hit.condition, &mut self.stats.suppressed) {
            return None;
        }
        // It alerts (`hold` left the key in `table.key`).
        table.make_room(ts);
        let hits = match table.quiet.get_mut(table.key.as_str()) {
            Some(c) => {
                let hits = c.held + 1;
                c.held = 0;
                c.quiet_until = quiet_until(ts, hit.cooldown_s);
                hits
            }
            None => {
                table.quiet.insert(
                    table.key.clone(),
                    Cooldown {
                        quiet_until: quiet_until(ts, hit.cooldown_s),
                        held: 0,
                    },
                );
                1
            }
        };
        let key = table.key.clone();
        self.stats.alerts += 1;
        match self.stats.by_rule.get_mut(hit.rule.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.stats.by_rule.insert(hit.rule.to_string(), 1);
            }
        }
        Some(Cooled { hit, key, hits })
    }
}

/// Every condition's cooldown, by key (`RULE:condition`).
#[derive(Default)]
struct CooldownTable {
    quiet: foldhash::HashMap<String, Cooldown>,
    /// The key being looked up, built in place: a busy server above a threshold hits
    /// on every event, nearly all held back, and a key is only kept when one alerts.
    key: String,
}

impl CooldownTable {
    /// Makes `key` `rule:condition`, in the reused buffer.
    fn set_key(&mut self, rule: &str, condition: &str) {
        self.key.clear();
        self.key.push_str(rule);
        self.key.push(':');
        self.key.push_str(condition);
    }

    /// Whether a hit of `rule` on `condition` at rule time `now` is held back by its
    /// cooldown; if so, counts it (in the condition's `held` and in `suppressed`).
    /// Leaves the condition's key in `key`.
    fn hold(
        &mut self,
        now: DateTime<Utc>,
        rule: &str,
        condition: &str,
        suppressed: &mut u64,
    ) -> bool {
        self.set_key(rule, condition);
        match self.quiet.get_mut(self.key.as_str()) {
            Some(c) if now < c.quiet_until => {
                c.held += 1;
                *suppressed += 1;
                true
            }
            _ => false,
        }
    }

    /// Bounds the table: past [`MAX_COOLDOWNS`], forgets the conditions whose cooldown
    /// ended with no hit held back (and everything if that is not enough).
    fn make_room(&mut self, ts: DateTime<Utc>) {
        if self.quiet.len() >= MAX_COOLDOWNS {
            self.quiet.retain(|_, c| ts < c.quiet_until || c.held > 0);
            if self.quiet.len() >= MAX_COOLDOWNS {
                self.quiet.clear();
            }
        }
    }
}

/// The cooldowns as a rule asks them at rule time `now` ([`Hits::held_back`]).
struct Asking<'a> {
    table: &'a mut CooldownTable,
    now: DateTime<Utc>,
    suppressed: &'a mut u64,
}

impl rule::Cooldowns for Asking<'_> {
    fn hold(&mut self, rule: &str, condition: &str) -> bool {
        self.table.hold(self.now, rule, condition, self.suppressed)
    }
}

impl Cooled {
    fn into_alert(self) -> Alert {
        let Cooled { hit, key, hits } = self;
        Alert {
            rule: hit.rule.into_owned(),
            severity: hit.severity,
            summary: hit.summary,
            recommendation: hit.recommendation,
            process: hit.process,
            flows: hit.flows,
            key,
            hits,
            score: hit.score,
            details: hit.details,
        }
    }
}

/// A hit that passed its cooldown: what its alert says besides the hit.
struct Cooled {
    hit: Hit,
    /// The cooldown's key.
    key: String,
    /// Hits since the previous alert, this one included.
    hits: u64,
}

/// One line of `netmon rules list`.
#[derive(Clone, Debug, Serialize)]
pub struct RuleInfo {
    pub rule: String,
    pub enabled: bool,
    /// Fixed severity, or `by score` for PORT_RISK without an override.
    pub severity: String,
    pub cooldown_s: u64,
    /// The rule's effective parameters.
    pub settings: BTreeMap<String, serde_json::Value>,
    /// One line on what the rule looks for, with its main setting (`netmon snapshot`).
    #[serde(skip)]
    pub purpose: String,
}

/// The effective rules of a configuration, built-in first (in registry order), then
/// custom ones.
pub fn describe(cfg: &RulesConfig) -> Vec<RuleInfo> {
    use serde_json::json;
    let object = |v: serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    };
    let mut out = Vec::new();
    for s in cfg.builtin() {
        let spec = s.spec();
        let settings = object(s.settings());
        out.push(RuleInfo {
            rule: spec.name.into(),
            enabled: cfg.enabled && s.enabled(),
            severity: s
                .severity()
                .or(spec.default_severity)
                .map_or_else(|| "by score".to_owned(), |s| s.name().to_owned()),
            cooldown_s: s.cooldown_s().unwrap_or(cfg.cooldown_s),
            purpose: spec.purpose_with(&settings),
            settings,
        });
    }
    for c in &cfg.custom {
        let settings = object(json!({"summary": c.summary, "events": c.events,
            "direction": c.direction, "proto": c.proto, "ports": c.ports, "cidrs": c.cidrs,
            "process": c.process, "exe": c.exe, "users": c.users}));
        out.push(RuleInfo {
            rule: c.name.clone(),
            enabled: cfg.enabled && c.enabled,
            severity: c.severity.name().to_owned(),
            cooldown_s: c.cooldown_s.unwrap_or(cfg.cooldown_s),
            purpose: rule::fill(custom::PURPOSE, &settings),
            settings,
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Event builders for the rules' unit tests.
    use chrono::DateTime;

    use crate::event::{
        Connection, Direction, Endpoint, Event, EventBody, Family, ProcessInfo, Proto,
    };

    pub fn proc(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::kernel(pid, pid, comm.into(), 1000, 1000, 1)
    }

    pub fn at(secs: i64) -> DateTime<chrono::Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    pub fn conn(kind: &str, secs: i64, pid: u32, src: (&str, u16), dst: (&str, u16)) -> Event {
        let c = Connection {
            proto: if kind == "udp" {
                Proto::Udp
            } else {
                Proto::Tcp
            },
            family: Family::Ipv4,
            direction: Some(if kind == "accept" || kind == "listen" {
                Direction::Inbound
            } else {
                Direction::Outbound
            }),
            src: (kind != "listen").then(|| Endpoint::new(src.0.parse().unwrap(), src.1)),
            dst: Endpoint::new(dst.0.parse().unwrap(), dst.1),
            process: Some(proc(pid, "app")),
            backend: "tracepoint".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        };
        let body = match kind {
            "connect" => EventBody::Connect(c),
            "accept" => EventBody::Accept(c),
            "udp" => EventBody::Udp(c),
            "listen" => EventBody::Listen(c),
            "close" => EventBody::Close(crate::event::Close {
                conn: c,
                duration_ms: Some(1.0),
                bytes_sent: None,
                bytes_received: None,
                packets_sent: None,
                packets_received: None,
                reason: None,
            }),
            _ => unreachable!(),
        };
        Event {
            ts: at(secs),
            host: "h".into(),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    fn alerts(engine: &mut Engine, events: &[Event]) -> Vec<Alert> {
        let mut out = Vec::new();
        for e in events {
            engine.on_event(e, &mut out);
        }
        out.into_iter()
            .filter_map(|e| match e.body {
                EventBody::Alert(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cooldown_holds_repeats_and_counts_them() {
        let cfg = RulesConfig {
            cooldown_s: 60,
            ..RulesConfig::default()
        };
        let mut engine = Engine::new(&cfg, Box::new(NoResolver));
        let hit = |s| conn("connect", s, 7, ("127.0.0.1", 40000), ("127.0.0.1", 31337));
        let got = alerts(&mut engine, &[hit(0), hit(10), hit(20), hit(30)]);
        let sp: Vec<_> = got.iter().filter(|a| a.rule == "SUSPICIOUS_PORT").collect();
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].hits, 1);
        let got = alerts(&mut engine, &[hit(61), hit(62)]);
        let sp: Vec<_> = got.iter().filter(|a| a.rule == "SUSPICIOUS_PORT").collect();
        assert_eq!(sp.len(), 1);
        assert_eq!(sp[0].hits, 4, "three held back plus this one");
        assert!(engine.stats.suppressed >= 4);
    }

    #[test]
    fn a_rule_that_asks_the_cooldown_first_counts_its_held_hits_the_same() {
        // HIGH_CONNECTION_COUNT asks before it builds a hit (`Hits::held_back`): the
        // alerts, their `hits` and `suppressed` must be what pushing every hit gave.
        let cfg: RulesConfig =
            toml::from_str("cooldown_s = 60\n[high_connection_count]\nthreshold = 3\n").unwrap();
        let mut engine = Engine::new(&cfg, Box::new(NoResolver));
        let open = |s: i64, port: u16| conn("connect", s, 9, ("10.0.0.1", port), ("10.0.0.2", 80));
        let hcc = |got: Vec<Alert>| -> Vec<u64> {
            got.iter()
                .filter(|a| a.rule == "HIGH_CONNECTION_COUNT")
                .map(|a| a.hits)
                .collect()
        };
        // The third connection fires; the next five are held back.
        let first: Vec<Event> = (0..8).map(|i| open(i, 40000 + i as u16)).collect();
        assert_eq!(hcc(alerts(&mut engine, &first)), [1]);
        assert_eq!(engine.stats.suppressed, 5);
        // After the cooldown, the next alert says how many hits it stands for.
        assert_eq!(hcc(alerts(&mut engine, &[open(70, 41000)])), [6]);
        assert_eq!(engine.stats.alerts, 1 + 1);
    }

    #[test]
    fn a_backward_clock_step_does_not_suppress_alerts() {
        let cfg = RulesConfig {
            cooldown_s: 60,
            ..RulesConfig::default()
        };
        let mut engine = Engine::new(&cfg, Box::new(NoResolver));
        let hit = |s| conn("connect", s, 7, ("127.0.0.1", 40000), ("127.0.0.1", 31337));
        let sp = |got: Vec<Alert>| got.iter().filter(|a| a.rule == "SUSPICIOUS_PORT").count();
        assert_eq!(sp(alerts(&mut engine, &[hit(0)])), 1);
        // The wall clock steps back an hour; 61 s later (by the monotonic clock) the
        // cooldown has passed: the hit alerts, it is not held for the hour.
        assert_eq!(sp(alerts(&mut engine, &[hit(-3600)])), 0, "0 s later");
        assert_eq!(sp(alerts(&mut engine, &[hit(-3600 + 61)])), 1, "61 s later");
        // Windows too: the clock freezes at a step back and then moves on.
        let mut clock = RuleClock::default();
        assert_eq!(clock.tick(at(100)), at(100));
        assert_eq!(clock.tick(at(10)), at(100));
        assert_eq!(clock.tick(at(15)), at(105));
        assert_eq!(clock.tick(at(200)), at(290));
    }

    #[test]
    fn external_connections_window_survives_a_backward_step() {
        let mut cfg = RulesConfig::default();
        cfg.external_connections.threshold = 3;
        cfg.external_connections.window = crate::config::Span::from_secs(60);
        let to = |s, ip| conn("connect", s, 9, ("10.0.0.2", 40000), (ip, 443));
        let fires = |third: i64| {
            let mut engine = Engine::new(&cfg, Box::new(NoResolver));
            // Two addresses, then the clock steps back 2 h (the step itself takes no
            // time on the rule clock), then a third.
            let events = [
                to(0, "8.8.8.1"),
                to(5, "8.8.8.2"),
                to(-7200, "8.8.8.2"),
                to(-7200 + third, "8.8.8.3"),
            ];
            let got = alerts(&mut engine, &events);
            got.iter().any(|a| a.rule == "EXTERNAL_CONNECTIONS")
        };
        // 5 s after the second by the monotonic clock: three within a minute.
        assert!(fires(10));
        // 2 min after: the first two have left the window; on the wall clock they
        // would look 2 h in the future and count for 2 h.
        assert!(!fires(125));
    }

    #[test]
    fn master_switch_disables_everything() {
        let cfg = RulesConfig {
            enabled: false,
            ..RulesConfig::default()
        };
        let engine = Engine::new(&cfg, Box::new(NoResolver));
        assert!(engine.is_empty());
    }

    #[test]
    fn describe_lists_every_builtin_rule() {
        let list = describe(&RulesConfig::default());
        let names: Vec<&str> = list.iter().map(|r| r.rule.as_str()).collect();
        let builtin: Vec<&str> = config::builtin_specs().iter().map(|s| s.name).collect();
        assert_eq!(names, builtin);
        assert_eq!(
            names,
            [
                "SUSPICIOUS_PORT",
                "HIGH_CONNECTION_COUNT",
                "EXTERNAL_CONNECTIONS",
                "UNUSUAL_LISTENERS",
                "DNS_TUNNELING",
                "PORT_RISK"
            ]
        );
        assert!(list.iter().all(|r| r.enabled));
    }

    #[test]
    fn every_registered_rule_describes_itself() {
        let cfg = RulesConfig::default();
        let mut names = Vec::new();
        let mut sections = Vec::new();
        for s in cfg.builtin() {
            let spec = s.spec();
            assert!(!spec.name.is_empty() && spec.name == spec.name.to_uppercase());
            assert!(!spec.purpose.is_empty(), "{} has no purpose", spec.name);
            assert!(!spec.purpose.contains('?'), "{}", spec.name);
            // A default severity, or the per-hit one PORT_RISK takes from its score.
            assert!(
                spec.default_severity.is_some() || spec.name == "PORT_RISK",
                "{} has no default severity",
                spec.name
            );
            // Its section is its table: the key of `[rules.<section>]` in the file.
            let table = toml::Table::try_from(&cfg).unwrap();
            assert!(
                table.contains_key(spec.section),
                "{}: no [rules.{}]",
                spec.name,
                spec.section
            );
            let text = format!("[rules.{}]\nenabled = false\n", spec.section);
            let c = crate::config::parse(&text, std::path::Path::new("x")).unwrap();
            let off = describe(&c.rules);
            assert!(
                !off.iter().find(|r| r.rule == spec.name).unwrap().enabled,
                "{}",
                spec.name
            );
            // Its purpose fills from its own settings.
            let info = describe(&cfg)
                .into_iter()
                .find(|r| r.rule == spec.name)
                .unwrap();
            assert!(
                !info.purpose.contains('?'),
                "{}: {}",
                spec.name,
                info.purpose
            );
            assert_eq!(
                Engine::new(&cfg, Box::new(NoResolver))
                    .names()
                    .iter()
                    .filter(|n| *n == spec.name)
                    .count(),
                1
            );
            names.push(spec.name);
            sections.push(spec.section);
        }
        names.dedup();
        sections.dedup();
        assert_eq!(names.len(), 6);
        assert_eq!(sections.len(), 6);
    }

    #[test]
    fn a_misspelt_rule_is_an_error_naming_file_and_line() {
        let e = crate::config::parse(
            "[rules]\ncooldown_s = 10\n\n[rules.suspicous_port]\nenabled = false\n",
            std::path::Path::new("netmon.toml"),
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("netmon.toml:4:"), "{shown}");
        assert!(shown.contains("unknown field `suspicous_port`"), "{shown}");
        // The message lists the real sections, so the fix is in sight.
        for spec in config::builtin_specs() {
            assert!(shown.contains(&format!("`{}`", spec.section)), "{shown}");
        }
    }
}
