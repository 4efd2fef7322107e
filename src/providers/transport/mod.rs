//! A provider's transport, apart from its wire format: one pooled client, request sending with
//! the vendor's error classification, the auth step that proves each request ([`auth`]: static
//! key headers, a signature over the final bytes, or a refreshed token), bounded body reads,
//! redaction of secrets, and streamed responses cut into events by a framing ([`sse`]) and read
//! by the wire format's event parser ([`framed`]).

pub mod auth;
pub mod framed;
pub mod sse;

pub use framed::{EventParser, Step, framed_stream, malformed_event};

use std::{sync::Arc, time::Duration};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::{ChunkStream, ErrorKind, ProviderError, excerpt};
use crate::config::Secret;
use auth::Auth;
use sse::SseDecoder;

/// Error bodies are read up to this size; the rest is not worth waiting for.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// A unary answer larger than this is treated as malformed rather than buffered without bound.
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
/// `Retry-After` values are capped: they only decide whether a retry fits the call's deadline.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);

/// Turns an HTTP error status, its headers and body into a classified error. Each wire format
/// has its own, built on [`ProviderError::from_status`].
pub type Classify = fn(u16, &HeaderMap, &str) -> ProviderError;

/// A provider URL, parsed once: parsing it (with its IDNA pass) on every request showed in
/// the CPU profile. The text is kept for error messages, and for reqwest to report on if the
/// URL somehow does not parse (config validation has already checked the base).
#[derive(Debug)]
pub struct Target {
    text: String,
    parsed: Option<reqwest::Url>,
}

impl Target {
    pub fn new(text: String) -> Self {
        let parsed = reqwest::Url::parse(&text).ok();
        Target { text, parsed }
    }
}

/// A provider's HTTP side: the shared client, the headers every request carries (auth and the
/// deployment's extra headers), and the secrets to keep out of error text.
#[derive(Debug)]
pub struct Endpoint {
    http: reqwest::Client,
    headers: HeaderMap,
    /// Shared with the deployment's streams, which redact their error events too.
    secrets: Arc<[Secret]>,
    /// The deployment's extra `litellm_params`, filled into each body where the request left
    /// them out (see `config::params`).
    body_defaults: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// What proves each request beyond `headers`.
    auth: Auth,
}

impl Endpoint {
    /// `auth` are the provider's own headers; `extra` the deployment's, which replace them.
    /// `key` is the bare API key, redacted wherever it appears.
    pub fn new(
        http: reqwest::Client,
        auth: Vec<(&'static str, Secret)>,
        extra: &[(String, Secret)],
        key: Option<&Secret>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        let mut secrets: Vec<Secret> = key.into_iter().cloned().collect();
        let all = auth
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .chain(extra.iter().cloned());
        for (name, value) in all {
            // Validated with the config; an invalid pair cannot reach here.
            if let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value.expose()),
            ) {
                v.set_sensitive(true);
                headers.insert(n, v);
            }
            if !value.expose().is_empty() {
                secrets.push(value);
            }
        }
        Endpoint {
            http,
            headers,
            secrets: secrets.into(),
            body_defaults: None,
            auth: Auth::Static,
        }
    }

    /// The auth step each request takes once its bytes are final (see [`auth`]).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Fields every request body starts from (the deployment's extra `litellm_params`).
    pub fn with_body_defaults(
        mut self,
        defaults: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    ) -> Self {
        self.body_defaults = defaults;
        self
    }

    /// POSTs `body` as JSON. Returns the response when its status is 2xx, else the error
    /// `classify` makes of it.
    pub async fn post(
        &self,
        url: &Target,
        body: &impl serde::Serialize,
        classify: Classify,
    ) -> Result<reqwest::Response, ProviderError> {
        let encode_error = |e: serde_json::Error| {
            ProviderError::new(
                ErrorKind::BadRequest,
                0,
                format!("cannot encode request: {e}"),
            )
        };
        let bytes = match &self.body_defaults {
            // Only deployments configured with extra fields pay for the detour through a map.
            Some(defaults) => {
                let mut value = serde_json::to_value(body).map_err(encode_error)?;
                crate::config::params::fill_absent(&mut value, defaults);
                serde_json::to_vec(&value)
            }
            None => serde_json::to_vec(body),
        }
        .map_err(encode_error)?;
        let mut headers = self.headers.clone();
        crate::telemetry::traces::inject_current(&mut headers);
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut token = None;
        if !matches!(self.auth, Auth::Static) {
            token = self.authorize(url, &mut headers, &bytes).await?;
        }
        let request = match &url.parsed {
            Some(parsed) => self.http.post(parsed.clone()),
            None => self.http.post(url.text.as_str()),
        };
        let redact = |text: &str| {
            let text = self.redact(text);
            match &token {
                Some(t) => redact(std::slice::from_ref(t), &text),
                None => text,
            }
        };
        let response = request
            .headers(headers)
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.transport_error(&url.text, &e, &redact))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        // Redacted whole, before any excerpt is cut from it: a secret the cut went through
        // would no longer be recognised, and its first part would reach the caller.
        let body = redact(&read_prefix(response, MAX_ERROR_BODY).await);
        let mut err = classify(status.as_u16(), &headers, &body);
        err.detail = redact(&err.detail);
        Err(err)
    }

    /// Runs the auth step on a request's final headers and bytes; returns the token it added,
    /// if any, to keep out of the request's error text.
    async fn authorize(
        &self,
        url: &Target,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Option<Secret>, ProviderError> {
        let Some(parsed) = &url.parsed else {
            return Err(ProviderError::new(
                ErrorKind::BadRequest,
                0,
                "the provider URL does not parse, so the request cannot be signed",
            ));
        };
        let mut outgoing = auth::Outgoing {
            method: "POST",
            url: parsed,
            headers,
            body,
        };
        self.auth.apply(&mut outgoing).await.map_err(|mut e| {
            e.detail = self.redact(&e.detail);
            e
        })
    }

    /// Reads a whole success body, bounded.
    pub async fn body(&self, response: reqwest::Response) -> Result<String, ProviderError> {
        read_limited(response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Upstream, 200, e))
    }

    /// Maps reqwest's errors to what kind of failure it was, with the root cause's words.
    fn transport_error(
        &self,
        url: &str,
        e: &reqwest::Error,
        redact: &dyn Fn(&str) -> String,
    ) -> ProviderError {
        use std::error::Error as _;
        let mut cause = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let cause = redact(&cause);
        let url = url.split('?').next().unwrap_or(url);
        if e.is_connect() {
            ProviderError::new(
                ErrorKind::Connect,
                0,
                format!("connect to {url} failed: {cause}"),
            )
        } else if e.is_timeout() {
            ProviderError::new(ErrorKind::Connect, 0, format!("connect to {url} timed out"))
        } else {
            ProviderError::new(
                ErrorKind::Upstream,
                0,
                format!("request to {url} failed: {cause}"),
            )
        }
    }

    /// Providers sometimes echo a key in an error; it must never reach our caller.
    pub fn redact(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }

    /// The deployment's secrets, for a stream to redact its error events with.
    pub fn secrets(&self) -> Arc<[Secret]> {
        self.secrets.clone()
    }
}

/// An SSE response as a chunk stream read by `parser` (see [`framed_stream`]).
pub fn sse_stream<P: EventParser>(
    response: reqwest::Response,
    parser: P,
    max_malformed: u32,
    secrets: Arc<[Secret]>,
) -> ChunkStream {
    framed_stream(
        response,
        SseDecoder::default(),
        parser,
        max_malformed,
        secrets,
    )
}

pub(crate) fn redact(secrets: &[Secret], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.expose(), "<redacted>");
    }
    out
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                if buf.len() + bytes.len() > limit {
                    return Err(format!("response body larger than {limit} bytes"));
                }
                buf.extend_from_slice(&bytes);
            }
            Ok(None) => {
                return Ok(String::from_utf8(buf)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
            }
            Err(e) => return Err(format!("response body broken: {e}")),
        }
    }
}

/// The first `limit` bytes of a body (all of it when shorter): enough of an error body to
/// classify it. A long one (a context-window error quoting the prompt) must not lose its words
/// to the limit, or a retryable or fallback-worthy error would read as a bare bad request.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                let room = limit - buf.len();
                buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Seconds as a decimal, capped; `None` for garbage, negatives and NaN.
pub fn seconds(secs: f64) -> Option<Duration> {
    if secs.is_nan() {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(RETRY_AFTER_CAP.as_secs_f64())).ok()
}

/// `Retry-After` in seconds (the form providers use), or OpenAI's `retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(ms) => seconds(ms / 1000.0),
        None => seconds(get("retry-after")?.trim().parse::<f64>().ok()?),
    }
}

/// A malformed event: the provider is not speaking its protocol.
pub fn malformed(what: &str, e: impl std::fmt::Display, data: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Upstream,
        200,
        format!("malformed {what} ({e}): {}", excerpt(data)),
    )
}

#[cfg(test)]
mod tests;
