//! `netmon report --format csv`: one table as CSV (the `csv` crate: a header row,
//! RFC 4180 quoting, UTF-8). Every text cell goes through [`cell`]: control characters
//! shown as `\xNN` (newlines kept, quoted), and a cell a spreadsheet would read as a
//! formula (starting with `=`, `+`, `-`, `@`, tab or CR) prefixed with `'`.
use std::{borrow::Cow, collections::BTreeMap};

use super::{Data, visible};

/// Which table `--table` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// Every connection (the default).
    Connections,
    /// Connections summed per process and remote endpoint.
    Flows,
    /// The scanner's host inventory, one row per host and port.
    Hosts,
    Alerts,
    /// DNS names by query count.
    Dns,
}

/// A text cell made safe for spreadsheets.
pub fn cell(s: &str) -> Cow<'_, str> {
    let s = visible(s, true);
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Process, protocol, remote address and port.
type FlowKey<'a> = (&'a str, &'a str, &'a str, u16);
/// Connections, bytes sent and received, and the first connection (its name and geo).
type FlowSum<'a> = (u64, u64, u64, &'a super::Connection);

pub fn render(d: &Data, table: Table) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let mut row = |cells: Vec<String>| w.write_record(cells.iter().map(|c| cell(c).into_owned()));
    match table {
        Table::Connections => {
            row(
                "proto,state,local_ip,local_port,remote_ip,remote_port,remote_name,country,city,asn,as_org,scope,process,pid,exe,user,connections,bytes_sent,bytes_received,first,last"
                    .split(',').map(str::to_owned).collect(),
            )?;
            for c in &d.connections {
                row(vec![
                    c.proto.clone(),
                    c.state.clone(),
                    c.local_ip.clone(),
                    c.local_port.to_string(),
                    c.remote_ip.clone(),
                    c.remote_port.to_string(),
                    c.remote_name.clone(),
                    opt(c.geo.country.as_ref()),
                    opt(c.geo.city.as_ref()),
                    opt(c.geo.asn),
                    opt(c.geo.as_org.as_ref()),
                    c.geo.scope.clone(),
                    c.comm.clone(),
                    opt(c.pid),
                    c.exe.clone(),
                    c.user.clone(),
                    c.connections.to_string(),
                    c.bytes_sent.to_string(),
                    c.bytes_received.to_string(),
                    ts(c.first),
                    ts(c.last),
                ])?;
            }
        }
        Table::Flows => {
            row(
                "process,proto,remote_ip,remote_port,remote_name,country,asn,as_org,connections,bytes_sent,bytes_received"
                    .split(',').map(str::to_owned).collect(),
            )?;
            let mut m: BTreeMap<FlowKey, FlowSum> = BTreeMap::new();
            for c in &d.connections {
                let e = m
                    .entry((&c.comm, &c.proto, &c.remote_ip, c.remote_port))
                    .or_insert((0, 0, 0, c));
                e.0 += c.connections.max(1);
                e.1 += c.bytes_sent;
                e.2 += c.bytes_received;
            }
            for ((comm, proto, ip, port), (n, tx, rx, c)) in m {
                row(vec![
                    comm.into(),
                    proto.into(),
                    ip.into(),
                    port.to_string(),
                    c.remote_name.clone(),
                    opt(c.geo.country.as_ref()),
                    opt(c.geo.asn),
                    opt(c.geo.as_org.as_ref()),
                    n.to_string(),
                    tx.to_string(),
                    rx.to_string(),
                ])?;
            }
        }
        Table::Hosts => {
            row(
                "ip,state,name,mac,last_seen,proto,port,port_state,service,version"
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            )?;
            for h in &d.hosts {
                let base = vec![
                    h.ip.clone(),
                    h.state.clone(),
                    opt(h.name.as_ref()),
                    opt(h.mac.as_ref()),
                    ts(h.last_seen),
                ];
                if h.ports.is_empty() {
                    let mut r = base.clone();
                    r.extend(std::iter::repeat_n(String::new(), 5));
                    row(r)?;
                }
                for p in &h.ports {
                    let mut r = base.clone();
                    r.extend([
                        p.proto.clone(),
                        p.port.to_string(),
                        p.state.clone(),
                        opt(p.service.as_ref()),
                        opt(p.version.as_ref()),
                    ]);
                    row(r)?;
                }
            }
        }
        Table::Alerts => {
            row("ts,severity,rule,summary,recommendation,process,hits"
                .split(',')
                .map(str::to_owned)
                .collect())?;
            for a in &d.alerts {
                row(vec![
                    ts(a.ts),
                    a.severity.clone(),
                    a.rule.clone(),
                    a.summary.clone(),
                    a.recommendation.clone(),
                    a.process.clone(),
                    a.hits.to_string(),
                ])?;
            }
        }
        Table::Dns => {
            row(vec!["name".into(), "queries".into(), "processes".into()])?;
            for n in &d.dns {
                row(vec![
                    n.name.clone(),
                    n.queries.to_string(),
                    n.processes.clone(),
                ])?;
            }
        }
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_neutralised_and_read_back() {
        let d = crate::report::tests::sample();
        let out = render(&d, Table::Connections).unwrap();
        let mut r = csv::Reader::from_reader(&out[..]);
        let header = r.headers().unwrap().clone();
        let process = header.iter().position(|h| h == "process").unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][process], "<script>alert(1)</script>");
        assert_eq!(&rows[1][process], "'=cmd|' /C calc'!A0");
        // Commas, quotes and a newline survive; the BEL does not.
        assert_eq!(&rows[2][process], "a,b \"q\"\nline\\x07");
        assert_eq!(
            &rows[0][header.iter().position(|h| h == "country").unwrap()],
            "JP"
        );
        assert_eq!(cell("-1+1"), "'-1+1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("plain"), "plain");
        for t in [Table::Flows, Table::Hosts, Table::Alerts, Table::Dns] {
            let out = render(&d, t).unwrap();
            let mut r = csv::Reader::from_reader(&out[..]);
            assert!(!r.headers().unwrap().is_empty());
            assert!(r.records().all(|r| r.is_ok()));
        }
    }
}
