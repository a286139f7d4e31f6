//! Alerts: newest first; Enter opens the selected alert's summary, recommendation and
//! sample flows.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::Line,
    widgets::{Block, Borders, Paragraph, Wrap},
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(18),
        Constraint::Min(20),
        Constraint::Length(10),
        Constraint::Length(8),
    ];
    let detail = if app.detail { app.alert_detail() } else { None };
    let Some(lines) = detail else {
        table(frame, area, app, View::Alerts, &widths, theme);
        return;
    };
    let [list, info] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
    table(frame, list, app, View::Alerts, &widths, theme);
    frame.render_widget(
        Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>())
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title(" alert (Enter closes) "),
            )
            .wrap(Wrap { trim: false }),
        info,
    );
}

#[cfg(test)]
mod tests {
    use crate::tui::{
        app::{Key, View},
        ui::testing::*,
    };

    #[test]
    fn alerts_list_and_details_on_enter() {
        let mut app = app_with(&all());
        app.view = View::Alerts;
        let s = screen(&app, View::Alerts, 80, 24);
        assert!(
            contains(&s, "SUSPICIOUS_PORT") && contains(&s, "high"),
            "{s:#?}"
        );
        app.key(Key::Enter);
        let s = screen(&app, View::Alerts, 80, 24);
        assert!(
            contains(&s, "What to do: Check what curl is doing."),
            "{s:#?}"
        );
        assert!(contains(&s, "10.0.0.66:4444"), "{s:#?}");
    }
}
