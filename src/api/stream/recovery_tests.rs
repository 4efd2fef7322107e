//! Mid-stream recovery under tokio's paused clock, through the router's real chain walk, the
//! real mock provider and the API's forwarder: where a broken stream goes next, and how it ends.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use super::tests::open;
use super::*;
use crate::api::stream;
use crate::proto::AttemptOutcome;
use crate::routing::CallError;
use crate::routing::testkit::{call, ms, router};

/// Mid-stream recovery under the paused clock. `stall` sends "a " then falls silent;
/// `whole` gives the whole answer, continuing from any prefix of it; `silent` stalls too;
/// `nocontinue` cannot take a prefill; `pair`'s two deployments and `twice` stall like `stall`, and
/// may be retried twice.
const RECOVER: &str = r#"
model_list:
  - model_name: stall
    litellm_params: { model: mock/stall, max_retries: 0, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: stall-0 }
  - model_name: whole
    litellm_params: { model: mock/whole, mock: { time_to_first_chunk: 100ms, tokens_per_second: 100, text: "a b c d" } }
    model_info: { id: whole-0 }
  - model_name: silent
    litellm_params: { model: mock/silent, max_retries: 0, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: silent-0 }
  - model_name: nocontinue
    litellm_params: { model: mock/nocontinue, mock: { time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: nocontinue-0, supports_assistant_prefill: false }
  - model_name: relapses
    litellm_params: { model: mock/relapses, max_retries: 10, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: relapses-0 }
  - model_name: pair
    litellm_params: { model: mock/pair, max_retries: 2, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: pair-0 }
  - model_name: pair
    litellm_params: { model: mock/pair, max_retries: 2, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: pair-1 }
  - model_name: twice
    litellm_params: { model: mock/twice, max_retries: 2, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c d" } }
    model_info: { id: twice-0 }
router_settings:
  stream_idle_timeout: 500ms
  stream_recovery: continue
  fallbacks:
    - stall: [whole]
    - pair: [whole]
    - silent: [nocontinue]
server:
  deadline_margin: 20ms
"#;

/// Commits a stream on `model` and drains it through the API's forwarder, with recovery.
async fn drain_recovering(
    req: crate::routing::CallRequest,
) -> (
    Vec<Result<crate::proto::StreamCompleteResponse, tonic::Status>>,
    Option<stream::StreamEnd>,
    Arc<crate::routing::Router>,
) {
    use futures_util::StreamExt as _;
    let r = Arc::new(router(RECOVER));
    let mut a = r.stream(&req).await.unwrap();
    let recovery = Recovery::arm(r.clone(), req, &mut a);
    let ended = Arc::new(std::sync::Mutex::new(None));
    let e = ended.clone();
    let on_end: stream::OnEnd = Box::new(move |end| *e.lock().unwrap() = Some(end.how));
    let items = stream::forward(a, recovery, open(ms(500), on_end))
        .collect()
        .await;
    let end = *ended.lock().unwrap();
    (items, end, r)
}

/// Each attempt as (deployment, outcome, whether it recovered the stream).
fn log_of(attempts: &[crate::proto::Attempt]) -> Vec<(&str, AttemptOutcome, bool)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.deployment.as_str(),
                AttemptOutcome::try_from(a.outcome).unwrap(),
                a.recovery,
            )
        })
        .collect()
}

pub(super) fn text(
    items: &[Result<crate::proto::StreamCompleteResponse, tonic::Status>],
) -> String {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|m| m.delta.as_str())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_continues_on_the_fallback_where_it_stopped() {
    let start = Instant::now();
    let (items, end, r) = drain_recovering(call("stall")).await;
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    assert_eq!(
        text(&items),
        "a b c d",
        "seamless: no word twice, no double space"
    );
    // Committed at 10ms; silent until the 500ms idle limit; the fallback's first chunk
    // 100ms later (" ", the continuation of "a"); three more words and the finish at 100
    // tokens/s.
    assert_eq!(start.elapsed(), ms(10 + 500 + 100 + 40));
    let resumed = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .find(|m| m.resumed)
        .expect("a resumed message");
    assert!(!resumed.restart, "continue never sends a restart marker");
    assert_eq!(resumed.deployment, "whole-0");
    assert_eq!(resumed.model, "whole");
    assert_eq!(
        log_of(&resumed.attempts),
        [
            ("stall-0", AttemptOutcome::IdleTimeout, false),
            ("whole-0", AttemptOutcome::Ok, true)
        ]
    );
    assert!(
        resumed.attempts[0]
            .detail
            .starts_with("after 1 chunks (about 1.0 tokens/s): the stream was silent"),
        "{}",
        resumed.attempts[0].detail
    );
    let last = items.last().unwrap().as_ref().unwrap();
    assert_eq!(last.finish_reason, crate::proto::FinishReason::Stop as i32);
    assert_eq!(last.deployment, "whole-0");
    // Both deployments are released; the broken one's silence counted against it.
    for d in ["stall-0", "whole-0"] {
        assert_eq!(r.deployment_state(d).unwrap().in_flight(), 0, "{d}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_asks_for_restarts_gets_a_marker_then_the_whole_answer() {
    let mut req = call("stall");
    req.stream_recovery = Some(crate::config::StreamRecovery::Restart);
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    let msgs: Vec<_> = items.iter().map(|i| i.as_ref().unwrap()).collect();
    assert_eq!(msgs[0].delta, "a ");
    assert!(msgs[1].restart && msgs[1].resumed);
    assert_eq!(msgs[1].delta, "a ", "the answer starts again");
    let after: String = msgs[1..].iter().map(|m| m.delta.as_str()).collect();
    assert_eq!(after, "a b c d");
    assert_eq!(
        msgs.iter().filter(|m| m.restart).count(),
        1,
        "one marker, on the first message of the new answer"
    );
}

#[tokio::test(start_paused = true)]
async fn without_recovery_a_silent_stream_ends_as_before() {
    let mut req = call("stall");
    req.stream_recovery = Some(crate::config::StreamRecovery::None);
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
    assert_eq!(items.len(), 2);
    let status = items[1].as_ref().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        !status.message().contains("recovery"),
        "{}",
        status.message()
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_deployment_able_to_continue_the_break_is_answered_and_says_recovery_was_tried() {
    let start = Instant::now();
    let (items, end, _) = drain_recovering(call("silent")).await;
    // No wait: `nocontinue` takes no prefill, so the recovery finds nothing to try.
    assert_eq!(start.elapsed(), ms(10 + 500));
    assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "the break's own code"
    );
    assert_eq!(
        crate::api::status::GrpcError::reason(&CallError::StreamIdleTimeout { idle: ms(500) }),
        "STREAM_IDLE_TIMEOUT"
    );
    assert!(
        status
            .message()
            .contains("recovery by continue was tried and failed"),
        "{}",
        status.message()
    );
    // What a client that accepts restarts would have had.
    assert!(
        status.message().contains(
            "1 deployment(s) left in the chain take no assistant prefill (nocontinue-0): a client that asks for STREAM_RECOVERY_CONTINUE_OR_RESTART would have been restarted there"
        ),
        "{}",
        status.message()
    );
    let log = crate::api::status::attempt_log(status).unwrap();
    assert_eq!(log.attempts[0].deployment, "silent-0");
    assert_eq!(
        AttemptOutcome::try_from(log.attempts[0].outcome).unwrap(),
        AttemptOutcome::IdleTimeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_recovery_never_runs_past_the_total_deadline() {
    let mut req = call("stall");
    // Committed at 10ms, silent at 510ms; the fallback's first chunk would come at 610ms,
    // after the 600ms total deadline (less the 20ms margin).
    req.timeout = Some(ms(600));
    let start = Instant::now();
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(start.elapsed(), ms(580));
    assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        status.message().contains("recovery by continue"),
        "{}",
        status.message()
    );
    let log = crate::api::status::attempt_log(status).unwrap();
    assert_eq!(
        log_of(&log.attempts),
        [
            ("stall-0", AttemptOutcome::IdleTimeout, false),
            // Cut by the caller's own deadline (the request's timeout): not the
            // deployment's failure.
            ("whole-0", AttemptOutcome::CallerTimeout, true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_keeps_breaking_is_recovered_a_bounded_number_of_times() {
    // `relapses` commits and falls silent every time, and may be retried ten times: each
    // recovery retries it after a backoff, and it breaks again.
    let (items, end, _) = drain_recovering(call("relapses")).await;
    assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        status.message().contains("recovered 3 times already"),
        "{}",
        status.message()
    );
    let log = crate::api::status::attempt_log(status).unwrap();
    let idle = log
        .attempts
        .iter()
        .filter(|a| a.outcome == AttemptOutcome::IdleTimeout as i32)
        .count();
    assert_eq!(idle, 1 + crate::routing::recovery::MAX_RECOVERIES as usize);
    assert_eq!(log.attempts.len(), idle, "{:?}", log.attempts);
}

#[tokio::test(start_paused = true)]
async fn a_continuation_extends_the_callers_own_prefill() {
    // The caller prefilled "a"; the answer goes on from it, and so does its continuation.
    let mut req = call("stall");
    req.chat.messages.push(crate::proto::ChatMessage {
        role: crate::proto::Role::Assistant as i32,
        content: "a".into(),
        ..Default::default()
    });
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    assert_eq!(text(&items), " b c d");
}

/// The deployments of each attempt, in order.
fn deployments(attempts: &[crate::proto::Attempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.deployment.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_deployment_that_broke_is_not_retried_while_another_or_the_fallback_can_answer() {
    for mode in [
        crate::config::StreamRecovery::Continue,
        crate::config::StreamRecovery::Restart,
    ] {
        let mut req = call("pair");
        req.stream_recovery = Some(mode);
        let (items, end, _) = drain_recovering(req).await;
        assert_eq!(end, Some(stream::StreamEnd::Finished), "{mode:?}");
        let last = items.last().unwrap().as_ref().unwrap();
        assert_eq!(last.deployment, "whole-0", "{mode:?}");
        let resumed: Vec<_> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .filter(|m| m.resumed)
            .collect();
        // The first break goes to the group's other deployment, the second to the fallback:
        // neither broken deployment is tried again although the group may retry twice.
        let log = &resumed.last().unwrap().attempts;
        assert_eq!(log.len(), 3, "{mode:?}: {log:?}");
        let d = deployments(log);
        assert_ne!(d[0], d[1], "{mode:?}: {d:?}");
        assert!(d[..2].iter().all(|d| d.starts_with("pair-")), "{d:?}");
        assert_eq!(d[2], "whole-0");
        assert_eq!(
            log_of(log).iter().map(|(_, o, _)| *o).collect::<Vec<_>>(),
            [
                AttemptOutcome::IdleTimeout,
                AttemptOutcome::IdleTimeout,
                AttemptOutcome::Ok
            ]
        );
        let restarts = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .filter(|m| m.restart)
            .count();
        let want = if mode == crate::config::StreamRecovery::Restart {
            2
        } else {
            0
        };
        assert_eq!(restarts, want, "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn as_the_last_option_a_broken_deployment_gets_its_groups_retries_once_per_call() {
    // `twice` may be retried twice and has no fallback: the retries are the call's, not each
    // recovery's, so the third break ends the stream before the recovery bound would.
    let mut req = call("twice");
    req.stream_recovery = Some(crate::config::StreamRecovery::Restart);
    let start = Instant::now();
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Failed(Code::DeadlineExceeded)));
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert!(
        status
            .message()
            .contains("recovery by restart was tried and failed"),
        "{}",
        status.message()
    );
    let log = crate::api::status::attempt_log(status).unwrap();
    assert_eq!(
        deployments(&log.attempts),
        ["twice-0"; 3],
        "{:?}",
        log.attempts
    );
    assert!(
        log.attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::IdleTimeout as i32)
    );
    // Three commits and silences; the two retries wait their backoff, which is at most the
    // default's cap each.
    assert!(start.elapsed() >= ms(3 * 510), "{:?}", start.elapsed());
}

fn messages(
    items: &[Result<crate::proto::StreamCompleteResponse, tonic::Status>],
) -> Vec<&crate::proto::StreamCompleteResponse> {
    items.iter().filter_map(|i| i.as_ref().ok()).collect()
}

/// The text as a client that honours restart markers assembles it.
fn assembled(items: &[Result<crate::proto::StreamCompleteResponse, tonic::Status>]) -> String {
    let mut out = String::new();
    for m in messages(items) {
        if m.restart {
            out.clear();
        }
        out.push_str(&m.delta);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn continue_or_restart_continues_where_the_next_deployment_takes_a_prefill() {
    let mut req = call("stall");
    req.stream_recovery = Some(crate::config::StreamRecovery::ContinueOrRestart);
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    assert_eq!(text(&items), "a b c d", "seamless, as with continue");
    let msgs = messages(&items);
    assert!(msgs.iter().all(|m| !m.restart), "no marker");
    let resumed = msgs.iter().find(|m| m.resumed).unwrap();
    assert_eq!(
        log_of(&resumed.attempts),
        [
            ("stall-0", AttemptOutcome::IdleTimeout, false),
            ("whole-0", AttemptOutcome::Ok, true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn continue_or_restart_restarts_where_the_next_deployment_takes_no_prefill() {
    // `silent`'s fallback takes no prefill: `continue` fails there (see above), this restarts.
    let mut req = call("silent");
    req.stream_recovery = Some(crate::config::StreamRecovery::ContinueOrRestart);
    let (items, end, _) = drain_recovering(req).await;
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    let msgs = messages(&items);
    assert_eq!(msgs.iter().filter(|m| m.restart).count(), 1);
    let marker = msgs.iter().find(|m| m.restart).unwrap();
    assert!(marker.resumed);
    assert_eq!(marker.deployment, "nocontinue-0");
    assert_eq!(assembled(&items), "a b c d", "the whole answer again");
    assert_eq!(
        log_of(&marker.attempts),
        [
            ("silent-0", AttemptOutcome::IdleTimeout, false),
            ("nocontinue-0", AttemptOutcome::Ok, true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn continue_or_restart_restarts_a_stream_that_delivered_more_than_a_prefill_carries() {
    // More text than stream_recovery_max_bytes: `continue` refuses, this restarts on the
    // fallback (which takes prefills, but is sent the request again).
    let mut req = call("stall");
    req.stream_recovery = Some(crate::config::StreamRecovery::ContinueOrRestart);
    let (items, end, r) = {
        use futures_util::StreamExt as _;
        let r = Arc::new(router(RECOVER));
        let mut a = r.stream(&req).await.unwrap();
        let mut recovery = Recovery::arm(r.clone(), req, &mut a).unwrap();
        // As if 1 MiB of text had gone by.
        for _ in 0..1024 {
            recovery.delivered(&crate::providers::Chunk {
                delta: "x".repeat(1024),
                ..Default::default()
            });
        }
        let ended = Arc::new(std::sync::Mutex::new(None));
        let e = ended.clone();
        let on_end: stream::OnEnd = Box::new(move |end| *e.lock().unwrap() = Some(end.how));
        let items: Vec<_> = stream::forward(a, Some(recovery), open(ms(500), on_end))
            .collect()
            .await;
        let end = *ended.lock().unwrap();
        (items, end, r)
    };
    drop(r);
    assert_eq!(end, Some(stream::StreamEnd::Finished));
    let msgs = messages(&items);
    let marker = msgs.iter().find(|m| m.restart).expect("a restart marker");
    assert_eq!(marker.deployment, "whole-0");
    assert_eq!(assembled(&items), "a b c d");
}
