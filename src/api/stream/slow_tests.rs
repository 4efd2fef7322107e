//! The slow-stream guard under tokio's paused clock, through the router's real chain walk, the
//! real mock provider and the API's forwarder: a stream that is alive but crawling is cut at the
//! guard's first judgement and recovers on a faster deployment; without the guard it runs on.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use super::recovery_tests::text;
use super::tests::open;
use super::*;
use crate::api::stream;
use crate::proto::AttemptOutcome;
use crate::routing::testkit::{call, ms, outcomes, router};

/// `crawl` sends a word ("b ": half a token) every 2s, a quarter of a token a second, under a
/// guard of 2 tokens/s over 4s after 1s; `plain` crawls as fast with no guard of its own; `fast`
/// continues either at 100 tokens/s. `allowed_fails: 0`: any failure that counts against a
/// deployment cools it down, which shows which ones do.
const SLOW: &str = r#"
model_list:
  - model_name: crawl
    litellm_params: { model: mock/crawl, max_retries: 0, mock: { time_to_first_chunk: 10ms, tokens_per_second: 0.5, text: "a b c d e f g h i j k l" } }
    model_info: { id: crawl-0 }
  - model_name: plain
    litellm_params: { model: mock/plain, max_retries: 0, mock: { time_to_first_chunk: 10ms, tokens_per_second: 0.5, text: "a b c d e f g h i j k l" } }
    model_info: { id: plain-0 }
  - model_name: fast
    litellm_params: { model: mock/fast, mock: { time_to_first_chunk: 10ms, tokens_per_second: 100, text: "a b c d e f g h i j k l" } }
    model_info: { id: fast-0 }
router_settings:
  stream_idle_timeout: 5s
  stream_recovery: continue
  allowed_fails: 0
  model_group_settings:
    crawl: { stream_min_tokens_per_s: 2, stream_min_tokens_window: 4s, stream_min_tokens_grace: 1s }
    fast: { stream_min_tokens_per_s: 2, stream_min_tokens_window: 4s, stream_min_tokens_grace: 1s }
  fallbacks:
    - crawl: [fast]
    - plain: [fast]
server:
  deadline_margin: 20ms
"#;

type Items = Vec<Result<crate::proto::StreamCompleteResponse, tonic::Status>>;

/// Commits `req`'s stream and drains it through the forwarder, with recovery.
async fn drain(req: crate::routing::CallRequest) -> (Items, Arc<crate::routing::Router>) {
    use futures_util::StreamExt as _;
    let r = Arc::new(router(SLOW));
    let mut a = r.stream(&req).await.unwrap();
    let recovery = Recovery::arm(r.clone(), req, &mut a);
    let on_end: stream::OnEnd = Box::new(|_| {});
    let items = stream::forward(a, recovery, open(ms(5000), on_end))
        .collect()
        .await;
    (items, r)
}

fn cooling(r: &crate::routing::Router, id: &str) -> bool {
    r.deployment_state(id)
        .unwrap()
        .cooling_until(Instant::now())
        .is_some()
}

#[tokio::test(start_paused = true)]
async fn a_crawling_stream_is_cut_at_its_first_judgement_and_continues_on_the_fallback() {
    let start = Instant::now();
    let (items, r) = drain(call("crawl")).await;
    let resumed = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .find(|m| m.resumed)
        .expect("recovered");
    // Committed at 10ms; judged from 1s (grace) + 4s (window) after that.
    let cut = resumed.attempts[0].elapsed.unwrap();
    assert_eq!((cut.seconds, cut.nanos / 1_000_000), (5, 10), "{cut:?}");
    assert_eq!(
        outcomes(&resumed.attempts),
        [
            ("crawl-0".to_string(), AttemptOutcome::TooSlow),
            ("fast-0".to_string(), AttemptOutcome::Ok)
        ]
    );
    let detail = &resumed.attempts[0].detail;
    // Three words in 5s ("a " at commit, "b " at 2s, "c " at 4s), two of them in the last 4s:
    // 4 bytes, one token.
    assert!(
        detail.starts_with("after 3 chunks (about 0.3 tokens/s): the stream delivered about 0.3 tokens/s over the last 4s, below the configured stream_min_tokens_per_s (2)"),
        "{detail}"
    );
    // The fast deployment is under the same guard and is never cut.
    assert_eq!(text(&items), "a b c d e f g h i j k l");
    assert!(items.last().unwrap().is_ok());
    assert!(start.elapsed() < ms(5200), "{:?}", start.elapsed());
    // The configured rate's verdict counts against the deployment.
    assert!(cooling(&r, "crawl-0"));
    assert!(!cooling(&r, "fast-0"));
}

#[tokio::test(start_paused = true)]
async fn without_the_guard_the_crawl_runs_on_to_the_calls_deadline() {
    let mut req = call("crawl");
    req.slow_stream.per_s = Some(0.0);
    req.timeout = Some(ms(8000));
    let start = Instant::now();
    let (items, _) = drain(req).await;
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    let elapsed = start.elapsed();
    assert!(elapsed >= ms(7900) && elapsed <= ms(8100), "{elapsed:?}");
    assert!(
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .all(|m| !m.resumed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_requests_own_rate_cuts_the_stream_without_charging_the_deployment() {
    let mut req = call("plain");
    req.slow_stream.per_s = Some(2.0);
    req.slow_stream.window = Some(ms(4000));
    let (items, r) = drain(req).await;
    let resumed = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .find(|m| m.resumed)
        .expect("recovered");
    assert_eq!(
        outcomes(&resumed.attempts)[0],
        ("plain-0".to_string(), AttemptOutcome::TooSlow)
    );
    assert!(
        resumed.attempts[0]
            .detail
            .contains("below the request's stream_min_tokens_per_s (2)"),
        "{}",
        resumed.attempts[0].detail
    );
    // The group's grace (the default, 5s) applies: judged from 5s + 4s after commit.
    let cut = resumed.attempts[0].elapsed.unwrap();
    assert_eq!(cut.seconds, 9, "{cut:?}");
    assert_eq!(text(&items), "a b c d e f g h i j k l");
    assert!(
        !cooling(&r, "plain-0"),
        "the caller's rule, not the deployment's fault"
    );
}

#[tokio::test(start_paused = true)]
async fn without_recovery_a_crawl_ends_unavailable_stream_too_slow() {
    let mut req = call("crawl");
    req.stream_recovery = Some(crate::config::StreamRecovery::None);
    let (items, _) = drain(req).await;
    let status = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    use tonic_types::StatusExt as _;
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "STREAM_TOO_SLOW");
    assert!(
        status
            .message()
            .contains("below the configured stream_min_tokens_per_s (2)"),
        "{}",
        status.message()
    );
}
