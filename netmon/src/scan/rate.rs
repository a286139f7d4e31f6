//! The global packets-per-second limit: every probe the scanner sends (a SYN, a connect,
//! an echo request, a UDP datagram) first takes a token here. One limiter is shared by
//! every task of a scan, so the limit holds for the scan as a whole.
//!
//! `Bucket` is the pure token bucket (time passed in); `RateLimiter` wraps it for tasks.
//!
//! `Window` is the SYN scan's congestion window (as nmap's and TCP's): how many probes
//! may be unanswered at once. It grows with every answer (doubling per round trip in
//! slow start, then by one per window) and halves on a proven loss (a retransmitted
//! probe answered) or a full send queue, at most once per round trip. With it
//! `netmon scan` needs no fixed rate: `--rate` stays a hard cap on top, and the
//! monitor of `netmon run` keeps its fixed, polite budget.
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

/// A congestion window over probes in flight; pure (time comes in).
#[derive(Debug, Clone)]
pub struct Window {
    cwnd: f64,
    ssthresh: f64,
    min: f64,
    max: f64,
    /// Smoothed round trip of unambiguous answers (Karn: first tries only).
    srtt: Option<Duration>,
    last_cut: Option<Instant>,
    /// How many times the window was cut (for tests and timing output).
    pub cuts: u64,
}

impl Window {
    /// Starts at `initial` probes in flight, never below `min` nor above `max`.
    pub fn new(initial: usize, min: usize, max: usize) -> Window {
        let (min, max) = (min.max(1) as f64, max.max(min.max(1)) as f64);
        Window {
            cwnd: (initial as f64).clamp(min, max),
            ssthresh: max,
            min,
            max,
            srtt: None,
            last_cut: None,
            cuts: 0,
        }
    }

    /// How many probes may be unanswered now.
    pub fn size(&self) -> usize {
        self.cwnd as usize
    }

    /// One answer came; `rtt` when it answered a first try (an unambiguous sample).
    pub fn on_answer(&mut self, rtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            self.cwnd += 1.0;
        } else {
            self.cwnd += 1.0 / self.cwnd;
        }
        self.cwnd = self.cwnd.min(self.max);
        if let Some(rtt) = rtt {
            self.srtt = Some(match self.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
        }
    }

    /// A probe was lost (its retransmission was answered) or the send queue was full:
    /// halve the window, at most once per round trip.
    pub fn on_loss(&mut self, now: Instant) {
        let hold = self
            .srtt
            .unwrap_or(Duration::from_millis(10))
            .max(Duration::from_millis(1));
        if self
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < hold)
        {
            return;
        }
        self.last_cut = Some(now);
        self.cuts += 1;
        self.ssthresh = (self.cwnd / 2.0).max(self.min);
        self.cwnd = self.ssthresh;
    }

    /// How long to wait for an answer before retransmitting: four smoothed round
    /// trips (at least 50 ms), never more than `max` (the user's `--timeout`), and
    /// `max` until an answer has been timed.
    pub fn retransmit_timeout(&self, max: Duration) -> Duration {
        match self.srtt {
            None => max,
            Some(s) => (s * 4).max(Duration::from_millis(50)).min(max),
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

    #[test]
    fn window_grows_with_answers_and_halves_once_per_round_trip_on_loss() {
        let t0 = Instant::now();
        let mut w = Window::new(10, 4, 1000);
        assert_eq!(w.size(), 10);
        // Slow start: one more per answer, so a window's worth of answers doubles it.
        for _ in 0..10 {
            w.on_answer(Some(Duration::from_millis(20)));
        }
        assert_eq!(w.size(), 20);
        w.on_loss(t0);
        assert_eq!(w.size(), 10);
        // A second loss within the same round trip does not cut again.
        w.on_loss(t0 + Duration::from_millis(5));
        assert_eq!(w.size(), 10);
        assert_eq!(w.cuts, 1);
        // After the cut: congestion avoidance, about one more per window of answers.
        for _ in 0..11 {
            w.on_answer(None);
        }
        assert_eq!(w.size(), 11);
        w.on_loss(t0 + Duration::from_millis(30));
        assert_eq!(w.size(), 5);
        // Never below the floor nor above the ceiling.
        for i in 0..10 {
            w.on_loss(t0 + Duration::from_secs(1 + i));
        }
        assert_eq!(w.size(), 4);
        let mut w = Window::new(10, 4, 50);
        for _ in 0..1000 {
            w.on_answer(None);
        }
        assert_eq!(w.size(), 50);
    }

    #[test]
    fn retransmit_timeout_follows_the_round_trip_within_bounds() {
        let max = Duration::from_secs(1);
        let mut w = Window::new(10, 4, 100);
        assert_eq!(w.retransmit_timeout(max), max);
        w.on_answer(Some(Duration::from_millis(20)));
        assert_eq!(w.retransmit_timeout(max), Duration::from_millis(80));
        let mut w = Window::new(10, 4, 100);
        w.on_answer(Some(Duration::from_micros(30)));
        assert_eq!(w.retransmit_timeout(max), Duration::from_millis(50));
        w.on_answer(Some(Duration::from_secs(5)));
        assert_eq!(w.retransmit_timeout(max), max);
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
