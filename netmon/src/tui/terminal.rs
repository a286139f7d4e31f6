//! The terminal while `netmon top` runs: raw mode, the alternate screen, a hidden
//! cursor; [`Guard`] puts everything back when it is dropped, on every way out (a
//! return, an error, `q`), and [`install_panic_hook`] does the same before a panic
//! message is printed, so the shell is never left unusable.
use std::io::{self, Stdout, Write as _};

use anyhow::{Context as _, Result};
use crossterm::{
    cursor,
    event::{DisableBracketedPaste, EnableBracketedPaste},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// The terminal in UI mode; restored on drop.
pub struct Guard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Guard {
    /// Raw mode and the alternate screen. Fails (restoring what it changed) when
    /// stdout is not a terminal.
    pub fn enter() -> Result<Guard> {
        use std::io::IsTerminal as _;
        if !io::stdout().is_terminal() {
            anyhow::bail!(
                "netmon top needs a terminal: stdout is not one (run it in a terminal, or use `netmon run` for a stream)"
            );
        }
        install_panic_hook();
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let mut stdout = io::stdout();
        if let Err(e) = execute!(
            stdout,
            EnterAlternateScreen,
            EnableBracketedPaste,
            cursor::Hide
        ) {
            restore();
            return Err(e).context("cannot switch to the alternate screen");
        }
        let terminal = match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("cannot size the terminal");
            }
        };
        Ok(Guard { terminal })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor; harmless when they
/// were not entered. Errors are ignored: there is nothing better to do on the way out.
pub fn restore() {
    let mut stdout = io::stdout();
    let _ = execute!(
        stdout,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        cursor::Show
    );
    let _ = terminal::disable_raw_mode();
    let _ = stdout.flush();
}

/// Restores the terminal before the default panic message (once per process).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
