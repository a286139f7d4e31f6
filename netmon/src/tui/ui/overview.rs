//! The Overview: one block per agent (status, host, backend, uptime, events lost) with
//! sparklines of connections/s, bytes in and out, and alerts over the last minutes;
//! an agent that cannot be reached says why in its block.
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
    // Each agent gets 6 lines when there is room, else 2 (status only).
    let full = area.height as usize / agents.len() >= 6;
    let per = if full { 6 } else { 2 };
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
    let [line, sparks] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    frame.render_widget(Paragraph::new(facts), line);
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
}
