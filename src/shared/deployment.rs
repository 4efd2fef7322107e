//! One deployment's health when replicas share it: this replica's own [`Counters`], exactly
//! what the local store keeps, and what the other replicas counted as the last sync read it.
//! A pick reads the two together; nothing here waits for Redis.

use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::group::{Group, Sent};
use crate::config::{FailKind, RetryBudget};
use crate::routing::health::{
    AttemptEnd, DeploymentHealth, HealthSettings, Snapshot, WallClock, cooldown::Tally,
    counters::Counters,
};

/// Failure kinds and the answered count, in the store's order.
pub const FAIL_FIELDS: usize = FailKind::COUNT + 1;

/// How long a deployment's key outlives its last sync: past the minute its counts are of.
const KEY_TTL_MS: u64 = 120_000;

#[derive(Debug)]
pub struct SharedDeployment {
    clock: WallClock,
    in_flight: AtomicU32,
    view: Mutex<View>,
}

#[derive(Debug)]
struct View {
    counters: Counters,
    /// Requests and tokens of the usage minute.
    usage: Group<2>,
    /// Failures by kind and answered attempts, in the minute the cooldown rules count.
    fails: Group<FAIL_FIELDS>,
    /// The end of a cooldown entered here that the store has not taken yet (unix ms).
    cool: Option<u64>,
    /// The other replicas' attempts in flight; 0 while unknown.
    others_in_flight: u32,
}

/// What one sync sent of a deployment.
#[derive(Debug)]
pub struct DeploymentSent {
    usage: Sent<2>,
    fails: Sent<FAIL_FIELDS>,
    cool: Option<u64>,
}

/// What the store answered for a deployment, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentReply {
    pub usage: (String, [f64; 2], [f64; 2]),
    pub fails: (String, [f64; FAIL_FIELDS], [f64; FAIL_FIELDS]),
    /// When its cooldown ends (unix ms; 0 for none).
    pub cooling_until_ms: u64,
    pub others_in_flight: u32,
}

impl SharedDeployment {
    pub fn new(clock: WallClock, budget: Option<RetryBudget>) -> Self {
        SharedDeployment {
            clock,
            in_flight: AtomicU32::new(0),
            view: Mutex::new(View {
                counters: Counters::new(Instant::now(), &clock, budget),
                usage: Group::default(),
                fails: Group::default(),
                cool: None,
                others_in_flight: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        // Plain counters: ones a panicking thread left half-updated are still usable.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The script's arguments for this deployment at `now`, and what they carry.
    pub fn take(&self, now: Instant, args: &mut String) -> DeploymentSent {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        let usage = v.usage.take(minute, args);
        let fails = v.fails.take(minute, args);
        let cool = v.cool;
        use std::fmt::Write as _;
        let _ = write!(
            args,
            " {} {} {KEY_TTL_MS}",
            cool.unwrap_or(0),
            self.in_flight.load(Ordering::Relaxed)
        );
        DeploymentSent { usage, fails, cool }
    }

    /// The sync went through: the others' counts replace the last ones, and a cooldown any
    /// replica entered is honoured here until the same instant.
    pub fn settle(&self, now: Instant, sent: DeploymentSent, reply: DeploymentReply) {
        let mut v = self.lock();
        let (tag, others, own) = reply.usage;
        v.usage.settle(tag, others, own);
        let (tag, others, own) = reply.fails;
        v.fails.settle(tag, others, own);
        if v.cool == sent.cool {
            v.cool = None;
        }
        v.others_in_flight = reply.others_in_flight;
        if reply.cooling_until_ms > 0 {
            let until = self.clock.at_unix_ms(reply.cooling_until_ms);
            v.counters.adopt_cooldown(now, until);
        }
    }

    /// The sync failed: what it carried waits for the next one, and until then this replica
    /// counts alone.
    pub fn restore(&self, sent: DeploymentSent) {
        let mut v = self.lock();
        v.usage.restore(sent.usage);
        v.fails.restore(sent.fails);
        v.others_in_flight = 0;
    }
}

impl View {
    fn others_tally(&self, minute: u64) -> Tally {
        let counts = self.fails.others_in(minute);
        let mut tally = Tally::NONE;
        for (i, f) in tally.fails.iter_mut().enumerate() {
            *f = counts[i] as u32;
        }
        tally.oks = counts[FailKind::COUNT] as u32;
        tally
    }
}

impl DeploymentHealth for SharedDeployment {
    fn snapshot(&self, now: Instant, streaming: bool, latency_ttl: Duration) -> Snapshot {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        let in_flight = self
            .in_flight
            .load(Ordering::Relaxed)
            .saturating_add(v.others_in_flight);
        let mut snap = v
            .counters
            .snapshot(now, &self.clock, in_flight, streaming, latency_ttl);
        let [requests, tokens] = v.usage.others_in(minute);
        snap.requests = snap.requests.saturating_add(requests as u32);
        snap.tokens = snap.tokens.saturating_add(tokens as u64);
        snap
    }

    fn in_flight(&self) -> u32 {
        let others = self.lock().others_in_flight;
        self.in_flight
            .load(Ordering::Relaxed)
            .saturating_add(others)
    }

    fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.lock().counters.cooling_until(now)
    }

    fn budget_tokens(&self) -> Option<f64> {
        self.lock().counters.budget_tokens()
    }

    fn begin(&self, now: Instant, request_tokens: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        v.counters.begin(now, &self.clock, request_tokens);
        v.usage.add(minute, [1.0, request_tokens as f64]);
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn add_tokens(&self, now: Instant, tokens: u64) {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        v.counters.add_tokens(now, &self.clock, tokens);
        v.usage.add(minute, [0.0, tokens as f64]);
    }

    fn report(&self, now: Instant, end: AttemptEnd, settings: &HealthSettings) -> Option<Instant> {
        let minute = self.clock.minute(now);
        let mut v = self.lock();
        let others = v.others_tally(minute);
        let until = v.counters.report(now, end, settings, &others);
        let mut delta = [0.0; FAIL_FIELDS];
        match end {
            AttemptEnd::Ok { .. } => delta[FailKind::COUNT] = 1.0,
            AttemptEnd::Failed { kind, .. } => delta[kind.index()] = 1.0,
        }
        v.fails.add(minute, delta);
        if let Some(until) = until {
            let ms = self.clock.unix_ms(until);
            v.cool = Some(v.cool.map_or(ms, |c| c.max(ms)));
        }
        until
    }

    fn configure_budget(&self, budget: Option<RetryBudget>) {
        self.lock().counters.configure_budget(budget);
    }
}
