//! The rules' clock ([`RuleClock`]): monotonic time made from the events' own
//! timestamps, on which every window and cooldown is measured.
use chrono::{DateTime, Utc};

/// The rules' clock: monotonic time made from the events' own timestamps. It advances
/// with the newest event time seen and never goes back, so a backward step of the wall
/// clock (NTP, an operator, a recording spliced from two hosts) freezes it until time
/// moves forward again instead of making every window and cooldown look hours long;
/// and a replay still gives the live run's alerts, being pure arithmetic on the
/// recorded `ts`. Windows and cooldowns are measured on it, never on `ev.ts`.
///
/// Events do not arrive in exact time order: the kernel's CPUs fill one ring buffer, so
/// an event may be stamped microseconds before the one read ahead of it. An event older
/// than the newest by less than [`STEP_BACK_NS`] is such a straggler: the clock stands
/// still, and moves on when a newer event comes. (Counting a straggler's step back as
/// a step of the wall clock made rule time run ahead by the size of each reordering.)
/// An event older by more is a step of the wall clock: time stands still at it, and
/// moves on from it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleClock {
    /// The newest event time since the wall clock last stepped back (ns since the
    /// epoch).
    newest: Option<i64>,
    /// Rule time minus event time (ns): the sum of the wall clock's steps back.
    offset: i64,
}

/// How far back an event must be stamped, from the newest, to be a step of the wall
/// clock rather than a straggler (ns: one second).
pub const STEP_BACK_NS: i64 = 1_000_000_000;

impl RuleClock {
    /// The rule time of an event stamped `ts`. In integer nanoseconds: two of chrono's
    /// date additions per event cost more than most rules. (A `ts` outside the years
    /// 1677–2262, which nanoseconds cannot hold, is its own rule time.)
    pub fn tick(&mut self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let Some(t) = ts.timestamp_nanos_opt() else {
            return ts;
        };
        let newest = match self.newest {
            None => t,
            Some(newest) if t >= newest => t,
            Some(newest) if newest - t < STEP_BACK_NS => newest,
            Some(newest) => {
                // The wall clock stepped back: rule time stands still here.
                self.offset = self.offset.saturating_add(newest - t);
                t
            }
        };
        self.newest = Some(newest);
        let now = newest.saturating_add(self.offset);
        if now == t {
            ts
        } else {
            DateTime::from_timestamp_nanos(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::at;

    #[test]
    fn stragglers_neither_stop_nor_speed_the_rule_clock() {
        let ms = |n: i64| at(100) + chrono::TimeDelta::milliseconds(n);
        let mut clock = RuleClock::default();
        assert_eq!(clock.tick(ms(0)), ms(0));
        // Read after a newer event, stamped before it: time stands still…
        assert_eq!(clock.tick(ms(-1)), ms(0));
        // …and goes on with the next event's own time, not 1 ms ahead of it.
        assert_eq!(clock.tick(ms(2)), ms(2));
        // A busy stream out of order by up to 5 ms for a minute ends a minute on.
        for i in 0..60_000 {
            let jitter = [0, -5, 3, -2][i % 4];
            clock.tick(ms(2 + i as i64 + jitter));
        }
        assert_eq!(clock.tick(ms(60_010)), ms(60_010));
        // A step back of a second or more is the wall clock's: time stands still at it.
        assert_eq!(clock.tick(ms(59_000)), ms(60_010));
        assert_eq!(clock.tick(ms(59_010)), ms(60_020));
    }
}
