//! Callers' usage kept in this process: one lock per caller, held for a few comparisons.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use super::{CallerState, CallerStore, Limit, Limits, Others, PARALLEL_RETRY_DELAY, Refusal};
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

/// One caller's usage as this process counted it, and how admission reads it with what
/// other replicas counted ([`Others`]); a shared store keeps one as its local view.
#[derive(Debug, Default)]
pub struct Usage {
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

    /// Counts a call in if `limits` allow it at `now`, with `others` (what other replicas
    /// counted, for the minute and period they name) added to this process's counts.
    pub fn admit(
        &mut self,
        clock: &WallClock,
        now: Instant,
        limits: &Limits,
        tokens: u64,
        others: &Others,
    ) -> Result<(), Refusal> {
        let minute = clock.minute(now);
        let until_minute_end = || clock.minute_end(minute).saturating_duration_since(now);
        self.at_minute(minute);
        let (o_requests, o_tokens) = if others.minute == minute {
            (others.requests, others.tokens)
        } else {
            (0, 0)
        };
        if let Some(n) = limits.parallel
            && self.in_flight.saturating_add(others.in_flight) >= n
        {
            return Err(Refusal {
                limit: Limit::Parallel(n),
                retry_after: PARALLEL_RETRY_DELAY,
            });
        }
        if let Some(n) = limits.rpm
            && self.requests.saturating_add(o_requests) >= n
        {
            return Err(Refusal {
                limit: Limit::Rpm(n),
                retry_after: until_minute_end(),
            });
        }
        // As LiteLLM's: refused once the minute's tokens reached the limit, so that a prompt
        // larger than the limit alone still gets through at the start of a minute.
        if let Some(n) = limits.tpm
            && self.tokens.saturating_add(o_tokens) >= n
        {
            return Err(Refusal {
                limit: Limit::Tpm(n),
                retry_after: until_minute_end(),
            });
        }
        if let Some(budget) = limits.budget {
            let unix = clock.unix_secs(now);
            let (period, ends) = budget.period.window(unix);
            self.at_period(period);
            let o_spent = if others.period == period {
                others.spent
            } else {
                0.0
            };
            if self.spent + o_spent >= budget.max_usd {
                return Err(Refusal {
                    limit: Limit::Budget { budget, ends },
                    retry_after: std::time::Duration::from_secs(ends.saturating_sub(unix)),
                });
            }
        }
        self.requests += 1;
        self.tokens = self.tokens.saturating_add(tokens);
        self.in_flight += 1;
        Ok(())
    }

    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Corrects the tokens of `now`'s minute by `delta`.
    pub fn add_tokens(&mut self, clock: &WallClock, now: Instant, delta: i64) {
        // A call that settles in a later minute counts its difference there.
        self.at_minute(clock.minute(now));
        self.tokens = self.tokens.saturating_add_signed(delta);
    }

    /// Adds `usd` to the period of `budget` that `now` is in.
    pub fn spend(&mut self, clock: &WallClock, now: Instant, budget: &Budget, usd: f64) {
        let (period, _) = budget.period.window(clock.unix_secs(now));
        self.at_period(period);
        if usd.is_finite() && usd > 0.0 {
            self.spent += usd;
        }
    }

    /// This process's spend in the period of `budget` that `now` is in.
    pub fn spent(&self, clock: &WallClock, now: Instant, budget: &Budget) -> f64 {
        let (period, _) = budget.period.window(clock.unix_secs(now));
        if self.period == period {
            self.spent
        } else {
            0.0
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
        self.lock()
            .admit(&self.clock, now, limits, tokens, &Others::NONE)
    }

    fn release(&self) {
        self.lock().release();
    }

    fn add_tokens(&self, now: Instant, delta: i64) {
        self.lock().add_tokens(&self.clock, now, delta);
    }

    fn spend(&self, now: Instant, budget: &Budget, usd: f64) {
        self.lock().spend(&self.clock, now, budget, usd);
    }

    fn spent(&self, now: Instant, budget: &Budget) -> f64 {
        self.lock().spent(&self.clock, now, budget)
    }
}
