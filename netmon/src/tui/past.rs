//! `netmon top`'s time cursor: a window of the past that the Processes, Connections
//! and Alerts views show instead of the live stream (`[` back, `]` forward, `--since`),
//! filled from each agent's history (`/api/v1/history/flows`: the per-minute and
//! hourly flow totals, and `/api/v1/history/alerts`). Pure: a window in, the agents'
//! answers in, rows out; `tui/source/agent.rs` asks, `tui/app.rs` holds one [`Past`].
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::app::{Row, SortKey};
use crate::{
    escape,
    query::{AlertRow, FlowRow},
};

/// How far one `[` or `]` moves the cursor, and how long the window before it is.
pub const STEP_MIN: i64 = 5;
/// Rows asked of each agent per kind (the biggest flows, the newest alerts).
pub const LIMIT: usize = 1000;
/// Longest text of one cell from an agent's history (hostile names included).
const MAX_CELL: usize = 64;

/// The window the views show: `[since, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Window {
    /// The [`STEP_MIN`] minutes from `since` on.
    pub fn starting(since: DateTime<Utc>) -> Window {
        Window {
            since,
            until: since + chrono::Duration::minutes(STEP_MIN),
        }
    }

    fn seconds(&self) -> f64 {
        ((self.until - self.since).num_milliseconds() as f64 / 1000.0).max(1.0)
    }

    /// `10:05–10:10 UTC` (with the date when it is not today's).
    pub fn label(&self, now: DateTime<Utc>) -> String {
        let day = if self.until.date_naive() == now.date_naive() {
            String::new()
        } else {
            format!("{} ", self.until.format("%Y-%m-%d"))
        };
        format!(
            "{day}{}–{} UTC",
            self.since.format("%H:%M"),
            self.until.format("%H:%M")
        )
    }
}

/// One agent's answer for a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub flows: Vec<FlowRow>,
    pub alerts: Vec<AlertRow>,
}

/// The window on screen and what the agents answered for it so far.
#[derive(Clone, Debug)]
pub struct Past {
    pub window: Window,
    /// Per agent: its answer, why it has none, or nothing yet.
    answers: Vec<Option<Result<Answer, String>>>,
}

impl Past {
    pub fn new(window: Window, agents: usize) -> Past {
        Past {
            window,
            answers: vec![None; agents],
        }
    }

    /// An agent's answer; one for another window (the cursor moved on) is dropped.
    pub fn answer(&mut self, agent: usize, window: Window, answer: Result<Answer, String>) {
        if window == self.window
            && let Some(slot) = self.answers.get_mut(agent)
        {
            *slot = Some(answer);
        }
    }

    /// The footer's words: the window and how the agents answered.
    pub fn status(&self, labels: &[String], now: DateTime<Utc>) -> String {
        let waiting = self.answers.iter().filter(|a| a.is_none()).count();
        let mut s = format!("HISTORY {}", self.window.label(now));
        if waiting > 0 {
            s.push_str(&format!(" (asking {waiting})"));
        }
        for (i, a) in self.answers.iter().enumerate() {
            if let Some(Err(why)) = a {
                let who = labels.get(i).map_or("?", String::as_str);
                s.push_str(&format!("; {}: {}", clean(who, MAX_CELL), clean(why, 120)));
            }
        }
        s.push_str(" [ ]:move ]:to live");
        s
    }

    fn answered(&self) -> impl Iterator<Item = (usize, &Answer)> {
        self.answers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, a.as_ref()?.as_ref().ok()?)))
    }

    /// Processes view: per agent and process (name, executable, user) in the window.
    pub fn process_rows(&self, hosts: &[String]) -> Vec<Row> {
        #[derive(Default)]
        struct Acc {
            conns: u64,
            peers: BTreeSet<String>,
            sent: u64,
            received: u64,
        }
        let mut by: BTreeMap<(usize, String, String, String), Acc> = BTreeMap::new();
        for (agent, answer) in self.answered() {
            for f in &answer.flows {
                let acc = by
                    .entry((agent, f.comm.clone(), f.exe.clone(), f.user.clone()))
                    .or_default();
                acc.conns += f.connections;
                acc.peers.insert(f.remote_ip.clone());
                acc.sent += f.bytes_sent;
                acc.received += f.bytes_received;
            }
        }
        let secs = self.window.seconds();
        by.into_iter()
            .map(|((agent, comm, exe, user), acc)| {
                let name = if comm.is_empty() { exe.as_str() } else { &comm };
                Row::new(vec![
                    cell(name),
                    cell("-"),
                    cell(&user),
                    cell(""),
                    num(acc.conns),
                    num(acc.peers.len() as u64),
                    rate(acc.sent as f64 / secs),
                    rate(acc.received as f64 / secs),
                    cell(host(hosts, agent)),
                ])
            })
            .collect()
    }

    /// Connections view: the window's flow totals, one row per flow key.
    pub fn connection_rows(&self, hosts: &[String]) -> Vec<Row> {
        let mut rows = Vec::new();
        for (agent, answer) in self.answered() {
            for f in &answer.flows {
                let remote = if f.remote_name.is_empty() {
                    endpoint(&f.remote_ip, f.remote_port)
                } else {
                    format!(
                        "{} ({})",
                        endpoint(&f.remote_ip, f.remote_port),
                        f.remote_name
                    )
                };
                let process = if f.comm.is_empty() { &f.exe } else { &f.comm };
                let active = (f.last - f.first).num_seconds() + 60;
                rows.push(Row::new(vec![
                    cell(&f.proto),
                    cell(&endpoint(&f.local_ip, f.local_port)),
                    cell(&remote),
                    cell(&format!("{} conn", f.connections)),
                    cell(process),
                    bytes(f.bytes_sent),
                    bytes(f.bytes_received),
                    (super::app::duration(active), SortKey::Num(active as f64)),
                    cell(host(hosts, agent)),
                ]));
            }
        }
        rows
    }

    /// Alerts view: the window's alerts.
    pub fn alert_rows(&self, hosts: &[String]) -> Vec<Row> {
        let mut rows = Vec::new();
        for (agent, answer) in self.answered() {
            for a in &answer.alerts {
                rows.push(Row::new(vec![
                    (
                        a.ts.format("%H:%M:%S").to_string(),
                        SortKey::Num(a.ts.timestamp_millis() as f64),
                    ),
                    cell(&a.severity),
                    cell(&a.rule),
                    cell(&a.summary),
                    cell(a.comm.as_deref().unwrap_or("")),
                    cell(host(hosts, agent)),
                ]));
            }
        }
        rows
    }

    /// Rows of a view the cursor applies to, before filter and sort.
    pub fn count(&self, which: Which) -> usize {
        match which {
            Which::Processes => self
                .answered()
                .flat_map(|(agent, a)| {
                    a.flows
                        .iter()
                        .map(move |f| (agent, &f.comm, &f.exe, &f.user))
                })
                .collect::<BTreeSet<_>>()
                .len(),
            Which::Connections | Which::Alerts => self
                .answered()
                .map(|(_, a)| match which {
                    Which::Alerts => a.alerts.len(),
                    _ => a.flows.len(),
                })
                .sum(),
        }
    }
}

/// The views the cursor moves back in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Processes,
    Connections,
    Alerts,
}

fn host(hosts: &[String], agent: usize) -> &str {
    hosts.get(agent).map_or("", String::as_str)
}

/// Cut to `max` characters and escaped for the terminal.
fn clean(s: &str, max: usize) -> String {
    escape::for_terminal(&escape::bounded(s, max)).into_owned()
}

fn cell(s: &str) -> (String, SortKey) {
    let c = clean(s, MAX_CELL);
    let k = SortKey::Text(c.to_lowercase());
    (c, k)
}

fn num(n: u64) -> (String, SortKey) {
    (n.to_string(), SortKey::Num(n as f64))
}

fn bytes(b: u64) -> (String, SortKey) {
    (super::app::bytes(b as f64), SortKey::Num(b as f64))
}

fn rate(b: f64) -> (String, SortKey) {
    (format!("{}/s", super::app::bytes(b)), SortKey::Num(b))
}

/// `ip:port`, `[v6]:port`, or the address alone for port 0 (not kept).
fn endpoint(ip: &str, port: u16) -> String {
    match (port, ip.contains(':')) {
        (0, _) => ip.to_owned(),
        (p, true) => format!("[{ip}]:{p}"),
        (p, false) => format!("{ip}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::{
        app::{Key, Msg, View},
        ui::testing::*,
    };

    fn flow(comm: &str, remote: &str, port: u16, name: &str, sent: u64) -> FlowRow {
        let at: DateTime<Utc> = "2026-12-02T04:01:00Z".parse().unwrap();
        FlowRow {
            comm: comm.into(),
            exe: format!("/usr/bin/{comm}"),
            user: "alice".into(),
            proto: "tcp".into(),
            direction: "outbound".into(),
            local_ip: "10.0.0.5".into(),
            local_port: 0,
            remote_ip: remote.into(),
            remote_port: port,
            remote_name: name.into(),
            connections: 3,
            bytes_sent: sent,
            bytes_received: 2048,
            packets_sent: 3,
            packets_received: 3,
            first: at,
            last: at,
        }
    }

    #[test]
    fn brackets_move_a_window_that_the_agents_fill_and_right_past_now_is_live() {
        let mut app = app_with(&all());
        let now = app.now();
        app.view = View::Connections;
        assert_eq!(app.take_history_request(), None);
        app.key(Key::Char('['));
        let w = app.take_history_request().expect("a window to ask for");
        // The last five minutes first.
        assert_eq!(w.since, now - chrono::Duration::minutes(STEP_MIN));
        assert_eq!(w.until, now);
        // Asked once.
        assert_eq!(app.take_history_request(), None);
        let s = screen(&app, View::Connections, 120, 24);
        assert!(
            contains(&s, "HISTORY") && contains(&s, "(asking 1)"),
            "{s:#?}"
        );
        // The live flows are not shown in the past.
        assert!(!contains(&s, "wget"), "{s:#?}");
        app.handle(Msg::Past {
            agent: 0,
            window: w,
            answer: Ok(Answer {
                flows: vec![
                    flow("rsync", "10.0.0.77", 873, "backup.lan", 5_000_000),
                    flow("ssh\u{1b}[2J", "10.0.0.78", 22, "", 10),
                ],
                alerts: vec![],
            }),
        });
        app.refresh();
        let s = screen(&app, View::Connections, 120, 24);
        let row = line_of(&s, "rsync").expect("the history's flow");
        assert!(
            s[row].contains("10.0.0.77:873 (backup.lan)") && s[row].contains("3 conn"),
            "{s:#?}"
        );
        assert!(s[row].contains("4.8M"), "{s:#?}");
        assert!(!contains(&s, "\u{1b}"), "escaped: {s:#?}");
        assert!(!contains(&s, "asking"), "{s:#?}");
        // Processes: one row per process over the window, rates over its 5 minutes.
        app.view = View::Processes;
        app.refresh();
        let s = screen(&app, View::Processes, 120, 24);
        let row = line_of(&s, "rsync").expect("rsync's process row");
        assert!(s[row].contains("16.3K/s"), "{s:#?}");
        // An answer for another window (the cursor moved on) is dropped.
        app.key(Key::Char('['));
        let w2 = app.take_history_request().unwrap();
        assert_eq!(w2.until, w.since);
        app.handle(Msg::Past {
            agent: 0,
            window: w,
            answer: Ok(Answer::default()),
        });
        app.handle(Msg::Past {
            agent: 0,
            window: w2,
            answer: Err("this agent keeps no history".into()),
        });
        app.refresh();
        let s = screen(&app, View::Processes, 120, 24);
        assert!(contains(&s, "keeps no history"), "{s:#?}");
        // Forward: the last five minutes again; once more would reach past now: live
        // again (and nothing to ask).
        app.key(Key::Char(']'));
        assert_eq!(app.take_history_request(), Some(w));
        app.key(Key::Char(']'));
        assert!(app.past.is_none());
        assert_eq!(app.take_history_request(), None);
        app.view = View::Connections;
        app.refresh();
        let s = screen(&app, View::Connections, 120, 24);
        assert!(contains(&s, "wget") && !contains(&s, "HISTORY"), "{s:#?}");
    }

    #[test]
    fn in_process_the_bracket_says_why_there_is_no_history() {
        let mut app = app_with(&all());
        app.no_history = Some("no history in-process".into());
        app.view = View::Connections;
        app.key(Key::Char('['));
        assert!(app.past.is_none());
        assert_eq!(app.take_history_request(), None);
        let s = screen(&app, View::Connections, 120, 24);
        assert!(contains(&s, "no history in-process"), "{s:#?}");
        app.key(Key::Char('s'));
        let s = screen(&app, View::Connections, 120, 24);
        assert!(!contains(&s, "no history in-process"), "{s:#?}");
    }
}
