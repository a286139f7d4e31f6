//! `netmon top`: a live terminal UI over the event stream of the in-process pipeline
//! or of one or more agents. `app.rs` holds the state (pure), `past.rs` the time
//! cursor's window and rows (pure), `ui.rs` + `ui/` draw it (pure), `source.rs` brings
//! the messages and asks the agents' history, `terminal.rs` owns the terminal. This file
//! is the loop that ties them: read what the source has, tick once a second, draw at
//! most every [`FRAME`] (and on a key or a resize), handle keys.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};

pub mod app;
pub mod past;
pub mod source;
pub mod terminal;
pub mod ui;

use app::{App, Key, KeyOutcome};
use source::Source;

/// Between two draws while events arrive: 5 a second.
pub const FRAME: Duration = Duration::from_millis(200);
/// Between two ticks (sparkline buckets, rates, caps).
const TICK: Duration = Duration::from_secs(1);
/// Messages handled between two looks at the keyboard.
const BATCH: usize = 20_000;

/// Runs the UI until `q` (or the source ends) and restores the terminal.
pub fn run(mut app: App, mut source: Source) -> Result<()> {
    let theme = ui::Theme::from_env();
    let mut guard = terminal::Guard::enter()?;
    let local = source.local();
    if local {
        app.no_history = Some(
            "no history in-process: watch an agent (sudo netmon run; netmon top) to move back in time".into(),
        );
    }
    if !local {
        app.interfaces_note = Some(
            "Agents do not send interface counters yet; run `sudo netmon top` on the host.".into(),
        );
    }
    let mut next_tick = Instant::now();
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        let mut ended = false;
        for _ in 0..BATCH {
            match source.try_next() {
                Ok(Some(msg)) => {
                    app.handle(msg);
                    dirty = true;
                }
                Ok(None) => break,
                Err(source::Ended) => {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            drop(guard);
            anyhow::bail!("the event source stopped (netmon was told to stop, or lost its agents)");
        }
        if let Some(window) = app.take_history_request() {
            source.ask_history(window);
        }
        let now = Instant::now();
        if now >= next_tick {
            if local {
                app.handle(app::Msg::Interfaces(source::read_interfaces()));
            }
            app.tick(chrono::Utc::now());
            next_tick = now + TICK;
            dirty = true;
        }
        if dirty && last_draw.is_none_or(|t| now.duration_since(t) >= FRAME) {
            guard
                .terminal
                .draw(|f| ui::draw(f, &app, theme))
                .context("cannot draw on the terminal")?;
            last_draw = Some(now);
            dirty = false;
        }
        // Wait for a key at most until the next frame is due.
        let wait = Duration::from_millis(25);
        if event::poll(wait).context("cannot read the terminal")? {
            let mut redraw_now = false;
            while event::poll(Duration::ZERO).unwrap_or(false) {
                match event::read().context("cannot read the terminal")? {
                    TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                        if k.modifiers.contains(KeyModifiers::CONTROL)
                            && matches!(k.code, KeyCode::Char('c'))
                        {
                            return Ok(());
                        }
                        if let Some(key) = key_of(k.code, k.modifiers)
                            && app.key(key) == KeyOutcome::Quit
                        {
                            return Ok(());
                        }
                        redraw_now = true;
                    }
                    TermEvent::Resize(..) => {
                        let _ = guard.terminal.autoresize();
                        redraw_now = true;
                    }
                    _ => {}
                }
            }
            if redraw_now {
                guard
                    .terminal
                    .draw(|f| ui::draw(f, &app, theme))
                    .context("cannot draw on the terminal")?;
                last_draw = Some(Instant::now());
                dirty = false;
            }
        }
    }
}

fn key_of(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Tab if mods.contains(KeyModifiers::SHIFT) => Key::BackTab,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Right => Key::Tab,
        KeyCode::Left => Key::BackTab,
        _ => return None,
    })
}
