//! The minutes that `rpm` and `tpm` count in: wall-clock minutes (12:03:00 to 12:04:00), so
//! that every replica counting one deployment's usage agrees on when a minute starts, read
//! through the steady clock so that the paused clock of tests moves them too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Length of the windows that `allowed_fails`, `rpm` and `tpm` count in.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Wall-clock time read off the steady clock: one reading of both, taken when the clock is
/// made, and the steady clock's progress since. Wall-clock steps (NTP, a VM resumed) do not
/// move it, so a window never runs backwards.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    /// Time since the Unix epoch at `at`.
    since_epoch: Duration,
}

impl WallClock {
    /// The clock of this moment.
    pub fn now() -> Self {
        WallClock {
            at: Instant::now(),
            since_epoch: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// A clock that reads `since_epoch` at `at`: tests start one on a minute's first second.
    pub fn anchored(at: Instant, since_epoch: Duration) -> Self {
        WallClock { at, since_epoch }
    }

    /// Time since the Unix epoch at `at`.
    #[inline]
    fn since_epoch(&self, at: Instant) -> Duration {
        if at >= self.at {
            self.since_epoch.saturating_add(at - self.at)
        } else {
            self.since_epoch.saturating_sub(self.at - at)
        }
    }

    /// The wall-clock minute `at` falls in, counted from the Unix epoch.
    pub fn minute(&self, at: Instant) -> u64 {
        self.since_epoch(at).as_secs() / MINUTE.as_secs()
    }

    /// Whole seconds since the Unix epoch at `at`.
    pub fn unix_secs(&self, at: Instant) -> u64 {
        self.since_epoch(at).as_secs()
    }

    /// Milliseconds since the Unix epoch at `at`: how a shared store writes an instant, so
    /// that every replica reads the same one.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        u64::try_from(self.since_epoch(at).as_millis()).unwrap_or(u64::MAX)
    }

    /// The steady-clock instant of `ms` milliseconds since the Unix epoch.
    pub fn at_unix_ms(&self, ms: u64) -> Instant {
        let t = Duration::from_millis(ms);
        match t.checked_sub(self.since_epoch) {
            Some(ahead) => crate::routing::deadline::after(self.at, ahead),
            None => self.at.checked_sub(self.since_epoch - t).unwrap_or(self.at),
        }
    }

    /// When wall-clock minute `minute` ends, on the steady clock.
    pub fn minute_end(&self, minute: u64) -> Instant {
        let end = Duration::from_secs(minute.saturating_add(1).saturating_mul(MINUTE.as_secs()));
        match end.checked_sub(self.since_epoch) {
            Some(ahead) => crate::routing::deadline::after(self.at, ahead),
            None => self.at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn minutes_follow_the_wall_clock_and_the_paused_clock_moves_them() {
        let t0 = Instant::now();
        // 30 s into minute 1000.
        let clock = WallClock::anchored(t0, Duration::from_secs(1000 * 60 + 30));
        assert_eq!(clock.minute(t0), 1000);
        assert_eq!(clock.minute_end(1000), t0 + Duration::from_secs(30));
        assert_eq!(clock.minute(t0 + Duration::from_secs(29)), 1000);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.minute(Instant::now()), 1001);
        assert_eq!(clock.minute_end(1001), t0 + Duration::from_secs(90));
        // Before the clock was made, and far beyond: no panic, no wrap.
        assert_eq!(clock.minute(t0 - Duration::from_secs(31)), 999);
        assert!(clock.minute_end(u64::MAX) > t0);
    }
}
