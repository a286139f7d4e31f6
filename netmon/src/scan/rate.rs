//! The global packets-per-second limit: every probe the scanner sends (a SYN, a connect,
//! an echo request, a UDP datagram) first takes a token here. One limiter is shared by
//! every task of a scan, so the limit holds for the scan as a whole.
//!
//! `Bucket` is the pure token bucket (time passed in); `RateLimiter` wraps it for tasks.
//!
//! `Window` is the SYN scan's congestion window (as nmap's and TCP's): how many probes
//! may be unanswered at once. It grows with every answer (doubling per round trip in
//! slow start, then by one per window) and halves when many probes of one epoch needed
//! a retransmission or the send queue is full (see `Window`). With it
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
///
/// Random loss is not congestion: a lossy radio or a 2% lossy link loses probes at a
/// steady rate however slowly they are sent, and halving on every loss (as TCP's
/// Reno does) would crawl on such a link. So losses are counted per epoch (one
/// retransmission timeout) and the window is cut only when the epoch's share of lost
/// probes passes `LOSS_CUT` (the sign of a queue overflowing), or at once on a full
/// send queue. Probes that end unanswered after their last try (filtered ports behind
/// a firewall that drops, or one that rate-limits its ICMP errors) say nothing about
/// the path: they grow the window slowly up to `SILENT_CEILING`, so a host that
/// answers few probes cannot stall the scan at the starting window.
#[derive(Debug, Clone)]
pub struct Window {
    cwnd: f64,
    ssthresh: f64,
    min: f64,
    max: f64,
    /// Smoothed round trip of unambiguous answers (Karn: first tries only).
    srtt: Option<Duration>,
    epoch_start: Option<Instant>,
    epoch_answers: u32,
    epoch_losses: u32,
    last_cut: Option<Instant>,
    /// How many times the window was cut (for tests and timing output).
    pub cuts: u64,
}

/// The share of an epoch's answers that must have needed a retransmission before the
/// window is cut.
pub const LOSS_CUT: f64 = 0.10;
/// Answers an epoch needs before its loss share is judged.
const EPOCH_MIN_ANSWERS: u32 = 20;
/// How far probes that never get an answer may grow the window.
pub const SILENT_CEILING: f64 = 1024.0;

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
            epoch_start: None,
            epoch_answers: 0,
            epoch_losses: 0,
            last_cut: None,
            cuts: 0,
        }
    }

    /// A round trip measured before the scan (discovery's echo reply): the first
    /// retransmission timeout follows it instead of the whole `--timeout`.
    pub fn seed_rtt(&mut self, rtt: Duration) {
        if self.srtt.is_none() {
            self.srtt = Some(rtt);
        }
    }

    /// How many probes may be unanswered now.
    pub fn size(&self) -> usize {
        self.cwnd as usize
    }

    fn grow(&mut self) {
        if self.cwnd < self.ssthresh {
            self.cwnd += 1.0;
        } else {
            self.cwnd += 1.0 / self.cwnd;
        }
        self.cwnd = self.cwnd.min(self.max);
    }

    /// One answer came at `now`; `rtt` when it answered a first try (an unambiguous
    /// sample), `retried` when it answered a retransmission (the first try was lost).
    pub fn on_answer(&mut self, rtt: Option<Duration>, retried: bool, now: Instant) {
        self.grow();
        if let Some(rtt) = rtt {
            self.srtt = Some(match self.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
        }
        self.epoch_answers += 1;
        if retried {
            self.epoch_losses += 1;
        }
        self.end_epoch_if_due(now);
    }

    /// A probe got no answer after its last try.
    pub fn on_silence(&mut self, now: Instant) {
        if self.cwnd < SILENT_CEILING.min(self.max) {
            self.cwnd += 1.0;
        }
        self.end_epoch_if_due(now);
    }

    fn end_epoch_if_due(&mut self, now: Instant) {
        let len = self.retransmit_timeout(Duration::from_secs(1));
        let start = *self.epoch_start.get_or_insert(now);
        if now.saturating_duration_since(start) < len {
            return;
        }
        if self.epoch_answers >= EPOCH_MIN_ANSWERS
            && f64::from(self.epoch_losses) > LOSS_CUT * f64::from(self.epoch_answers)
        {
            self.cut(now);
        }
        self.epoch_start = Some(now);
        self.epoch_answers = 0;
        self.epoch_losses = 0;
    }

    /// The send queue was full (`ENOBUFS`): halve the window, at most once per
    /// retransmission timeout.
    pub fn on_full_queue(&mut self, now: Instant) {
        self.cut(now);
    }

    fn cut(&mut self, now: Instant) {
        let hold = self.retransmit_timeout(Duration::from_secs(1));
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
    fn window_grows_with_answers_and_is_cut_only_by_heavy_loss() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let rtt = Some(Duration::from_millis(20));
        let mut w = Window::new(10, 4, 1000);
        assert_eq!(w.size(), 10);
        // Slow start: one more per answer, so a window's worth of answers doubles it.
        for _ in 0..10 {
            w.on_answer(rtt, false, t0);
        }
        assert_eq!(w.size(), 20);
        // 4% of the answers needed a retry (a 2% lossy link each way): no cut.
        for i in 0..100 {
            w.on_answer(None, i % 25 == 0, ms(i));
        }
        assert_eq!(w.cuts, 0);
        assert_eq!(w.size(), 120);
        // 30% lost in an epoch: cut once, and not again within the same epoch.
        for i in 0..100 {
            w.on_answer(None, i % 3 == 0, ms(100 + i / 10));
        }
        w.on_answer(None, true, ms(200));
        assert_eq!(w.cuts, 1, "{w:?}");
        let after = w.size();
        assert!(after < 120, "{after}");
        // A full send queue cuts at once, but not twice within a timeout.
        w.on_full_queue(ms(400));
        w.on_full_queue(ms(401));
        assert_eq!(w.cuts, 2);
        // Never below the floor nor above the ceiling.
        for i in 0..20 {
            w.on_full_queue(ms(1000 + i * 100));
        }
        assert_eq!(w.size(), 4);
        let mut w = Window::new(10, 4, 50);
        for _ in 0..1000 {
            w.on_answer(None, false, t0);
        }
        assert_eq!(w.size(), 50);
    }

    #[test]
    fn silence_grows_the_window_up_to_its_own_ceiling() {
        let t0 = Instant::now();
        let mut w = Window::new(64, 8, 16_384);
        for _ in 0..5000 {
            w.on_silence(t0);
        }
        assert_eq!(w.size(), SILENT_CEILING as usize);
        let mut w = Window::new(64, 8, 16_384);
        assert_eq!(
            w.retransmit_timeout(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        w.seed_rtt(Duration::from_millis(2));
        assert_eq!(
            w.retransmit_timeout(Duration::from_secs(1)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn retransmit_timeout_follows_the_round_trip_within_bounds() {
        let max = Duration::from_secs(1);
        let mut w = Window::new(10, 4, 100);
        assert_eq!(w.retransmit_timeout(max), max);
        w.on_answer(Some(Duration::from_millis(20)), false, Instant::now());
        assert_eq!(w.retransmit_timeout(max), Duration::from_millis(80));
        let mut w = Window::new(10, 4, 100);
        w.on_answer(Some(Duration::from_micros(30)), false, Instant::now());
        assert_eq!(w.retransmit_timeout(max), Duration::from_millis(50));
        w.on_answer(Some(Duration::from_secs(5)), false, Instant::now());
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
