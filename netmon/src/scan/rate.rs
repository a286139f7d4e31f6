//! The global packets-per-second limit: every probe the scanner sends (a SYN, a connect,
//! an echo request, a UDP datagram) first takes a token here. One limiter is shared by
//! every task of a scan, so the limit holds for the scan as a whole.
//!
//! `Bucket` is the pure token bucket (time passed in); `RateLimiter` wraps it for tasks.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket that starts full. `burst` is at least one token.
    pub fn new(rate_pps: u32, burst: u32, now: Instant) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            rate: f64::from(rate_pps.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; returns how long the caller must wait before sending
    /// (zero when a token was available). The token is taken either way, so callers
    /// that wait the returned time are spaced at `rate` on average.
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The shared limiter; `None` inside means unlimited (`--rate 0`).
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<Mutex<Bucket>>,
}

impl RateLimiter {
    /// `rate_pps` 0 means no limit. The burst is a tenth of a second's worth.
    pub fn new(rate_pps: u32) -> RateLimiter {
        RateLimiter {
            bucket: (rate_pps > 0).then(|| {
                Mutex::new(Bucket::new(
                    rate_pps,
                    (rate_pps / 10).max(1),
                    Instant::now(),
                ))
            }),
        }
    }

    pub fn unlimited() -> RateLimiter {
        RateLimiter { bucket: None }
    }

    /// Takes a token; returns how long the caller must wait before sending (for
    /// callers on a thread of their own that sleep instead of awaiting).
    pub fn reserve(&self) -> Duration {
        match &self.bucket {
            None => Duration::ZERO,
            Some(b) => b
                .lock()
                .expect("rate limiter poisoned")
                .take(Instant::now()),
        }
    }

    /// Waits until one more packet may be sent.
    pub async fn acquire(&self) {
        let Some(bucket) = &self.bucket else { return };
        let wait = bucket
            .lock()
            .expect("rate limiter poisoned")
            .take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 5, t0);
        for _ in 0..5 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // The sixth must wait one interval, the seventh two.
        let w6 = b.take(t0).as_secs_f64();
        let w7 = b.take(t0).as_secs_f64();
        assert!((w6 - 0.01).abs() < 1e-9, "{w6}");
        assert!((w7 - 0.02).abs() < 1e-9, "{w7}");
    }

    #[test]
    fn long_run_average_is_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 100, t0);
        let mut now = t0;
        let mut sent = 0u32;
        // Callers that honour the wait: 5000 packets take about 4.9 s (100 burst).
        while sent < 5000 {
            now += b.take(now);
            sent += 1;
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 4.9).abs() < 0.01, "{secs}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 2, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), Duration::ZERO);
        assert!(b.take(later) > Duration::ZERO);
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let r = RateLimiter::new(0);
        let t = Instant::now();
        for _ in 0..10_000 {
            r.acquire().await;
        }
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
