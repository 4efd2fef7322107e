//! A committed call's response stream: the routing layer's [`CommittedStream`] as
//! `StreamCompleteResponse` messages. The first message carries the attempts made; the last, the
//! finish reason and usage; a failure after commit ends the stream with its status.
//!
//! tonic polls this stream itself (no task, no channel per call). When the client goes away,
//! tonic drops it, which drops the provider stream and closes the upstream request.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::ActiveGuard;
use super::status::{GrpcError as _, call_status};
use crate::proto::{Attempt, FinishReason, StreamCompleteResponse, Usage};
use crate::routing::{
    Answered, Committed,
    recovery::Recovery,
    stream::{CommittedStream, Piece, StreamItem},
};
use crate::telemetry::metrics::GaugeGuard;

/// How a committed stream ended, for the call's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Finished,
    ClientGone,
    Failed(tonic::Code),
}

/// How a committed stream ended, for the call's record.
pub struct Ended<'a> {
    pub how: StreamEnd,
    /// The usage the answering provider reported.
    pub usage: Option<Usage>,
    /// The group and deployment that answered last (another than at commit, after a recovery).
    pub group: &'a str,
    pub deployment: &'a str,
    /// Entries in the call's attempt log.
    pub attempts: usize,
}

/// Called once when the stream ends.
pub type OnEnd = Box<dyn FnOnce(Ended<'_>) + Send>;

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamCompleteResponse, Status>> + Send>>;

/// What the API layer keeps of a call while its stream is open.
pub struct Open {
    pub id: String,
    /// `router_settings.stream_idle_timeout`.
    pub idle: Duration,
    /// The cap on a status's RetryInfo (`router_settings.max_cooldown_from_hint`).
    pub max_retry_delay: Duration,
    /// Counts the stream open, until it is dropped.
    pub gauge: GaugeGuard,
    /// Counts the call in flight until tonic drops the stream, after its trailers.
    pub active: Option<ActiveGuard>,
    pub on_end: OnEnd,
}

/// The client's stream for a committed call. `recovery`: what the stream needs to recover if
/// it breaks, when the call may.
pub fn forward(
    answered: Answered<Committed>,
    recovery: Option<Box<Recovery>>,
    open: Open,
) -> ResponseStream {
    let group = answered.group.clone();
    let deployment = answered.deployment.clone();
    let inner = CommittedStream::new(answered, open.idle, recovery);
    let head_attempts = inner.attempts();
    Box::pin(Forward {
        _open: open.gauge,
        attempts: head_attempts.len(),
        head_attempts: Some(head_attempts),
        _active: open.active,
        inner,
        id: open.id,
        max_retry_delay: open.max_retry_delay,
        group,
        deployment,
        on_end: Some(open.on_end),
    })
}

struct Forward {
    inner: CommittedStream,
    max_retry_delay: Duration,
    /// The attempts made, for the first message, until it is sent.
    head_attempts: Option<Vec<Attempt>>,
    id: String,
    /// Who answers: the committed deployment, then the one that recovered the stream.
    group: String,
    deployment: String,
    /// Entries in the attempt log as last sent.
    attempts: usize,
    /// Taken when the stream ends.
    on_end: Option<OnEnd>,
    _open: GaugeGuard,
    /// Counts the call in flight until tonic drops the stream, after its trailers.
    _active: Option<ActiveGuard>,
}

impl Forward {
    fn message(&self, piece: Piece) -> StreamCompleteResponse {
        StreamCompleteResponse {
            id: self.id.clone(),
            model: self.group.clone(),
            deployment: self.deployment.clone(),
            delta: piece.text,
            tool_calls: piece.tool_calls,
            thinking: piece.thinking,
            ..Default::default()
        }
    }

    fn end(&mut self, how: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(Ended {
                how,
                usage: self.inner.usage(),
                group: &self.group,
                deployment: &self.deployment,
                attempts: self.attempts,
            });
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Dropped before its end: tonic let go of it because the client went away.
        if self.on_end.is_some() {
            tracing::debug!(id = %self.id, "client went away; closing the provider stream");
            self.end(StreamEnd::ClientGone);
        }
    }
}

impl Stream for Forward {
    type Item = Result<StreamCompleteResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match this.inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(item)) => item,
        };
        Poll::Ready(Some(match item {
            Ok(StreamItem::Delta(piece)) => {
                let mut msg = this.message(piece);
                if let Some(attempts) = this.head_attempts.take() {
                    msg.attempts = attempts;
                }
                Ok(msg)
            }
            Ok(StreamItem::Resumed {
                group,
                deployment,
                restart,
                piece,
                attempts,
            }) => {
                this.group = group;
                this.deployment = deployment;
                this.attempts = attempts.len();
                // Nothing sent yet (a break before the first message was read): the head's
                // attempts are superseded.
                this.head_attempts = None;
                let mut msg = this.message(piece);
                msg.resumed = true;
                msg.restart = restart;
                msg.attempts = attempts;
                Ok(msg)
            }
            Ok(StreamItem::Finished {
                finish_reason,
                usage,
                attempts,
            }) => {
                let mut tail = this.message(Piece::default());
                tail.finish_reason = finish_reason.unwrap_or(FinishReason::Unspecified) as i32;
                tail.usage = usage;
                if let Some(attempts) = attempts {
                    this.attempts = attempts.len();
                    tail.attempts = attempts;
                }
                this.end(StreamEnd::Finished);
                Ok(tail)
            }
            Err(failure) => {
                this.attempts = failure.attempts.len();
                let status = call_status(&failure.error, &failure.attempts, this.max_retry_delay);
                this.end(StreamEnd::Failed(failure.error.code()));
                Err(status)
            }
        }))
    }
}

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod slow_tests;
#[cfg(test)]
mod tests;
