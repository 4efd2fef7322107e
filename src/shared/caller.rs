//! One caller's usage when replicas share it: this replica's own [`Usage`], exactly what the
//! local store keeps, held against its limits together with what the other replicas counted
//! as the last sync read it. Admission never waits for Redis.

use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use super::group::{Group, Sent};
use crate::config::auth::Budget;
use crate::routing::callers::{CallerState, Limits, Others, Refusal, Usage};
use crate::routing::health::WallClock;

/// How long a caller's key outlives its last sync when it has no budget: past the minute its
/// counts are of. With a budget, the key lasts to the end of its period and a minute more.
const KEY_TTL_MS: u64 = 120_000;

#[derive(Debug)]
pub struct SharedCaller {
    clock: WallClock,
    view: Mutex<View>,
}

#[derive(Debug, Default)]
struct View {
    usage: Usage,
    /// Calls and tokens of the minute.
    requests: Group<2>,
    /// Dollars spent in the budget period.
    spend: Group<1>,
    /// The caller's budget as its policy last said, which names the period spend counts in.
    budget: Option<Budget>,
    others_in_flight: u32,
}

#[derive(Debug)]
pub struct CallerSent {
    requests: Sent<2>,
    spend: Sent<1>,
}

/// What the store answered for a caller, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerReply {
    pub requests: (String, [f64; 2], [f64; 2]),
    pub spend: (String, [f64; 1], [f64; 1]),
    pub others_in_flight: u32,
}

impl SharedCaller {
    pub fn new(clock: WallClock) -> Self {
        SharedCaller {
            clock,
            view: Mutex::new(View::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The budget period `now` is in, and how long until it ends (ms); period 0 without one.
    fn period(&self, budget: Option<&Budget>, now: Instant) -> (u64, u64) {
        match budget {
            Some(b) => {
                let unix = self.clock.unix_secs(now);
                let (period, ends) = b.period.window(unix);
                (period, ends.saturating_sub(unix).saturating_mul(1000))
            }
            None => (0, 0),
        }
    }

    pub fn take(&self, now: Instant, args: &mut String) -> CallerSent {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        let (period, left_ms) = self.period(v.budget.as_ref(), now);
        let requests = v.requests.take(minute, args);
        let spend = v.spend.take(period, args);
        let in_flight = v.usage.in_flight();
        let ttl = if v.budget.is_some() {
            left_ms.saturating_add(60_000).max(KEY_TTL_MS)
        } else {
            KEY_TTL_MS
        };
        use std::fmt::Write as _;
        let _ = write!(args, " {in_flight} {ttl}");
        CallerSent { requests, spend }
    }

    pub fn settle(&self, reply: CallerReply) {
        let mut v = self.lock();
        let (tag, others, own) = reply.requests;
        v.requests.settle(tag, others, own);
        let (tag, others, own) = reply.spend;
        v.spend.settle(tag, others, own);
        v.others_in_flight = reply.others_in_flight;
    }

    pub fn restore(&self, sent: CallerSent) {
        let mut v = self.lock();
        v.requests.restore(sent.requests);
        v.spend.restore(sent.spend);
        v.others_in_flight = 0;
    }
}

impl CallerState for SharedCaller {
    fn admit(&self, now: Instant, limits: &Limits, tokens: u64) -> Result<(), Refusal> {
        let minute = self.clock.minute(now);
        let (period, _) = self.period(limits.budget.as_ref(), now);
        let mut v = self.lock();
        v.budget = limits.budget;
        let [requests, o_tokens] = v.requests.others_in(minute);
        let [spent] = v.spend.others_in(period);
        let others = Others {
            minute,
            requests: requests as u64,
            tokens: o_tokens as u64,
            in_flight: v.others_in_flight,
            period,
            spent,
        };
        v.usage.admit(&self.clock, now, limits, tokens, &others)?;
        v.requests.add(minute, [1.0, tokens as f64]);
        Ok(())
    }

    fn release(&self) {
        self.lock().usage.release();
    }

    fn add_tokens(&self, now: Instant, delta: i64) {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        v.usage.add_tokens(&self.clock, now, delta);
        v.requests.add(minute, [0.0, delta as f64]);
    }

    fn spend(&self, now: Instant, budget: &Budget, usd: f64) {
        if !(usd.is_finite() && usd > 0.0) {
            return;
        }
        let (period, _) = self.period(Some(budget), now);
        let mut v = self.lock();
        v.budget = Some(*budget);
        v.usage.spend(&self.clock, now, budget, usd);
        v.spend.add(period, [usd]);
    }

    fn spent(&self, now: Instant, budget: &Budget) -> f64 {
        let (period, _) = self.period(Some(budget), now);
        let v = self.lock();
        v.usage.spent(&self.clock, now, budget) + v.spend.others_in(period)[0]
    }
}
