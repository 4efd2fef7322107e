//! A provider's transport, apart from its wire format: the pooled client ([`pool`]), request sending with
//! the vendor's error classification, the auth step that proves each request ([`auth`]: static
//! key headers, a signature over the final bytes, or a refreshed token), bounded body reads,
//! redaction of secrets, and streamed responses cut into events by a framing ([`sse`]) and read
//! by the wire format's event parser ([`framed`]).

pub mod auth;
pub mod framed;
pub mod pool;
pub mod sse;

pub use framed::{EventParser, Step, framed_stream, malformed_event};

use std::{sync::Arc, time::Duration};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::{ChunkStream, ErrorKind, ProviderError, excerpt};
use crate::config::{Secret, upstream::UpstreamTls};
use auth::Auth;
use pool::{Outgoing, Response, SendError};
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
/// the CPU profile. `None` if it somehow does not parse (config validation has already checked
/// the base): every request to it then fails as a bad request.
#[derive(Debug)]
pub struct Target {
    parsed: Option<url::Url>,
}

impl Target {
    pub fn new(text: String) -> Self {
        Target {
            parsed: url::Url::parse(&text).ok(),
        }
    }

    /// The URL, for tests.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        self.parsed.as_ref().map_or("", url::Url::as_str)
    }
}

/// How one deployment reaches its provider: the shared pool, the deployment's TLS profile,
/// and its id (named in connect errors and the pool's metrics).
#[derive(Debug, Clone)]
pub struct Link {
    pub client: pool::Client,
    pub tls: pool::TlsProfile,
    pub deployment: Arc<str>,
}

impl Link {
    pub fn new(client: &pool::Client, tls: &Arc<UpstreamTls>, deployment: &str) -> Link {
        Link {
            client: client.clone(),
            tls: client.profile(tls),
            deployment: deployment.into(),
        }
    }

    /// A link of its own, with default settings, for unit tests.
    #[cfg(test)]
    pub fn for_tests() -> Link {
        let client = pool::Client::new(
            Default::default(),
            Duration::from_secs(5),
            Arc::new(crate::telemetry::Metrics::new()),
        );
        Link::new(&client, &Default::default(), "test")
    }
}

/// A provider's HTTP side: the shared client, the headers every request carries (auth and the
/// deployment's extra headers), and the secrets to keep out of error text.
#[derive(Debug)]
pub struct Endpoint {
    http: Link,
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
        http: Link,
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
    ) -> Result<Response, ProviderError> {
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
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let Some(parsed) = &url.parsed else {
            return Err(ProviderError::new(
                ErrorKind::BadRequest,
                0,
                "the provider URL does not parse",
            ));
        };
        let mut token = None;
        if !matches!(self.auth, Auth::Static) {
            token = self.authorize(parsed, &mut headers, &bytes).await?;
        }
        let redact = |text: &str| {
            let text = self.redact(text);
            match &token {
                Some(t) => redact(std::slice::from_ref(t), &text),
                None => text,
            }
        };
        let response = self
            .http
            .client
            .post(Outgoing {
                url: parsed,
                headers,
                body: bytes.into(),
                tls: &self.http.tls,
                deployment: &self.http.deployment,
            })
            .await
            .map_err(|e| self.transport_error(e, &redact))?;
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
        parsed: &url::Url,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<Option<Secret>, ProviderError> {
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
    pub async fn body(&self, response: Response) -> Result<String, ProviderError> {
        read_limited(response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Upstream, 200, e))
    }

    /// A request that got no response, as the routing layer sees it. The text names the
    /// deployment and what failed, never the URL: callers see it in their attempt log.
    fn transport_error(&self, e: SendError, redact: &dyn Fn(&str) -> String) -> ProviderError {
        let deployment = &self.http.deployment;
        match e {
            SendError::Connect(why) => ProviderError::new(
                ErrorKind::Connect,
                0,
                format!(
                    "cannot connect to the provider of deployment `{deployment}`: {}",
                    redact(&why)
                ),
            ),
            SendError::Request(why) => ProviderError::new(
                ErrorKind::Upstream,
                0,
                format!(
                    "the request to the provider of deployment `{deployment}` failed: {}",
                    redact(&why)
                ),
            ),
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
    response: Response,
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

async fn read_limited(mut response: Response, limit: usize) -> Result<String, String> {
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
async fn read_prefix(mut response: Response, limit: usize) -> String {
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
