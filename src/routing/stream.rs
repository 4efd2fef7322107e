//! A committed stream: forwards chunks to the client while two timers run, the idle timer
//! (longest silence between chunks) and the call's total deadline. There is no fallback after
//! commit; a failure ends the client's stream with a status.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until, timeout_at},
};
use tonic::Status;

use super::{Answered, CallError, Committed, to_proto_duration};
use crate::api::status::call_status;
use crate::proto::{Attempt, AttemptOutcome, FinishReason, StreamCompleteResponse, Usage};
use crate::telemetry::Metrics;

/// How a committed stream ended, for the call's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Finished,
    ClientGone,
    Failed(tonic::Code),
}

/// Forwards `answered` to `tx` until the provider finishes, a timer fires or the client goes
/// away. Dropping the provider stream on return closes the upstream request.
pub async fn pump(
    answered: Answered<Committed>,
    id: String,
    idle: Duration,
    tx: mpsc::Sender<Result<StreamCompleteResponse, Status>>,
    metrics: &Metrics,
) -> StreamEnd {
    let _open = metrics.stream_open();
    let Answered {
        value: Committed { first, mut rest },
        group,
        deployment,
        mut attempts,
        deadline,
        attempt_started,
    } = answered;
    let message = |delta: String| StreamCompleteResponse {
        id: id.clone(),
        model: group.clone(),
        deployment: deployment.clone(),
        delta,
        ..Default::default()
    };

    let mut finish: Option<FinishReason> = first.finish_reason;
    let mut usage: Option<Usage> = first.usage;
    let mut head = message(first.delta);
    head.attempts = attempts.clone();
    if !send(&tx, Ok(head), deadline).await {
        return StreamEnd::ClientGone;
    }

    let mut last_chunk = Instant::now();
    let failure = loop {
        tokio::select! {
            biased;
            _ = tx.closed() => {
                tracing::debug!(%id, "client went away; closing the provider stream");
                return StreamEnd::ClientGone;
            }
            _ = sleep_until(deadline) => break (CallError::DeadlineExceeded, AttemptOutcome::Timeout),
            _ = sleep_until(last_chunk + idle) => {
                break (CallError::StreamIdleTimeout { idle }, AttemptOutcome::IdleTimeout);
            }
            item = rest.next() => match item {
                Some(Ok(chunk)) => {
                    last_chunk = Instant::now();
                    finish = chunk.finish_reason.or(finish);
                    usage = chunk.usage.or(usage);
                    if !chunk.delta.is_empty() && !send(&tx, Ok(message(chunk.delta)), deadline).await {
                        return StreamEnd::ClientGone;
                    }
                }
                Some(Err(e)) => {
                    break (CallError::StreamInterrupted { detail: e.detail }, AttemptOutcome::UpstreamError);
                }
                None => {
                    if let Some(u) = &usage {
                        metrics.tokens(&deployment, u);
                        crate::api::record_usage(u);
                    }
                    let mut tail = message(String::new());
                    tail.finish_reason = finish.unwrap_or(FinishReason::Unspecified) as i32;
                    tail.usage = usage;
                    return if send(&tx, Ok(tail), deadline).await {
                        StreamEnd::Finished
                    } else {
                        StreamEnd::ClientGone
                    };
                }
            },
        }
    };

    let (error, outcome) = failure;
    // The committed attempt is the last one; its final outcome is the failure after commit.
    if let Some(last) = attempts.last_mut() {
        finalize(last, outcome, attempt_started.elapsed(), error.message());
    }
    let code = error.code();
    // Best effort: the client may be gone, or the deadline may have passed with it.
    let _ = tx.try_send(Err(call_status(&error, &attempts)));
    StreamEnd::Failed(code)
}

fn finalize(attempt: &mut Attempt, outcome: AttemptOutcome, elapsed: Duration, detail: String) {
    attempt.outcome = outcome as i32;
    attempt.elapsed = Some(to_proto_duration(elapsed));
    attempt.detail = detail;
}

/// Sends one message, giving up at the call's deadline. `false` when the client is gone.
async fn send(
    tx: &mpsc::Sender<Result<StreamCompleteResponse, Status>>,
    item: Result<StreamCompleteResponse, Status>,
    deadline: Instant,
) -> bool {
    matches!(timeout_at(deadline, tx.send(item)).await, Ok(Ok(())))
}
