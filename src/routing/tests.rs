//! The chain walk under tokio's paused clock: the real router and the real mock provider, with
//! time that only moves when every task waits, so deadline arithmetic is exact.

use std::{sync::Arc, time::Duration};

use super::testkit::{CHAIN, call, ms, outcomes, router};
use super::*;
use crate::config::FailKind;
use crate::proto::AttemptOutcome;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_hanging_primary_falls_back_after_its_own_timeout() {
    let r = router(CHAIN);
    let start = Instant::now();
    let a = r.complete(&call("primary")).await.unwrap();
    // 1s primary timeout, then the fallback's 100ms.
    assert_eq!(start.elapsed(), ms(1100));
    assert_eq!(a.group, "fast");
    assert_eq!(a.deployment, "fast-0");
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("primary-0".into(), AttemptOutcome::Timeout),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(a.attempts[0].elapsed, Some(to_proto_duration(ms(1000))));
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_only_after_the_last_fallback() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("primary");
    req.fallbacks = vec!["second".into()];
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        ms(2000),
        "both groups waited out their 1s timeouts"
    );
    assert_eq!(
        ended(&f.error),
        ("FallbacksExhausted", Some(FailKind::Timeout))
    );
    assert_eq!(
        outcomes(&f.attempts),
        [
            ("primary-0".into(), AttemptOutcome::Timeout),
            ("second-0".into(), AttemptOutcome::Timeout)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_bounds_the_whole_chain() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("primary");
    req.fallbacks = vec!["second".into()];
    req.timeout = Some(ms(1500));
    let f = r.complete(&req).await.unwrap_err();
    // 1500ms less the 20ms margin: the fallback's attempt is cut at the total deadline.
    assert_eq!(start.elapsed(), ms(1480));
    assert_eq!(ended(&f.error), ("DeadlineExceeded", None));
    assert_eq!(f.attempts.len(), 2);
    assert_eq!(f.attempts[1].elapsed, Some(to_proto_duration(ms(480))));
}

#[tokio::test(start_paused = true)]
async fn the_client_deadline_is_the_earliest_and_wins() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("primary");
    req.client_timeout = Some(ms(300));
    req.timeout = Some(ms(5000));
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(280));
    assert_eq!(ended(&f.error), ("DeadlineExceeded", None));
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_within_the_group() {
    let r = router(CHAIN);
    let start = Instant::now();
    let f = r.complete(&call("flaky")).await.unwrap_err();
    assert_eq!(
        ended(&f.error),
        ("FallbacksExhausted", Some(FailKind::InternalServer))
    );
    assert_eq!(f.attempts.len(), 3, "first attempt and num_retries 2");
    // Full-jitter backoff: retry 1 waits 50..100ms, retry 2 waits 100..200ms.
    let e = start.elapsed();
    assert!(e >= ms(150) && e <= ms(300), "elapsed {e:?}");
}

#[tokio::test(start_paused = true)]
async fn num_retries_from_the_request_overrides_the_config() {
    let r = router(CHAIN);
    let mut req = call("flaky");
    req.num_retries = Some(0);
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(f.attempts.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_rate_limits_answer_resource_exhausted() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("limited");
    req.num_retries = Some(1);
    let f = r.complete(&req).await.unwrap_err();
    // The mock's Retry-After is 1s, longer than the backoff.
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(f.attempts.len(), 2);
    assert_eq!(
        ended(&f.error),
        ("FallbacksExhausted", Some(FailKind::RateLimit))
    );
    assert_eq!(wait_hint(&f.error), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_deadline_moves_on_at_once() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("limited");
    req.timeout = Some(ms(800));
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        ms(0),
        "no sleep that cannot fit in the deadline"
    );
    assert_eq!(f.attempts.len(), 1);
    assert_eq!(
        ended(&f.error),
        ("FallbacksExhausted", Some(FailKind::RateLimit))
    );
}

#[tokio::test(start_paused = true)]
async fn auth_failures_skip_the_deployment_without_retrying_it() {
    let r = router(CHAIN);
    let a = r.complete(&call("badkey")).await.unwrap();
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("badkey-0".into(), AttemptOutcome::Rejected),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(a.attempts[0].upstream_status, 401);

    let mut req = call("badkey");
    req.fallbacks = vec![];
    let r2 = router(&CHAIN.replace("- badkey: [fast]", ""));
    let f = r2.complete(&req).await.unwrap_err();
    assert_eq!(
        ended(&f.error),
        ("FallbacksExhausted", Some(FailKind::Authentication))
    );
    assert_eq!(f.attempts.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_requests_answer_invalid_argument_without_fallback() {
    let r = router(CHAIN);
    let f = r.complete(&call("badreq")).await.unwrap_err();
    assert_eq!(ended(&f.error).0, "UpstreamRejected");
    assert_eq!(f.attempts.len(), 1, "the configured fallback is not tried");
}

#[tokio::test(start_paused = true)]
async fn context_window_errors_go_to_context_window_fallbacks() {
    let r = router(CHAIN);
    let a = r.complete(&call("small")).await.unwrap();
    assert_eq!(a.group, "fast");
    assert_eq!(
        a.attempts.len(),
        2,
        "not retried: the prompt will not shrink"
    );

    let r2 = router(&CHAIN.replace("- small: [fast]", "- fast: [primary]"));
    let f = r2.complete(&call("small")).await.unwrap_err();
    assert_eq!(ended(&f.error).0, "ContextWindowExceeded");
}

#[tokio::test(start_paused = true)]
async fn mock_timeout_waits_out_every_attempt_of_the_requested_group_then_falls_back() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("fast");
    req.mock_timeout = true;
    req.num_retries = Some(1);
    req.fallbacks = vec!["flaky".into(), "primary".into(), "fast".into()];
    let f = r.complete(&req).await;
    // fast: two mock timeouts of 5s each plus a backoff; flaky fails; primary hangs 1s; then
    // the requested group again as the last fallback, this time for real.
    let a = f.unwrap();
    let o = outcomes(&a.attempts);
    assert_eq!(o[0], ("fast-0".into(), AttemptOutcome::MockTimeout));
    assert_eq!(o[1], ("fast-0".into(), AttemptOutcome::MockTimeout));
    assert_eq!(o.last().unwrap(), &("fast-0".into(), AttemptOutcome::Ok));
    assert!(start.elapsed() >= Duration::from_secs(11));
}

#[tokio::test(start_paused = true)]
async fn mock_timeout_without_fallbacks_ends_deadline_exceeded() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("fast");
    req.mock_timeout = true;
    req.num_retries = Some(0);
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "the deployment's own timeout"
    );
    assert_eq!(ended(&f.error).1, Some(FailKind::Timeout));
    assert_eq!(
        outcomes(&f.attempts),
        [("fast-0".into(), AttemptOutcome::MockTimeout)]
    );
}

#[tokio::test(start_paused = true)]
async fn mock_timeout_is_refused_when_disabled() {
    let r = router(&CHAIN.replace(
        "  allow_mock_timeout: true\n  allow_mock_response: true\n",
        "",
    ));
    let mut req = call("fast");
    req.mock_timeout = true;
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(ended(&f.error).0, "MockTimeoutDisabled");
    assert!(f.attempts.is_empty());
    // Both test switches are off unless the config turns them on.
    let mut req = call("fast");
    req.mock_response = Some("canned".into());
    let f = r.complete(&req).await.unwrap_err();
    assert_eq!(ended(&f.error).0, "MockResponseDisabled");
}

#[tokio::test(start_paused = true)]
async fn streams_get_a_first_chunk_deadline_and_fall_back_after_it() {
    let r = router(CHAIN);
    let start = Instant::now();
    let a = r.stream(&call("slowstart")).await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(1100),
        "1s first-chunk deadline, then fast's 100ms"
    );
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("slowstart-0".into(), AttemptOutcome::FirstChunkTimeout),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(a.value.first.delta, "ok");

    // A request stream_timeout overrides the deployment's.
    let start = Instant::now();
    let mut req = call("slowstart");
    req.stream_timeout = Some(ms(250));
    let a = r.stream(&req).await.unwrap();
    assert_eq!(start.elapsed(), ms(350));
    assert_eq!(a.group, "fast");
}

#[tokio::test(start_paused = true)]
async fn stream_timeout_does_not_apply_to_unary_calls() {
    let r = router(CHAIN);
    let start = Instant::now();
    let a = r.complete(&call("slowstart")).await.unwrap();
    // 3s to the first token, then six more words at the default 200 tokens/s.
    assert_eq!(
        start.elapsed(),
        ms(3030),
        "the answer fits the 10s attempt timeout"
    );
    assert_eq!(a.group, "slowstart");
}

#[tokio::test(start_paused = true)]
async fn mock_timeout_on_a_stream_waits_for_the_first_chunk_deadline() {
    let r = router(CHAIN);
    let start = Instant::now();
    let mut req = call("slowstart");
    req.mock_timeout = true;
    let a = r.stream(&req).await.unwrap();
    assert_eq!(start.elapsed(), ms(1100));
    assert_eq!(
        AttemptOutcome::try_from(a.attempts[0].outcome).unwrap(),
        AttemptOutcome::MockTimeout
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_models_and_fallbacks_are_named() {
    let r = router(CHAIN);
    let f = r.complete(&call("nope")).await.unwrap_err();
    assert_eq!(ended(&f.error).0, "ModelNotFound");
    assert!(
        f.error
            .message()
            .contains("known model groups: badkey, badreq, fast")
    );
    let mut req = call("fast");
    req.fallbacks = vec!["fast".into(), "ghost".into()];
    let f = r.complete(&req).await.unwrap_err();
    assert!(matches!(
        f.error,
        CallError::UnknownFallback { index: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn mock_response_answers_without_a_provider() {
    let r = router(CHAIN);
    let mut req = call("primary");
    req.mock_response = Some("canned".into());
    let start = Instant::now();
    let a = r.complete(&req).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(a.value.text, "canned");
    assert_eq!(a.deployment, MOCK_RESPONSE_DEPLOYMENT);
}

const TWO_DEPLOYMENTS: &str = r#"
model_list:
  - model_name: pair
    litellm_params: { model: mock/broken, mock: { failure: server_error } }
    model_info: { id: broken }
  - model_name: pair
    litellm_params: { model: mock/good, mock: { time_to_first_chunk: 100ms, text: "ok" } }
    model_info: { id: good }
  - model_name: weighted
    litellm_params: { model: mock/w3, weight: 3, mock: { text: "ok" } }
    model_info: { id: heavy }
  - model_name: weighted
    litellm_params: { model: mock/w1, mock: { text: "ok" } }
    model_info: { id: light }
router_settings:
  num_retries: 1
  retry_backoff_initial: 1s
  retry_backoff_max: 1s
"#;

#[tokio::test(start_paused = true)]
async fn a_retry_prefers_another_deployment_of_the_group_and_starts_at_once() {
    let r = router(TWO_DEPLOYMENTS);
    for _ in 0..20 {
        let start = Instant::now();
        let a = r.complete(&call("pair")).await.unwrap();
        assert_eq!(a.deployment, "good");
        // Whichever came first, no backoff was waited: switching deployments is immediate.
        assert_eq!(start.elapsed(), ms(100));
        match outcomes(&a.attempts).as_slice() {
            [(good, AttemptOutcome::Ok)] => assert_eq!(good, "good"),
            [
                (broken, AttemptOutcome::UpstreamError),
                (good, AttemptOutcome::Ok),
            ] => {
                assert_eq!((broken.as_str(), good.as_str()), ("broken", "good"));
            }
            other => panic!("unexpected attempts {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn first_picks_follow_the_weights() {
    fastrand::seed(7);
    let r = router(TWO_DEPLOYMENTS);
    let mut heavy = 0;
    for _ in 0..400 {
        if r.complete(&call("weighted")).await.unwrap().deployment == "heavy" {
            heavy += 1;
        }
    }
    // Weight 3 against 1: about 300 of 400.
    assert!((260..=340).contains(&heavy), "heavy picked {heavy} of 400");
}

/// Hedging and cooldowns under the paused clock: exact times.
const HEDGED: &str = r#"
model_list:
  - model_name: stuck
    litellm_params: { model: mock/stuck, timeout: 5s, mock: { failure: hang } }
    model_info: { id: stuck-0 }
  - model_name: fast
    litellm_params: { model: mock/fast, timeout: 5s, mock: { time_to_first_chunk: 100ms, text: "ok" } }
    model_info: { id: fast-0 }
  - model_name: down
    litellm_params: { model: mock/down, timeout: 5s, mock: { failure: server_error } }
    model_info: { id: down-0 }
router_settings:
  num_retries: 0
  allowed_fails: 0
  cooldown_time: 2s
  fallbacks:
    - stuck: [fast]
  model_group_settings:
    stuck: { hedge_after: 300ms, max_hedges: 2 }
"#;

#[tokio::test(start_paused = true)]
async fn a_hedge_starts_at_hedge_after_and_its_first_chunk_wins() {
    let r = router(HEDGED);
    let start = Instant::now();
    let a = r.stream(&call("stuck")).await.unwrap();
    // The hedge (into the fallback: `stuck` has one deployment) starts at 300ms and delivers
    // its first chunk 100ms later; the primary is cancelled at that instant.
    assert_eq!(start.elapsed(), ms(400));
    assert_eq!(a.deployment, "fast-0");
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("stuck-0".into(), AttemptOutcome::Cancelled),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
    assert!(!a.attempts[0].hedge && a.attempts[1].hedge);
    assert_eq!(a.attempts[0].elapsed, Some(to_proto_duration(ms(400))));
    // Lost races say nothing about a deployment: `stuck` is not cooling down.
    let stuck = r.deployment_state("stuck-0").unwrap();
    assert_eq!(stuck.cooling_until(Instant::now()), None);
    assert_eq!(stuck.in_flight(), 0);
    // The winner stays in flight while its stream is open.
    assert_eq!(r.deployment_state("fast-0").unwrap().in_flight(), 1);
    drop(a);
    assert_eq!(r.deployment_state("fast-0").unwrap().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_without_hedging_runs_one_attempt_at_a_time() {
    use crate::config::auth::{CallerPolicy, Knobs};
    let r = router(HEDGED);
    let mut req = call("stuck");
    req.context = super::CallContext {
        identity: None,
        caller: super::CallerName::Named("batch".into()),
        policy: Some(Arc::new(CallerPolicy {
            knobs: Knobs {
                hedging: false,
                ..Knobs::default()
            },
            ..CallerPolicy::unlimited("batch")
        })),
    };
    let start = Instant::now();
    let a = r.stream(&req).await.unwrap();
    // No hedge at 300ms: the primary runs out its 5s, then the chain falls back.
    assert_eq!(start.elapsed(), ms(5100));
    assert_eq!(a.deployment, "fast-0");
    assert!(a.attempts.iter().all(|at| !at.hedge), "{:?}", a.attempts);
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("stuck-0".into(), AttemptOutcome::Timeout),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_that_is_all_cooling_fails_at_once_and_says_when_it_returns() {
    let r = router(HEDGED);
    let first = r.complete(&call("down")).await.unwrap_err();
    assert_eq!(
        ended(&first.error),
        ("FallbacksExhausted", Some(FailKind::InternalServer))
    );
    tokio::time::advance(ms(500)).await;
    let start = Instant::now();
    let f = r.complete(&call("down")).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(
        f.error,
        CallError::NoDeploymentAvailable { back_in, cooling: true } if back_in == ms(1500)
    ));
    assert_eq!(
        outcomes(&f.attempts),
        [("down-0".into(), AttemptOutcome::CoolingDown)]
    );
    // Back exactly when the cooldown ends.
    tokio::time::advance(ms(1500)).await;
    let again = r.complete(&call("down")).await.unwrap_err();
    assert_eq!(
        outcomes(&again.attempts),
        [("down-0".into(), AttemptOutcome::UpstreamError)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_mock_timeout_attempt_holds_no_capacity() {
    let r = Arc::new(router(&CHAIN.replace(
        "model: mock/fast, timeout: 5s,",
        "model: mock/fast, timeout: 5s, max_parallel_requests: 1,",
    )));
    let waiting = r.clone();
    let mock = tokio::spawn(async move {
        let mut req = call("fast");
        req.mock_timeout = true;
        req.num_retries = Some(0);
        waiting.complete(&req).await
    });
    tokio::time::sleep(ms(10)).await;
    // The mock attempt waits out its 5s deadline without taking the deployment's only slot.
    assert_eq!(r.deployment_state("fast-0").unwrap().in_flight(), 0);
    let a = r.complete(&call("fast")).await.unwrap();
    assert_eq!(
        outcomes(&a.attempts),
        [("fast-0".into(), AttemptOutcome::Ok)]
    );
    let f = mock.await.unwrap().unwrap_err();
    assert_eq!(
        outcomes(&f.attempts),
        [("fast-0".into(), AttemptOutcome::MockTimeout)]
    );
}

#[tokio::test(start_paused = true)]
async fn without_context_window_fallbacks_a_context_window_error_goes_to_the_regular_ones() {
    // As LiteLLM does: a fallback group may have a model with a larger context window.
    let r = router(
        &CHAIN
            .replace("  context_window_fallbacks:\n    - small: [fast]\n", "")
            .replace(
                "    - stall: [fast]",
                "    - stall: [fast]\n    - small: [fast]",
            ),
    );
    let a = r.complete(&call("small")).await.unwrap();
    assert_eq!(a.group, "fast");
    assert_eq!(
        outcomes(&a.attempts),
        [
            ("small-0".into(), AttemptOutcome::Rejected),
            ("fast-0".into(), AttemptOutcome::Ok)
        ]
    );
}

/// How a call ended, in routing's terms: the error's variant and, when a failure ended it, the
/// kind of that failure (the API layer's status tests map these to codes).
fn ended(e: &CallError) -> (&'static str, Option<FailKind>) {
    let (name, last) = match e {
        CallError::FallbacksExhausted(f) => ("FallbacksExhausted", Some(f)),
        CallError::UpstreamRejected(f) => ("UpstreamRejected", Some(f)),
        CallError::ContextWindowExceeded(f) => ("ContextWindowExceeded", Some(f)),
        CallError::ContentPolicyViolation(f) => ("ContentPolicyViolation", Some(f)),
        CallError::DeadlineExceeded => ("DeadlineExceeded", None),
        CallError::ModelNotFound { .. } => ("ModelNotFound", None),
        CallError::MockTimeoutDisabled => ("MockTimeoutDisabled", None),
        CallError::MockResponseDisabled => ("MockResponseDisabled", None),
        other => panic!("unexpected end: {other:?}"),
    };
    (name, last.map(|f| f.class().kind))
}

/// The provider's wait hint carried by the failure that ended the call.
fn wait_hint(e: &CallError) -> Option<Duration> {
    match e {
        CallError::FallbacksExhausted(f) => f.provider_wait_hint(),
        _ => None,
    }
}
