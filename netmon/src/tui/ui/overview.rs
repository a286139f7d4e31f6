//! The Overview: one block per agent (status, host, backend, uptime, events lost) with
//! sparklines of connections/s, bytes in and out, and alerts over the last minutes,
//! and of connections per minute over the last hour (from the agent's history at
//! start); an agent that cannot be reached says why in its block.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Sparkline},
};

use super::Theme;
use crate::tui::app::{Agent, AgentStatus, App, bytes, duration};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let needle = app.filter.to_lowercase();
    let agents: Vec<&Agent> = app
        .agents
        .iter()
        .filter(|a| {
            needle.is_empty()
                || a.label.to_lowercase().contains(&needle)
                || a.host
                    .as_deref()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&needle)
        })
        .collect();
    if agents.is_empty() {
        frame.render_widget(Paragraph::new("no agent matches the filter"), area);
        return;
    }
    // Each agent gets 7 lines when there is room, else 2 (status only).
    let full = area.height as usize / agents.len() >= 7;
    let per = if full { 7 } else { 2 };
    let rows = Layout::vertical(
        agents
            .iter()
            .map(|_| Constraint::Length(per))
            .chain([Constraint::Min(0)]),
    )
    .split(area);
    for (a, rect) in agents.iter().zip(rows.iter()) {
        agent(frame, *rect, a, full, theme);
    }
}

fn agent(frame: &mut Frame, area: Rect, a: &Agent, full: bool, theme: Theme) {
    let status = match &a.status {
        AgentStatus::Live => Span::styled("live", theme.accent()),
        AgentStatus::Connecting => Span::raw("connecting…"),
        AgentStatus::Lagged(n) => Span::styled(format!("live, skipped {n} events"), theme.bad()),
        AgentStatus::Unreachable(why) => {
            Span::styled(format!("unreachable: {why} (retrying)"), theme.bad())
        }
    };
    let title = Line::from(vec![
        Span::styled(format!(" {} ", a.label), theme.header()),
        status,
        Span::raw(" "),
    ]);
    let facts = format!(
        "host {}  backend {}  up {}  events {}  lost {}  alerts {}",
        a.host.as_deref().unwrap_or("-"),
        a.backend.as_deref().unwrap_or("-"),
        a.uptime_s.map_or("-".into(), |s| duration(s as i64)),
        a.events,
        a.lost + a.lagged,
        a.alerts
    );
    let block = Block::default().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if !full {
        frame.render_widget(Paragraph::new(facts), inner);
        return;
    }
    let [line, sparks, hour] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(facts), line);
    let all = a.hour_points();
    let points = &all[all.len().saturating_sub(hour.width as usize)..];
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().title(format!(
                "conn/min, last {} min: {}",
                points.len(),
                points.iter().sum::<u64>()
            )))
            .data(points)
            .style(theme.accent()),
        hour,
    );
    let cols = Layout::horizontal([Constraint::Ratio(1, 4); 4]).split(sparks);
    let last = |q: &std::collections::VecDeque<u64>| q.back().copied().unwrap_or(0);
    let series = [
        (format!("conn/s {}", last(&a.conns)), &a.conns),
        (
            format!("in {}/s", bytes(last(&a.bytes_in) as f64)),
            &a.bytes_in,
        ),
        (
            format!("out {}/s", bytes(last(&a.bytes_out) as f64)),
            &a.bytes_out,
        ),
        (format!("alerts {}", a.alerts), &a.alert_rate),
    ];
    for ((label, data), rect) in series.iter().zip(cols.iter()) {
        let width = rect.width as usize;
        let points: Vec<u64> = data.iter().rev().take(width).rev().copied().collect();
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().title(label.as_str()))
                .data(&points)
                .style(theme.accent()),
            *rect,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::tui::{
        app::{AgentStatus, App, Caps, Msg, View},
        ui::testing::*,
    };

    #[test]
    fn overview_shows_each_agent_and_the_unreachable_one_says_why() {
        let mut app = App::new(
            vec!["http://a:9469".into(), "http://b:9469".into()],
            Caps::default(),
        );
        let event = serde_json::from_str(STATS).unwrap();
        app.handle(Msg::Event {
            agent: 0,
            event: std::sync::Arc::new(event),
        });
        app.handle(Msg::Status {
            agent: 1,
            status: AgentStatus::Unreachable("connection refused".into()),
        });
        app.tick(chrono::Utc::now());
        let s = screen(&app, View::Overview, 80, 24);
        assert!(contains(&s, "http://a:9469 live"), "{s:#?}");
        assert!(contains(&s, "up 1h02m"), "{s:#?}");
        assert!(contains(&s, "lost 3"), "{s:#?}");
        assert!(
            contains(&s, "unreachable: connection refused (retrying)"),
            "{s:#?}"
        );
    }

    /// The hour sparkline: the agent's history of the last hour at start (the minute
    /// being counted included), then the minutes watched (a minute without a tick
    /// counts 0).
    #[test]
    fn the_hour_sparkline_starts_from_the_history_and_goes_on_with_the_minutes_watched() {
        let mut app = App::new(vec!["http://a:9469".into()], Caps::default());
        let t0: chrono::DateTime<chrono::Utc> = "2026-12-07T10:30:20Z".parse().unwrap();
        app.tick(t0);
        let minute = |m: i64| t0 - chrono::Duration::seconds(20) + chrono::Duration::minutes(m);
        // History: 4 in this minute, 5 two minutes ago, 7 at 59 minutes (the oldest
        // minute shown), 100 at 60 (out of the hour).
        app.handle(Msg::Timeline {
            agent: 0,
            rows: vec![
                (minute(0), 4),
                (minute(-2), 5),
                (minute(-59), 7),
                (minute(-60), 100),
            ],
        });
        let points = app.agents[0].hour_points();
        assert_eq!(points.len(), 60);
        assert_eq!((points[0], points[57], points[59]), (7, 5, 4));
        assert_eq!(points.iter().sum::<u64>(), 16);
        let s = screen(&app, View::Overview, 80, 24);
        assert!(contains(&s, "conn/min, last 60 min: 16"), "{s:#?}");
        // Three more connections in this minute, seen live: 4 + 3.
        for i in 0..3 {
            let ev: crate::event::Event = serde_json::from_str(CONNECT_CURL).unwrap();
            app.handle(Msg::Event {
                agent: 0,
                event: std::sync::Arc::new(crate::event::Event {
                    ts: t0 + chrono::Duration::seconds(i),
                    ..ev
                }),
            });
        }
        app.tick(t0 + chrono::Duration::seconds(1));
        // Two minutes later (one without a tick): this minute's 7, then 0, then the
        // new minute's 0; the two oldest minutes gone.
        app.tick(minute(2) + chrono::Duration::seconds(1));
        let points = app.agents[0].hour_points();
        assert_eq!(points.len(), 60);
        assert_eq!((points[57], points[58], points[59]), (7, 0, 0));
        assert_eq!(points.iter().sum::<u64>(), 5 + 7);
    }
}
