//! Turns kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) into wall-clock time.
//!
//! The offset between CLOCK_REALTIME and CLOCK_MONOTONIC is sampled at start and can be
//! refreshed (NTP steps the realtime clock); conversion itself is pure arithmetic.
use chrono::{DateTime, Utc};

/// Realtime minus monotonic, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootClock {
    offset_ns: i128,
}

impl BootClock {
    /// An offset from a known pair of readings (for tests and replays).
    pub fn from_offset_ns(offset_ns: i128) -> Self {
        BootClock { offset_ns }
    }

    /// Samples both clocks now. The monotonic clock is read on both sides of the
    /// realtime read and averaged, which keeps the error under a microsecond.
    pub fn sample() -> Self {
        let before = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        let after = read(libc::CLOCK_MONOTONIC);
        BootClock {
            offset_ns: real - (before + after) / 2,
        }
    }

    /// Wall-clock time of a kernel monotonic timestamp.
    pub fn to_wall(&self, ktime_ns: u64) -> DateTime<Utc> {
        // In i64 while it fits (until 2262): the i128 division below is a library
        // call, once per event.
        if let (Ok(k), Ok(offset)) = (i64::try_from(ktime_ns), i64::try_from(self.offset_ns))
            && let Some(ns) = k.checked_add(offset)
        {
            return DateTime::from_timestamp_nanos(ns);
        }
        let ns = ktime_ns as i128 + self.offset_ns;
        let secs = ns.div_euclid(1_000_000_000) as i64;
        let nanos = ns.rem_euclid(1_000_000_000) as u32;
        DateTime::from_timestamp(secs, nanos).unwrap_or_default()
    }

    /// The kernel monotonic clock now, in nanoseconds.
    pub fn monotonic_now_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC) as u64
    }
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime cannot fail for these clocks.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_the_offset() {
        let clock = BootClock::from_offset_ns(1_700_000_000_000_000_000);
        let t = clock.to_wall(1_500_000_001);
        assert_eq!(t.timestamp(), 1_700_000_001);
        assert_eq!(t.timestamp_subsec_nanos(), 500_000_001);
    }

    #[test]
    fn beyond_i64_nanoseconds_it_still_converts() {
        let clock = BootClock::from_offset_ns(i64::MAX as i128 + 1_000_000_000);
        let t = clock.to_wall(0);
        assert_eq!(t.timestamp(), i64::MAX / 1_000_000_000 + 1);
        let near = BootClock::from_offset_ns(-1_500_000_000);
        assert_eq!(near.to_wall(0).timestamp(), -2);
        assert_eq!(near.to_wall(0).timestamp_subsec_nanos(), 500_000_000);
    }

    #[test]
    fn a_fresh_sample_maps_now_to_now() {
        let clock = BootClock::sample();
        let wall = clock.to_wall(BootClock::monotonic_now_ns());
        let drift = (Utc::now() - wall).num_milliseconds().abs();
        assert!(drift < 50, "drift {drift} ms");
    }
}
