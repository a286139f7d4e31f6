//! [`Span`]: a length of time as the configuration writes it, `"30s"`, `"500ms"`, `"5m"`,
//! `"2h"`, `"1d"` (or a bare number of seconds), the same syntax `[scan]` uses.
use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time in the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(Duration);

impl Span {
    pub const fn from_secs(secs: u64) -> Span {
        Span(Duration::from_secs(secs))
    }

    pub fn as_std(self) -> Duration {
        self.0
    }

    /// As a `chrono::Duration` (saturating), for windows over events' own timestamps.
    pub fn as_chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        // One parser for every duration in the file: `[scan]`'s.
        crate::scan::config::parse_duration(s)
            .map(Span)
            .ok_or_else(|| format!("`{s}` is not a duration (try \"30s\", \"5m\", \"1h\")"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            write!(f, "{}ms", self.0.as_millis())
        }
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"30s\", \"5m\" or \"1h\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map(Span::from_secs)
                    .map_err(|_| E::custom(format!("{v} is not a duration: expected 0 or more")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Span, E> {
                Ok(Span::from_secs(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Span, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows_the_scan_syntax() {
        for (text, secs) in [
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86400),
            ("90", 90),
        ] {
            assert_eq!(
                text.parse::<Span>().unwrap(),
                Span::from_secs(secs),
                "{text}"
            );
        }
        assert_eq!("500ms".parse::<Span>().unwrap().to_string(), "500ms");
        assert_eq!(Span::from_secs(60).to_string(), "60s");
        assert!("soon".parse::<Span>().is_err());
    }
}
