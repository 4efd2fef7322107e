//! Shape validation of incoming requests: every field checked, every error naming its field.
//! Names that need the config (model groups) are resolved by the routing layer.

use std::time::Duration;

use super::content;
use super::error::{ApiError, invalid};
use crate::config::StreamRecovery;
use crate::proto::{self, ChatMessage, CompleteRequest, Role, StreamCompleteRequest};
use crate::providers::ChatRequest;
use crate::routing::{CallContext, CallRequest, policy::SlowStreamRequest};

/// Retries above this would multiply load on a failing provider for no good reason.
const MAX_NUM_RETRIES: u32 = 10;
/// Bounds on what one request may carry, so one caller cannot make the router buffer or log
/// without limit.
const MAX_MESSAGES: usize = 10_000;
const MAX_STOP: usize = 16;
const MAX_METADATA: usize = 64;

/// A positive protobuf Duration, or an error naming `field`.
fn positive_duration(
    field: &str,
    d: Option<prost_types::Duration>,
) -> Result<Option<Duration>, ApiError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return Err(invalid(field, "must be a positive duration"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(invalid(field, "has nanos out of range (must be below 1e9)"));
    }
    let secs = u64::try_from(d.seconds).map_err(|_| invalid(field, "is out of range"))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| invalid(field, "is out of range"))?;
    Ok(Some(Duration::new(secs, nanos)))
}

fn validate_messages(messages: &[ChatMessage]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "must hold at least one message"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(invalid(
            "messages",
            format!("holds more than {MAX_MESSAGES} messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        match Role::try_from(m.role) {
            Ok(Role::Unspecified) => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    "must be set (ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL)",
                ));
            }
            Err(_) => {
                return Err(invalid(
                    format!("messages[{i}].role"),
                    format!("{} is not a known role", m.role),
                ));
            }
            Ok(_) => {}
        }
    }
    content::check_messages(messages)
}

/// Validates a unary request into a call. `client_timeout` is the gRPC deadline, if any.
pub fn call_from_complete(
    r: CompleteRequest,
    client_timeout: Option<Duration>,
) -> Result<CallRequest, ApiError> {
    validate_messages(&r.messages)?;
    let timeout = positive_duration("timeout", r.timeout)?;
    let stream_timeout = positive_duration("stream_timeout", r.stream_timeout)?;
    if let Some(t) = r.max_tokens
        && t == 0
    {
        return Err(invalid("max_tokens", "must be at least 1 when set"));
    }
    for (name, value, range) in [
        ("temperature", r.temperature, 0.0..=2.0),
        ("top_p", r.top_p, 0.0..=1.0),
        ("presence_penalty", r.presence_penalty, -2.0..=2.0),
        ("frequency_penalty", r.frequency_penalty, -2.0..=2.0),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && range.contains(&v))
        {
            return Err(invalid(
                name,
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
    }
    if r.stop.len() > MAX_STOP {
        return Err(invalid(
            "stop",
            format!("holds more than {MAX_STOP} sequences"),
        ));
    }
    if let Some(i) = r.stop.iter().position(String::is_empty) {
        return Err(invalid(format!("stop[{i}]"), "must not be empty"));
    }
    if let Some(n) = r.num_retries
        && n > MAX_NUM_RETRIES
    {
        return Err(invalid(
            "num_retries",
            format!("must be at most {MAX_NUM_RETRIES}"),
        ));
    }
    if r.metadata.len() > MAX_METADATA {
        return Err(invalid(
            "metadata",
            format!("holds more than {MAX_METADATA} entries"),
        ));
    }
    if let Some(i) = r.fallbacks.iter().position(|f| f.trim().is_empty()) {
        return Err(invalid(format!("fallbacks[{i}]"), "must not be empty"));
    }
    let tools = content::tools(r.tools)?;
    let tool_choice = content::tool_choice(r.tool_choice, &tools)?;
    let response_format = content::response_format(r.response_format)?;
    let reasoning = content::reasoning(r.reasoning)?;
    let stream_recovery = match proto::StreamRecovery::try_from(r.stream_recovery) {
        Ok(proto::StreamRecovery::Unspecified) => None,
        Ok(proto::StreamRecovery::None) => Some(StreamRecovery::None),
        Ok(proto::StreamRecovery::Continue) => Some(StreamRecovery::Continue),
        Ok(proto::StreamRecovery::Restart) => Some(StreamRecovery::Restart),
        Ok(proto::StreamRecovery::ContinueOrRestart) => Some(StreamRecovery::ContinueOrRestart),
        Err(_) => {
            return Err(invalid(
                "stream_recovery",
                format!("{} is not a known StreamRecovery", r.stream_recovery),
            ));
        }
    };
    Ok(CallRequest {
        // Who is calling is the service's to say (see `api::call_context`), not the body's.
        context: CallContext::anonymous(),
        model: r.model,
        chat: ChatRequest {
            messages: r.messages,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop,
            user: r.user,
            tools,
            tool_choice,
            parallel_tool_calls: r.parallel_tool_calls,
            response_format,
            seed: r.seed,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            reasoning,
        },
        timeout,
        client_timeout,
        stream_timeout,
        mock_timeout: r.mock_timeout,
        mock_response: (!r.mock_response.is_empty()).then_some(r.mock_response),
        fallbacks: r.fallbacks,
        num_retries: r.num_retries,
        stream_recovery,
        slow_stream: SlowStreamRequest::default(),
    })
}

/// What admission reads of a request before validating it.
pub trait Incoming {
    fn model(&self) -> &str;
    fn metadata(&self) -> &std::collections::HashMap<String, String>;
}

impl Incoming for CompleteRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata
    }
}

impl Incoming for StreamCompleteRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata
    }
}

/// The two request messages carry the same fields; one validation serves both.
pub fn call_from_stream(
    r: StreamCompleteRequest,
    client_timeout: Option<Duration>,
) -> Result<CallRequest, ApiError> {
    let StreamCompleteRequest {
        model,
        messages,
        timeout,
        stream_timeout,
        mock_timeout,
        mock_response,
        max_tokens,
        temperature,
        top_p,
        stop,
        user,
        fallbacks,
        num_retries,
        metadata,
        stream_recovery,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        seed,
        presence_penalty,
        frequency_penalty,
        reasoning,
        stream_min_tokens_per_s,
        stream_min_tokens_window,
    } = r;
    let slow_stream = slow_stream(stream_min_tokens_per_s, stream_min_tokens_window)?;
    let mut call = call_from_complete(
        CompleteRequest {
            model,
            messages,
            timeout,
            stream_timeout,
            mock_timeout,
            mock_response,
            max_tokens,
            temperature,
            top_p,
            stop,
            user,
            fallbacks,
            num_retries,
            metadata,
            stream_recovery,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            seed,
            presence_penalty,
            frequency_penalty,
            reasoning,
        },
        client_timeout,
    )?;
    call.slow_stream = slow_stream;
    Ok(call)
}

/// The request's slow-stream guard: `stream_min_tokens_per_s` and `stream_min_tokens_window`,
/// within the bounds the config's keys have.
fn slow_stream(
    per_s: Option<f32>,
    window: Option<prost_types::Duration>,
) -> Result<SlowStreamRequest, ApiError> {
    use crate::config::SlowStream;
    if let Some(r) = per_s
        && !(r.is_finite() && (0.0..=SlowStream::MAX_PER_S as f32).contains(&r))
    {
        return Err(invalid(
            "stream_min_tokens_per_s",
            format!(
                "must be a number of tokens a second from 0 (off) to {}",
                SlowStream::MAX_PER_S
            ),
        ));
    }
    let window = positive_duration("stream_min_tokens_window", window)?;
    if let Some(w) = window
        && !(SlowStream::MIN_WINDOW..=SlowStream::MAX_WINDOW).contains(&w)
    {
        return Err(invalid(
            "stream_min_tokens_window",
            "must be from 1s to 600s",
        ));
    }
    Ok(SlowStreamRequest {
        per_s: per_s.map(f64::from),
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_request() -> CompleteRequest {
        CompleteRequest {
            model: "m".into(),
            messages: vec![ChatMessage {
                role: Role::User as i32,
                content: "hi".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn field_of(r: CompleteRequest) -> String {
        match call_from_complete(r, None) {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(call_from_complete(ok_request(), None).is_ok());
        assert_eq!(
            field_of(CompleteRequest {
                messages: vec![],
                ..ok_request()
            }),
            "messages"
        );
        let mut r = ok_request();
        r.messages[0].role = 0;
        assert_eq!(field_of(r), "messages[0].role");
        let mut r = ok_request();
        r.messages[0].role = 42;
        assert_eq!(field_of(r), "messages[0].role");
        let zero = prost_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            field_of(CompleteRequest {
                timeout: Some(zero),
                ..ok_request()
            }),
            "timeout"
        );
        assert_eq!(
            field_of(CompleteRequest {
                stream_timeout: Some(neg),
                ..ok_request()
            }),
            "stream_timeout"
        );
        assert_eq!(
            field_of(CompleteRequest {
                temperature: Some(f32::NAN),
                ..ok_request()
            }),
            "temperature"
        );
        assert_eq!(
            field_of(CompleteRequest {
                top_p: Some(1.5),
                ..ok_request()
            }),
            "top_p"
        );
        assert_eq!(
            field_of(CompleteRequest {
                max_tokens: Some(0),
                ..ok_request()
            }),
            "max_tokens"
        );
        assert_eq!(
            field_of(CompleteRequest {
                num_retries: Some(99),
                ..ok_request()
            }),
            "num_retries"
        );
        assert_eq!(
            field_of(CompleteRequest {
                stop: vec!["".into()],
                ..ok_request()
            }),
            "stop[0]"
        );
        assert_eq!(
            field_of(CompleteRequest {
                fallbacks: vec!["a".into(), " ".into()],
                ..ok_request()
            }),
            "fallbacks[1]"
        );
    }
}
