//! A committed stream: the answering attempt's chunks, under two timers, the idle timer
//! (longest silence between chunks) and the call's total deadline. When the attempt breaks
//! (the provider cuts the stream, sends an error event or too many unreadable ones, or falls
//! silent), a stream whose call may recover does so through the rest of its chain
//! ([`super::recovery`]); otherwise, or when the recovery fails too, the stream ends with the
//! break as a routing error and the call's attempt log. The API layer turns what this yields
//! into messages and statuses (`api::stream`).
//!
//! It is a stream its consumer polls: no task and no channel per call, so an open stream holds
//! only its own state. When the consumer drops it, the provider stream is dropped too, which
//! closes the upstream request. A consumer that stops reading stops the polling too: its
//! deadline is then noticed at its next read.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep, sleep_until};

use super::{
    Answered, CallError, CallFailure, Committed,
    failure::Failure,
    health::{AttemptEnd, Tracker},
    log::to_proto_duration,
    pace::{self, Meter},
    recovery::{Recovering, Recovery},
};
use crate::config::StreamRecovery;
use crate::proto::{Attempt, AttemptOutcome, FinishReason, ThinkingDelta, ToolCallDelta, Usage};
use crate::providers::{Chunk, ChunkStream};

/// A piece of the answer as the caller receives it: text, tool-call pieces, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Piece {
    pub text: String,
    pub tool_calls: Vec<ToolCallDelta>,
    pub thinking: Vec<ThinkingDelta>,
}

/// What a committed stream yields: text, then once its end.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The next piece of the answer. The first is the chunk that committed the call, and may
    /// be empty when that chunk carried only a finish reason.
    Delta(Piece),
    /// The stream broke and recovered: the answer now comes from `deployment` of `group`, and
    /// goes on with `delta`. `restart`: the answer starts again with `delta` (the caller
    /// discards what it received). `attempts`: the whole log, the recovery's attempts included.
    Resumed {
        group: String,
        deployment: String,
        restart: bool,
        piece: Piece,
        attempts: Vec<Attempt>,
    },
    /// The provider's stream ended: why generation stopped, and the usage it reported.
    Finished {
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
        /// The call's attempts again, when the log changed after the stream committed (the
        /// answering attempt skipped unreadable events); `None` when it did not.
        attempts: Option<Vec<Attempt>>,
    },
}

/// The answering attempt's stream after commit. Yields [`StreamItem`]s, or one
/// [`CallFailure`] carrying the call's attempts, then ends.
///
/// Its state is shared with a watchdog task that ends it at the call's deadline even when
/// nobody polls it: a client that stops reading stops the polling (HTTP/2 flow control), and
/// its upstream request, deployment lease and call slot would otherwise be held until the
/// client went away, and shutdown would wait for it. The lock is uncontended but for that one
/// moment.
pub struct CommittedStream {
    inner: Arc<Mutex<Inner>>,
    watchdog: AbortHandle,
}

struct Inner {
    rest: ChunkStream,
    /// The end the watchdog gave the stream, until it is yielded.
    expired: Option<CallFailure>,
    /// The committing chunk's text, until yielded.
    first: Option<Piece>,
    /// The call's attempts, the answering one last: given to the failure if the stream fails.
    attempts: Vec<Attempt>,
    attempt_started: Instant,
    deadline: Instant,
    idle: Duration,
    last_chunk: Instant,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// Unreadable events the answering attempt's provider sent, skipped.
    skipped_events: u32,
    /// Chunks with text the answering attempt delivered, for its log entry if it breaks.
    chunks: u32,
    /// Bytes of output the answering attempt delivered since it committed (`committed`), for
    /// its rate in the log and the metrics.
    delivered_bytes: u64,
    committed: Instant,
    /// The slow-stream guard's meter, when the stream has a guard. Boxed: most have none.
    pace: Option<Box<Meter>>,
    /// One timer for both the idle limit and the deadline, set lazily: a chunk does not move
    /// it; when it fires early (chunks came meanwhile), it is set again to the new limit. A
    /// timer per chunk would cost two timer-wheel updates under the driver's lock every chunk.
    timer: Pin<Box<Sleep>>,
    done: bool,
    /// Keeps the deployment's attempt in flight until the stream ends, and reports its end.
    tracker: Option<Tracker>,
    /// Set when the call may recover from a break. Boxed: most streams carry none.
    recovery: Option<Box<Recovery>>,
    /// A recovery under way, and the break it is for (the stream's error if it fails). Boxed,
    /// as `recovery` is, so that a stream that never recovers pays a pointer for each.
    recovering: Option<Box<(Recovering, CallError, StreamRecovery)>>,
}

impl CommittedStream {
    /// Starts the idle and total timers on a committed call's stream, and its watchdog.
    /// `recovery`: what the stream needs to recover if it breaks (see [`Recovery::arm`]).
    pub fn new(
        answered: Answered<Committed>,
        idle: Duration,
        recovery: Option<Box<Recovery>>,
    ) -> CommittedStream {
        let deadline = answered.deadline;
        let inner = Arc::new(Mutex::new(Inner::new(answered, idle, recovery)));
        let weak = Arc::downgrade(&inner);
        let watchdog = tokio::spawn(async move {
            // A moment after the deadline: a stream that is being read ends by its own timers
            // (and a recovery under way by its walk's), with the attempt log they keep; the
            // watchdog is for the stream nobody reads.
            sleep_until(deadline + WATCHDOG_GRACE).await;
            if let Some(inner) = weak.upgrade() {
                lock(&inner).expire();
            }
        })
        .abort_handle();
        CommittedStream { inner, watchdog }
    }

    /// The call's attempts so far, the answering one last.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.inner).attempts.clone()
    }

    /// The usage the provider has reported so far.
    pub fn usage(&self) -> Option<Usage> {
        lock(&self.inner).usage
    }
}

/// Streams committed for less than this are not counted in the rate metric.
const MIN_RATED: Duration = Duration::from_secs(1);

/// How long after the call's deadline the watchdog ends a stream nobody has read.
const WATCHDOG_GRACE: Duration = Duration::from_millis(100);

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Plain fields: a stream a panicking thread left half-updated still ends cleanly.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for CommittedStream {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

impl Stream for CommittedStream {
    type Item = Result<StreamItem, CallFailure>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        lock(&self.inner).poll_next(cx)
    }
}

impl Inner {
    fn new(
        answered: Answered<Committed>,
        idle: Duration,
        recovery: Option<Box<Recovery>>,
    ) -> Inner {
        let Answered {
            value: Committed { first, rest, .. },
            attempts,
            deadline,
            attempt_started,
            tracker,
            pace,
            ..
        } = answered;
        let now = Instant::now();
        let mut inner = Inner {
            // Set by `answer_from` below (an empty stream takes no allocation).
            rest: Box::pin(futures_util::stream::empty()),
            expired: None,
            chunks: 0,
            delivered_bytes: 0,
            committed: now,
            pace: None,
            first: None,
            attempts,
            attempt_started,
            deadline,
            idle,
            last_chunk: now,
            finish: None,
            usage: None,
            skipped_events: 0,
            timer: Box::pin(sleep_until(deadline.min(now + idle))),
            done: false,
            tracker: None,
            recovery,
            recovering: None,
        };
        inner.first = Some(inner.answer_from(first, rest, attempt_started, tracker, pace, now));
        if let Some(m) = &inner.pace {
            let at = inner.timer.deadline().min(m.next_check(now));
            inner.timer.as_mut().reset(at);
        }
        inner
    }

    /// Makes an attempt the answering one: its stream, its deployment's lease, its start, and
    /// what its first chunk said, and its slow-stream guard, `now` its commit. Returns that
    /// chunk's text. The one place a stream changes hands, at commit and after a recovery (the
    /// caller sets the clock: `last_chunk` and the timer, from the same reading as `now`).
    fn answer_from(
        &mut self,
        first: Chunk,
        rest: ChunkStream,
        attempt_started: Instant,
        tracker: Option<Tracker>,
        pace: Option<super::policy::Pace>,
        now: Instant,
    ) -> Piece {
        self.rest = rest;
        self.tracker = tracker;
        self.attempt_started = attempt_started;
        self.finish = first.finish_reason;
        self.usage = first.usage;
        self.skipped_events = first.skipped_events;
        self.chunks = u32::from(first.has_content());
        let bytes = first.output_bytes();
        self.delivered_bytes = bytes as u64;
        self.committed = now;
        self.pace = pace.map(|rule| {
            let mut m = Box::new(Meter::new(rule, now));
            m.add(bytes, now);
            m
        });
        Piece {
            text: first.delta,
            tool_calls: first.tool_calls,
            thinking: first.thinking,
        }
    }

    /// The call's deadline passed while nobody polled the stream: ends it now, as its own
    /// timer would have, dropping the upstream request (and a recovery under way with its own),
    /// and releasing the deployment. The end waits in `expired` for the next poll.
    fn expire(&mut self) {
        if self.done {
            return;
        }
        self.rest = Box::pin(futures_util::stream::empty());
        if let Some(under_way) = self.recovering.take() {
            // A recovery was under way: the stream ends with the break it was for.
            let (_, broke, mode) = *under_way;
            let error = CallError::RecoveryFailed {
                broke: Box::new(broke),
                mode,
                why: "the call's deadline passed".into(),
            };
            self.expired = Some(self.end_with(error));
            return;
        }
        self.expired = self.broke(CallError::DeadlineExceeded, None);
    }

    /// The rate the answering attempt is delivering, in tokens a second: over the guard's
    /// window when it has one and a window has passed, else since its commit.
    fn delivering(&mut self, now: Instant) -> f64 {
        if let Some(rate) = self.pace.as_mut().and_then(|m| m.windowed_rate(now)) {
            return rate;
        }
        pace::tokens_per_second(self.delivered_bytes, now - self.committed)
    }

    /// Releases the answering attempt, which ended `outcome`: adds the output tokens it
    /// reported to its deployment's usage, counts it and its rate in the metrics, and notes the
    /// unreadable events it skipped in its log entry and metrics. Returns whether the log
    /// changed.
    fn release(&mut self, outcome: AttemptOutcome) -> bool {
        let skipped = std::mem::take(&mut self.skipped_events);
        // Dropping the tracker ends the deployment's in-flight count.
        let tracker = self.tracker.take();
        if let Some(t) = &tracker {
            super::usage::released(t, self.usage.as_ref());
            let d = t.deployment();
            t.health.metrics.attempt(&d.group, &d.id, outcome);
            let now = Instant::now();
            // A shorter stream's rate says more about its burst than its flow.
            if now - self.committed >= MIN_RATED {
                let rate = self.delivering(now);
                t.health.metrics.stream_rate(&d.group, &d.id, outcome, rate);
            }
        }
        let (Some(t), Some(last), true) = (&tracker, self.attempts.last_mut(), skipped > 0) else {
            return false;
        };
        let d = t.deployment();
        t.health
            .metrics
            .stream_events_skipped(&d.group, &d.id, skipped);
        let note = format!("skipped {skipped} malformed stream events");
        last.detail = if last.detail.is_empty() {
            note
        } else {
            format!("{}; {note}", last.detail)
        };
        true
    }

    /// The answering attempt broke with `error`: `failure` when the break is the deployment's
    /// (then it counts against it, and the call may recover), `None` when the call's own
    /// deadline ran out. Returns the stream's end, or `None` when a recovery has started.
    fn broke(&mut self, error: CallError, failure: Option<Failure>) -> Option<CallFailure> {
        let outcome = failure
            .as_ref()
            .map_or(AttemptOutcome::Timeout, Failure::outcome);
        let chunks = self.chunks;
        let rate = self.delivering(Instant::now());
        if let Some(last) = self.attempts.last_mut() {
            last.outcome = outcome as i32;
            last.elapsed = Some(to_proto_duration(self.attempt_started.elapsed()));
            last.detail = format!(
                "after {chunks} chunks (about {rate:.1} tokens/s): {}",
                error.message()
            );
        }
        if let (Some(f), Some(t)) = (&failure, &self.tracker)
            && f.counts_against_deployment()
        {
            t.report(AttemptEnd::Failed {
                kind: f.class().kind,
                wait_hint: f.provider_wait_hint(),
            });
        }
        self.release(outcome);
        let recoverable = failure
            .as_ref()
            .is_some_and(|f| f.fault().another_deployment_may_answer());
        match (failure, self.recovery.take()) {
            (Some(f), Some(recovery)) if recoverable => match recovery.refused() {
                None => {
                    let mode = recovery.mode;
                    self.recovering = Some(Box::new((recovery.start(f), error, mode)));
                    None
                }
                Some(why) => {
                    let error = CallError::RecoveryFailed {
                        broke: Box::new(error),
                        mode: recovery.mode,
                        why,
                    };
                    Some(self.end_with(error))
                }
            },
            _ => Some(self.end_with(error)),
        }
    }

    fn end_with(&mut self, error: CallError) -> CallFailure {
        self.done = true;
        CallFailure {
            error,
            attempts: std::mem::take(&mut self.attempts),
        }
    }

    /// Takes over a recovery's answer: its stream, its deployment's lease and its attempts.
    fn resume(&mut self, answered: Answered<Committed>) -> StreamItem {
        let Answered {
            value:
                Committed {
                    first,
                    rest,
                    restart,
                    prefill_rejected,
                },
            group,
            deployment,
            attempts,
            attempt_started,
            tracker,
            pace,
            ..
        } = answered;
        self.attempts.extend(attempts);
        if let (Some(said), Some(last)) = (prefill_rejected, self.attempts.last_mut()) {
            let note = format!("rejected the continuation's prefill ({said}); restarted");
            last.detail = if last.detail.is_empty() {
                note
            } else {
                format!("{}; {note}", last.detail)
            };
        }
        let now = Instant::now();
        let piece = self.answer_from(first, rest, attempt_started, tracker, pace, now);
        self.last_chunk = now;
        let mut at = self.deadline.min(now + self.idle);
        if let Some(m) = &self.pace {
            at = at.min(m.next_check(now));
        }
        self.timer.as_mut().reset(at);
        StreamItem::Resumed {
            group,
            deployment,
            restart,
            piece,
            attempts: self.attempts.clone(),
        }
    }

    /// Polls a recovery under way: `Ready` with what to yield once it is done.
    fn poll_recovering(&mut self, cx: &mut Context<'_>) -> Poll<Result<StreamItem, CallFailure>> {
        let Some(under_way) = &mut self.recovering else {
            return Poll::Pending;
        };
        let (recovery, result) = match under_way.0.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        let Some(under_way) = self.recovering.take() else {
            return Poll::Pending;
        };
        let (_, broke, _) = *under_way;
        let mode = recovery.mode;
        match result {
            Ok(answered) => {
                self.recovery = Some(recovery);
                Poll::Ready(Ok(self.resume(answered)))
            }
            Err(failure) => {
                self.attempts.extend(failure.attempts);
                let why = failure.error.message();
                let error = CallError::RecoveryFailed {
                    broke: Box::new(broke),
                    mode,
                    why: match recovery.restart_could_have() {
                        Some(hint) => format!("{why}; {hint}"),
                        None => why,
                    },
                };
                Poll::Ready(Err(self.end_with(error)))
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped before its end: the consumer went away, and the attempt had answered.
        if !self.done {
            self.release(AttemptOutcome::Ok);
        }
    }
}

impl Inner {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<StreamItem, CallFailure>>> {
        let st = self;
        if let Some(end) = st.expired.take() {
            return Poll::Ready(Some(Err(end)));
        }
        if st.done {
            return Poll::Ready(None);
        }
        if let Some(first) = st.first.take() {
            return Poll::Ready(Some(Ok(StreamItem::Delta(first))));
        }
        loop {
            if st.recovering.is_some() {
                // The recovery's walk keeps the call's deadline itself.
                return st.poll_recovering(cx).map(Some);
            }
            // The timers first: a stream that keeps sending still ends at its deadline.
            if st.timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if now >= st.deadline {
                    if let Some(f) = st.broke(CallError::DeadlineExceeded, None) {
                        return Poll::Ready(Some(Err(f)));
                    }
                    continue;
                }
                let idle_at = st.last_chunk + st.idle;
                if now >= idle_at {
                    let error = CallError::StreamIdleTimeout { idle: st.idle };
                    let failure = Failure::IdleTimeout { idle: st.idle };
                    if let Some(f) = st.broke(error, Some(failure)) {
                        return Poll::Ready(Some(Err(f)));
                    }
                    continue;
                }
                let mut at = idle_at.min(st.deadline);
                if let Some(m) = &mut st.pace {
                    if let Some(rate) = m.too_slow(now) {
                        let rule = m.rule;
                        let failure = Failure::TooSlow {
                            rate,
                            min: rule.min,
                            window: rule.window,
                            by_client: rule.by_client,
                        };
                        let error = CallError::StreamTooSlow(failure.clone());
                        if let Some(f) = st.broke(error, Some(failure)) {
                            return Poll::Ready(Some(Err(f)));
                        }
                        continue;
                    }
                    at = at.min(m.next_check(now));
                }
                // Chunks came since the timer was set, or the guard looks again: wait for the
                // next limit.
                st.timer.as_mut().reset(at);
                continue;
            }
            match st.rest.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    // Only what reaches the caller (text, tool-call or thinking pieces, a
                    // finish reason) resets the idle timer: usage-only and empty events would
                    // keep a stream open to its deadline while the caller receives nothing.
                    if chunk.commits() {
                        st.last_chunk = Instant::now();
                    }
                    let bytes = chunk.output_bytes();
                    st.delivered_bytes += bytes as u64;
                    if let Some(m) = &mut st.pace {
                        m.add(bytes, st.last_chunk);
                    }
                    st.finish = chunk.finish_reason.or(st.finish);
                    st.usage = chunk.usage.or(st.usage);
                    st.skipped_events += chunk.skipped_events;
                    if chunk.has_content() {
                        st.chunks += 1;
                        if let Some(r) = &mut st.recovery {
                            r.delivered(&chunk);
                        }
                        let piece = Piece {
                            text: chunk.delta,
                            tool_calls: chunk.tool_calls,
                            thinking: chunk.thinking,
                        };
                        return Poll::Ready(Some(Ok(StreamItem::Delta(piece))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = CallError::StreamInterrupted {
                        detail: e.detail.clone(),
                    };
                    if let Some(f) = st.broke(error, Some(Failure::Provider(e))) {
                        return Poll::Ready(Some(Err(f)));
                    }
                }
                Poll::Ready(None) => {
                    st.done = true;
                    if let (Some(t), Some(u)) = (&st.tracker, &mut st.usage) {
                        super::usage::answered(t, u);
                    }
                    let changed = st.release(AttemptOutcome::Ok);
                    return Poll::Ready(Some(Ok(StreamItem::Finished {
                        finish_reason: st.finish,
                        usage: st.usage,
                        attempts: changed.then(|| st.attempts.clone()),
                    })));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
