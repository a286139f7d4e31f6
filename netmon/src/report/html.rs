//! The HTML report: one self-contained page (maud templates, escaping on by default),
//! styles and charts inline (inline SVG), nothing fetched from anywhere: a strict
//! Content-Security-Policy (`default-src 'none'`) allows only this page's own style and
//! its one small sorting script, by hash. The page reads fine without the script (the
//! tables come sorted by their most useful column). Strings from the system (process
//! names, DNS names, banners) are escaped by maud; their control characters are shown
//! as `\xNN` by [`super::visible`].
use base64::Engine as _;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use super::{Data, bytes, visible};
use crate::geoip::Geo;

/// Rows of the connections table (the page stays usable; the CSV has every row).
pub const MAX_CONNECTION_ROWS: usize = 10_000;

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:16px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c8cdd8}
main{padding:8px 24px 48px;max-width:1400px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:16px 0;padding:12px 16px}
h2{font-size:16px;margin:4px 0 10px}
nav a{color:#c8cdd8;margin-right:12px;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0;cursor:pointer;user-select:none}
td.n,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr{content-visibility:auto;contain-intrinsic-size:auto 22px}
.wrap{max-height:640px;overflow:auto}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #dde1e8;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}
.sev{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;color:#fff;background:#6b7280}
.sev-critical{background:#7f1d1d}.sev-high{background:#c2410c}.sev-medium{background:#b45309}.sev-low{background:#2563eb}
.alert{border-left:4px solid #6b7280;padding:6px 10px;margin:8px 0;background:#fafbfc}
.alert.sev-critical,.alert.sev-high{border-left-color:#c2410c;background:#fff7ed}
.alert p{margin:2px 0}.rec{color:#334155}
.muted{color:#6b7280}.scope{color:#6b7280;font-style:italic}
svg text{font:11px system-ui,sans-serif;fill:#475569}
footer{font-size:12px;color:#6b7280}
"#;

const SCRIPT: &str = r#"document.querySelectorAll("table.sortable").forEach(function(t){t.querySelectorAll("th").forEach(function(h,i){h.tabIndex=0;h.title="sort";h.addEventListener("click",function(){var b=t.tBodies[0],r=Array.prototype.slice.call(b.rows),d=h.dataset.dir==="a"?-1:1,n=h.classList.contains("num");h.dataset.dir=d===1?"a":"d";var k=r.map(function(e){var c=e.cells[i],v=c?(c.dataset.v||c.textContent):"";return[n?+v:v,e]});k.sort(function(x,y){return x[0]<y[0]?-d:x[0]>y[0]?d:0});var f=document.createDocumentFragment();k.forEach(function(e){f.appendChild(e[1])});b.appendChild(f)})})});"#;

fn hash(s: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s.as_bytes()))
    )
}

/// The page's Content-Security-Policy: nothing from anywhere, this style and script only.
pub fn csp() -> String {
    format!(
        "default-src 'none'; style-src {}; script-src {}; img-src data:; base-uri 'none'; form-action 'none'",
        hash(STYLE),
        hash(SCRIPT)
    )
}

/// Escaped by maud; control characters made visible first.
fn t(s: &str) -> String {
    visible(s, false).into_owned()
}

fn time(ts: Option<DateTime<Utc>>) -> String {
    ts.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn country(g: &Geo) -> Markup {
    html! {
        @if let Some(c) = &g.country {
            (t(c)) @if let Some(city) = &g.city { ", " (t(city)) }
        } @else if !g.scope.is_empty() && g.scope != "public" {
            span.scope { (g.scope) }
        }
    }
}

fn asn(g: &Geo) -> Markup {
    html! {
        @if let Some(a) = g.asn { "AS" (a) " " }
        @if let Some(o) = &g.as_org { (t(o)) }
    }
}

fn num(n: u64) -> Markup {
    html! { td.n data-v=(n) { (n) } }
}

fn size(n: u64) -> Markup {
    html! { td.n data-v=(n) { (bytes(n)) } }
}

/// The whole page.
pub fn render(d: &Data) -> String {
    let csp = csp();
    let title = format!("netmon report — {}", t(&d.host));
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(csp);
                meta name="referrer" content="no-referrer";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (title) }
                    p { (d.period()) " · source: " (t(&d.source)) " · generated " (time(Some(d.generated))) " UTC" }
                    nav {
                        a href="#summary" { "Summary" } a href="#alerts" { "Alerts" }
                        a href="#connections" { "Connections" } a href="#processes" { "Processes" }
                        a href="#remote-hosts" { "Remote hosts" } a href="#timeline" { "Over time" }
                        a href="#listeners" { "Listening ports" } a href="#inventory" { "Host inventory" }
                        a href="#dns" { "DNS" }
                    }
                }
                main {
                    (summary(d)) (alerts(d)) (connections(d)) (processes(d)) (remote_hosts(d))
                    (timeline(d)) (listeners(d)) (inventory(d)) (dns(d)) (sources(d))
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    page.into_string()
}

fn summary(d: &Data) -> Markup {
    let total: u64 = d.connections.iter().map(|c| c.connections.max(1)).sum();
    let bytes_total: u64 = d
        .connections
        .iter()
        .map(|c| c.bytes_sent + c.bytes_received)
        .sum();
    let remotes: std::collections::BTreeSet<&str> = d
        .connections
        .iter()
        .filter(|c| c.geo.scope == "public" || c.geo.scope.is_empty())
        .map(|c| c.remote_ip.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    html! {
        section #summary {
            h2 { "Summary" }
            div.cards {
                div.card { b { (total) } "connections" }
                div.card { b { (d.connections.len()) } "distinct connections" }
                div.card { b { (bytes(bytes_total)) } "transferred" }
                div.card { b { (remotes.len()) } "public remote addresses" }
                div.card { b { (d.listeners.len()) } "listening sockets" }
                div.card { b { (d.alerts.len()) } "alerts" }
                @for (sev, n) in d.alerts_by_severity() {
                    @if n > 0 { div.card { b { (n) } span class={"sev sev-" (sev)} { (sev) } } }
                }
            }
            @for note in &d.notes { p.muted { (t(note)) } }
        }
    }
}

fn alerts(d: &Data) -> Markup {
    html! {
        section #alerts {
            h2 { "Alerts (" (d.alerts.len()) ")" }
            @if d.alerts.is_empty() { p.muted { "No rule raised an alert." } }
            @for a in &d.alerts {
                div class={"alert sev-" (t(&a.severity))} {
                    p {
                        span class={"sev sev-" (t(&a.severity))} { (t(&a.severity)) } " "
                        b { (t(&a.rule)) } " " (t(&a.summary))
                        @if !a.process.is_empty() { " — " (t(&a.process)) }
                        @if a.hits > 1 { span.muted { " (" (a.hits) " hits)" } }
                        @if a.ts.is_some() { span.muted { " " (time(a.ts)) } }
                    }
                    @if !a.recommendation.is_empty() { p.rec { "Recommendation: " (t(&a.recommendation)) } }
                }
            }
        }
    }
}

fn connections(d: &Data) -> Markup {
    let shown = d.connections.len().min(MAX_CONNECTION_ROWS);
    html! {
        section #connections {
            h2 { "Connections (" (d.connections.len()) ")" }
            @if shown < d.connections.len() {
                p.muted { "The first " (shown) " rows, by traffic; `--format csv` has every row." }
            }
            p.muted { "Click a column heading to sort." }
            div.wrap {
                table.sortable {
                    thead { tr {
                        th { "Process" } th.num { "PID" } th { "User" } th { "Proto" } th { "State" }
                        th { "Local" } th { "Remote" } th { "Name" } th { "Country" } th { "ASN" }
                        th.num { "Conns" } th.num { "Sent" } th.num { "Received" } th { "Last" }
                    } }
                    tbody {
                        @for c in &d.connections[..shown] {
                            tr {
                                td { (t(&c.comm)) }
                                td.n { @if let Some(p) = c.pid { (p) } }
                                td { (t(&c.user)) }
                                td { (t(&c.proto)) }
                                td { (t(&c.state)) }
                                td { (t(&c.local_ip)) ":" (c.local_port) }
                                td { (t(&c.remote_ip)) ":" (c.remote_port) }
                                td { (t(&c.remote_name)) }
                                td { (country(&c.geo)) }
                                td { (asn(&c.geo)) }
                                (num(c.connections)) (size(c.bytes_sent)) (size(c.bytes_received))
                                td { (time(c.last)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A horizontal bar as inline SVG (no style attribute: the CSP forbids them).
fn bar(v: u64, max: u64) -> Markup {
    let w = (v * 120).checked_div(max).map_or(0, |w| w.max(1));
    html! { svg width="122" height="10" role="img" { rect x="0" y="1" width=(w) height="8" fill="#3b82f6" {} } }
}

fn processes(d: &Data) -> Markup {
    let top = d.top_processes(20);
    let max = top.first().map_or(0, |p| p.connections);
    html! {
        section #processes {
            h2 { "Top processes" }
            table.sortable {
                thead { tr { th { "Process" } th.num { "Connections" } th { "" } th.num { "Traffic" } th.num { "Remote addresses" } } }
                tbody { @for p in &top { tr {
                    td { (t(&p.comm)) } (num(p.connections)) td { (bar(p.connections, max)) } (size(p.bytes)) (num(p.remotes as u64))
                } } }
            }
        }
    }
}

fn remote_hosts(d: &Data) -> Markup {
    let top = d.top_hosts(25);
    html! {
        section #remote-hosts {
            h2 { "Top remote hosts" }
            table.sortable {
                thead { tr { th { "Address" } th { "Name" } th { "Country" } th { "ASN" } th.num { "Connections" } th.num { "Traffic" } th { "Processes" } } }
                tbody { @for h in &top { tr {
                    td { (t(&h.ip)) } td { (t(&h.name)) } td { (country(&h.geo)) } td { (asn(&h.geo)) }
                    (num(h.connections)) (size(h.bytes)) td { (t(&h.processes)) }
                } } }
            }
        }
    }
}

fn timeline(d: &Data) -> Markup {
    const W: u64 = 900;
    const H: u64 = 160;
    let n = d.timeline.len() as u64;
    let max = d.timeline.iter().map(|b| b.connections).max().unwrap_or(0);
    html! {
        section #timeline {
            h2 { "Connections over time" }
            @if n == 0 {
                p.muted { "A snapshot is one point in time; a report over the history (`--since 24h`) charts it." }
            } @else {
                svg width=(W + 60) height=(H + 40) viewBox={"0 0 " (W + 60) " " (H + 40)} role="img" aria-label="connections over time" {
                    text x="0" y="12" { (max) }
                    text x="0" y=(H + 8) { "0" }
                    line x1="40" y1=(H + 10) x2=(W + 40) y2=(H + 10) stroke="#94a3b8" {}
                    @for (i, b) in d.timeline.iter().enumerate() {
                        @let bw = W / n;
                        @let h = (b.connections * H).checked_div(max).unwrap_or(0);
                        rect x=(40 + i as u64 * bw) y=(H + 10 - h) width=(bw.saturating_sub(1).max(1)) height=(h) fill="#3b82f6" {
                            title { (time(Some(b.start))) ": " (b.connections) " connections" }
                        }
                    }
                    text x="40" y=(H + 28) { (time(d.timeline.first().map(|b| b.start))) }
                    text x=(W + 40) y=(H + 28) text-anchor="end" { (time(d.timeline.last().map(|b| b.start))) }
                }
            }
        }
    }
}

fn listeners(d: &Data) -> Markup {
    html! {
        section #listeners {
            h2 { "Listening ports (" (d.listeners.len()) ")" }
            table.sortable {
                thead { tr { th { "Proto" } th { "Address" } th.num { "Port" } th { "Processes" } th { "Risk" } } }
                tbody { @for l in &d.listeners { tr {
                    td { (t(&l.proto)) } td { (t(&l.ip)) } (num(l.port.into())) td { (t(&l.processes)) }
                    td { @if l.risk.is_empty() { span.muted { "—" } } @else {
                        @let sev = l.risk.split(':').next().unwrap_or("");
                        span class={"sev sev-" (t(sev))} { (t(&l.risk)) }
                    } }
                } } }
            }
        }
    }
}

fn inventory(d: &Data) -> Markup {
    html! {
        section #inventory {
            h2 { "Host inventory (" (d.hosts.len()) ")" }
            @if d.hosts.is_empty() { p.muted { "The scanner has found no host (it runs inside `netmon run` once `[scan]` allows a network)." } }
            @else {
                table.sortable {
                    thead { tr { th { "Address" } th { "State" } th { "Name" } th { "MAC" } th { "Last seen" } th { "Open ports" } } }
                    tbody { @for h in &d.hosts { tr {
                        td { (t(&h.ip)) } td { (t(&h.state)) } td { (t(h.name.as_deref().unwrap_or(""))) }
                        td { (t(h.mac.as_deref().unwrap_or(""))) } td { (time(h.last_seen)) }
                        td { @for p in h.ports.iter().filter(|p| p.state == "open") {
                            (p.port) "/" (t(&p.proto))
                            @if let Some(s) = &p.service { " " (t(s)) }
                            @if let Some(v) = &p.version { " (" (t(v)) ")" }
                            br;
                        } }
                    } } }
                }
            }
        }
    }
}

fn dns(d: &Data) -> Markup {
    html! {
        section #dns {
            h2 { "DNS: top names" }
            @if d.dns.is_empty() { p.muted { "No DNS query in this report's source (a snapshot has none)." } }
            @else {
                table.sortable {
                    thead { tr { th { "Name" } th.num { "Queries" } th { "Processes" } } }
                    tbody { @for n in &d.dns { tr { td { (t(&n.name)) } (num(n.queries)) td { (t(&n.processes)) } } } }
                }
            }
        }
    }
}

fn sources(d: &Data) -> Markup {
    html! {
        section #sources {
            h2 { "Sources" }
            footer {
                p { "Data: " (t(&d.source)) ". Generated by netmon " (env!("CARGO_PKG_VERSION")) "." }
                @if d.databases.is_empty() { p { "Geolocation: none (configure `[geoip] city`/`asn`, or install tor-geoipdb)." } }
                @for db in &d.databases {
                    p { "Geolocation: " (t(&db.kind)) " (" (t(&db.path)) "), built " (time(db.built)) ". " (t(&db.attribution)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_escaped_and_the_page_parses() {
        let d = crate::report::tests::sample();
        let page = render(&d);
        assert!(!page.contains("<script>alert"), "raw script in the page");
        assert!(!page.contains("<img src=x"));
        assert!(!page.contains("<svg onload"));
        assert!(!page.contains('\u{7}'));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let doc = scraper::Html::parse_document(&page);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        let sel = |s| scraper::Selector::parse(s).unwrap();
        // The only scripts are ours: one, whose hash the CSP names.
        assert_eq!(doc.select(&sel("script")).count(), 1);
        let meta = doc
            .select(&sel("meta[http-equiv=Content-Security-Policy]"))
            .next()
            .unwrap();
        let policy = meta.value().attr("content").unwrap();
        assert!(policy.starts_with("default-src 'none'"));
        let script: String = doc.select(&sel("script")).next().unwrap().text().collect();
        assert!(policy.contains(&hash(&script)));
        let style: String = doc.select(&sel("style")).next().unwrap().text().collect();
        assert!(policy.contains(&hash(&style)));
        assert!(doc.select(&sel("[style]")).next().is_none());
        let text: String = doc.root_element().text().collect();
        assert!(text.contains("<script>alert(1)</script>"));
        assert!(text.contains("nc listens on 4444"));
        assert!(text.contains("Recommendation: Check it & stop it"));
        assert!(text.contains("AS64500 AS <i>Org</i>"));
        assert!(text.contains("a,b \"q\" line\\x07") || text.contains("line\\x07"));
        assert_eq!(doc.select(&sel("#timeline rect")).count(), 24);
        assert_eq!(doc.select(&sel("#connections tbody tr")).count(), 3);
    }
}
