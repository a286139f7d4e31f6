//! Hosts: the scanner's inventory from `host_up`/`host_down`/`port_*` events: state,
//! MAC, name, open ports with their services, last change.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
};

use super::{Theme, table};
use crate::tui::app::{App, View};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let widths = [
        Constraint::Length(15),
        Constraint::Length(5),
        Constraint::Length(17),
        Constraint::Length(12),
        Constraint::Min(12),
        Constraint::Length(11),
        Constraint::Length(8),
    ];
    table(frame, area, app, View::Hosts, &widths, theme);
}

#[cfg(test)]
mod tests {
    use crate::tui::{app::View, ui::testing::*};

    #[test]
    fn hosts_shows_the_inventory_with_ports() {
        let mut app = app_with(&all());
        app.view = View::Hosts;
        let s = screen(&app, View::Hosts, 100, 24);
        let h = line_of(&s, "10.0.0.9").expect("host listed");
        assert!(
            s[h].contains("up") && s[h].contains("02:00:00:00:00:09"),
            "{s:#?}"
        );
        assert!(s[h].contains("5432/tcp postgresql"), "{s:#?}");
    }
}
