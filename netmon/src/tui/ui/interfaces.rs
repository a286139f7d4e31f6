//! Interfaces: rx/tx per interface, read locally from `/proc/net/dev` (in-process
//! source); agents do not send these yet, which the view says.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    widgets::Paragraph,
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Min(12),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    let Some(note) = &app.interfaces_note else {
        table(frame, area, app, View::Interfaces, &widths, theme);
        return;
    };
    let [line, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(note.as_str()), line);
    table(frame, rest, app, View::Interfaces, &widths, theme);
}

#[cfg(test)]
mod tests {
    use crate::tui::{
        app::{IfaceCounters, Msg, View},
        ui::testing::*,
    };

    #[test]
    fn interfaces_show_rates_between_two_reads() {
        let mut app = app_with(&[]);
        app.view = View::Interfaces;
        let c = |rx, tx| {
            Msg::Interfaces(vec![IfaceCounters {
                name: "eth0".into(),
                rx_bytes: rx,
                tx_bytes: tx,
            }])
        };
        app.handle(c(1000, 0));
        app.handle(c(3048, 1024));
        let s = screen(&app, View::Interfaces, 80, 24);
        let l = line_of(&s, "eth0").expect("eth0");
        assert!(s[l].contains("2.0K/s") && s[l].contains("1.0K/s"), "{s:#?}");
    }
}
