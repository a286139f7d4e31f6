//! Makes strings that others wrote safe to print on a terminal: process names, command
//! lines, DNS names and answers, banners and versions of scanned hosts.
//!
//! Every text renderer passes each string field through [`for_terminal`]: control
//! characters (C0, DEL, C1) and the Unicode bidirectional controls (which reorder what
//! a reader sees, "Trojan Source") become visible escapes such as `\x1b` or
//! `\u{202e}`, so a hostile value can neither move the cursor, clear the screen, forge
//! a line, nor hide text. [`bounded`] cuts remote-supplied strings to a length.
//!
//! Written by hand: the crates that exist strip ANSI sequences (`strip-ansi-escapes`)
//! but leave other controls and bidi overrides, and stripping hides that something
//! was there, which a security monitor should show.
use std::{borrow::Cow, fmt::Write as _};

/// `s` with every character that could act on a terminal written as a visible escape.
/// Clean strings come back unchanged (borrowed); in a string that needs escaping,
/// backslashes are doubled too, so an escape in the output can never be mistaken for
/// one that the input spelled out.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max_chars` characters of `s`; a cut string ends with `…`.
pub fn bounded(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some((end, _)) => {
            let keep = s[..end]
                .char_indices()
                .nth(max_chars.saturating_sub(1))
                .map_or(end, |(i, _)| i);
            Cow::Owned(format!("{}…", &s[..keep]))
        }
    }
}

/// The most characters of one remote-supplied string (a banner's version, a host's
/// name, a DNS answer) that a text renderer shows.
pub const MAX_REMOTE_CHARS: usize = 256;

/// A remote-supplied string for a text renderer: cut to [`MAX_REMOTE_CHARS`], then
/// escaped with [`for_terminal`].
pub fn remote(s: &str) -> String {
    for_terminal(&bounded(s, MAX_REMOTE_CHARS)).into_owned()
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069: the characters that change the
/// order in which text is displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn push_escape(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strings_are_borrowed_unchanged() {
        for s in [
            "curl",
            "www.example.com",
            "OpenSSH_9.2p1 Debian-2",
            "C:\\path",
            "naïve 東京",
        ] {
            assert!(matches!(for_terminal(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn controls_and_bidi_overrides_become_visible() {
        assert_eq!(for_terminal("\x1b[2J\x1b[Hroot"), "\\x1b[2J\\x1b[Hroot");
        assert_eq!(for_terminal("a\nforged line"), "a\\nforged line");
        assert_eq!(for_terminal("del\x7f c1\u{9b}31m"), "del\\x7f c1\\x9b31m");
        assert_eq!(for_terminal("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(for_terminal("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        // An escape the input spelled out stays distinguishable from a real one.
        assert_eq!(for_terminal("\\x1b\x1b"), "\\\\x1b\\x1b");
    }

    #[test]
    fn no_output_character_acts_on_a_terminal() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = for_terminal(&all);
        assert!(!out.chars().any(needs_escape));
    }

    #[test]
    fn bounded_cuts_on_character_boundaries() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
        assert_eq!(bounded("abcdefghijk", 5), "abcd…");
        assert_eq!(bounded("東京東京東京", 3), "東京…");
        assert_eq!(bounded("x", 0), "…");
    }
}
