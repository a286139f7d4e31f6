//! Query parameters of the event endpoints (`type=`, `process=`, `host=`, `port=`,
//! `since=`), checked: a bad value is a 400 that names the parameter. Pure.
use std::{collections::HashMap, net::IpAddr};

use chrono::{DateTime, Utc};

use super::feed::{Item, Keys};

/// Every `type` an event can have (docs/events.md).
pub const TYPES: [&str; 17] = [
    "connect",
    "accept",
    "udp",
    "listen",
    "close",
    "flow",
    "stats",
    "probe",
    "dns",
    "alert",
    "host",
    "port",
    "host_up",
    "host_down",
    "port_opened",
    "port_closed",
    "service_changed",
];

/// A bad query parameter: which one and why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad value for `{param}`: {why}")]
pub struct BadParam {
    pub param: &'static str,
    pub why: String,
}

fn bad(param: &'static str, why: impl Into<String>) -> BadParam {
    BadParam {
        param,
        why: why.into(),
    }
}

/// Which events a client wants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub types: Option<Vec<&'static str>>,
    /// A process name (`comm`), or a pid when all digits.
    pub process: Option<String>,
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
}

/// Longest parameter value looked at.
const MAX_VALUE: usize = 1024;

impl Filter {
    /// The filter of a query; unknown parameters in `allowed_extra` are left to the
    /// caller, any other unknown one is refused.
    pub fn parse(q: &HashMap<String, String>, allowed_extra: &[&str]) -> Result<Filter, BadParam> {
        let mut f = Filter::default();
        for (k, v) in q {
            if v.len() > MAX_VALUE {
                return Err(bad(param_name(k), "too long"));
            }
            match k.as_str() {
                "type" => {
                    let mut types = Vec::new();
                    for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        match TYPES.iter().find(|k| **k == t) {
                            Some(k) => types.push(*k),
                            None => {
                                return Err(bad(
                                    "type",
                                    format!("unknown event type (one of {})", TYPES.join(", ")),
                                ));
                            }
                        }
                    }
                    if types.is_empty() {
                        return Err(bad("type", "empty list"));
                    }
                    f.types = Some(types);
                }
                "process" => {
                    if v.is_empty() {
                        return Err(bad("process", "empty"));
                    }
                    f.process = Some(v.clone());
                }
                "host" => {
                    f.host = Some(
                        v.parse()
                            .map_err(|_| bad("host", "not an IPv4 or IPv6 address"))?,
                    )
                }
                "port" => {
                    f.port = Some(
                        v.parse()
                            .map_err(|_| bad("port", "not a port number (0 to 65535)"))?,
                    )
                }
                k if allowed_extra.contains(&k) => {}
                _ => return Err(bad(param_name(k), "unknown parameter")),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, item: &Item) -> bool {
        self.matches_keys(item.kind, item.keys())
    }

    pub fn matches_keys(&self, kind: &str, item: &Keys) -> bool {
        if let Some(types) = &self.types
            && !types.contains(&kind)
        {
            return false;
        }
        if let Some(p) = &self.process {
            let hit = match p.parse::<u32>() {
                Ok(pid) => item.pid == Some(pid),
                Err(_) => item.comm.as_deref() == Some(p.as_str()),
            };
            if !hit {
                return false;
            }
        }
        if let Some(h) = &self.host
            && !item.ips.contains(&Some(*h))
        {
            return false;
        }
        if let Some(port) = self.port
            && !item.ports.contains(&Some(port))
        {
            return false;
        }
        true
    }
}

/// Parameter names come from the client: only known ones are echoed back verbatim.
fn param_name(k: &str) -> &'static str {
    const KNOWN: [&str; 8] = [
        "type", "process", "host", "port", "since", "limit", "sort", "until",
    ];
    KNOWN
        .iter()
        .find(|n| **n == k)
        .copied()
        .unwrap_or("(unknown)")
}

/// Where a stream resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// After this event id (`since=<id>`, `Last-Event-ID`).
    After(u64),
    /// With the first event at or after this time (`since=10m`, `since=2026-12-01T10:00Z`).
    At(DateTime<Utc>),
}

/// A resume point: `since=` (an event id, a span back from `now` such as `10m`, or a
/// UTC time) or the `Last-Event-ID` header; the parameter wins.
pub fn resume_from(
    q: &HashMap<String, String>,
    last_event_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Resume>, BadParam> {
    if let Some(s) = q.get("since") {
        if let Ok(id) = s.trim().parse() {
            return Ok(Some(Resume::After(id)));
        }
        return crate::query::parse_time(s, now)
            .map(|t| Some(Resume::At(t)))
            .map_err(|why| {
                bad(
                    "since",
                    format!("not an event id, a span (10m) or a time (2026-12-01T10:00Z): {why}"),
                )
            });
    }
    match last_event_id {
        Some(s) => s
            .trim()
            .parse()
            .map(|id| Some(Resume::After(id)))
            .map_err(|_| bad("Last-Event-ID", "not an event id (a whole number)")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn item(json: &str) -> Item {
        let ev: Event = serde_json::from_str(json).unwrap();
        Item::new(1, std::sync::Arc::new(ev))
    }

    const CONNECT: &str = r#"{"ts":"2026-12-02T06:00:00Z","host":"h","type":"connect","proto":"tcp","family":"ipv4","direction":"outbound","src":{"ip":"127.0.0.1","port":40000},"dst":{"ip":"127.0.0.1","port":8080},"process":{"pid":42,"tid":42,"comm":"curl","uid":0,"gid":0,"cgroup_id":1},"backend":"tracepoint"}"#;

    #[test]
    fn filters_match_type_process_host_and_port() {
        let it = item(CONNECT);
        let ok = |pairs: &[(&str, &str)]| Filter::parse(&q(pairs), &[]).unwrap().matches(&it);
        assert!(ok(&[]));
        assert!(ok(&[("type", "close,connect")]));
        assert!(!ok(&[("type", "close")]));
        assert!(ok(&[("process", "curl")]));
        assert!(ok(&[("process", "42")]));
        assert!(!ok(&[("process", "wget")]));
        assert!(ok(&[("host", "127.0.0.1")]));
        assert!(!ok(&[("host", "10.0.0.1")]));
        assert!(ok(&[("port", "8080")]));
        assert!(ok(&[("port", "40000")]));
        assert!(!ok(&[("port", "22")]));
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = |pairs: &[(&str, &str)]| Filter::parse(&q(pairs), &[]).unwrap_err().param;
        assert_eq!(e(&[("type", "nope")]), "type");
        assert_eq!(e(&[("host", "example.com")]), "host");
        assert_eq!(e(&[("port", "70000")]), "port");
        assert_eq!(e(&[("bogus\x1b[31m", "1")]), "(unknown)");
        assert!(Filter::parse(&q(&[("since", "3")]), &["since"]).is_ok());
    }

    #[test]
    fn since_is_an_event_id_a_span_or_a_time_and_wins_over_the_header() {
        let now: DateTime<Utc> = "2026-12-07T10:00:00Z".parse().unwrap();
        let r = |pairs: &[(&str, &str)], h: Option<&str>| resume_from(&q(pairs), h, now);
        assert_eq!(r(&[("since", "x")], None).unwrap_err().param, "since");
        assert_eq!(r(&[("since", "-5")], None).unwrap_err().param, "since");
        assert_eq!(r(&[], Some("1h")).unwrap_err().param, "Last-Event-ID");
        assert_eq!(r(&[], Some("17")).unwrap(), Some(Resume::After(17)));
        assert_eq!(r(&[], None).unwrap(), None);
        assert_eq!(
            r(&[("since", "5")], Some("17")).unwrap(),
            Some(Resume::After(5))
        );
        assert_eq!(
            r(&[("since", "10m")], Some("17")).unwrap(),
            Some(Resume::At("2026-12-07T09:50:00Z".parse().unwrap()))
        );
        assert_eq!(
            r(&[("since", "2026-12-07T08:30Z")], None).unwrap(),
            Some(Resume::At("2026-12-07T08:30:00Z".parse().unwrap()))
        );
    }
}
