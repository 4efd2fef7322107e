//! The slow-stream guard's meter: how many tokens a second a committed stream is delivering,
//! over a sliding window, and whether that is below the guard's minimum.
//!
//! Tokens are estimated from the bytes that reach the caller (text, tool-call arguments,
//! thinking), about 4 a token, as the router estimates prompts for `tpm` limits: exact counts
//! arrive only with the usage at the stream's end, which is too late to judge its flow.
//!
//! The window is a ring of [`BUCKETS`] buckets, each a tenth of it: adding a chunk is a division
//! and an addition, and no chunk is kept. The rate is what the ring holds over the time it
//! covers (nine whole buckets and the current one's elapsed part), so it is never judged over a
//! shorter time than nine tenths of the window.

use std::time::Duration;

use tokio::time::Instant;

use super::policy::Pace;

/// Buckets in the window.
const BUCKETS: usize = 10;
/// Bytes a token, as estimated.
const BYTES_PER_TOKEN: f64 = 4.0;

/// A committed stream's delivery rate, under a guard.
#[derive(Debug)]
pub struct Meter {
    pub rule: Pace,
    /// When the answering attempt committed (the grace runs from it).
    start: Instant,
    /// A bucket's width: a tenth of the window.
    width: Duration,
    /// Index (counted from `start`, in widths) of the newest bucket in `ring`.
    head: u64,
    /// Bytes delivered in each bucket, `ring[head % BUCKETS]` the newest.
    ring: [u64; BUCKETS],
}

impl Meter {
    pub fn new(rule: Pace, now: Instant) -> Meter {
        Meter {
            rule,
            start: now,
            width: (rule.window / BUCKETS as u32).max(Duration::from_millis(1)),
            head: 0,
            ring: [0; BUCKETS],
        }
    }

    /// The bucket `now` falls in, counted from `start`.
    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start);
        (since.as_nanos() / self.width.as_nanos()) as u64
    }

    /// Moves the ring on to the bucket `now` falls in, emptying the buckets it passes.
    fn advance(&mut self, now: Instant) {
        let index = self.index(now);
        if index <= self.head {
            return;
        }
        let passed = (index - self.head).min(BUCKETS as u64);
        for i in 1..=passed {
            self.ring[((self.head + i) % BUCKETS as u64) as usize] = 0;
        }
        self.head = index;
    }

    /// Notes `bytes` delivered `now`.
    pub fn add(&mut self, bytes: usize, now: Instant) {
        self.advance(now);
        let slot = &mut self.ring[(self.head % BUCKETS as u64) as usize];
        *slot = slot.saturating_add(bytes as u64);
    }

    /// When the stream is first judged: the grace and one whole window after commit.
    fn judged_from(&self) -> Instant {
        self.start + self.rule.grace + self.rule.window
    }

    /// The rate over the window ending `now`, in tokens a second.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let bytes: u64 = self.ring.iter().sum();
        let head_start = self.start + self.width * (self.head as u32);
        let covered = self.width * (BUCKETS as u32 - 1) + now.saturating_duration_since(head_start);
        bytes as f64 / BYTES_PER_TOKEN / covered.as_secs_f64()
    }

    /// The rate over the window, once a whole window has passed since commit.
    pub fn windowed_rate(&mut self, now: Instant) -> Option<f64> {
        (now >= self.start + self.rule.window).then(|| self.rate(now))
    }

    /// The rate, when the stream is past its grace and first window and delivering below the
    /// guard's minimum: it is too slow.
    pub fn too_slow(&mut self, now: Instant) -> Option<f64> {
        if now < self.judged_from() {
            return None;
        }
        let rate = self.rate(now);
        (rate < self.rule.min).then_some(rate)
    }

    /// When to look again if no chunk comes: at the first judgement, then every bucket.
    pub fn next_check(&self, now: Instant) -> Instant {
        self.judged_from().max(now + self.width)
    }
}

/// Tokens a second for `bytes` delivered over `elapsed`, as estimated.
pub fn tokens_per_second(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / BYTES_PER_TOKEN / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(min: f64, window_s: u64, grace_s: u64) -> Pace {
        Pace {
            min,
            window: Duration::from_secs(window_s),
            grace: Duration::from_secs(grace_s),
            by_client: false,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_judged_before_the_grace_and_a_whole_window() {
        let t0 = Instant::now();
        let mut m = Meter::new(guard(5.0, 10, 5), t0);
        // Silence throughout: below any minimum, but not judged until 5s + 10s.
        assert_eq!(m.too_slow(t0 + secs(14.9)), None);
        assert_eq!(m.next_check(t0 + secs(1.0)), t0 + secs(15.0));
        assert_eq!(m.too_slow(t0 + secs(15.0)), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_at_half_a_token_a_second_is_too_slow_for_a_minimum_of_five() {
        let t0 = Instant::now();
        let mut m = Meter::new(guard(5.0, 2, 0), t0);
        // "ab" (2 bytes, half a token) every second: 0.5 tokens/s.
        let mut verdict = None;
        for _ in 1..=3 {
            tokio::time::advance(secs(1.0)).await;
            m.add(2, Instant::now());
            verdict = verdict.or(m.too_slow(Instant::now()));
        }
        let rate = verdict.expect("judged from 2s on");
        assert!((0.4..=0.7).contains(&rate), "{rate}");
        let _ = t0;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_at_the_minimum_or_faster_is_never_cut() {
        let t0 = Instant::now();
        let mut m = Meter::new(guard(5.0, 10, 1), t0);
        // 24 bytes (6 tokens) every second for a minute, in 4-byte chunks every 1/6 s.
        for step in 1..=360 {
            let now = t0 + secs(step as f64 / 6.0);
            m.add(4, now);
            assert_eq!(m.too_slow(now), None, "at {}s", step as f64 / 6.0);
        }
        let rate = m.rate(t0 + secs(60.0));
        assert!((5.9..=6.2).contains(&rate), "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_a_crawl_is_cut_once_the_burst_leaves_the_window() {
        let t0 = Instant::now();
        let mut m = Meter::new(guard(5.0, 10, 0), t0);
        // 400 bytes (100 tokens) in the first second, then 1 byte a second.
        m.add(400, t0 + secs(0.5));
        let mut cut_at = None;
        for s in 1..=30 {
            let now = t0 + secs(s as f64);
            m.add(1, now);
            if m.too_slow(now).is_some() {
                cut_at = Some(s);
                break;
            }
        }
        // The burst carries the stream for one window: at 10s its bucket leaves the ring.
        assert_eq!(cut_at, Some(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_silence_empties_the_whole_ring() {
        let t0 = Instant::now();
        let mut m = Meter::new(guard(1.0, 10, 0), t0);
        for s in 0..10 {
            m.add(400, t0 + secs(s as f64));
        }
        assert_eq!(m.too_slow(t0 + secs(10.0)), None);
        // An hour later: every bucket passed, none left with old bytes.
        assert_eq!(m.too_slow(t0 + secs(3600.0)), Some(0.0));
    }

    #[test]
    fn the_average_rate_of_a_stream_is_its_bytes_over_four_a_second() {
        assert_eq!(tokens_per_second(40, Duration::from_secs(2)), 5.0);
        assert_eq!(tokens_per_second(40, Duration::ZERO), 0.0);
    }
}
