//! Callers' usage kept in this process: one lock per caller, held for a few comparisons.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use super::{CallerState, CallerStore, Limit, Limits, PARALLEL_RETRY_DELAY, Refusal};
use crate::config::auth::Budget;
use crate::routing::health::WallClock;

#[derive(Debug)]
pub struct LocalCallers {
    clock: WallClock,
    callers: Mutex<HashMap<String, Arc<LocalCaller>>>,
}

impl LocalCallers {
    pub fn new() -> Self {
        Self::with_clock(WallClock::now())
    }

    /// A store that reads wall-clock time off `clock` (tests anchor it).
    pub fn with_clock(clock: WallClock) -> Self {
        LocalCallers {
            clock,
            callers: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for LocalCallers {
    fn default() -> Self {
        Self::new()
    }
}

impl CallerStore for LocalCallers {
    fn caller(&self, name: &str) -> Arc<dyn CallerState> {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        callers
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(LocalCaller {
                    clock: self.clock,
                    usage: Mutex::new(Usage::default()),
                })
            })
            .clone()
    }

    fn retain(&self, live: &[&str]) {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        callers.retain(|name, _| live.contains(&name.as_str()));
    }
}

#[derive(Debug)]
struct LocalCaller {
    clock: WallClock,
    usage: Mutex<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    /// The wall-clock minute `requests` and `tokens` count in.
    minute: u64,
    requests: u64,
    tokens: u64,
    in_flight: u32,
    /// The budget period `spent` counts in.
    period: u64,
    spent: f64,
}

impl Usage {
    /// Moves the counts to `minute`, starting afresh when it is a new one.
    fn at_minute(&mut self, minute: u64) {
        if minute != self.minute {
            self.minute = minute;
            self.requests = 0;
            self.tokens = 0;
        }
    }

    fn at_period(&mut self, period: u64) {
        if period != self.period {
            self.period = period;
            self.spent = 0.0;
        }
    }
}

impl LocalCaller {
    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CallerState for LocalCaller {
    fn admit(&self, now: Instant, limits: &Limits, tokens: u64) -> Result<(), Refusal> {
        let minute = self.clock.minute(now);
        let until_minute_end = || self.clock.minute_end(minute).saturating_duration_since(now);
        let mut u = self.lock();
        u.at_minute(minute);
        if let Some(n) = limits.parallel
            && u.in_flight >= n
        {
            return Err(Refusal {
                limit: Limit::Parallel(n),
                retry_after: PARALLEL_RETRY_DELAY,
            });
        }
        if let Some(n) = limits.rpm
            && u.requests >= n
        {
            return Err(Refusal {
                limit: Limit::Rpm(n),
                retry_after: until_minute_end(),
            });
        }
        // As LiteLLM's: refused once the minute's tokens reached the limit, so that a prompt
        // larger than the limit alone still gets through at the start of a minute.
        if let Some(n) = limits.tpm
            && u.tokens >= n
        {
            return Err(Refusal {
                limit: Limit::Tpm(n),
                retry_after: until_minute_end(),
            });
        }
        if let Some(budget) = limits.budget {
            let unix = self.clock.unix_secs(now);
            let (period, ends) = budget.period.window(unix);
            u.at_period(period);
            if u.spent >= budget.max_usd {
                return Err(Refusal {
                    limit: Limit::Budget { budget, ends },
                    retry_after: std::time::Duration::from_secs(ends.saturating_sub(unix)),
                });
            }
        }
        u.requests += 1;
        u.tokens = u.tokens.saturating_add(tokens);
        u.in_flight += 1;
        Ok(())
    }

    fn release(&self) {
        let mut u = self.lock();
        u.in_flight = u.in_flight.saturating_sub(1);
    }

    fn add_tokens(&self, now: Instant, delta: i64) {
        let minute = self.clock.minute(now);
        let mut u = self.lock();
        // A call that settles in a later minute counts its difference there.
        u.at_minute(minute);
        u.tokens = u.tokens.saturating_add_signed(delta);
    }

    fn spend(&self, now: Instant, budget: &Budget, usd: f64) {
        let (period, _) = budget.period.window(self.clock.unix_secs(now));
        let mut u = self.lock();
        u.at_period(period);
        if usd.is_finite() && usd > 0.0 {
            u.spent += usd;
        }
    }

    fn spent(&self, now: Instant, budget: &Budget) -> f64 {
        let (period, _) = budget.period.window(self.clock.unix_secs(now));
        let u = self.lock();
        if u.period == period { u.spent } else { 0.0 }
    }
}
