//! `GET /api/v1/history/{events,flows,alerts,hosts}`: the questions of `netmon
//! history` (`crate::query`) asked of this agent's history file on a read-only
//! connection, off the API's thread (`spawn_blocking`); the answer is
//! `{"count": N, "rows": [...]}` with the rows `netmon history --format json` prints,
//! so `netmon history --agent URL` renders them as if the file were local.
use std::{collections::HashMap, path::PathBuf};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use chrono::{DateTime, Utc};

use super::{AppState, error, filter::BadParam, json_text};
use crate::query::{self, Filter, Question, Source as _, Window};

/// The most rows one request may ask for.
pub const MAX_LIMIT: usize = 100_000;

/// Which question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Events,
    Flows,
    Alerts,
    Hosts,
    /// Connections per minute (`TimelineRow`), e.g. for `netmon top`'s hour sparkline.
    Timeline,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "events" => Self::Events,
            "flows" => Self::Flows,
            "alerts" => Self::Alerts,
            "hosts" => Self::Hosts,
            "timeline" => Self::Timeline,
            _ => return None,
        })
    }
}

/// The parameters, as `netmon history`'s flags: `since`, `until` (a span back from
/// now such as `1h`, or a time), `process`, `host` (IP or CIDR), `port`, `type`
/// (comma-separated), `limit`. Anything else is refused, naming it.
pub fn question(q: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Question, BadParam> {
    const KNOWN: &[&str] = &["since", "until", "process", "host", "port", "type", "limit"];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(BadParam {
            param: "(unknown)",
            why: format!(
                "unknown parameter `{}` (history takes {})",
                crate::escape::remote(k),
                KNOWN.join(", ")
            ),
        });
    }
    let time = |name: &'static str| {
        q.get(name)
            .map(|v| query::parse_time(v, now).map_err(|why| BadParam { param: name, why }))
            .transpose()
    };
    let window = Window {
        since: time("since")?,
        until: Some(time("until")?.unwrap_or(now)),
    };
    if let (Some(s), Some(u)) = (window.since, window.until)
        && s >= u
    {
        return Err(BadParam {
            param: "since",
            why: "not before until: the window is empty".into(),
        });
    }
    let host = q
        .get("host")
        .map(|v| query::parse_host(v).map_err(|why| BadParam { param: "host", why }))
        .transpose()?;
    let port = q
        .get("port")
        .map(|v| {
            v.parse::<u16>().map_err(|_| BadParam {
                param: "port",
                why: "a port number from 0 to 65535".into(),
            })
        })
        .transpose()?;
    let limit = super::limit(q, query::DEFAULT_LIMIT, MAX_LIMIT)?;
    let types = q
        .get("type")
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Question {
        window,
        filter: Filter {
            process: q.get("process").cloned(),
            host,
            port,
            types,
            limit,
        },
    })
}

/// The handler: 404 when this agent keeps no history or the kind is unknown.
pub(super) async fn history(
    State(s): State<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such history (events, flows, alerts, hosts or timeline)",
        );
    };
    let question = match question(&q, Utc::now()) {
        Ok(q) => q,
        Err(e) => return super::bad_request(e),
    };
    let Some(path) = s.history.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this agent keeps no history (start it with --history FILE or `[history] enabled = true`)",
        );
    };
    match tokio::task::spawn_blocking(move || answer(path, kind, &question)).await {
        Ok(Ok(body)) => json_text(body),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn answer(path: PathBuf, kind: Kind, q: &Question) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let store = crate::history::query::Store::open(&path)
        .with_context(|| format!("cannot open the history {}", path.display()))?;
    fn body<R: serde::Serialize>(rows: &[R]) -> anyhow::Result<String> {
        Ok(format!(
            r#"{{"count":{},"rows":{}}}"#,
            rows.len(),
            serde_json::to_string(rows)?
        ))
    }
    let asked = || format!("cannot read the history {}", path.display());
    match kind {
        Kind::Events => body(&store.events(q).with_context(asked)?),
        Kind::Flows => body(&store.flows(q).with_context(asked)?),
        Kind::Alerts => body(&store.alerts(q).with_context(asked)?),
        Kind::Hosts => body(&store.hosts(q).with_context(asked)?),
        Kind::Timeline => {
            use crate::query::Source as _;
            let rows: Vec<crate::query::TimelineRow> = store
                .connections_over_time(&q.window, 60)
                .with_context(asked)?
                .into_iter()
                .map(|(t, connections)| crate::query::TimelineRow { t, connections })
                .collect();
            body(&rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_become_the_same_question_as_the_flags() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .to_utc();
        let q = question(
            &params(&[
                ("since", "1h"),
                ("host", "10.0.0.0/8"),
                ("port", "443"),
                ("type", "connect, close"),
                ("limit", "5"),
                ("process", "curl"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            q.window.since.unwrap().to_rfc3339(),
            "2026-12-02T11:00:00+00:00"
        );
        assert_eq!(q.window.until, Some(now));
        assert_eq!(q.filter.host.unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(q.filter.port, Some(443));
        assert_eq!(q.filter.types, ["connect", "close"]);
        assert_eq!(q.filter.limit, 5);
        assert_eq!(q.filter.process.as_deref(), Some("curl"));
    }

    #[test]
    fn bad_parameters_are_named() {
        let now = Utc::now();
        for (kv, param) in [
            (("port", "99999"), "port"),
            (("limit", "0"), "limit"),
            (("limit", "100001"), "limit"),
            (("host", "nope"), "host"),
            (("since", "yesterday-ish"), "since"),
            (("colour", "red"), "(unknown)"),
        ] {
            let e = question(&params(&[kv]), now).unwrap_err();
            assert_eq!(e.param, param, "{kv:?}");
        }
        let e = question(&params(&[("since", "1h"), ("until", "2h")]), now).unwrap_err();
        assert_eq!(e.param, "since");
    }
}
