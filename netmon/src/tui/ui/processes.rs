//! Processes: per process (name, pid, user, container) its connections, remote peers
//! and bytes/s each way, as nethogs and bandwhich show them.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Min(10),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    table(frame, area, app, View::Processes, &widths, theme);
}

#[cfg(test)]
mod tests {
    use crate::tui::{
        app::{Key, View},
        ui::testing::*,
    };

    #[test]
    fn processes_lists_each_process_with_its_bytes_and_sorts_and_filters() {
        let mut app = app_with(&all());
        app.view = View::Processes;
        let s = screen(&app, View::Processes, 80, 24);
        let curl = line_of(&s, "curl").expect("curl listed");
        let wget = line_of(&s, "wget").expect("wget listed");
        assert!(
            s[curl].contains("1234") && s[curl].contains("alice"),
            "{s:#?}"
        );
        assert!(
            s[wget].contains("488.3K/s"),
            "wget's 500000 bytes in one tick: {s:#?}"
        );
        // Sorted by name, descending: wget above curl.
        assert!(wget < curl, "{s:#?}");
        app.key(Key::Char('r'));
        let s = screen(&app, View::Processes, 80, 24);
        assert!(
            line_of(&s, "curl").unwrap() < line_of(&s, "wget").unwrap(),
            "{s:#?}"
        );
        // Filter by pid.
        for c in "/99".chars() {
            app.key(Key::Char(c));
        }
        app.key(Key::Enter);
        let s = screen(&app, View::Processes, 80, 24);
        assert!(contains(&s, "wget") && !contains(&s, "curl"), "{s:#?}");
        assert!(contains(&s, "(1 of 2)"), "{s:#?}");
    }
}
