//! Where a broken stream's recovery goes: a deployment that always breaks is left for the rest
//! of the chain in every mode, and retried only as the last option, within its group's retries
//! for the whole call; continue-or-restart continues where it can and restarts where it cannot.
//! The real server, and an upstream that cuts every stream after three chunks.

use llm_router::proto::{AttemptOutcome, StreamRecovery};
use tonic::Code;

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use crate::recovery::{assembled, log_of, run, text, with};

/// `breaks` and `alone` cut every stream after three chunks; `breaks` falls back to `healthy`,
/// `alone` has nothing after it; `to-picky` cuts too and falls back to `picky`, which says it
/// takes prefills but answers one with a 400. Every group may retry twice; no cooldowns, so
/// that only the walk's rule keeps a broken deployment out.
fn config(base: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: breaks
    litellm_params: {{ model: openai/breaks, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: healthy
    litellm_params: {{ model: openai/healthy, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: alone
    litellm_params: {{ model: openai/alone, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
  - model_name: to-picky
    litellm_params: {{ model: openai/to-picky, api_base: "{base}" }}
  - model_name: picky
    litellm_params: {{ model: openai/picky, api_base: "{base}" }}
    model_info: {{ supports_assistant_prefill: true }}
router_settings:
  num_retries: 2
  retry_backoff_initial: 10ms
  retry_backoff_max: 20ms
  disable_cooldowns: true
  stream_idle_timeout: 300ms
  fallbacks:
    - breaks: [healthy]
    - to-picky: [picky]
"#
    )
}

async fn setup() -> (Upstream, TestRouter) {
    let up = Upstream::start().await;
    for model in ["breaks", "alone", "to-picky"] {
        up.set(model, Behaviour::ResetAfter { after: 3 });
    }
    up.set("healthy", Behaviour::ok("and the rest."));
    up.set(
        "picky",
        Behaviour::NoPrefill(Box::new(Behaviour::ok("the whole answer."))),
    );
    let r = TestRouter::start(&config(&up.base())).await;
    (up, r)
}

const MODES: [StreamRecovery; 3] = [
    StreamRecovery::Continue,
    StreamRecovery::Restart,
    StreamRecovery::ContinueOrRestart,
];

#[tokio::test]
async fn a_deployment_that_always_breaks_is_left_for_the_fallback_in_every_mode() {
    let (up, r) = setup().await;
    for (n, mode) in MODES.into_iter().enumerate() {
        let (messages, status) = run(&r, with("breaks", mode)).await;
        assert!(status.is_none(), "{mode:?}: {status:?}");
        let n = n as u32 + 1;
        // Once per call: the group's two retries went nowhere else, so the chain moved on.
        assert_eq!(up.counts("breaks").requests, n, "{mode:?}");
        assert_eq!(up.counts("healthy").requests, n, "{mode:?}");
        let resumed = messages.iter().find(|m| m.resumed).unwrap();
        assert_eq!(
            log_of(&resumed.attempts),
            [
                ("breaks/0".into(), AttemptOutcome::UpstreamError, false),
                ("healthy/0".into(), AttemptOutcome::Ok, true)
            ],
            "{mode:?}"
        );
        let want = match mode {
            // The fallback takes prefills: continue-or-restart continues.
            StreamRecovery::Continue | StreamRecovery::ContinueOrRestart => {
                assert!(messages.iter().all(|m| !m.restart), "{mode:?}");
                "part0 part1 part2 and the rest."
            }
            _ => {
                assert_eq!(messages.iter().filter(|m| m.restart).count(), 1);
                "and the rest."
            }
        };
        assert_eq!(assembled(&messages), want, "{mode:?}");
    }
}

#[tokio::test]
async fn as_the_last_option_a_deployment_that_always_breaks_gets_its_retries_once_per_call() {
    for mode in MODES {
        // A router each: the retry budget of one mode's retries must not hold back the next.
        let (up, r) = setup().await;
        let (messages, status) = run(&r, with("alone", mode)).await;
        let status = status.expect("the stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{mode:?}");
        assert_eq!(reason(&status), "STREAM_INTERRUPTED");
        assert!(
            status
                .message()
                .contains(&format!("recovery by {} was tried", name(mode))),
            "{}",
            status.message()
        );
        // The first attempt and two retries in all, not two retries per recovery.
        assert_eq!(
            up.counts("alone").requests,
            3,
            "{mode:?}: {}",
            status.message()
        );
        let log = attempt_log(&status);
        assert_eq!(log.attempts.len(), 3, "{mode:?}: {:?}", log.attempts);
        assert!(
            log.attempts
                .iter()
                .all(|a| a.outcome == AttemptOutcome::UpstreamError as i32)
        );
        // The prefix was delivered at most three times: first, and once per retry.
        let firsts = messages.iter().filter(|m| m.delta == "part0 ").count();
        assert!(firsts <= 3, "{mode:?}: {}", text(&messages));
    }
}

#[tokio::test]
async fn continue_or_restart_restarts_on_a_deployment_that_rejects_the_prefill() {
    let (up, r) = setup().await;
    let (messages, status) = run(&r, with("to-picky", StreamRecovery::ContinueOrRestart)).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(assembled(&messages), "the whole answer.");
    let marker = messages
        .iter()
        .find(|m| m.restart)
        .expect("a restart marker");
    assert_eq!(marker.deployment, "picky/0");
    // One attempt: the prefill refused, then the request again on the same connection slot.
    assert_eq!(up.counts("picky").requests, 2);
    let last = up.counts("picky").last_body.unwrap();
    assert_eq!(
        last["messages"].as_array().unwrap().last().unwrap()["role"],
        "user"
    );
    let log = log_of(&marker.attempts);
    assert_eq!(
        log,
        [
            ("to-picky/0".into(), AttemptOutcome::UpstreamError, false),
            ("picky/0".into(), AttemptOutcome::Ok, true)
        ]
    );
    assert!(
        marker.attempts[1]
            .detail
            .contains("rejected the continuation's prefill (")
            && marker.attempts[1].detail.ends_with("restarted"),
        "{}",
        marker.attempts[1].detail
    );

    // Plain continue has no restart to fall back on: the break is answered.
    let (_, status) = run(&r, with("to-picky", StreamRecovery::Continue)).await;
    let status = status.expect("the stream ends with a status");
    assert_eq!(reason(&status), "STREAM_INTERRUPTED");
    assert_eq!(up.counts("picky").requests, 3, "one more, the prefill");
}

fn name(mode: StreamRecovery) -> &'static str {
    match mode {
        StreamRecovery::Continue => "continue",
        StreamRecovery::Restart => "restart",
        _ => "continue_or_restart",
    }
}
