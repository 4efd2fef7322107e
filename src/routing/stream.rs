//! A committed stream: the answering attempt's chunks, under two timers, the idle timer
//! (longest silence between chunks) and the call's total deadline. There is no fallback after
//! commit; a failure ends the stream with a routing error and the call's attempt log. The API
//! layer turns what this yields into messages and statuses (`api::stream`).
//!
//! It is a stream its consumer polls: no task and no channel per call, so an open stream holds
//! only its own state. When the consumer drops it, the provider stream is dropped too, which
//! closes the upstream request. A consumer that stops reading stops the polling too: its
//! deadline is then noticed at its next read.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep, sleep_until};

use super::{
    Answered, CallError, CallFailure, Committed,
    health::{AttemptEnd, Tracker},
    log::to_proto_duration,
};
use crate::config::FailKind;
use crate::proto::{Attempt, AttemptOutcome, FinishReason, Usage};
use crate::providers::ChunkStream;

/// What a committed stream yields: text, then once its end.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The next piece of the answer. The first is the chunk that committed the call, and may
    /// be empty when that chunk carried only a finish reason.
    Delta(String),
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
pub struct CommittedStream {
    rest: ChunkStream,
    /// The committing chunk's text, until yielded.
    first: Option<String>,
    /// The call's attempts, the committed one last: given to the failure if the stream fails.
    attempts: Vec<Attempt>,
    attempt_started: Instant,
    deadline: Instant,
    idle: Duration,
    last_chunk: Instant,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// Unreadable events the provider sent, skipped.
    skipped_events: u32,
    /// One timer for both the idle limit and the deadline, set lazily: a chunk does not move
    /// it; when it fires early (chunks came meanwhile), it is set again to the new limit. A
    /// timer per chunk would cost two timer-wheel updates under the driver's lock every chunk.
    timer: Pin<Box<Sleep>>,
    done: bool,
    /// Keeps the deployment's attempt in flight until the stream ends, and reports its end.
    tracker: Option<Tracker>,
}

impl CommittedStream {
    /// Starts the idle and total timers on a committed call's stream.
    pub fn new(answered: Answered<Committed>, idle: Duration) -> CommittedStream {
        let Answered {
            value: Committed { first, rest },
            attempts,
            deadline,
            attempt_started,
            tracker,
            ..
        } = answered;
        let now = Instant::now();
        CommittedStream {
            rest,
            first: Some(first.delta),
            attempts,
            attempt_started,
            deadline,
            idle,
            last_chunk: now,
            finish: first.finish_reason,
            usage: first.usage,
            skipped_events: first.skipped_events,
            timer: Box::pin(sleep_until(deadline.min(now + idle))),
            done: false,
            tracker,
        }
    }

    /// The call's attempts so far, the committed one last.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// The usage the provider has reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Releases the deployment's attempt: adds the output tokens it reported to its usage, and
    /// notes the unreadable events it skipped in its log entry and metrics. Returns whether the
    /// log changed.
    fn release(&mut self) -> bool {
        self.done = true;
        let skipped = std::mem::take(&mut self.skipped_events);
        // Dropping the tracker ends the deployment's in-flight count.
        let tracker = self.tracker.take();
        if let (Some(t), Some(u)) = (&tracker, &self.usage) {
            t.add_tokens(u64::from(u.completion_tokens));
        }
        let (Some(t), Some(last), true) = (&tracker, self.attempts.last_mut(), skipped > 0) else {
            return false;
        };
        t.metrics
            .stream_events_skipped(&t.deployment.group, &t.deployment.id, skipped);
        let note = format!("skipped {skipped} malformed stream events");
        last.detail = if last.detail.is_empty() {
            note
        } else {
            format!("{}; {note}", last.detail)
        };
        true
    }

    /// Ends the stream with `error`; the committed attempt (the last) takes `outcome`.
    fn break_off(&mut self, error: CallError, outcome: AttemptOutcome) -> CallFailure {
        if let Some(last) = self.attempts.last_mut() {
            last.outcome = outcome as i32;
            last.elapsed = Some(to_proto_duration(self.attempt_started.elapsed()));
            last.detail = error.message();
        }
        // A stream that went silent or broke counts against its deployment, as a failed attempt
        // would; the call's own deadline running out does not.
        let kind = match outcome {
            AttemptOutcome::IdleTimeout => Some(FailKind::Timeout),
            AttemptOutcome::UpstreamError => Some(FailKind::InternalServer),
            _ => None,
        };
        if let (Some(kind), Some(t)) = (kind, &self.tracker) {
            t.report(AttemptEnd::Failed {
                kind,
                wait_hint: None,
            });
        }
        self.release();
        CallFailure {
            error,
            attempts: std::mem::take(&mut self.attempts),
        }
    }
}

impl Drop for CommittedStream {
    fn drop(&mut self) {
        // Dropped before its end: the consumer went away.
        if !self.done {
            self.release();
        }
    }
}

impl Stream for CommittedStream {
    type Item = Result<StreamItem, CallFailure>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        if st.done {
            return Poll::Ready(None);
        }
        if let Some(first) = st.first.take() {
            return Poll::Ready(Some(Ok(StreamItem::Delta(first))));
        }
        loop {
            // The timers first: a stream that keeps sending still ends at its deadline.
            if st.timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if now >= st.deadline {
                    let f = st.break_off(CallError::DeadlineExceeded, AttemptOutcome::Timeout);
                    return Poll::Ready(Some(Err(f)));
                }
                let idle_at = st.last_chunk + st.idle;
                if now >= idle_at {
                    let error = CallError::StreamIdleTimeout { idle: st.idle };
                    let f = st.break_off(error, AttemptOutcome::IdleTimeout);
                    return Poll::Ready(Some(Err(f)));
                }
                // Chunks came since the timer was set: wait for the limit they moved.
                st.timer.as_mut().reset(idle_at.min(st.deadline));
                continue;
            }
            match st.rest.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    st.last_chunk = Instant::now();
                    st.finish = chunk.finish_reason.or(st.finish);
                    st.usage = chunk.usage.or(st.usage);
                    st.skipped_events += chunk.skipped_events;
                    if !chunk.delta.is_empty() {
                        return Poll::Ready(Some(Ok(StreamItem::Delta(chunk.delta))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = CallError::StreamInterrupted { detail: e.detail };
                    let f = st.break_off(error, AttemptOutcome::UpstreamError);
                    return Poll::Ready(Some(Err(f)));
                }
                Poll::Ready(None) => {
                    let changed = st.release();
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
