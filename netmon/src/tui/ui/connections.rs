//! Connections: the live flow list (proto, local, remote with its DNS name, state,
//! process, bytes, age); closed flows stay a few seconds.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Length(4),
        Constraint::Length(21),
        Constraint::Min(21),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(8),
    ];
    table(frame, area, app, View::Connections, &widths, theme);
}

#[cfg(test)]
mod tests {
    use crate::tui::{
        app::{Key, View},
        ui::testing::*,
    };

    #[test]
    fn connections_shows_peer_name_state_and_bytes() {
        let mut app = app_with(&all());
        app.view = View::Connections;
        let s = screen(&app, View::Connections, 120, 24);
        let curl = line_of(&s, "curl").expect("curl's flow");
        assert!(s[curl].contains("example.org (10.0.0.9:443)"), "{s:#?}");
        assert!(s[curl].contains("established"), "{s:#?}");
        let wget = line_of(&s, "wget").expect("wget's flow");
        assert!(s[wget].contains("488.3K"), "{s:#?}");
        // Sort by the `recv` column (the 7th): descending puts wget first.
        for _ in 0..6 {
            app.key(Key::Char('s'));
        }
        let s = screen(&app, View::Connections, 120, 24);
        assert!(contains(&s, "recv▼"), "{s:#?}");
        assert!(
            line_of(&s, "wget").unwrap() < line_of(&s, "curl").unwrap(),
            "{s:#?}"
        );
        // Filter by port.
        for c in "/:443".chars() {
            app.key(Key::Char(c));
        }
        let s = screen(&app, View::Connections, 80, 24);
        assert!(contains(&s, "curl") && !contains(&s, "wget"), "{s:#?}");
        assert!(contains(&s, "filter: :443_"), "{s:#?}");
    }
}
