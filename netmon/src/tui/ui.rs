//! `netmon top`'s drawing: pure functions from [`App`] to a ratatui `Frame`, one file
//! per view under `ui/`, and the parts they share here (tabs, footer, help, the
//! sortable table). Nothing here reads a clock, a terminal or a socket, so every view
//! renders on ratatui's `TestBackend` in unit tests.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Table, TableState, Tabs, Wrap},
};

use super::app::{App, View};

pub mod alerts;
pub mod connections;
pub mod dns;
pub mod hosts;
pub mod interfaces;
pub mod overview;
pub mod processes;

/// Colours, or none at all when `NO_COLOR` is set (https://no-color.org): then only
/// bold and reverse video mark the header and the selection.
#[derive(Clone, Copy, Debug)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// From the environment: `NO_COLOR` set to anything non-empty turns colour off.
    pub fn from_env() -> Theme {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    pub fn header(self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn selected(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    pub fn accent(self) -> Style {
        self.fg(Color::Cyan)
    }

    pub fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// The whole screen.
pub fn draw(frame: &mut Frame, app: &App, theme: Theme) {
    let [tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, tabs, app, theme);
    match app.view {
        View::Overview => overview::draw(frame, body, app, theme),
        View::Processes => processes::draw(frame, body, app, theme),
        View::Connections => connections::draw(frame, body, app, theme),
        View::Hosts => hosts::draw(frame, body, app, theme),
        View::Dns => dns::draw(frame, body, app, theme),
        View::Alerts => alerts::draw(frame, body, app, theme),
        View::Interfaces => interfaces::draw(frame, body, app, theme),
    }
    draw_footer(frame, footer, app, theme);
    if app.help {
        draw_help(frame, frame.area(), theme);
    }
}

fn draw_tabs(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let titles: Vec<Line> = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| Line::from(format!("{}:{}", i + 1, v.title())))
        .collect();
    let selected = View::ALL.iter().position(|v| *v == app.view);
    let tabs = Tabs::new(titles)
        .select(selected)
        .divider(" ")
        .padding("", "")
        .highlight_style(theme.selected().patch(theme.accent()));
    frame.render_widget(tabs, area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let st = app.state();
    let col = app.view.columns().get(st.sort).copied().unwrap_or("");
    let mut spans = vec![];
    if app.paused {
        spans.push(Span::styled("PAUSED ", theme.bad()));
    }
    if let Some(p) = &app.past {
        spans.push(Span::styled(
            format!("{} | ", p.status(&app.host_labels(), app.now())),
            theme.bad(),
        ));
    }
    if let Some(n) = &app.notice {
        spans.push(Span::styled(format!("{n} | "), theme.bad()));
    }
    if app.editing_filter || !app.filter.is_empty() {
        let cursor = if app.editing_filter { "_" } else { "" };
        spans.push(Span::styled(
            format!("filter: {}{cursor} ", app.filter),
            theme.accent(),
        ));
    }
    spans.push(Span::raw(format!(
        "sort: {col} {} | ?:help q:quit /:filter s:sort r:reverse p:pause Tab:view",
        if st.ascending { "▲" } else { "▼" }
    )));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_help(frame: &mut Frame, area: Rect, theme: Theme) {
    let lines = [
        "netmon top: keys",
        "",
        "Tab / Shift-Tab, 1-7   switch view",
        "s                      sort by the next column",
        "r                      reverse the sort order",
        "/                      filter (process, address, port, name);",
        "                       Enter keeps it, Esc clears it",
        "p or space             pause / resume the lists",
        "[ / ]                  5 minutes back / forward in the agents'",
        "                       history (Processes, Connections, Alerts)",
        "Up/Down, PgUp/PgDn     scroll; Home/End",
        "Enter (Alerts)         the alert's details and sample flows",
        "q                      quit",
        "",
        "Any key closes this help.",
    ];
    let w = 60.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::default().borders(Borders::ALL).title(" help "))
            .style(theme.accent())
            .wrap(Wrap { trim: false }),
        rect,
    );
}

/// The current view's rows (filtered, sorted) as a table with a title, the sort
/// column marked, the selection highlighted and kept in sight.
pub fn table(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    view: View,
    widths: &[Constraint],
    theme: Theme,
) {
    let shown = app.shown_len(view);
    let st = app.views[View::ALL.iter().position(|v| *v == view).unwrap_or(0)];
    let header = TRow::new(view.columns().iter().enumerate().map(|(i, c)| {
        let mark = if i == st.sort {
            if st.ascending { "▲" } else { "▼" }
        } else {
            ""
        };
        Cell::from(format!("{c}{mark}"))
    }))
    .style(theme.header());
    let total = app.shown_total(view);
    let title = if shown == total {
        format!(" {} ({}) ", view.title(), total)
    } else {
        format!(" {} ({} of {}) ", view.title(), shown, total)
    };
    let selected = st.selected.min(shown.saturating_sub(1));
    // Only the rows that fit (title, header): a window that keeps the selection in it.
    let fit = area.height.saturating_sub(2).max(1) as usize;
    let offset = selected.saturating_sub(fit - 1);
    let rows = app.shown_rows(view, offset, fit);
    let body = rows
        .iter()
        .map(|r| TRow::new(r.cells.iter().map(|c| Cell::from(c.as_str()))));
    let selected = selected - offset;
    let table = Table::new(body, widths.to_vec())
        .header(header)
        .column_spacing(1)
        .block(Block::default().borders(Borders::TOP).title(title))
        .row_highlight_style(theme.selected());
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, area, &mut state);
}

#[cfg(test)]
pub(crate) mod testing {
    //! Fixture events and a screen-to-text helper for the views' tests.
    use std::sync::Arc;

    use ratatui::{Terminal, backend::TestBackend};

    use super::{Theme, draw};
    use crate::{
        event::Event,
        tui::app::{App, Caps, Msg, View},
    };

    /// An app fed `lines` (JSON Lines of `netmon run`) as agent 0.
    pub fn app_with(lines: &[&str]) -> App {
        let mut app = App::new(vec!["local".into()], Caps::default());
        for l in lines {
            let event: Event = serde_json::from_str(l).expect("fixture parses");
            app.handle(Msg::Event {
                agent: 0,
                event: Arc::new(event),
            });
        }
        app.tick(
            chrono::DateTime::parse_from_rfc3339("2026-12-02T06:00:05Z")
                .unwrap()
                .into(),
        );
        app
    }

    /// The screen as text, one string per line.
    pub fn screen(app: &App, view: View, w: u16, h: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        // Views are drawn for the app's current view; tests set it first.
        assert_eq!(app.view, view, "set app.view before drawing");
        terminal
            .draw(|f| draw(f, app, Theme { color: false }))
            .unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    pub fn contains(screen: &[String], s: &str) -> bool {
        screen.iter().any(|l| l.contains(s))
    }

    pub fn line_of(screen: &[String], s: &str) -> Option<usize> {
        screen.iter().position(|l| l.contains(s))
    }

    pub const CONNECT_CURL: &str = r#"{"ts":"2026-12-02T06:00:01Z","type":"connect","host":"web-1","proto":"tcp","family":"ipv4","direction":"outbound","src":{"ip":"10.0.0.5","port":43512},"dst":{"ip":"10.0.0.9","port":443,"name":"example.org"},"process":{"pid":1234,"tid":1234,"comm":"curl","uid":1000,"gid":1000,"cgroup_id":1,"exe":"/usr/bin/curl","cmdline":"curl x","user":"alice","ppid":1,"container":null},"backend":"tracepoint"}"#;
    pub const CONNECT_WGET: &str = r#"{"ts":"2026-12-02T06:00:02Z","type":"connect","host":"web-1","proto":"tcp","family":"ipv4","direction":"outbound","src":{"ip":"10.0.0.5","port":40000},"dst":{"ip":"10.0.0.7","port":80},"process":{"pid":99,"tid":99,"comm":"wget","uid":0,"gid":0,"cgroup_id":1,"exe":null,"cmdline":null,"user":"root","ppid":1,"container":null},"backend":"tracepoint"}"#;
    pub const FLOW_WGET: &str = r#"{"ts":"2026-12-02T06:00:04Z","type":"flow","host":"web-1","proto":"tcp","family":"ipv4","direction":"outbound","src":{"ip":"10.0.0.5","port":40000},"dst":{"ip":"10.0.0.7","port":80},"process":{"pid":99,"tid":99,"comm":"wget","uid":0,"gid":0,"cgroup_id":1,"exe":null,"cmdline":null,"user":"root","ppid":1,"container":null},"backend":"tracepoint","state":"established","start":"2026-12-02T06:00:02Z","duration_ms":2000.0,"bytes_sent":100,"bytes_received":500000}"#;
    pub const DNS_NX: &str = r#"{"ts":"2026-12-02T06:00:03Z","type":"dns","host":"web-1","proto":"udp","family":"ipv4","role":"client","src":{"ip":"10.0.0.5","port":5353},"dst":{"ip":"10.0.0.1","port":53},"id":7,"query":"nope.example","qtype":"A","rcode":"NXDOMAIN","answers":[],"latency_ms":1.0,"process":{"pid":1234,"tid":1234,"comm":"curl","uid":1000,"gid":1000,"cgroup_id":1,"exe":"/usr/bin/curl","cmdline":null,"user":"alice","ppid":1,"container":null}}"#;
    pub const DNS_EVIL: &str = "{\"ts\":\"2026-12-02T06:00:03Z\",\"type\":\"dns\",\"host\":\"web-1\",\"proto\":\"udp\",\"family\":\"ipv4\",\"role\":\"client\",\"src\":{\"ip\":\"10.0.0.5\",\"port\":5353},\"dst\":{\"ip\":\"10.0.0.1\",\"port\":53},\"id\":8,\"query\":\"evil\\u001b[2Jname\",\"qtype\":\"A\",\"rcode\":\"NOERROR\",\"answers\":[],\"latency_ms\":1.0,\"process\":null}";
    pub const ALERT: &str = r#"{"ts":"2026-12-02T06:00:04Z","type":"alert","host":"web-1","rule":"SUSPICIOUS_PORT","severity":"high","summary":"curl connected to port 4444","recommendation":"Check what curl is doing.","process":null,"flows":[{"ts":"2026-12-02T06:00:04Z","type":"connect","proto":"tcp","direction":"outbound","src":{"ip":"10.0.0.5","port":1},"dst":{"ip":"10.0.0.66","port":4444}}],"key":"k","hits":1}"#;
    pub const HOST_UP: &str = r#"{"ts":"2026-12-02T06:00:04Z","type":"host_up","host":"web-1","addr":"10.0.0.9","mac":"02:00:00:00:00:09","name":"db.lan","reason":"echo-reply","last_seen":null}"#;
    pub const PORT_OPENED: &str = r#"{"ts":"2026-12-02T06:00:04Z","type":"port_opened","host":"web-1","addr":"10.0.0.9","port":5432,"proto":"tcp","service":"postgresql","version":null}"#;
    pub const STATS: &str = r#"{"ts":"2026-12-02T06:00:04Z","type":"stats","host":"web-1","uptime_s":3725.0,"events":{},"lost":3,"lost_by_type":{},"malformed":0}"#;

    pub fn all() -> Vec<&'static str> {
        vec![
            CONNECT_CURL,
            CONNECT_WGET,
            FLOW_WGET,
            DNS_NX,
            DNS_EVIL,
            ALERT,
            HOST_UP,
            PORT_OPENED,
            STATS,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use crate::tui::app::{Key, View};

    #[test]
    fn every_view_draws_at_80x24_and_on_tiny_terminals() {
        let mut app = app_with(&all());
        for view in View::ALL {
            app.view = view;
            let s = screen(&app, view, 80, 24);
            assert!(
                s[0].contains("1:Overview") && s[0].contains("7:Interfaces"),
                "{s:#?}"
            );
            assert!(contains(&s, "q:quit"), "{view:?}: {s:#?}");
            for (w, h) in [(20, 5), (40, 10), (200, 60)] {
                screen(&app, view, w, h);
            }
        }
    }

    #[test]
    fn pause_freezes_the_lists_until_resumed() {
        let mut app = app_with(&[CONNECT_CURL]);
        app.view = View::Processes;
        app.key(Key::Char('p'));
        let event = serde_json::from_str(CONNECT_WGET).unwrap();
        app.event(0, &event);
        let s = screen(&app, View::Processes, 80, 24);
        assert!(contains(&s, "PAUSED") && !contains(&s, "wget"), "{s:#?}");
        app.key(Key::Char('p'));
        let s = screen(&app, View::Processes, 80, 24);
        assert!(!contains(&s, "PAUSED") && contains(&s, "wget"), "{s:#?}");
    }

    #[test]
    fn lists_are_rebuilt_on_each_tick_and_key_not_on_each_event() {
        let mut app = app_with(&[CONNECT_CURL]);
        app.key(Key::Char('2'));
        let event = serde_json::from_str(CONNECT_WGET).unwrap();
        app.event(0, &event);
        // The frame drawn between two ticks shows the rows of the last refresh…
        let s = screen(&app, View::Processes, 80, 24);
        assert!(contains(&s, "curl") && !contains(&s, "wget"), "{s:#?}");
        // Its title counts the rows it shows, not the newer state's.
        assert!(contains(&s, "Processes (1)"), "{s:#?}");
        // …the next tick brings the new one, and so does a key.
        app.tick(chrono::Utc::now());
        let s = screen(&app, View::Processes, 80, 24);
        assert!(contains(&s, "wget"), "{s:#?}");
        let event = serde_json::from_str(DNS_NX).unwrap();
        app.event(0, &event);
        app.key(Key::Char('5'));
        let s = screen(&app, View::Dns, 80, 24);
        assert!(contains(&s, "nope.example"), "{s:#?}");
    }

    #[test]
    fn help_opens_on_question_mark_and_any_key_closes_it() {
        let mut app = app_with(&[]);
        app.key(Key::Char('?'));
        assert!(contains(
            &screen(&app, View::Overview, 80, 24),
            "netmon top: keys"
        ));
        app.key(Key::Char('x'));
        assert!(!contains(
            &screen(&app, View::Overview, 80, 24),
            "netmon top: keys"
        ));
    }

    #[test]
    fn the_live_connections_view_orders_filters_and_scrolls_as_the_built_rows_do() {
        // The live Connections view keeps only its flows' order and builds the rows it
        // draws; paused, it shows rows built in full. Both must agree on every column.
        let mut app = app_with(&[]);
        for i in 0..120u32 {
            let line = CONNECT_CURL
                .replace("43512", &(1000 + i * 7 % 120).to_string())
                .replace("\"pid\":1234", &format!("\"pid\":{}", i % 9))
                .replace(
                    "example.org",
                    if i % 3 == 0 { "B.example" } else { "a.example" },
                )
                .replace("/usr/bin/curl", &format!("/usr/bin/Tool{}", i % 4));
            app.event(0, &serde_json::from_str(&line).unwrap());
        }
        app.tick(chrono::Utc::now());
        app.key(Key::Char('3'));
        let column = |rows: &[crate::tui::app::Row], c: usize| {
            rows.iter().map(|r| r.keys[c].clone()).collect::<Vec<_>>()
        };
        for filter in ["", "tool2", "pid:4", ":1011"] {
            app.filter = filter.into();
            for sort in 0..View::Connections.columns().len() {
                for ascending in [true, false] {
                    let st = &mut app.views[View::Connections.index()];
                    st.sort = sort;
                    st.ascending = ascending;
                    app.pause(false);
                    app.refresh();
                    let live = app
                        .shown_rows(View::Connections, 0, usize::MAX)
                        .into_owned();
                    let window = app.shown_rows(View::Connections, 5, 7).into_owned();
                    app.pause(true);
                    app.refresh();
                    let built = app
                        .shown_rows(View::Connections, 0, usize::MAX)
                        .into_owned();
                    let what = format!("filter {filter:?}, column {sort}, ascending {ascending}");
                    assert!(!live.is_empty(), "{what}");
                    assert_eq!(column(&live, sort), column(&built, sort), "{what}");
                    let mut a = live.iter().map(|r| r.cells.clone()).collect::<Vec<_>>();
                    let mut b = built.iter().map(|r| r.cells.clone()).collect::<Vec<_>>();
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "{what}");
                    let want = live.iter().skip(5).take(7).cloned().collect::<Vec<_>>();
                    assert_eq!(window, want, "{what}");
                }
            }
        }
        app.pause(false);
        app.filter = "tool2".into();
        app.refresh();
        let s = screen(&app, View::Connections, 120, 40);
        assert!(contains(&s, "Connections (30 of 120)"), "{s:#?}");
    }

    #[test]
    fn rows_stay_under_their_caps() {
        use crate::tui::app::{App, Caps};
        let caps = Caps {
            flows: 50,
            processes: 20,
            ..Caps::default()
        };
        let mut app = App::new(vec!["a".into()], caps);
        for i in 0..500u32 {
            let line = CONNECT_CURL
                .replace("43512", &(1000 + i).to_string())
                .replace("\"pid\":1234", &format!("\"pid\":{i}"));
            let event = serde_json::from_str(&line).unwrap();
            app.event(0, &event);
        }
        app.tick(chrono::Utc::now());
        assert_eq!(app.count(View::Connections), 50);
        assert_eq!(app.count(View::Processes), 20);
    }
}
