//! `DNS_TUNNELING`: DNS traffic that looks like a tunnel. Per registered domain (the
//! last `domain_labels` labels) within a sliding window, four indicators add to a score:
//!
//! | indicator | default | score |
//! | --- | --- | --- |
//! | queries to the domain | ≥ 200 | +1 |
//! | distinct names under it | ≥ 100 | +1 |
//! | names with a long (≥ 40) or high-entropy (≥ 4.0 bits/char over 24+ chars) subdomain | ≥ 20 | +2 |
//! | TXT and NULL queries | ≥ 50 | +2 |
//!
//! The rule fires at `min_score` (3): volume alone (a busy CDN: +1 +1) does not, volume
//! with encoded-looking names or bulk TXT/NULL does.
use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde_json::json;

use serde::{Deserialize, Serialize};

use super::{
    matchers::{Allow, ProcessResolver},
    rule::{
        Build, Hit, Hits, Rule, RuleSection, RuleSpec, check_count, check_window, push_sample,
        sample_of, upgrade_window, who,
    },
};
use crate::{
    config::Span,
    event::{DnsRole, Event, EventBody, FlowSample, ProcessInfo, Severity},
};

pub const DNS_TUNNELING: RuleSpec = RuleSpec {
    name: "DNS_TUNNELING",
    section: "dns_tunneling",
    default_severity: Some(Severity::High),
    purpose: "DNS queries to one domain that look like a tunnel (score {min_score} or more)",
};

/// Reverse-lookup zones: bulk PTR lookups are not tunnels.
const SKIPPED_ZONES: &[&str] = &["in-addr.arpa", "ip6.arpa"];

struct Query {
    ts: DateTime<Utc>,
    sub: String,
    suspicious: bool,
    txt_null: bool,
}

#[derive(Default)]
struct Domain {
    queries: VecDeque<Query>,
    subs: HashMap<String, usize>,
    suspicious: usize,
    txt_null: usize,
    samples: Vec<FlowSample>,
    names: VecDeque<String>,
    process: Option<ProcessInfo>,
}

impl Domain {
    fn push(&mut self, q: Query) {
        *self.subs.entry(q.sub.clone()).or_default() += 1;
        self.suspicious += q.suspicious as usize;
        self.txt_null += q.txt_null as usize;
        self.queries.push_back(q);
    }

    fn pop(&mut self) {
        let Some(q) = self.queries.pop_front() else {
            return;
        };
        if let Some(n) = self.subs.get_mut(&q.sub) {
            *n -= 1;
            if *n == 0 {
                self.subs.remove(&q.sub);
            }
        }
        self.suspicious -= q.suspicious as usize;
        self.txt_null -= q.txt_null as usize;
    }
}

/// `[rules.dns_tunneling]`: per registered domain, within `window`, each indicator
/// adds to a score; the rule fires when the score reaches `min_score`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsTunnelingConfig {
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub cooldown_s: Option<u64>,
    pub window: Span,
    /// Deprecated spelling of `window`, in whole seconds (copied there on load).
    #[serde(skip_serializing)]
    pub window_s: Option<u64>,
    /// Labels that make the registered domain (2: `example.com`).
    pub domain_labels: usize,
    /// Queries to one domain in the window (+1).
    pub query_rate: usize,
    /// Distinct names under one domain in the window (+1).
    pub unique_subdomains: usize,
    /// Queries with a long or high-entropy subdomain in the window (+2).
    pub suspicious_names: usize,
    /// A label at least this long makes a name suspicious.
    pub long_label: usize,
    /// Shannon entropy (bits per character) of a subdomain of 24+ characters that makes
    /// a name suspicious.
    pub entropy_bits: f64,
    /// TXT and NULL queries to one domain in the window (+2).
    pub txt_null: usize,
    /// Score that fires the rule.
    pub min_score: u32,
    /// Domains never checked (and their subdomains).
    pub allow_domains: Vec<String>,
    pub allow: Allow,
}

impl Default for DnsTunnelingConfig {
    fn default() -> Self {
        DnsTunnelingConfig {
            enabled: true,
            severity: None,
            cooldown_s: None,
            window: Span::from_secs(60),
            window_s: None,
            domain_labels: 2,
            query_rate: 200,
            unique_subdomains: 100,
            suspicious_names: 20,
            long_label: 40,
            entropy_bits: 4.0,
            txt_null: 50,
            min_score: 3,
            allow_domains: Vec::new(),
            allow: Allow::default(),
        }
    }
}

impl RuleSection for DnsTunnelingConfig {
    fn spec(&self) -> &'static RuleSpec {
        &DNS_TUNNELING
    }
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn severity(&self) -> Option<Severity> {
        self.severity
    }
    fn cooldown_s(&self) -> Option<u64> {
        self.cooldown_s
    }
    fn settings(&self) -> serde_json::Value {
        json!({"window": self.window, "domain_labels": self.domain_labels,
               "query_rate": self.query_rate, "unique_subdomains": self.unique_subdomains,
               "suspicious_names": self.suspicious_names, "long_label": self.long_label,
               "entropy_bits": self.entropy_bits, "txt_null": self.txt_null,
               "min_score": self.min_score, "allow_domains": self.allow_domains,
               "allow": self.allow})
    }
    fn validate(&self) -> Result<(), (String, String)> {
        if self.domain_labels == 0 {
            return Err(("domain_labels".into(), "expected at least 1".into()));
        }
        for (key, n) in [
            ("domain_labels", self.domain_labels),
            ("query_rate", self.query_rate),
            ("unique_subdomains", self.unique_subdomains),
            ("suspicious_names", self.suspicious_names),
            ("long_label", self.long_label),
            ("txt_null", self.txt_null),
        ] {
            check_count(key, n, 0)?;
        }
        if !(0.0..=8.0).contains(&self.entropy_bits) {
            return Err((
                "entropy_bits".into(),
                format!("{} is out of range: expected 0 to 8", self.entropy_bits),
            ));
        }
        check_window(self.window, self.window_s)
    }
    fn upgrade(&mut self) -> Vec<(String, String)> {
        upgrade_window(self.window_s, &mut self.window)
    }
    fn build(&self, ctx: &mut Build) -> Box<dyn Rule> {
        Box::new(DnsTunneling::new(self, ctx.cooldown_s))
    }
}

pub struct DnsTunneling {
    cfg: DnsTunnelingConfig,
    allow: Allow,
    domains: HashMap<String, Domain>,
    window: chrono::Duration,
    severity: Severity,
    cooldown_s: u64,
}

const MAX_DOMAINS: usize = 10_000;
const MAX_QUERIES_PER_DOMAIN: usize = 50_000;

/// Splits `name` into its subdomain part and its registered domain of `labels` labels.
pub fn split_domain(name: &str, labels: usize) -> (&str, &str) {
    let mut cut = name.len();
    let mut seen = 0;
    for (i, b) in name.bytes().enumerate().rev() {
        if b == b'.' {
            seen += 1;
            if seen == labels {
                cut = i;
                break;
            }
        }
    }
    if cut == name.len() {
        return ("", name);
    }
    (&name[..cut], &name[cut + 1..])
}

/// Shannon entropy in bits per character of `s` (dots left out).
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes().filter(|&b| b != b'.') {
        counts[b.to_ascii_lowercase() as usize] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

impl DnsTunneling {
    pub fn new(cfg: &DnsTunnelingConfig, cooldown_s: u64) -> DnsTunneling {
        DnsTunneling {
            cfg: cfg.clone(),
            allow: cfg.allow.clone(),
            domains: HashMap::new(),
            window: cfg.window.as_chrono(),
            severity: DNS_TUNNELING.severity(cfg.severity),
            cooldown_s: cfg.cooldown_s.unwrap_or(cooldown_s),
        }
    }

    fn suspicious(&self, sub: &str) -> bool {
        if sub.split('.').any(|l| l.len() >= self.cfg.long_label) {
            return true;
        }
        let chars = sub.bytes().filter(|&b| b != b'.').count();
        chars >= 24 && entropy(sub) >= self.cfg.entropy_bits
    }

    fn allowed_domain(&self, name: &str) -> bool {
        let under = |d: &str| {
            let d = d.trim_end_matches('.');
            name == d || name.strip_suffix(d).is_some_and(|rest| rest.ends_with('.'))
        };
        self.cfg.allow_domains.iter().any(|d| under(d)) || SKIPPED_ZONES.iter().any(|d| under(d))
    }
}

impl Rule for DnsTunneling {
    fn name(&self) -> &str {
        DNS_TUNNELING.name
    }

    fn check(
        &mut self,
        ev: &Event,
        now: DateTime<Utc>,
        resolver: &mut dyn ProcessResolver,
        hits: &mut Hits<'_>,
    ) {
        let EventBody::Dns(d) = &ev.body else { return };
        // A local client's query to a local server is seen on both sockets: count it once,
        // on the client's side.
        if d.role == DnsRole::Server && d.src.ip.to_canonical().is_loopback() {
            return;
        }
        let name = d.query.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || self.allowed_domain(&name) {
            return;
        }
        if self
            .allow
            .allows(d.process.as_ref(), Some(&d.dst.ip), None, resolver)
        {
            return;
        }
        let (sub, domain) = split_domain(&name, self.cfg.domain_labels);
        let q = Query {
            ts: now,
            sub: sub.to_owned(),
            suspicious: !sub.is_empty() && self.suspicious(sub),
            txt_null: d.qtype == "TXT" || d.qtype == "NULL",
        };
        if self.domains.len() >= MAX_DOMAINS && !self.domains.contains_key(domain) {
            let (ts, window) = (now, self.window);
            self.domains
                .retain(|_, s| s.queries.back().is_some_and(|q| ts - q.ts < window));
            if self.domains.len() >= MAX_DOMAINS {
                self.domains.clear();
            }
        }
        let state = self.domains.entry(domain.to_owned()).or_default();
        state.push(q);
        while let Some(front) = state.queries.front() {
            if now - front.ts < self.window && state.queries.len() <= MAX_QUERIES_PER_DOMAIN {
                break;
            }
            state.pop();
        }
        if state.names.len() >= super::MAX_SAMPLES {
            state.names.pop_front();
        }
        state.names.push_back(name.clone());
        if let Some(s) = sample_of(ev) {
            push_sample(&mut state.samples, s);
        }
        if d.process.is_some() {
            state.process = d.process.clone();
        }
        let c = &self.cfg;
        let queries = state.queries.len();
        let unique = state.subs.len();
        let mut score = 0;
        let mut reasons = Vec::new();
        if queries >= c.query_rate {
            score += 1;
            reasons.push(format!("{queries} queries"));
        }
        if unique >= c.unique_subdomains {
            score += 1;
            reasons.push(format!("{unique} distinct names"));
        }
        if state.suspicious >= c.suspicious_names {
            score += 2;
            reasons.push(format!("{} long or high-entropy names", state.suspicious));
        }
        if state.txt_null >= c.txt_null {
            score += 2;
            reasons.push(format!("{} TXT/NULL queries", state.txt_null));
        }
        if score < c.min_score {
            return;
        }
        let mut details = BTreeMap::new();
        details.insert("domain".into(), json!(domain));
        details.insert("queries".into(), json!(queries));
        details.insert("unique_subdomains".into(), json!(unique));
        details.insert("suspicious_names".into(), json!(state.suspicious));
        details.insert("txt_null_queries".into(), json!(state.txt_null));
        details.insert("score".into(), json!(score));
        details.insert("window_s".into(), json!(self.window.num_seconds()));
        details.insert("sample_names".into(), json!(state.names));
        hits.push(Hit {
            rule: DNS_TUNNELING.name.into(),
            severity: self.severity,
            condition: format!("domain={domain}"),
            summary: format!(
                "DNS to {domain} looks like a tunnel ({} within {} s), last asked by {}",
                reasons.join(", "),
                self.window.num_seconds(),
                who(state.process.as_ref())
            ),
            recommendation: format!(
                "Check the process sending these queries and who owns {domain}; block the \
                 domain at the resolver if it is not known."
            ),
            process: state.process.clone(),
            flows: state.samples.clone(),
            score: None,
            details,
            cooldown_s: self.cooldown_s,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Dns, Endpoint, Family, Proto},
        rules::{NoResolver, testing::*},
    };

    fn dns(secs: i64, name: &str, qtype: &str) -> Event {
        Event {
            ts: at(secs),
            host: "h".into(),
            body: EventBody::Dns(Dns {
                proto: Proto::Udp,
                family: Family::Ipv4,
                role: DnsRole::Client,
                src: Endpoint::new("127.0.0.1".parse().unwrap(), 40000),
                dst: Endpoint::new("127.0.0.1".parse().unwrap(), 53),
                id: 1,
                query: name.into(),
                qtype: qtype.into(),
                rcode: Some("NOERROR".into()),
                answers: vec![],
                latency_ms: Some(1.0),
                process: Some(proc(3, "dig")),
                truncated: false,
            }),
        }
    }

    fn pseudo_random(i: usize, len: usize) -> String {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut x = (i as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize] as char
            })
            .collect()
    }

    fn run(events: &[Event]) -> Vec<Hit> {
        let mut r = DnsTunneling::new(&DnsTunnelingConfig::default(), 300);
        let mut hits = Vec::new();
        for e in events {
            r.check(e, e.ts, &mut NoResolver, &mut Hits::new(&mut hits));
        }
        hits
    }

    #[test]
    fn splits_registered_domains() {
        assert_eq!(split_domain("a.b.example.com", 2), ("a.b", "example.com"));
        assert_eq!(split_domain("example.com", 2), ("", "example.com"));
        assert_eq!(split_domain("com", 2), ("", "com"));
    }

    #[test]
    fn entropy_separates_random_from_words() {
        assert!(entropy(&pseudo_random(1, 50)) > 4.2);
        assert!(entropy("wwwwwwwwwwwwwwwwwwwwwwwwwwww") < 1.0);
    }

    #[test]
    fn random_subdomains_fire() {
        let events: Vec<Event> = (0..300)
            .map(|i| {
                dns(
                    i as i64 / 10,
                    &format!("{}.t.tunnel.test", pseudo_random(i, 50)),
                    "A",
                )
            })
            .collect();
        let hits = run(&events);
        assert!(!hits.is_empty());
        assert_eq!(hits[0].details["domain"], "tunnel.test");
        assert_eq!(hits[0].severity, Severity::High);
    }

    #[test]
    fn bulk_txt_with_volume_fires() {
        let events: Vec<Event> = (0..250)
            .map(|i| dns(i as i64 / 10, &format!("m{i}.c2.test"), "TXT"))
            .collect();
        assert!(!run(&events).is_empty());
    }

    #[test]
    fn ordinary_lookups_stay_quiet() {
        // Same volume, varied domains.
        let varied: Vec<Event> = (0..300)
            .map(|i| dns(i as i64 / 10, &format!("www.shop{i}.test"), "A"))
            .collect();
        assert!(run(&varied).is_empty());
        // A busy zone with short names: volume and many names, nothing encoded.
        let busy: Vec<Event> = (0..300)
            .map(|i| dns(i as i64 / 10, &format!("host{i}.corp.test"), "A"))
            .collect();
        assert!(run(&busy).is_empty());
        // Reverse lookups are skipped.
        let ptr: Vec<Event> = (0..300)
            .map(|i| dns(0, &format!("{}.in-addr.arpa", pseudo_random(i, 45)), "PTR"))
            .collect();
        assert!(run(&ptr).is_empty());
    }
}
