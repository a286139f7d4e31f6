//! The uptime guess from TCP timestamps (RFC 7323's TSval) of two or more SYN-ACKs:
//! pure, time passed in.
//!
//! A host's timestamp clock ticks at a fixed rate from some origin. When the rate
//! measured between the first and the last sample is recognisably 100, 250 or 1000 Hz
//! (within `TOLERANCE`, over at least `MIN_SPAN`), TSval / rate is how long the clock
//! has run: the uptime when the origin is the boot, as on older kernels and most
//! BSDs. It is a guess, modulo the counter's wrap (2^32 ticks: 49.7 days at 1000 Hz),
//! as nmap says too.
//!
//! Linux since 4.10 adds a secret random offset unless `net.ipv4.tcp_timestamps = 2`
//! (per address pair from 4.13; per four-tuple on the 6.18 kernel netmon is tested on:
//! two ports of one host answer with unrelated TSvals). The rate still measures over
//! the SYN-ACKs of one four-tuple (the timing probes, `syn::timestamp_probes`), but
//! TSval / rate is then not the uptime, and nothing outside the host can tell the two
//! cases apart. The guess therefore carries a `note` whenever the
//! fingerprint says Linux (see `docs/scan.md`).
use std::time::{Duration, Instant};

pub use crate::event::scan::UptimeGuess;

/// The recognised clock rates.
pub const RATES: [u32; 3] = [100, 250, 1000];
/// How far the measured rate may be from a recognised one.
pub const TOLERANCE: f64 = 0.15;
/// The shortest span of samples a rate is measured over.
pub const MIN_SPAN: Duration = Duration::from_millis(90);

/// The rate the samples show, if it is a recognised one. Samples are (TSval, when it
/// came), in arrival order.
pub fn clock_rate(samples: &[(u32, Instant)]) -> Option<u32> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.1.checked_duration_since(first.1)?;
    if span < MIN_SPAN {
        return None;
    }
    let ticks = last.0.wrapping_sub(first.0);
    // A clock that went backwards (wrapped subtraction huge) or stood still.
    if ticks == 0 || ticks > 1 << 31 {
        return None;
    }
    let hz = f64::from(ticks) / span.as_secs_f64();
    RATES
        .into_iter()
        .find(|&r| (hz / f64::from(r) - 1.0).abs() <= TOLERANCE)
}

/// The guess at `now` (and `now_wall`, for the boot time), or `None` without a
/// recognised rate. `linux`: the fingerprint says Linux (see the module's comment).
pub fn guess(
    samples: &[(u32, Instant)],
    now: Instant,
    now_wall: chrono::DateTime<chrono::Utc>,
    linux: bool,
) -> Option<UptimeGuess> {
    let hz = clock_rate(samples)?;
    let (ts, at) = *samples.last()?;
    let since = now.saturating_duration_since(at).as_secs();
    let seconds = u64::from(ts) / u64::from(hz) + since;
    let wrap_days = f64::from(u32::MAX) / f64::from(hz) / 86_400.0;
    let booted = now_wall
        .checked_sub_signed(chrono::TimeDelta::seconds(seconds as i64))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut note = format!("guess, modulo wrap (every {wrap_days:.1} days at {hz} Hz)");
    if linux {
        note.push_str(
            "; Linux adds a random offset per connection unless net.ipv4.tcp_timestamps = 2, \
             so with its default this is not the uptime",
        );
    }
    Some(UptimeGuess {
        clock_hz: hz,
        seconds,
        booted,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(hz: f64, start: u32, n: u32, step_ms: u64) -> Vec<(u32, Instant)> {
        let t0 = Instant::now();
        (0..n)
            .map(|i| {
                let dt = Duration::from_millis(step_ms * u64::from(i));
                (start.wrapping_add((dt.as_secs_f64() * hz) as u32), t0 + dt)
            })
            .collect()
    }

    #[test]
    fn recognised_rates_and_others() {
        assert_eq!(clock_rate(&samples(1000.0, 5, 3, 100)), Some(1000));
        assert_eq!(clock_rate(&samples(250.0, 5, 3, 100)), Some(250));
        assert_eq!(clock_rate(&samples(100.0, 5, 3, 100)), Some(100));
        assert_eq!(clock_rate(&samples(1_000_000.0, 5, 3, 100)), None);
        assert_eq!(clock_rate(&samples(500.0, 5, 3, 100)), None);
        // Too short a span, one sample, a clock that stands still or goes back.
        assert_eq!(clock_rate(&samples(1000.0, 5, 3, 10)), None);
        assert_eq!(clock_rate(&samples(1000.0, 5, 1, 100)), None);
        assert_eq!(clock_rate(&samples(0.0, 5, 3, 100)), None);
        let mut back = samples(1000.0, 5000, 3, 100);
        back.reverse();
        assert_eq!(clock_rate(&back), None);
        // Across the wrap.
        assert_eq!(
            clock_rate(&samples(1000.0, u32::MAX - 50, 3, 100)),
            Some(1000)
        );
    }

    #[test]
    fn the_guess_says_what_it_is() {
        let s = samples(1000.0, 3_600_000, 3, 100);
        let now = s.last().unwrap().1;
        let wall = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .to_utc();
        let g = guess(&s, now, wall, false).unwrap();
        assert_eq!((g.clock_hz, g.seconds), (1000, 3600));
        assert_eq!(g.booted, "2026-01-01T23:00:00Z");
        assert!(
            g.note.starts_with("guess, modulo wrap (every 49.7 days"),
            "{}",
            g.note
        );
        assert!(
            guess(&s, now, wall, true)
                .unwrap()
                .note
                .contains("tcp_timestamps = 2")
        );
    }
}
