//! The transport against a real HTTP server in the test: what reaches the server is what was
//! signed, tokens are the source's current ones and never come back in error text, and a
//! framing other than SSE carries a stream through the same reader.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::auth::{Auth, Outgoing, Sign, TokenFuture, TokenSource};
use super::framed::{EventParser, Framing, Step, framed_stream};
use super::*;
use crate::providers::Chunk;

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A server on a free loopback port that records each request and answers every one with
/// `status` and the pieces of `body`, written apart, then closes the connection.
async fn serve(status: u16, body: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/call?x=1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                record.lock().unwrap().push(Received {
                    path,
                    headers,
                    body: buf[head_end..].to_vec(),
                });
                let head = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(head.as_bytes()).await;
                for piece in body {
                    let _ = conn.write_all(&piece).await;
                    let _ = conn.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    });
    (url, seen)
}

fn classify(status: u16, _: &HeaderMap, body: &str) -> ProviderError {
    ProviderError::from_status(status, None, body)
}

/// FNV-1a over what the test signer covers; the server side recomputes it from what arrived.
fn digest(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Signs method, path and query, content type and body, as SigV4 covers them.
#[derive(Debug)]
struct TestSigner;

impl Sign for TestSigner {
    fn sign(&self, r: &mut Outgoing<'_>) -> Result<(), ProviderError> {
        let path = match r.url.query() {
            Some(q) => format!("{}?{q}", r.url.path()),
            None => r.url.path().to_string(),
        };
        let content_type = r
            .headers
            .get("content-type")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let sig = digest(&[r.method.as_bytes(), path.as_bytes(), &content_type, r.body]);
        r.headers.insert("x-test-signature", sig.parse().unwrap());
        Ok(())
    }
}

fn endpoint(auth: Auth) -> Endpoint {
    Endpoint::new(
        crate::providers::transport::Link::for_tests(),
        vec![("x-api-key", Secret::new("static-key-123".into()))],
        &[],
        Some(&Secret::new("static-key-123".into())),
    )
    .with_auth(auth)
}

#[tokio::test]
async fn a_signature_covers_the_final_bytes_as_sent() {
    let (url, seen) = serve(200, vec![b"{}".to_vec()]).await;
    let mut defaults = serde_json::Map::new();
    defaults.insert("filled".into(), serde_json::json!("by the deployment"));
    let e = endpoint(Auth::Sign(Arc::new(TestSigner))).with_body_defaults(Some(Arc::new(defaults)));
    let body = serde_json::json!({"model": "m", "messages": []});
    e.post(&Target::new(url), &body, classify).await.unwrap();
    let got = seen.lock().unwrap()[0].clone();
    // The body as sent carries the deployment's defaults: they were signed too.
    assert!(String::from_utf8_lossy(&got.body).contains("by the deployment"));
    let expected = digest(&[
        b"POST",
        got.path.as_bytes(),
        got.header("content-type").unwrap().as_bytes(),
        &got.body,
    ]);
    assert_eq!(got.header("x-test-signature"), Some(expected.as_str()));
    assert_eq!(got.header("x-api-key"), Some("static-key-123"));
}

/// Hands out `tok-1`, `tok-2`, ... (a refresh each time), or fails when told to.
#[derive(Debug, Default)]
struct Rotating {
    issued: AtomicUsize,
    fail: bool,
}

impl TokenSource for Rotating {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            if self.fail {
                return Err(ProviderError::new(
                    ErrorKind::Auth,
                    0,
                    "token endpoint refused the grant for key static-key-123",
                ));
            }
            let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Secret::new(format!("tok-{n}")))
        })
    }
}

#[tokio::test]
async fn each_request_carries_the_sources_current_token_and_no_error_repeats_it() {
    let (url, seen) = serve(200, vec![b"{}".to_vec()]).await;
    let e = endpoint(Auth::Token(Arc::new(Rotating::default())));
    for _ in 0..2 {
        e.post(&Target::new(url.clone()), &serde_json::json!({}), classify)
            .await
            .unwrap();
    }
    let auths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);

    // A provider that echoes the token in its error: the token is redacted.
    let (url, _) = serve(401, vec![b"bad token: Bearer tok-1 for you".to_vec()]).await;
    let e = endpoint(Auth::Token(Arc::new(Rotating::default())));
    let err = e
        .post(&Target::new(url), &serde_json::json!({}), classify)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(!err.detail.contains("tok-1"), "{}", err.detail);
    assert!(err.detail.contains("<redacted>"), "{}", err.detail);

    // A source that fails: the request is never sent, and its error keeps no key.
    let (url, seen) = serve(200, vec![b"{}".to_vec()]).await;
    let e = endpoint(Auth::Token(Arc::new(Rotating {
        fail: true,
        ..Rotating::default()
    })));
    let err = e
        .post(&Target::new(url), &serde_json::json!({}), classify)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    assert!(!err.detail.contains("static-key-123"), "{}", err.detail);
    assert!(seen.lock().unwrap().is_empty());
}

/// A binary framing for the test: each frame a 2-byte big-endian length, then its payload.
#[derive(Default)]
struct LengthPrefixed {
    buf: Vec<u8>,
}

impl Framing for LengthPrefixed {
    type Event = Vec<u8>;
    type Data = [u8];

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_event(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len == 0 {
            return Err("empty frame".into());
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(frame))
    }

    fn finish(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    fn redacted(frame: &[u8], secrets: &[Secret]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(frame);
        let clean = super::redact(secrets, &text);
        (clean != text).then(|| clean.into_bytes())
    }
}

/// Reads frames as text; `!` is unreadable, `.` the end marker, `$` a finish.
struct Frames;

impl EventParser<[u8]> for Frames {
    fn event(&mut self, frame: &[u8]) -> Result<Step, ProviderError> {
        Ok(match frame {
            b"!" => Step::Malformed("unreadable frame".into()),
            b"." => Step::Done,
            b"$" => Step::Chunk(Chunk {
                finish_reason: Some(crate::proto::FinishReason::Stop),
                ..Chunk::default()
            }),
            text => Step::Chunk(Chunk {
                delta: String::from_utf8_lossy(text).into_owned(),
                ..Chunk::default()
            }),
        })
    }

    fn cut_short(&self) -> ProviderError {
        ProviderError::new(ErrorKind::Upstream, 200, "frames cut short")
    }
}

fn frames(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

async fn read_frames(
    wire: Vec<u8>,
    split: usize,
    max_malformed: u32,
) -> Vec<Result<Chunk, ProviderError>> {
    let pieces = wire.chunks(split).map(<[u8]>::to_vec).collect();
    let (url, _) = serve(200, pieces).await;
    let response = endpoint(Auth::Static)
        .post(&Target::new(url), &serde_json::json!({}), classify)
        .await
        .unwrap();
    let secrets: Arc<[Secret]> = Arc::from(vec![Secret::new("sekrit".into())]);
    framed_stream(
        response,
        LengthPrefixed::default(),
        Frames,
        max_malformed,
        secrets,
    )
    .collect()
    .await
}

#[tokio::test]
async fn another_framing_goes_through_the_same_reader_with_the_same_bounds() {
    let wire = frames(&[b"Hel", b"!", b"lo", b"$", b".", b"after the end"]);
    for split in [1, 3, wire.len()] {
        let items = read_frames(wire.clone(), split, 1).await;
        let chunks: Vec<&Chunk> = items.iter().map(|c| c.as_ref().unwrap()).collect();
        assert_eq!(
            chunks.len(),
            3,
            "split {split}: nothing after the end marker"
        );
        assert_eq!(chunks[0].delta, "Hel");
        // The unreadable frame is skipped, and counted on the next chunk.
        assert_eq!(
            (chunks[1].delta.as_str(), chunks[1].skipped_events),
            ("lo", 1)
        );
        assert!(chunks[2].finish_reason.is_some());
    }
    // More unreadable frames than allowed break the stream.
    let items = read_frames(frames(&[b"a", b"!", b"!", b"b"]), 4, 1).await;
    assert_eq!(items.len(), 2);
    let e = items[1].as_ref().unwrap_err();
    assert!(
        e.detail
            .contains("more than stream_max_malformed_events (1)"),
        "{}",
        e.detail
    );
    // A framing error breaks it, redacted like any other.
    let mut wire = frames(&[b"ok"]);
    wire.extend_from_slice(&[0, 0]);
    let items = read_frames(wire, 64, 1).await;
    assert_eq!(items[1].as_ref().unwrap_err().detail, "empty frame");
    // Cut short before any finish: the format says how.
    let items = read_frames(frames(&[b"partial"]), 64, 1).await;
    assert_eq!(items[1].as_ref().unwrap_err().detail, "frames cut short");
    // Ended cleanly after a finish, without the marker: complete.
    let items = read_frames(frames(&[b"done", b"$"]), 64, 1).await;
    assert!(items.iter().all(Result::is_ok) && items.len() == 2);
}

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
        crate::providers::transport::Link::for_tests(),
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
