//! What every HTTP provider shares: one pooled client, request sending with the vendor's error
//! classification, bounded body reads, key redaction, and an SSE stream driven by a per-vendor
//! event parser.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{FutureExt, Stream, StreamExt, stream};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::{Chunk, ChunkStream, ErrorKind, ProviderError, excerpt, sse::SseDecoder};
use crate::config::Secret;

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
        }
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
        let request = match &url.parsed {
            Some(parsed) => self.http.post(parsed.clone()),
            None => self.http.post(url.text.as_str()),
        };
        let response = request
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.transport_error(&url.text, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = read_prefix(response, MAX_ERROR_BODY).await;
        let mut err = classify(status.as_u16(), &headers, &body);
        err.detail = self.redact(&err.detail);
        Err(err)
    }

    /// Reads a whole success body, bounded.
    pub async fn body(&self, response: reqwest::Response) -> Result<String, ProviderError> {
        read_limited(response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| ProviderError::new(ErrorKind::Upstream, 200, e))
    }

    /// Maps reqwest's errors to what kind of failure it was, with the root cause's words.
    fn transport_error(&self, url: &str, e: &reqwest::Error) -> ProviderError {
        use std::error::Error as _;
        let mut cause = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let cause = self.redact(&cause);
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

fn redact(secrets: &[Secret], text: &str) -> String {
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

/// What one SSE event means to a stream.
pub enum Step {
    Chunk(Chunk),
    /// Nothing to pass on (role-only deltas, pings, block starts).
    Skip,
    /// An event the format cannot read: skipped and counted; the stream breaks only after more
    /// than its limit of them.
    Malformed(String),
    /// The provider's own end-of-stream marker.
    Done,
}

/// A wire format's reading of its SSE events.
pub trait EventParser: Send + 'static {
    fn event(&mut self, data: &str) -> Result<Step, ProviderError>;
    /// Called when the byte stream ends without a `Done` and before any finish reason: the
    /// stream was cut short, and this says how in the format's terms. (A body that ends cleanly
    /// after a finish reason is a complete answer, marker or not: several servers end so.)
    fn cut_short(&self) -> ProviderError;
}

/// An event that does not parse, as a [`Step`].
pub fn malformed_event(e: impl std::fmt::Display, data: &str) -> Step {
    Step::Malformed(format!("malformed stream event ({e}): {}", excerpt(data)))
}

type BodyBytes = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// How long, and how much, a body is read past its end marker to reach its end.
const RELEASE_TIME: Duration = Duration::from_secs(2);
const RELEASE_BYTES: usize = 64 * 1024;

struct StreamState<P> {
    bytes: BodyBytes,
    decoder: SseDecoder,
    parser: P,
    /// The stream has yielded its last item.
    over: bool,
    /// A chunk with a finish reason has been yielded: the answer is complete.
    finished: bool,
    /// Malformed events skipped, in all and since the last chunk yielded.
    malformed: u32,
    malformed_unreported: u32,
    /// More malformed events than this break the stream.
    max_malformed: u32,
    /// Kept out of the errors the stream yields (error events may quote them).
    secrets: Arc<[Secret]>,
}

/// The response body as a chunk stream. It ends at the format's end marker, or when the body
/// ends cleanly after a finish reason; a cut, an error event, or more than `max_malformed`
/// unreadable events yields one `Err` and ends. Unreadable events up to that limit are skipped,
/// and counted on the next chunk ([`Chunk::skipped_events`]).
pub fn sse_stream<P: EventParser>(
    response: reqwest::Response,
    parser: P,
    max_malformed: u32,
    secrets: Arc<[Secret]>,
) -> ChunkStream {
    let state = StreamState {
        bytes: Box::pin(response.bytes_stream()),
        decoder: SseDecoder::default(),
        parser,
        over: false,
        finished: false,
        malformed: 0,
        malformed_unreported: 0,
        max_malformed,
        secrets,
    };
    Box::pin(stream::unfold(state, next_chunk))
}

impl<P> StreamState<P> {
    /// Yields `chunk`, with the malformed events skipped since the last one.
    fn chunk(mut self, mut chunk: Chunk) -> Option<(Result<Chunk, ProviderError>, Self)> {
        self.finished |= chunk.finish_reason.is_some();
        chunk.skipped_events = std::mem::take(&mut self.malformed_unreported);
        Some((Ok(chunk), self))
    }

    /// Counts a malformed event; `Err` once there are more than the limit.
    fn malformed(&mut self, detail: String) -> Result<(), ProviderError> {
        self.malformed += 1;
        self.malformed_unreported += 1;
        if self.malformed > self.max_malformed {
            return Err(ProviderError::new(
                ErrorKind::Upstream,
                200,
                format!(
                    "{} malformed stream events, more than stream_max_malformed_events ({}); the last: {detail}",
                    self.malformed, self.max_malformed
                ),
            ));
        }
        Ok(())
    }
}

async fn next_chunk<P: EventParser>(
    mut st: StreamState<P>,
) -> Option<(Result<Chunk, ProviderError>, StreamState<P>)> {
    if st.over {
        return None;
    }
    loop {
        let event = match st.decoder.next_event() {
            Ok(e) => e,
            Err(e) => return end_with_error(st, ProviderError::new(ErrorKind::Upstream, 200, e)),
        };
        if let Some(data) = event {
            match st.parser.event(&data) {
                Ok(Step::Chunk(chunk)) => return st.chunk(chunk),
                Ok(Step::Skip) => continue,
                Ok(Step::Malformed(detail)) => match st.malformed(detail) {
                    Ok(()) => continue,
                    Err(e) => return end_with_error(st, e),
                },
                Ok(Step::Done) => {
                    release(st.bytes);
                    return None;
                }
                Err(e) => return end_with_error(st, e),
            }
        }
        match st.bytes.next().await {
            Some(Ok(bytes)) => st.decoder.push(&bytes),
            Some(Err(e)) => {
                return end_with_error(
                    st,
                    ProviderError::new(ErrorKind::Upstream, 200, format!("stream broken: {e}")),
                );
            }
            None => {
                // A last event may lack its closing blank line.
                st.decoder.push(b"\n\n");
                if let Ok(Some(data)) = st.decoder.next_event() {
                    match st.parser.event(&data) {
                        Ok(Step::Chunk(chunk)) => {
                            st.bytes = Box::pin(stream::empty());
                            return st.chunk(chunk);
                        }
                        Ok(Step::Done) => return None,
                        Ok(Step::Skip) => {}
                        Ok(Step::Malformed(detail)) => {
                            if let Err(e) = st.malformed(detail) {
                                return end_with_error(st, e);
                            }
                        }
                        Err(e) => return end_with_error(st, e),
                    }
                }
                // The body ended without the format's end marker: a complete answer if a finish
                // reason came, else a stream cut short.
                if st.finished {
                    return None;
                }
                let e = st.parser.cut_short();
                return end_with_error(st, e);
            }
        }
    }
}

/// Reads a body from its format's end marker to its end, so that its connection goes back to
/// the pool: hyper closes a connection whose response was dropped unread. Without this, every
/// streamed call opened a new upstream connection (to a TLS provider, a new handshake). The end
/// has usually arrived with the marker; if not, a task waits for it, for a bounded time and
/// size, while the client's stream ends at once.
fn release(mut bytes: BodyBytes) {
    // At the end (the connection is pooled), or broken (it is closed): nothing to wait for.
    if let Some(None | Some(Err(_))) = bytes.next().now_or_never() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drain = async {
            let mut read = 0;
            while let Some(Ok(b)) = bytes.next().await {
                read += b.len();
                if read > RELEASE_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(RELEASE_TIME, drain).await;
    });
}

fn end_with_error<P>(
    mut st: StreamState<P>,
    mut e: ProviderError,
) -> Option<(Result<Chunk, ProviderError>, StreamState<P>)> {
    st.over = true;
    e.detail = redact(&st.secrets, &e.detail);
    Some((Err(e), st))
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
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_ms_and_caps() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1e300".parse().unwrap());
        assert_eq!(retry_after(&h), Some(RETRY_AFTER_CAP), "capped");
        h.insert("retry-after", "-5".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn redaction_covers_keys_and_extra_header_values() {
        let e = Endpoint::new(
            reqwest::Client::new(),
            vec![("authorization", Secret::new("Bearer sk-1".into()))],
            &[("x-custom-auth".into(), Secret::new("tok-2".into()))],
            Some(&Secret::new("sk-1".into())),
        );
        assert_eq!(
            e.redact("key sk-1 and tok-2"),
            "key <redacted> and <redacted>"
        );
        assert!(!e.redact("Bearer sk-1").contains("sk-1"));
    }
}
