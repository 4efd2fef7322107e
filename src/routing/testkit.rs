//! Shared by the unit tests of routing and of the API layer: a router built from YAML, with the
//! real mock provider, and a chain of groups that misbehave in every way the walk must handle.

use std::{sync::Arc, time::Duration};

use super::{CallRequest, Router};
use crate::config::{Config, Source};
use crate::proto::{Attempt, AttemptOutcome, ChatMessage, Role};
use crate::providers::ChatRequest;

pub(crate) fn router(yaml: &str) -> Router {
    let config = Config::load_with_env(Source::Yaml(yaml), Vec::new(), |_| None)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
    Router::new(Arc::new(config), Arc::new(crate::telemetry::Metrics::new())).unwrap()
}

pub(crate) fn call(model: &str) -> CallRequest {
    CallRequest {
        model: model.into(),
        chat: ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User as i32,
                content: "hello there".into(),
                name: None,
                ..Default::default()
            }],
            ..ChatRequest::default()
        },
        ..CallRequest::default()
    }
}

pub(crate) fn outcomes(attempts: &[Attempt]) -> Vec<(String, AttemptOutcome)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.deployment.clone(),
                AttemptOutcome::try_from(a.outcome).unwrap(),
            )
        })
        .collect()
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `fast` answers after 100ms of time-to-first-chunk (one-word text, so no generation time).
pub(crate) const CHAIN: &str = r#"
model_list:
  - model_name: primary
    litellm_params: { model: mock/hangs, timeout: 1s, max_retries: 0, mock: { failure: hang } }
    model_info: { id: primary-0 }
  - model_name: second
    litellm_params: { model: mock/hangs, timeout: 1s, max_retries: 0, mock: { failure: hang } }
    model_info: { id: second-0 }
  - model_name: fast
    litellm_params: { model: mock/fast, timeout: 5s, mock: { time_to_first_chunk: 100ms, text: "ok" } }
    model_info: { id: fast-0 }
  - model_name: flaky
    litellm_params: { model: mock/flaky, timeout: 5s, mock: { failure: server_error } }
    model_info: { id: flaky-0 }
  - model_name: limited
    litellm_params: { model: mock/limited, timeout: 5s, mock: { failure: rate_limit } }
    model_info: { id: limited-0 }
  - model_name: badkey
    litellm_params: { model: mock/badkey, mock: { failure: auth_error } }
    model_info: { id: badkey-0 }
  - model_name: badreq
    litellm_params: { model: mock/badreq, mock: { failure: bad_request } }
    model_info: { id: badreq-0 }
  - model_name: small
    litellm_params: { model: mock/small, mock: { failure: context_window } }
    model_info: { id: small-0 }
  - model_name: slowstart
    litellm_params: { model: mock/slowstart, timeout: 10s, stream_timeout: 1s, max_retries: 0, mock: { time_to_first_chunk: 3s } }
    model_info: { id: slowstart-0 }
  - model_name: stall
    litellm_params: { model: mock/stall, mock: { failure: stall_after_first_chunk, time_to_first_chunk: 10ms, text: "a b c" } }
    model_info: { id: stall-0 }
  - model_name: steady
    litellm_params: { model: mock/steady, mock: { time_to_first_chunk: 10ms, tokens_per_second: 5, text: "one two three four five six seven eight nine ten" } }
    model_info: { id: steady-0 }
router_settings:
  timeout: 60s
  allow_mock_timeout: true
  allow_mock_response: true
  num_retries: 2
  retry_backoff_initial: 100ms
  retry_backoff_max: 400ms
  stream_idle_timeout: 500ms
  fallbacks:
    - primary: [fast]
    - second: [fast]
    - slowstart: [fast]
    - badkey: [fast]
    - badreq: [fast]
    - stall: [fast]
  context_window_fallbacks:
    - small: [fast]
server:
  deadline_margin: 20ms
"#;
