//! `netmon top`'s state: what every view shows, built from the event stream alone
//! (the same for the in-process pipeline and for agents), and the UI's own state
//! (view, sort, filter, pause, scroll). Pure: updated by [`App::event`], [`App::tick`]
//! and [`App::key`]; no terminal, no I/O. Every collection is capped ([`Caps`]), so
//! memory stays bounded whatever the agents send.
//!
//! Every string that came from outside (process names, DNS names, banners) is cut and
//! escaped with `escape.rs` when it becomes a cell, never later.
//!
//! Over 600 lines: one pure state (`App`: every view's rows, the caps, the keys) and
//! the cell formatters its views share; a view is a few match arms on that one struct,
//! so splitting per view would spread one struct's invariants over files. The views'
//! tests in `tui/ui*.rs` drive it through `App::event`/`App::key`, as the tmux suite does.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use chrono::{DateTime, Utc};

use super::past::{self, Past, Which, Window};
use crate::{
    escape,
    event::{Connection, Event, EventBody, ProcessInfo, Proto, Severity},
};

/// How many rows each view keeps at most; past a cap the oldest go first.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub flows: usize,
    pub processes: usize,
    pub hosts: usize,
    pub dns_names: usize,
    pub alerts: usize,
    /// Seconds of sparkline history per agent.
    pub history_s: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            flows: 10_000,
            processes: 5_000,
            hosts: 4_096,
            dns_names: 2_000,
            alerts: 1_000,
            history_s: 600,
        }
    }
}

/// Seconds a closed flow stays on the Connections view.
const CLOSED_KEPT_S: i64 = 10;
/// Longest text of one cell from a hostile source.
const MAX_CELL: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Processes,
    Connections,
    Hosts,
    Dns,
    Alerts,
    Interfaces,
}

impl View {
    pub const ALL: [View; 7] = [
        View::Overview,
        View::Processes,
        View::Connections,
        View::Hosts,
        View::Dns,
        View::Alerts,
        View::Interfaces,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Processes => "Processes",
            View::Connections => "Connections",
            View::Hosts => "Hosts",
            View::Dns => "DNS",
            View::Alerts => "Alerts",
            View::Interfaces => "Interfaces",
        }
    }

    pub(super) fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// The columns of the view's table.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            View::Overview => &[
                "agent", "status", "host", "backend", "uptime", "events", "lost", "conn/s",
                "alerts",
            ],
            View::Processes => &[
                "process",
                "pid",
                "user",
                "container",
                "conns",
                "peers",
                "sent/s",
                "recv/s",
                "host",
            ],
            View::Connections => &[
                "proto", "local", "remote", "state", "process", "sent", "recv", "age", "host",
            ],
            View::Hosts => &[
                "addr",
                "state",
                "mac",
                "name",
                "open ports",
                "last change",
                "host",
            ],
            View::Dns => &[
                "process", "queries", "nxdomain", "top name", "names", "host",
            ],
            View::Alerts => &["time", "severity", "rule", "summary", "process", "host"],
            View::Interfaces => &["interface", "rx/s", "tx/s", "rx total", "tx total"],
        }
    }
}

/// A connection state of one source, as the Overview shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentStatus {
    Connecting,
    Live,
    /// Why it cannot be reached (one line), and that it retries.
    Unreachable(String),
    /// It fell behind and the agent skipped events.
    Lagged(u64),
}

/// What the source layer tells the app.
#[derive(Clone, Debug)]
pub enum Msg {
    Event {
        agent: usize,
        event: Arc<Event>,
    },
    Status {
        agent: usize,
        status: AgentStatus,
    },
    /// Per-interface byte counters read locally (`/proc/net/dev`).
    Interfaces(Vec<IfaceCounters>),
    /// An agent's connections per minute over the last hour, from its history.
    Timeline {
        agent: usize,
        rows: Vec<(DateTime<Utc>, u64)>,
    },
    /// An agent's history for a window of the time cursor (or why it has none).
    Past {
        agent: usize,
        window: Window,
        answer: Result<past::Answer, String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct IfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Per agent: the Overview's figures and sparklines (one bucket per second).
#[derive(Clone, Debug)]
pub struct Agent {
    pub label: String,
    pub status: AgentStatus,
    pub host: Option<String>,
    pub backend: Option<String>,
    pub uptime_s: Option<f64>,
    pub events: u64,
    pub lost: u64,
    pub lagged: u64,
    pub alerts: u64,
    /// Newest last: connections, bytes in, bytes out, alerts per second.
    pub conns: VecDeque<u64>,
    pub bytes_in: VecDeque<u64>,
    pub bytes_out: VecDeque<u64>,
    pub alert_rate: VecDeque<u64>,
    cur: [u64; 4],
    /// Connections per minute over the last hour, newest last: the agent's history at
    /// start (`Msg::Timeline`), then the minutes watched.
    pub hour: VecDeque<u64>,
    /// The minute being counted into `hour`, and its connections so far.
    minute: Option<(DateTime<Utc>, u64)>,
}

/// Minutes of the Overview's hour sparkline.
pub const HOUR_MINUTES: usize = 60;

fn minute_of(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).unwrap_or(t)
}

impl Agent {
    fn new(label: String) -> Agent {
        Agent {
            label,
            status: AgentStatus::Connecting,
            host: None,
            backend: None,
            uptime_s: None,
            events: 0,
            lost: 0,
            lagged: 0,
            alerts: 0,
            conns: VecDeque::new(),
            bytes_in: VecDeque::new(),
            bytes_out: VecDeque::new(),
            alert_rate: VecDeque::new(),
            cur: [0; 4],
            hour: VecDeque::new(),
            minute: None,
        }
    }

    /// Counts the last second's connections into the minute of `now`; a new minute
    /// pushes the last one (and a zero for every minute without a tick) into `hour`.
    fn roll_minute(&mut self, now: DateTime<Utc>, conns: u64) {
        let m = minute_of(now);
        match &mut self.minute {
            Some((start, n)) if *start == m => *n += conns,
            Some((start, n)) => {
                let gap = ((m - *start).num_minutes() - 1).clamp(0, HOUR_MINUTES as i64);
                self.hour.push_back(*n);
                self.hour.extend(std::iter::repeat_n(0, gap as usize));
                self.minute = Some((m, conns));
            }
            None => self.minute = Some((m, conns)),
        }
        while self.hour.len() > HOUR_MINUTES {
            self.hour.pop_front();
        }
    }

    /// The agent's history of the last hour (connections per minute, oldest first),
    /// as it was when netmon top started: the minutes before the one being counted.
    fn timeline(&mut self, now: DateTime<Utc>, rows: &[(DateTime<Utc>, u64)]) {
        let current = minute_of(now);
        let mut hour: VecDeque<u64> = VecDeque::with_capacity(HOUR_MINUTES);
        for i in (1..=HOUR_MINUTES as i64).rev() {
            let m = current - chrono::Duration::minutes(i);
            hour.push_back(
                rows.iter()
                    .filter(|(t, _)| minute_of(*t) == m)
                    .map(|(_, n)| n)
                    .sum(),
            );
        }
        // Minutes watched since start: the larger count of the two (the history has
        // what came before netmon top started, netmon top what the history has not
        // committed yet; adding them would count twice).
        let watched = self.hour.len().min(HOUR_MINUTES);
        for (slot, v) in hour
            .iter_mut()
            .rev()
            .zip(self.hour.iter().rev().take(watched))
        {
            *slot = (*slot).max(*v);
        }
        self.hour = hour;
        let so_far: u64 = rows
            .iter()
            .filter(|(t, _)| minute_of(*t) == current)
            .map(|(_, n)| n)
            .sum();
        self.minute = match self.minute {
            Some((m, n)) if m == current => Some((m, n.max(so_far))),
            _ => Some((current, so_far)),
        };
    }

    /// The hour sparkline's points, oldest first: the last [`HOUR_MINUTES`] minutes,
    /// the one being counted last.
    pub fn hour_points(&self) -> Vec<u64> {
        let current = self.minute.map(|(_, n)| n);
        let keep = HOUR_MINUTES - usize::from(current.is_some());
        let skip = self.hour.len().saturating_sub(keep);
        self.hour
            .iter()
            .skip(skip)
            .copied()
            .chain(current)
            .collect()
    }

    fn roll(&mut self, cap: usize) {
        let cur = std::mem::take(&mut self.cur);
        for (q, v) in [
            &mut self.conns,
            &mut self.bytes_in,
            &mut self.bytes_out,
            &mut self.alert_rate,
        ]
        .into_iter()
        .zip(cur)
        {
            q.push_back(v);
            while q.len() > cap {
                q.pop_front();
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProcKey {
    host: Arc<str>,
    pid: u32,
    comm: Arc<str>,
}

#[derive(Clone, Debug, Default)]
struct ProcRow {
    user: String,
    container: String,
    conns: u64,
    peers: HashSet<IpAddr>,
    sent: u64,
    recv: u64,
    /// Bytes/s over the last tick.
    sent_rate: f64,
    recv_rate: f64,
    last_sent: u64,
    last_recv: u64,
    last_seen: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FlowKey {
    host: Arc<str>,
    proto: Proto,
    /// The local end (`ip`, `port`).
    local: (IpAddr, u16),
    /// The remote end; none for a listener.
    remote: Option<(IpAddr, u16)>,
}

#[derive(Clone, Debug)]
struct FlowRow {
    proto: Proto,
    local: String,
    remote: String,
    /// A state netmon names (`established`, …), or the agent's own (escaped).
    state: Cow<'static, str>,
    process: Arc<str>,
    pid: Option<u32>,
    sent: Option<u64>,
    recv: Option<u64>,
    start: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    closed: bool,
}

#[derive(Clone, Debug)]
struct HostRow {
    up: bool,
    mac: String,
    name: String,
    ports: BTreeMap<(u16, Proto), String>,
    last_change: DateTime<Utc>,
}

#[derive(Clone, Debug, Default)]
struct DnsProc {
    queries: u64,
    nxdomain: u64,
    names: HashMap<String, u64>,
}

#[derive(Clone, Debug)]
struct AlertRow {
    ts: DateTime<Utc>,
    host: String,
    severity: Severity,
    rule: String,
    summary: String,
    recommendation: String,
    process: String,
    flows: Vec<String>,
}

#[derive(Clone, Debug)]
struct IfaceRow {
    counters: IfaceCounters,
    rx_rate: f64,
    tx_rate: f64,
}

/// A sort key of one cell.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum SortKey {
    Num(f64),
    Text(String),
}

/// One row of a table: what is drawn and what it sorts by.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub cells: Vec<String>,
    pub keys: Vec<SortKey>,
    /// Text the `/` filter matches (the cells, plus e.g. a port on its own).
    pub haystack: String,
}

impl Row {
    pub(super) fn new(cells: Vec<(String, SortKey)>) -> Row {
        // The cells lowercased, space-separated, in one allocation (rows are rebuilt
        // by the thousand).
        let mut haystack = String::with_capacity(cells.iter().map(|(c, _)| c.len() + 1).sum());
        for (i, (c, _)) in cells.iter().enumerate() {
            if i > 0 {
                haystack.push(' ');
            }
            haystack.extend(c.chars().flat_map(char::to_lowercase));
        }
        let (cells, keys) = cells.into_iter().unzip();
        Row {
            cells,
            keys,
            haystack,
        }
    }
}

/// Per view: sort column, direction, selection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewState {
    pub sort: usize,
    pub ascending: bool,
    pub selected: usize,
}

/// What a key press did, for the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Continue,
    Quit,
}

/// The keys `netmon top` understands, terminal-independent (see `tui.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Tab,
    BackTab,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
}

/// Everything `netmon top` shows.
pub struct App {
    pub caps: Caps,
    pub agents: Vec<Agent>,
    pub view: View,
    pub views: [ViewState; 7],
    pub filter: String,
    pub editing_filter: bool,
    pub paused: bool,
    pub help: bool,
    /// Alerts view: the selected alert's details are open.
    pub detail: bool,
    /// Where the Interfaces view's figures come from, when not read locally.
    pub interfaces_note: Option<String>,
    /// The time cursor: the window of the past that Processes, Connections and
    /// Alerts show (`None`: live).
    pub past: Option<Past>,
    /// Why the source has no history to move back in (in-process tracing), if so.
    pub no_history: Option<String>,
    /// One line for the footer until the next key (e.g. why `[` cannot go back).
    pub notice: Option<String>,
    /// A window to ask the agents for, taken by the loop (`take_history_request`).
    history_request: Option<Window>,
    frozen: Option<Vec<Vec<Row>>>,
    processes: HashMap<ProcKey, ProcRow>,
    flows: HashMap<FlowKey, FlowRow>,
    hosts: HashMap<(String, IpAddr), HostRow>,
    dns: HashMap<ProcKey, DnsProc>,
    dns_names: usize,
    alerts: VecDeque<AlertRow>,
    interfaces: Vec<IfaceRow>,
    last_tick: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    /// Hosts as they came → escaped, so an event costs no escaping (bounded).
    host_names: HashMap<String, Arc<str>>,
    names: Names,
    /// The current view's rows as of the last [`App::refresh`], and how many rows
    /// the view had then (before the filter).
    shown: Option<(View, Shown, usize)>,
}

/// A view's rows as of the last refresh: built, or (the live Connections view, up to
/// 10,000 flows) only their order, each row built when it is drawn.
enum Shown {
    Rows(Vec<Row>),
    Flows(Vec<FlowKey>),
}

impl App {
    pub fn new(agents: Vec<String>, caps: Caps) -> App {
        App {
            caps,
            agents: agents.into_iter().map(Agent::new).collect(),
            view: View::Overview,
            views: [ViewState::default(); 7],
            filter: String::new(),
            editing_filter: false,
            paused: false,
            help: false,
            detail: false,
            interfaces_note: None,
            past: None,
            no_history: None,
            notice: None,
            history_request: None,
            frozen: None,
            processes: HashMap::new(),
            flows: HashMap::new(),
            hosts: HashMap::new(),
            dns: HashMap::new(),
            dns_names: 0,
            alerts: VecDeque::new(),
            interfaces: Vec::new(),
            last_tick: None,
            now: Utc::now(),
            host_names: HashMap::new(),
            names: Names::default(),
            shown: None,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// One message from a source.
    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Event { agent, event } => self.event(agent, &event),
            Msg::Status { agent, status } => {
                if let Some(a) = self.agents.get_mut(agent) {
                    if let AgentStatus::Lagged(n) = status {
                        a.lagged += n;
                    }
                    a.status = status;
                }
            }
            Msg::Interfaces(counters) => self.interfaces(counters),
            Msg::Timeline { agent, rows } => {
                let now = self.now;
                if let Some(a) = self.agents.get_mut(agent) {
                    a.timeline(now, &rows);
                }
            }
            Msg::Past {
                agent,
                window,
                answer,
            } => {
                if let Some(p) = &mut self.past {
                    p.answer(agent, window, answer);
                }
            }
        }
    }

    /// Moves the time cursor to the window from `since` on; at or after now, back to
    /// live. The window is then asked of the agents (see `take_history_request`).
    pub fn set_cursor(&mut self, since: Option<DateTime<Utc>>) {
        match since {
            Some(t) if t < self.now && self.no_history.is_none() => {
                let w = Window::starting(t);
                self.past = Some(Past::new(w, self.agents.len()));
                self.history_request = Some(w);
            }
            _ => {
                self.past = None;
                self.history_request = None;
            }
        }
        for st in &mut self.views {
            st.selected = 0;
        }
    }

    /// The window the agents are to be asked for, once.
    pub fn take_history_request(&mut self) -> Option<Window> {
        self.history_request.take()
    }

    /// The host column's text per agent: its host name once known, else its label.
    pub fn host_labels(&self) -> Vec<String> {
        self.agents
            .iter()
            .map(|a| a.host.clone().unwrap_or_else(|| a.label.clone()))
            .collect()
    }

    /// Rows of `view` from the time cursor's window, when it is set and applies.
    fn past_rows(&self, view: View) -> Option<Vec<Row>> {
        let p = self.past.as_ref()?;
        let hosts = self.host_labels();
        Some(match past_view(view)? {
            Which::Processes => p.process_rows(&hosts),
            Which::Connections => p.connection_rows(&hosts),
            Which::Alerts => p.alert_rows(&hosts),
        })
    }

    /// One event of agent `agent` (its index in the list given to [`App::new`]).
    pub fn event(&mut self, agent: usize, event: &Event) {
        let host = self.host_name(&event.host);
        if let Some(a) = self.agents.get_mut(agent) {
            a.events += 1;
            if a.status != AgentStatus::Live && !matches!(a.status, AgentStatus::Lagged(_)) {
                a.status = AgentStatus::Live;
            }
            if a.host.as_deref() != Some(&*host) {
                a.host = Some(host.to_string());
            }
        }
        match &event.body {
            EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Udp(c) => {
                self.bump(agent, 0, 1);
                self.opened(&host, c, event.ts);
            }
            EventBody::Listen(c) => self.opened(&host, c, event.ts),
            EventBody::Flow(f) => {
                let key = flow_key(&host, &f.conn);
                self.bytes(agent, &host, &f.conn, f.bytes_sent, f.bytes_received, &key);
                let row = self.flow_row(key, &f.conn, f.start);
                row.state = Cow::Owned(escape::remote(&f.state));
                row.last_seen = event.ts;
                row.sent = f.bytes_sent.or(row.sent);
                row.recv = f.bytes_received.or(row.recv);
            }
            EventBody::Close(c) => {
                let key = flow_key(&host, &c.conn);
                self.bytes(agent, &host, &c.conn, c.bytes_sent, c.bytes_received, &key);
                let start = c
                    .duration_ms
                    .and_then(|ms| chrono::Duration::try_milliseconds(ms as i64))
                    .map_or(event.ts, |d| event.ts - d);
                let row = self.flow_row(key, &c.conn, start);
                row.state = Cow::Borrowed("closed");
                row.closed = true;
                row.sent = c.bytes_sent.or(row.sent);
                row.recv = c.bytes_received.or(row.recv);
                row.last_seen = event.ts;
            }
            EventBody::Dns(d) => {
                let entry = self
                    .dns
                    .entry(self.names.key(&host, d.process.as_ref()))
                    .or_default();
                entry.queries += 1;
                if d.rcode.as_deref() == Some("NXDOMAIN") {
                    entry.nxdomain += 1;
                }
                let name = escape::for_terminal(&escape::bounded(&d.query, MAX_CELL)).into_owned();
                if let Some(n) = entry.names.get_mut(&name) {
                    *n += 1;
                } else if self.dns_names < self.caps.dns_names {
                    entry.names.insert(name, 1);
                    self.dns_names += 1;
                }
            }
            EventBody::Alert(al) => {
                self.bump(agent, 3, 1);
                if let Some(a) = self.agents.get_mut(agent) {
                    a.alerts += 1;
                }
                self.alerts.push_front(AlertRow {
                    ts: event.ts,
                    host: host.to_string(),
                    severity: al.severity,
                    rule: escape::remote(&al.rule),
                    summary: escape::remote(&al.summary),
                    recommendation: escape::remote(&al.recommendation),
                    process: al.process.as_ref().map(process_name).unwrap_or_default(),
                    flows: al
                        .flows
                        .iter()
                        .map(|f| {
                            format!(
                                "{} {:?} {} -> {}",
                                f.ts.format("%H:%M:%S"),
                                f.proto,
                                f.src.as_ref().map(endpoint).unwrap_or_else(|| "-".into()),
                                endpoint(&f.dst)
                            )
                        })
                        .collect(),
                });
                self.alerts.truncate(self.caps.alerts);
            }
            EventBody::HostUp(h) | EventBody::HostDown(h) => {
                let up = matches!(event.body, EventBody::HostUp(_));
                let row = self.host_row(&host, h.addr, event.ts);
                row.up = up;
                if let Some(m) = &h.mac {
                    row.mac = escape::remote(m);
                }
                if let Some(n) = &h.name {
                    row.name = escape::remote(n);
                }
            }
            EventBody::PortOpened(p) => {
                let service = p.service.as_deref().map(escape::remote).unwrap_or_default();
                self.host_row(&host, p.addr, event.ts)
                    .ports
                    .insert((p.port, p.proto), service);
            }
            EventBody::PortClosed(p) => {
                self.host_row(&host, p.addr, event.ts)
                    .ports
                    .remove(&(p.port, p.proto));
            }
            EventBody::ServiceChanged(s) => {
                let service = s.service.as_deref().map(escape::remote).unwrap_or_default();
                self.host_row(&host, s.addr, event.ts)
                    .ports
                    .insert((s.port, s.proto), service);
            }
            EventBody::Stats(s) => {
                if let Some(a) = self.agents.get_mut(agent) {
                    a.uptime_s = Some(s.uptime_s);
                    a.lost = s.lost;
                }
            }
            EventBody::Probe(p) => {
                if let Some(a) = self.agents.get_mut(agent) {
                    let mut backends: Vec<String> = p
                        .capabilities
                        .iter()
                        .filter_map(|c| c.backend.clone())
                        .collect();
                    backends.sort();
                    backends.dedup();
                    a.backend = Some(escape::remote(&backends.join(",")));
                }
            }
            // Lineage is on every event's `process` already; the UI has no exec view.
            // The eBPF programs' own `log` messages are about netmon, not the host.
            EventBody::Host(_) | EventBody::Port(_) | EventBody::Exec(_) | EventBody::Log(_) => {}
        }
    }

    /// `host` escaped, from a small cache: every event carries its host's name.
    fn host_name(&mut self, host: &str) -> Arc<str> {
        if let Some(h) = self.host_names.get(host) {
            return h.clone();
        }
        if self.host_names.len() >= 1024 {
            self.host_names.clear();
        }
        let h: Arc<str> = escape::remote(host).into();
        self.host_names.insert(host.to_owned(), h.clone());
        h
    }

    fn bump(&mut self, agent: usize, which: usize, n: u64) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.cur[which] += n;
        }
    }

    fn opened(&mut self, host: &Arc<str>, c: &Connection, ts: DateTime<Utc>) {
        let key = flow_key(host, c);
        let row = self.flow_row(key, c, ts);
        let state = match c.proto {
            _ if c.src.is_none() => "listen",
            _ if c.failed => "failed",
            Proto::Tcp => "established",
            Proto::Udp => "active",
        };
        if row.state != state {
            row.state = Cow::Borrowed(state);
        }
        row.last_seen = ts;
        if c.src.is_none() {
            return;
        }
        let key = self.names.key(host, c.process.as_ref());
        let p = self.processes.entry(key).or_default();
        p.conns += 1;
        if p.peers.len() < 1024 {
            p.peers.insert(remote_of(c).ip);
        }
        p.last_seen = Some(ts);
        // Once per process: a pid's user and container do not change.
        if let Some(info) = c.process.as_ref().filter(|_| p.user.is_empty()) {
            p.user = info
                .detail
                .user
                .as_deref()
                .map(escape::remote)
                .unwrap_or_else(|| info.uid.to_string());
            p.container = info
                .detail
                .container
                .as_ref()
                .and_then(|c| c.id.as_deref())
                .map(|id| escape::remote(&id.chars().take(12).collect::<String>()))
                .unwrap_or_default();
        }
    }

    /// Bytes a flow or close event reports: the growth since the flow's last report
    /// goes to its process and agent (the caller then stores the new totals).
    fn bytes(
        &mut self,
        agent: usize,
        host: &Arc<str>,
        c: &Connection,
        sent: Option<u64>,
        recv: Option<u64>,
        key: &FlowKey,
    ) {
        let (old_sent, old_recv) = self
            .flows
            .get(key)
            .map_or((None, None), |f| (f.sent, f.recv));
        let ds = sent.unwrap_or(0).saturating_sub(old_sent.unwrap_or(0));
        let dr = recv.unwrap_or(0).saturating_sub(old_recv.unwrap_or(0));
        self.bump(agent, 1, dr);
        self.bump(agent, 2, ds);
        let key = self.names.key(host, c.process.as_ref());
        let p = self.processes.entry(key).or_default();
        p.sent += ds;
        p.recv += dr;
    }

    fn flow_row(&mut self, key: FlowKey, c: &Connection, start: DateTime<Utc>) -> &mut FlowRow {
        let names = &mut self.names;
        let row = self
            .flows
            .entry(key)
            .or_insert_with(|| FlowRow::new(c, start, names.of(c.process.as_ref())));
        if start < row.start {
            row.start = start;
        }
        row
    }

    fn host_row(&mut self, host: &str, addr: IpAddr, ts: DateTime<Utc>) -> &mut HostRow {
        let row = self
            .hosts
            .entry((host.to_owned(), addr))
            .or_insert_with(|| HostRow {
                up: true,
                mac: String::new(),
                name: String::new(),
                ports: BTreeMap::new(),
                last_change: ts,
            });
        row.last_change = ts;
        row
    }

    fn interfaces(&mut self, counters: Vec<IfaceCounters>) {
        let dt = 1.0;
        let old: HashMap<String, IfaceCounters> = self
            .interfaces
            .drain(..)
            .map(|r| (r.counters.name.clone(), r.counters))
            .collect();
        self.interfaces = counters
            .into_iter()
            .take(256)
            .map(|c| {
                let (rx_rate, tx_rate) = old.get(&c.name).map_or((0.0, 0.0), |o| {
                    (
                        c.rx_bytes.saturating_sub(o.rx_bytes) as f64 / dt,
                        c.tx_bytes.saturating_sub(o.tx_bytes) as f64 / dt,
                    )
                });
                IfaceRow {
                    counters: IfaceCounters {
                        name: escape::remote(&c.name),
                        ..c
                    },
                    rx_rate,
                    tx_rate,
                }
            })
            .collect();
    }

    /// Once a second: sparkline buckets roll, rates are computed, closed flows leave
    /// and every view is cut back to its cap.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        let dt = self.last_tick.map_or(1.0, |t| {
            ((now - t).num_milliseconds() as f64 / 1000.0).max(0.001)
        });
        self.last_tick = Some(now);
        self.now = now;
        for a in &mut self.agents {
            a.roll_minute(now, a.cur[0]);
            a.roll(self.caps.history_s);
        }
        for p in self.processes.values_mut() {
            p.sent_rate = (p.sent - p.last_sent) as f64 / dt;
            p.recv_rate = (p.recv - p.last_recv) as f64 / dt;
            p.last_sent = p.sent;
            p.last_recv = p.recv;
        }
        self.flows
            .retain(|_, f| !f.closed || (now - f.last_seen).num_seconds() < CLOSED_KEPT_S);
        cap_by(&mut self.flows, self.caps.flows, |f| f.last_seen);
        cap_by(&mut self.processes, self.caps.processes, |p| {
            p.last_seen.unwrap_or_default()
        });
        cap_by(&mut self.hosts, self.caps.hosts, |h| h.last_change);
        cap_by(&mut self.dns, self.caps.processes, |d| {
            DateTime::from_timestamp(d.queries as i64, 0).unwrap_or_default()
        });
        self.dns_names = self.dns.values().map(|d| d.names.len()).sum();
        self.refresh();
    }

    /// Rebuilds the current view's rows (filtered, sorted), as [`App::shown`] gives
    /// them until the next refresh: on every tick (once a second, as top(1) and
    /// bandwhich refresh their lists) and after every key. Building and sorting 10,000
    /// rows for each frame instead was most of `netmon top`'s CPU at 10,000 events/s;
    /// the Overview's figures and sparklines, read from the state, still change with
    /// every frame.
    pub fn refresh(&mut self) {
        let shown = if self.live_flows(self.view) {
            Shown::Flows(self.flow_order())
        } else {
            Shown::Rows(self.visible(self.view))
        };
        self.shown = Some((self.view, shown, self.count(self.view)));
    }

    /// Whether `view` shows the live flow table (neither paused nor in the past).
    fn live_flows(&self, view: View) -> bool {
        view == View::Connections && self.frozen.is_none() && self.past.is_none()
    }

    /// How many rows `view` shows (after the filter), as of the last refresh.
    pub fn shown_len(&self, view: View) -> usize {
        match &self.shown {
            Some((v, Shown::Rows(rows), _)) if *v == view => rows.len(),
            Some((v, Shown::Flows(keys), _)) if *v == view => keys.len(),
            _ if self.live_flows(view) => self.flow_order().len(),
            _ => self.visible(view).len(),
        }
    }

    /// Rows `skip..skip + take` of `view` as shown: the last [`App::refresh`]'s when
    /// it was of this view, else built now. Only these are formatted: the live
    /// Connections view keeps the order of its flows and builds the rows drawn, from
    /// the flows' figures of now (a flow gone since the refresh is left out).
    pub fn shown_rows(&self, view: View, skip: usize, take: usize) -> Cow<'_, [Row]> {
        let build = |keys: &[FlowKey]| -> Vec<Row> {
            keys.iter()
                .skip(skip)
                .take(take)
                .filter_map(|k| Some(flow_row(k, self.flows.get(k)?, self.now)))
                .collect()
        };
        match &self.shown {
            Some((v, Shown::Rows(rows), _)) if *v == view => {
                let end = rows.len().min(skip.saturating_add(take));
                Cow::Borrowed(&rows[skip.min(end)..end])
            }
            Some((v, Shown::Flows(keys), _)) if *v == view => Cow::Owned(build(keys)),
            _ if self.live_flows(view) => Cow::Owned(build(&self.flow_order())),
            _ => Cow::Owned(
                self.visible(view)
                    .into_iter()
                    .skip(skip)
                    .take(take)
                    .collect(),
            ),
        }
    }

    /// The live flows' keys, filtered by `/` and sorted by the Connections view's
    /// column, as [`App::visible`] orders rows but without building any: comparing
    /// the flows' own fields (text case-insensitively) costs no allocation.
    fn flow_order(&self) -> Vec<FlowKey> {
        let needle = self.filter.to_lowercase();
        let now = self.now;
        let mut flows: Vec<(&FlowKey, &FlowRow)> = self
            .flows
            .iter()
            .filter(|(k, f)| needle.is_empty() || flow_row(k, f, now).haystack.contains(&needle))
            .collect();
        let st = self.views[View::Connections.index()];
        let age = |f: &FlowRow| (now - f.start).num_seconds().max(0);
        let bytes = |b: Option<u64>| b.map_or(-1, |b| b as i128);
        flows.sort_by(|(ka, a), (kb, b)| {
            let o = match st.sort {
                0 => proto(a.proto).cmp(proto(b.proto)),
                1 => cmp_text(&a.local, &b.local),
                2 => cmp_text(&a.remote, &b.remote),
                3 => cmp_text(&a.state, &b.state),
                4 => cmp_text(&a.process, &b.process),
                5 => bytes(a.sent).cmp(&bytes(b.sent)),
                6 => bytes(a.recv).cmp(&bytes(b.recv)),
                7 => age(a).cmp(&age(b)),
                _ => cmp_text(&ka.host, &kb.host),
            }
            .then_with(|| ka.cmp(kb));
            if st.ascending { o } else { o.reverse() }
        });
        flows.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// How many rows `view` had (before the filter) when [`App::shown`]'s were built.
    pub fn shown_total(&self, view: View) -> usize {
        match &self.shown {
            Some((v, _, total)) if *v == view => *total,
            _ => self.count(view),
        }
    }

    /// The rows of `view`, before filter and sort (frozen while paused).
    pub fn rows(&self, view: View) -> Vec<Row> {
        if let Some(rows) = self.past_rows(view) {
            return rows;
        }
        if let Some(frozen) = &self.frozen {
            return frozen[view.index()].clone();
        }
        self.live_rows(view)
    }

    /// How many rows `view` has before the filter (cheaper than [`App::rows`]).
    pub fn count(&self, view: View) -> usize {
        if let (Some(p), Some(which)) = (&self.past, past_view(view)) {
            return p.count(which);
        }
        if let Some(frozen) = &self.frozen {
            return frozen[view.index()].len();
        }
        match view {
            View::Overview => self.agents.len(),
            View::Processes => self.processes.len(),
            View::Connections => self.flows.len(),
            View::Hosts => self.hosts.len(),
            View::Dns => self.dns.len(),
            View::Alerts => self.alerts.len(),
            View::Interfaces => self.interfaces.len(),
        }
    }

    fn live_rows(&self, view: View) -> Vec<Row> {
        let now = self.now;
        match view {
            View::Overview => self
                .agents
                .iter()
                .map(|a| {
                    let rate = a.conns.back().copied().unwrap_or(0);
                    Row::new(vec![
                        text(&a.label),
                        text(&status_text(&a.status)),
                        text(a.host.as_deref().unwrap_or("-")),
                        text(a.backend.as_deref().unwrap_or("-")),
                        (
                            a.uptime_s.map_or("-".into(), |s| duration(s as i64)),
                            SortKey::Num(a.uptime_s.unwrap_or(0.0)),
                        ),
                        num(a.events),
                        num(a.lost + a.lagged),
                        num(rate),
                        num(a.alerts),
                    ])
                })
                .collect(),
            View::Processes => self
                .processes
                .iter()
                .map(|(k, p)| {
                    Row::new(vec![
                        text(&k.comm),
                        (k.pid.to_string(), SortKey::Num(k.pid as f64)),
                        text(&p.user),
                        text(&p.container),
                        num(p.conns),
                        num(p.peers.len() as u64),
                        (rate(p.sent_rate), SortKey::Num(p.sent_rate)),
                        (rate(p.recv_rate), SortKey::Num(p.recv_rate)),
                        text(&k.host),
                    ])
                })
                .collect(),
            View::Connections => self
                .flows
                .iter()
                .map(|(k, f)| flow_row(k, f, now))
                .collect(),
            View::Hosts => self
                .hosts
                .iter()
                .map(|((host, addr), h)| {
                    let ports = h
                        .ports
                        .iter()
                        .map(|((port, p), s)| {
                            if s.is_empty() {
                                format!("{port}/{}", proto(*p))
                            } else {
                                format!("{port}/{} {s}", proto(*p))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    Row::new(vec![
                        (addr.to_string(), addr_key(addr)),
                        text(if h.up { "up" } else { "down" }),
                        text(&h.mac),
                        text(&h.name),
                        (ports, SortKey::Num(h.ports.len() as f64)),
                        (
                            h.last_change.format("%H:%M:%S").to_string(),
                            SortKey::Num(h.last_change.timestamp() as f64),
                        ),
                        text(host),
                    ])
                })
                .collect(),
            View::Dns => self
                .dns
                .iter()
                .map(|(k, d)| {
                    let top = d
                        .names
                        .iter()
                        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                        .map(|(n, c)| format!("{n} ({c})"))
                        .unwrap_or_default();
                    let nx = if d.queries == 0 {
                        0.0
                    } else {
                        d.nxdomain as f64 * 100.0 / d.queries as f64
                    };
                    let mut row = Row::new(vec![
                        text(&format!("{} {}", k.comm, k.pid)),
                        num(d.queries),
                        (format!("{nx:.0}%"), SortKey::Num(nx)),
                        text(&top),
                        num(d.names.len() as u64),
                        text(&k.host),
                    ]);
                    for n in d.names.keys() {
                        row.haystack.push(' ');
                        row.haystack.push_str(n);
                    }
                    row
                })
                .collect(),
            View::Alerts => self
                .alerts
                .iter()
                .map(|a| {
                    Row::new(vec![
                        (
                            a.ts.format("%H:%M:%S").to_string(),
                            SortKey::Num(a.ts.timestamp_nanos_opt().unwrap_or(0) as f64),
                        ),
                        (
                            a.severity.name().into(),
                            SortKey::Num(a.severity as u8 as f64),
                        ),
                        text(&a.rule),
                        text(&a.summary),
                        text(&a.process),
                        text(&a.host),
                    ])
                })
                .collect(),
            View::Interfaces => self
                .interfaces
                .iter()
                .map(|i| {
                    Row::new(vec![
                        text(&i.counters.name),
                        (rate(i.rx_rate), SortKey::Num(i.rx_rate)),
                        (rate(i.tx_rate), SortKey::Num(i.tx_rate)),
                        opt_bytes(Some(i.counters.rx_bytes)),
                        opt_bytes(Some(i.counters.tx_bytes)),
                    ])
                })
                .collect(),
        }
    }

    /// The rows of `view` as shown: filtered by `/`, sorted by its sort column.
    /// Alerts keep newest first until a column is chosen.
    pub fn visible(&self, view: View) -> Vec<Row> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<Row> = self
            .rows(view)
            .into_iter()
            .filter(|r| needle.is_empty() || r.haystack.contains(&needle))
            .collect();
        let st = self.views[view.index()];
        let col = st.sort;
        if !(view == View::Alerts && col == 0 && !st.ascending) {
            rows.sort_by(|a, b| {
                let o = a.keys[col]
                    .partial_cmp(&b.keys[col])
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then_with(|| a.cells.cmp(&b.cells));
                if st.ascending { o } else { o.reverse() }
            });
        } else {
            // Newest first: the order they are kept in.
        }
        rows
    }

    pub fn state(&self) -> ViewState {
        self.views[self.view.index()]
    }

    fn state_mut(&mut self) -> &mut ViewState {
        &mut self.views[self.view.index()]
    }

    /// The selected alert's details (Alerts view, Enter).
    pub fn alert_detail(&self) -> Option<Vec<String>> {
        let selected = self.views[View::Alerts.index()].selected;
        let rows = self.shown_rows(View::Alerts, selected, 1);
        let row = rows.first()?;
        let a = self.alerts.iter().find(|a| {
            a.rule == row.cells[2] && a.summary == row.cells[3] && a.host == row.cells[5]
        })?;
        let mut lines = vec![
            format!("{} {} on {}", a.severity.name(), a.rule, a.host),
            a.summary.clone(),
            format!("What to do: {}", a.recommendation),
        ];
        if !a.flows.is_empty() {
            lines.push("Sample flows:".into());
            lines.extend(a.flows.iter().map(|f| format!("  {f}")));
        }
        Some(lines)
    }

    /// One key press; the current view's rows are rebuilt after it.
    pub fn key(&mut self, key: Key) -> KeyOutcome {
        let outcome = self.key_inner(key);
        if outcome == KeyOutcome::Continue {
            self.refresh();
        }
        outcome
    }

    fn key_inner(&mut self, key: Key) -> KeyOutcome {
        if self.editing_filter {
            match key {
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => {
                    self.filter.push(c);
                }
                _ => {}
            }
            self.state_mut().selected = 0;
            return KeyOutcome::Continue;
        }
        if self.help {
            self.help = false;
            return if key == Key::Char('q') {
                KeyOutcome::Quit
            } else {
                KeyOutcome::Continue
            };
        }
        let ncols = self.view.columns().len();
        self.notice = None;
        match key {
            Key::Char('q') => return KeyOutcome::Quit,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Tab => self.switch(1),
            Key::BackTab => self.switch(View::ALL.len() - 1),
            Key::Char(c @ '1'..='7') => {
                self.view = View::ALL[c as usize - '1' as usize];
                self.detail = false;
            }
            Key::Char('s') => {
                let st = self.state_mut();
                st.sort = (st.sort + 1) % ncols;
                st.selected = 0;
            }
            Key::Char('r') => {
                let st = self.state_mut();
                st.ascending = !st.ascending;
            }
            Key::Char('/') => self.editing_filter = true,
            Key::Esc => {
                self.detail = false;
                self.filter.clear();
            }
            Key::Char('p') | Key::Char(' ') => self.pause(!self.paused),
            Key::Char('[') if self.no_history.is_some() => {
                self.notice = self.no_history.clone();
            }
            Key::Char('[') => {
                let since = self.past.as_ref().map_or(self.now, |p| p.window.since);
                self.set_cursor(Some(since - chrono::Duration::minutes(past::STEP_MIN)));
            }
            Key::Char(']') => {
                // Forward 5 minutes; a window that would reach past now is live.
                if let Some(p) = &self.past {
                    let since = p.window.until;
                    let live = since + chrono::Duration::minutes(past::STEP_MIN) > self.now;
                    self.set_cursor((!live).then_some(since));
                }
            }
            Key::Enter if self.view == View::Alerts => self.detail = !self.detail,
            Key::Up | Key::Char('k') => self.scroll(-1),
            Key::Down | Key::Char('j') => self.scroll(1),
            Key::PageUp => self.scroll(-10),
            Key::PageDown => self.scroll(10),
            Key::Home | Key::Char('g') => self.state_mut().selected = 0,
            Key::End | Key::Char('G') => self.scroll(i64::MAX / 2),
            _ => {}
        }
        KeyOutcome::Continue
    }

    fn switch(&mut self, by: usize) {
        self.view = View::ALL[(self.view.index() + by) % View::ALL.len()];
        self.detail = false;
    }

    fn scroll(&mut self, by: i64) {
        let n = self.shown_len(self.view) as i64;
        let st = self.state_mut();
        st.selected = (st.selected as i64 + by).clamp(0, (n - 1).max(0)) as usize;
    }

    /// `p`: freezes (or thaws) what the lists show; events keep being counted.
    pub fn pause(&mut self, on: bool) {
        self.paused = on;
        self.frozen = on.then(|| View::ALL.iter().map(|v| self.live_rows(*v)).collect());
    }
}

impl FlowRow {
    fn new(c: &Connection, start: DateTime<Utc>, process: Arc<str>) -> FlowRow {
        FlowRow {
            proto: c.proto,
            local: local_of(c)
                .map(|e| endpoint(&e))
                .unwrap_or_else(|| "-".into()),
            remote: if c.src.is_none() {
                "*".into()
            } else {
                endpoint(&remote_of(c))
            },
            state: Cow::Borrowed(""),
            process,
            pid: c.process.as_ref().map(|p| p.pid),
            sent: None,
            recv: None,
            start,
            last_seen: start,
            closed: false,
        }
    }
}

/// Keeps the `cap` entries of `map` with the newest `when`.
/// The view's part in the time cursor, if it has one.
fn past_view(view: View) -> Option<Which> {
    match view {
        View::Processes => Some(Which::Processes),
        View::Connections => Some(Which::Connections),
        View::Alerts => Some(Which::Alerts),
        _ => None,
    }
}

fn cap_by<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    when: impl Fn(&V) -> DateTime<Utc>,
) {
    if map.len() <= cap {
        return;
    }
    let mut ages: Vec<(DateTime<Utc>, K)> = map.iter().map(|(k, v)| (when(v), k.clone())).collect();
    let excess = map.len() - cap;
    ages.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
    for (_, k) in ages.into_iter().take(excess) {
        map.remove(&k);
    }
}

/// Process names as the views show them, by pid: every event carries its process, and
/// escaping its name for each one was a tenth of `netmon top`'s CPU at 10,000 events/s.
#[derive(Default)]
struct Names {
    by_pid: HashMap<u32, (crate::event::Name, Option<String>, Arc<str>)>,
}

impl Names {
    /// Most pids remembered (then the cache starts over).
    const MAX: usize = 4096;

    /// The shown name of `p` ([`process_name`]): from the cache when the pid still has
    /// the same `comm` and executable.
    fn of(&mut self, p: Option<&ProcessInfo>) -> Arc<str> {
        let Some(p) = p else {
            return Arc::from("");
        };
        if let Some((comm, exe, name)) = self.by_pid.get(&p.pid)
            && *comm == p.comm
            && *exe == p.detail.exe
        {
            return name.clone();
        }
        if self.by_pid.len() >= Self::MAX {
            self.by_pid.clear();
        }
        let name: Arc<str> = process_name(p).into();
        self.by_pid
            .insert(p.pid, (p.comm.clone(), p.detail.exe.clone(), name.clone()));
        name
    }

    /// The Processes and DNS views' key of `p` on `host` (`?` for no process).
    fn key(&mut self, host: &Arc<str>, p: Option<&ProcessInfo>) -> ProcKey {
        ProcKey {
            host: host.clone(),
            pid: p.map_or(0, |p| p.pid),
            comm: match p {
                Some(_) => self.of(p),
                None => Arc::from("?"),
            },
        }
    }
}

/// The process's name: its executable's file name, else the kernel's `comm`; escaped.
fn process_name(p: &ProcessInfo) -> String {
    let exe = p
        .detail
        .exe
        .as_deref()
        .and_then(|e| e.trim_end_matches(" (deleted)").rsplit('/').next())
        .filter(|s| !s.is_empty());
    escape::for_terminal(&escape::bounded(exe.unwrap_or(&p.comm), MAX_CELL)).into_owned()
}

/// The local end: `src` for outbound, `dst` for inbound and listeners.
fn local_of(c: &Connection) -> Option<crate::event::Endpoint> {
    match (c.direction, &c.src) {
        (_, None) => Some(c.dst.clone()),
        (Some(crate::event::Direction::Inbound), Some(_)) => Some(c.dst.clone()),
        (_, Some(s)) => Some(s.clone()),
    }
}

fn remote_of(c: &Connection) -> crate::event::Endpoint {
    match (c.direction, &c.src) {
        (Some(crate::event::Direction::Inbound), Some(s)) => s.clone(),
        _ => c.dst.clone(),
    }
}

fn flow_key(host: &Arc<str>, c: &Connection) -> FlowKey {
    let end = |e: &crate::event::Endpoint| (e.ip, e.port);
    let (local, remote) = match (c.direction, &c.src) {
        (_, None) => (end(&c.dst), None),
        (Some(crate::event::Direction::Inbound), Some(s)) => (end(&c.dst), Some(end(s))),
        (_, Some(s)) => (end(s), Some(end(&c.dst))),
    };
    FlowKey {
        host: host.clone(),
        proto: c.proto,
        local,
        remote,
    }
}

fn sock(e: &crate::event::Endpoint) -> String {
    match e.ip {
        IpAddr::V6(ip) => format!("[{ip}]:{}", e.port),
        IpAddr::V4(ip) => format!("{ip}:{}", e.port),
    }
}

/// `ip:port`, with the DNS name first when netmon saw one.
fn endpoint(e: &crate::event::Endpoint) -> String {
    match &e.name {
        Some(n) => format!(
            "{} ({})",
            escape::for_terminal(&escape::bounded(n, MAX_CELL)),
            sock(e)
        ),
        None => sock(e),
    }
}

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn status_text(s: &AgentStatus) -> String {
    match s {
        AgentStatus::Connecting => "connecting".into(),
        AgentStatus::Live => "live".into(),
        AgentStatus::Unreachable(why) => format!("unreachable: {why}"),
        AgentStatus::Lagged(n) => format!("live (skipped {n})"),
    }
}

/// One row of the Connections view.
fn flow_row(k: &FlowKey, f: &FlowRow, now: DateTime<Utc>) -> Row {
    let age = (now - f.start).num_seconds().max(0);
    let mut row = Row::new(vec![
        text(proto(f.proto)),
        text(&f.local),
        text(&f.remote),
        text(&f.state),
        text(&f.process),
        opt_bytes(f.sent),
        opt_bytes(f.recv),
        (duration(age), SortKey::Num(age as f64)),
        text(&k.host),
    ]);
    if let Some(pid) = f.pid {
        row.haystack.push_str(&format!(" pid:{pid}"));
    }
    row
}

/// Text as [`SortKey::Text`] orders it (lowercased), without lowercasing a copy.
fn cmp_text(a: &str, b: &str) -> std::cmp::Ordering {
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

fn text(s: &str) -> (String, SortKey) {
    (s.to_owned(), SortKey::Text(s.to_lowercase()))
}

fn num(n: u64) -> (String, SortKey) {
    (n.to_string(), SortKey::Num(n as f64))
}

fn addr_key(a: &IpAddr) -> SortKey {
    match a {
        IpAddr::V4(v) => SortKey::Num(u32::from(*v) as f64),
        IpAddr::V6(v) => SortKey::Num(u128::from(*v) as f64 + 5e9),
    }
}

fn opt_bytes(b: Option<u64>) -> (String, SortKey) {
    match b {
        Some(b) => (bytes(b as f64), SortKey::Num(b as f64)),
        None => ("-".into(), SortKey::Num(-1.0)),
    }
}

/// `1.5K`, `20M`: bytes, 1024-based.
pub fn bytes(b: f64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", units[i])
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn rate(b: f64) -> String {
    format!("{}/s", bytes(b))
}

/// `45s`, `3m05s`, `2h03m`, `4d02h`.
pub fn duration(s: i64) -> String {
    match s {
        ..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}
