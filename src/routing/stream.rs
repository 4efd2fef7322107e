//! A committed stream: forwards chunks to the client while two timers run, the idle timer
//! (longest silence between chunks) and the call's total deadline. There is no fallback after
//! commit; a failure ends the client's stream with a status.
//!
//! The forwarder is a stream that tonic polls itself: no task and no channel per call, so an
//! open stream holds only its own state. When the client goes away, tonic drops it, which drops
//! the provider stream and closes the upstream request. A client that stops reading stops the
//! polling too: its deadline is then answered at its next read.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, Sleep, sleep_until};
use tonic::Status;

use super::{
    Answered, CallError, Committed,
    health::{AttemptEnd, Tracker},
    to_proto_duration,
};
use crate::api::status::call_status;
use crate::config::FailKind;
use crate::proto::{Attempt, AttemptOutcome, FinishReason, StreamCompleteResponse, Usage};
use crate::providers::ChunkStream;
use crate::telemetry::{Metrics, metrics::GaugeGuard};

/// How a committed stream ended, for the call's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Finished,
    ClientGone,
    Failed(tonic::Code),
}

/// Called once when the stream ends, with how it ended and the usage the provider reported.
pub type OnEnd = Box<dyn FnOnce(StreamEnd, Option<Usage>) + Send>;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamCompleteResponse, Status>> + Send>>;

/// The client's stream for a committed call: the first chunk (with the attempts made), then
/// the rest as the provider sends it, then a last message with finish reason and usage.
pub fn forward(
    answered: Answered<Committed>,
    id: String,
    idle: Duration,
    metrics: &Metrics,
    on_end: OnEnd,
) -> ResponseStream {
    let Answered {
        value: Committed { first, rest },
        group,
        deployment,
        attempts,
        deadline,
        attempt_started,
        tracker,
    } = answered;
    let mut head = StreamCompleteResponse {
        id: id.clone(),
        model: group.clone(),
        deployment: deployment.clone(),
        delta: first.delta,
        ..Default::default()
    };
    head.attempts = attempts.clone();
    let now = Instant::now();
    let state = Forward {
        _open: metrics.stream_open(),
        rest,
        head: Some(head),
        id,
        group,
        deployment,
        attempts,
        attempt_started,
        deadline,
        idle,
        last_chunk: now,
        finish: first.finish_reason,
        usage: first.usage,
        timer: Box::pin(sleep_until(deadline.min(now + idle))),
        on_end: Some(on_end),
        done: false,
        tracker,
    };
    Box::pin(stream::unfold(state, next))
}

struct Forward {
    rest: ChunkStream,
    /// The first message, until sent.
    head: Option<StreamCompleteResponse>,
    id: String,
    group: String,
    deployment: String,
    attempts: Vec<Attempt>,
    attempt_started: Instant,
    deadline: Instant,
    idle: Duration,
    last_chunk: Instant,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// One timer for both the idle limit and the deadline, set lazily: a chunk does not move
    /// it; when it fires early (chunks came meanwhile), it is set again to the new limit. A
    /// timer per chunk would cost two timer-wheel updates under the driver's lock every chunk.
    timer: Pin<Box<Sleep>>,
    on_end: Option<OnEnd>,
    done: bool,
    /// Keeps the deployment's attempt in flight until the stream ends, and records its end.
    tracker: Option<Tracker>,
    _open: GaugeGuard,
}

impl Forward {
    fn message(&self, delta: String) -> StreamCompleteResponse {
        StreamCompleteResponse {
            id: self.id.clone(),
            model: self.group.clone(),
            deployment: self.deployment.clone(),
            delta,
            ..Default::default()
        }
    }

    fn end(&mut self, how: StreamEnd) {
        self.done = true;
        // Dropping the tracker ends the deployment's in-flight count.
        if let Some(t) = self.tracker.take()
            && let Some(u) = &self.usage
        {
            t.add_tokens(u64::from(u.completion_tokens));
        }
        if let Some(f) = self.on_end.take() {
            f(how, self.usage);
        }
    }

    /// Ends the stream with `error`; the committed attempt (the last) takes `outcome`.
    fn fail(&mut self, error: CallError, outcome: AttemptOutcome) -> Status {
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
            t.record(AttemptEnd::Failed {
                kind,
                retry_after: None,
            });
        }
        let status = call_status(&error, &self.attempts);
        self.end(StreamEnd::Failed(error.code()));
        status
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Dropped before its end: tonic let go of it because the client went away.
        if !self.done {
            tracing::debug!(id = %self.id, "client went away; closing the provider stream");
            self.end(StreamEnd::ClientGone);
        }
    }
}

async fn next(mut st: Forward) -> Option<(Result<StreamCompleteResponse, Status>, Forward)> {
    if st.done {
        return None;
    }
    if let Some(head) = st.head.take() {
        return Some((Ok(head), st));
    }
    loop {
        tokio::select! {
            biased;
            () = &mut st.timer => {
                let now = Instant::now();
                if now >= st.deadline {
                    let status = st.fail(CallError::DeadlineExceeded, AttemptOutcome::Timeout);
                    return Some((Err(status), st));
                }
                let idle_at = st.last_chunk + st.idle;
                if now >= idle_at {
                    let idle = st.idle;
                    let status = st.fail(CallError::StreamIdleTimeout { idle }, AttemptOutcome::IdleTimeout);
                    return Some((Err(status), st));
                }
                // Chunks came since the timer was set: wait for the limit they moved.
                st.timer.as_mut().reset(idle_at.min(st.deadline));
            }
            item = st.rest.next() => match item {
                Some(Ok(chunk)) => {
                    st.last_chunk = Instant::now();
                    st.finish = chunk.finish_reason.or(st.finish);
                    st.usage = chunk.usage.or(st.usage);
                    if !chunk.delta.is_empty() {
                        let msg = st.message(chunk.delta);
                        return Some((Ok(msg), st));
                    }
                }
                Some(Err(e)) => {
                    let status = st.fail(CallError::StreamInterrupted { detail: e.detail }, AttemptOutcome::UpstreamError);
                    return Some((Err(status), st));
                }
                None => {
                    let mut tail = st.message(String::new());
                    tail.finish_reason = st.finish.unwrap_or(FinishReason::Unspecified) as i32;
                    tail.usage = st.usage;
                    st.end(StreamEnd::Finished);
                    return Some((Ok(tail), st));
                }
            },
        }
    }
}
