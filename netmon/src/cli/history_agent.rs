//! `netmon history --agent URL`: a [`Question`] sent to an agent's
//! `/api/v1/history/{kind}` as query parameters (absolute times, so both ends agree
//! on the window), and the answer's body, checked for status; `cli/history.rs`
//! renders the rows exactly as it renders a local file's.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use chrono::SecondsFormat;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Bytes};

use crate::{
    client::{self, AgentUrl},
    query::Question,
};

/// Time allowed for the connection and for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The query string of `q` (`since=…&until=…&host=…`).
pub fn params(q: &Question) -> String {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut p: Vec<(&str, String)> = Vec::new();
    if let Some(t) = &q.window.since {
        p.push(("since", time(t)));
    }
    if let Some(t) = &q.window.until {
        p.push(("until", time(t)));
    }
    if let Some(v) = &q.filter.process {
        p.push(("process", v.clone()));
    }
    if let Some(v) = &q.filter.host {
        p.push(("host", v.to_string()));
    }
    if let Some(v) = q.filter.port {
        p.push(("port", v.to_string()));
    }
    if !q.filter.types.is_empty() {
        p.push(("type", q.filter.types.join(",")));
    }
    p.push(("limit", q.filter.limit.to_string()));
    serde_urlencoded::to_string(&p).unwrap_or_default()
}

/// Asks the agent; the body of a 200 answer.
pub fn ask(
    url: &str,
    token_file: &Path,
    ca_cert: Option<&Path>,
    kind: &str,
    q: &Question,
) -> Result<Vec<u8>> {
    let agent = AgentUrl::parse(url).map_err(|e| anyhow::anyhow!("--agent {e}"))?;
    let token = client::token(token_file)?;
    let tls = if agent.tls {
        Some(client::tls_connector(ca_cert)?)
    } else {
        None
    };
    let target = agent.target(&format!("/api/v1/history/{kind}?{}", params(q)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client's runtime")?;
    let (status, body) = runtime
        .block_on(async {
            tokio::time::timeout(TIMEOUT, async {
                let mut sender = client::connect(&agent, tls.as_ref(), TIMEOUT).await?;
                let req = Request::get(&target)
                    .header(hyper::header::HOST, agent.authority.as_str())
                    .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Empty::<Bytes>::new())?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            })
            .await
            .map_err(|_| anyhow::anyhow!("no complete answer within {}s", TIMEOUT.as_secs()))?
        })
        .with_context(|| format!("cannot ask the agent {url}"))?;
    if status != StatusCode::OK {
        // The agent's JSON error, or as much of the body as is printable.
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let hint = if status == StatusCode::UNAUTHORIZED {
            " (check --token-file or NETMON_TOKEN)"
        } else {
            ""
        };
        bail!(
            "the agent {url} answered HTTP {status}: {}{hint}",
            crate::escape::remote(&why)
        );
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Filter, Window};

    #[test]
    fn a_question_becomes_the_parameters_the_api_reads_back() {
        let now = chrono::Utc::now();
        let q = Question {
            window: Window {
                since: Some(now - chrono::Duration::hours(1)),
                until: Some(now),
            },
            filter: Filter {
                process: Some("my app&x=1".into()),
                host: Some("10.0.0.0/8".parse().unwrap()),
                port: Some(443),
                types: vec!["connect".into(), "close".into()],
                limit: 7,
            },
        };
        let text = params(&q);
        let map: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(&text).unwrap();
        let back = crate::api::history::question(&map, now).unwrap();
        assert_eq!(back.filter, q.filter);
        let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.unwrap().timestamp_millis();
        assert_eq!(ms(back.window.since), ms(q.window.since));
        assert_eq!(ms(back.window.until), ms(q.window.until));
    }
}
