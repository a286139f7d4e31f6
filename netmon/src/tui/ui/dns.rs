//! DNS: per process its queries, NXDOMAIN rate, top name and distinct names.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Length(16),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Min(20),
        Constraint::Length(5),
        Constraint::Length(8),
    ];
    table(frame, area, app, View::Dns, &widths, theme);
}

#[cfg(test)]
mod tests {
    use crate::tui::{app::View, ui::testing::*};

    #[test]
    fn dns_counts_nxdomain_and_escapes_hostile_names() {
        let mut app = app_with(&all());
        app.view = View::Dns;
        let s = screen(&app, View::Dns, 80, 24);
        let curl = line_of(&s, "curl 1234").expect("curl's queries");
        assert!(
            s[curl].contains("100%") && s[curl].contains("nope.example"),
            "{s:#?}"
        );
        assert!(
            contains(&s, "evil\\x1b[2Jname"),
            "escaped, never raw: {s:#?}"
        );
        assert!(!s.iter().any(|l| l.contains('\u{1b}')), "{s:#?}");
    }
}
