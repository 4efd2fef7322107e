//! A fault-injecting OpenAI-compatible upstream, written on raw TCP so that it can misbehave in
//! ways a well-behaved HTTP library will not: hang before headers, stall mid-stream, reset the
//! connection, send malformed SSE. Behaviour is chosen per upstream model name, and it counts
//! what reached it, including requests the client abandoned before the answer was complete.
//!
//! The one fake upstream of the project: the integration tests use it, and so does the gateway
//! benchmark (`benches/gateway.rs` includes this file), where it answers well-behaved requests
//! with keep-alive connections at thousands of calls a second.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, sleep},
};

/// What the upstream does with a request for one model.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answer: wait `headers_after`, send headers; wait `first_chunk_after`; then the chunks
    /// `chunk_interval` apart (streaming) or the whole body (unary).
    Answer {
        headers_after: Duration,
        first_chunk_after: Duration,
        chunks: Vec<String>,
        chunk_interval: Duration,
    },
    /// Answer with this status and body, with an optional Retry-After in seconds.
    Status {
        code: u16,
        body: String,
        retry_after: Option<u32>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Streaming: send headers and `after` chunks, then go silent forever.
    StallAfter { after: usize },
    /// Send `after` chunks (0: before any headers), then reset the connection.
    ResetAfter { after: usize },
    /// Streaming: headers, then `count` malformed events, then silence.
    MalformedSse { count: usize },
    /// Streaming: headers and `after` chunks, then close cleanly without `[DONE]`.
    EndWithoutDone { after: usize },
    /// Streaming: headers, `after` chunks and `[DONE]`, then never end the body.
    DoneThenHang { after: usize },
    /// A recorded body, byte for byte, with this status and headers.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A recorded SSE stream, sent event by event (split at blank lines) 5ms apart. With
    /// `cut_after`, the connection is reset after that many events.
    Sse {
        body: String,
        cut_after: Option<usize>,
    },
    /// One of these, at random, for each request.
    Random(Vec<Behaviour>),
    /// A model that refuses an assistant prefill as a 400 (as Claude 4.6-class models do) and
    /// otherwise behaves as the inner behaviour.
    NoPrefill(Box<Behaviour>),
}

impl Behaviour {
    pub fn ok(text: &str) -> Self {
        Behaviour::Answer {
            headers_after: Duration::ZERO,
            first_chunk_after: Duration::ZERO,
            chunks: text.split_inclusive(' ').map(String::from).collect(),
            chunk_interval: Duration::from_millis(5),
        }
    }

    pub fn slow_first_chunk(text: &str, first_chunk_after: Duration) -> Self {
        match Self::ok(text) {
            Behaviour::Answer {
                headers_after,
                chunks,
                chunk_interval,
                ..
            } => Behaviour::Answer {
                headers_after,
                first_chunk_after,
                chunks,
                chunk_interval,
            },
            _ => unreachable!(),
        }
    }

    pub fn status(code: u16, body: &str) -> Self {
        Behaviour::Status {
            code,
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// A fixture from `tests/fixtures/`, served as a JSON body with `status`.
    pub fn fixture(status: u16, path: &str) -> Self {
        Behaviour::Raw {
            status,
            headers: vec![],
            body: fixture(path),
        }
    }

    /// An SSE fixture from `tests/fixtures/`, served whole.
    pub fn sse_fixture(path: &str) -> Self {
        Behaviour::Sse {
            body: fixture(path),
            cut_after: None,
        }
    }

    /// An SSE fixture with its events edited: `edit` gets them in order (each with its
    /// trailing blank line) and returns the events to send.
    pub fn sse_fixture_edited(path: &str, edit: impl FnOnce(Vec<String>) -> Vec<String>) -> Self {
        let body = fixture(path);
        let events = split_events(&body).into_iter().map(String::from).collect();
        Behaviour::Sse {
            body: edit(events).concat(),
            cut_after: None,
        }
    }
}

/// The text of a file under `tests/fixtures/`.
pub fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {full}: {e}"))
}

#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Requests that arrived.
    pub requests: u32,
    /// Requests answered to the end.
    pub completed: u32,
    /// Requests whose client closed the connection before the answer was complete.
    pub abandoned: u32,
    /// The last request's Authorization header.
    pub last_authorization: Option<String>,
    /// The last request's JSON body.
    pub last_body: Option<serde_json::Value>,
    /// The last request's path and query.
    pub last_path: Option<String>,
    /// The last request's headers, names lower-cased.
    pub last_headers: Vec<(String, String)>,
    /// Requests being answered now: read, and neither finished nor abandoned.
    pub open: u32,
}

impl Counts {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.last_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    behaviours: HashMap<String, Behaviour>,
    /// Per model: answer the first N requests with this behaviour instead.
    fail_first: HashMap<String, (u32, Behaviour)>,
    counts: HashMap<String, Counts>,
    /// Connections accepted, over all models.
    connections: u32,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                s.lock().unwrap().connections += 1;
                tokio::spawn(async move { serve_connection(stream, s).await });
            }
        });
        Upstream { addr, state }
    }

    /// Serves one connection that did not come through its listener (a TLS front's decrypted
    /// stream, or one end of an in-memory pipe), counted as the listener's are.
    pub fn serve_io<S>(&self, io: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let state = self.state.clone();
        let addr = self.addr;
        state.lock().unwrap().connections += 1;
        tokio::spawn(async move {
            let (rd, wr) = tokio::io::split(io);
            serve_halves(rd, wr, addr, state, |_, _| {}).await;
        });
    }

    /// The `api_base` to configure a deployment with.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, model: &str, b: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .behaviours
            .insert(model.into(), b);
    }

    /// The first `n` requests for `model` get `b`; later ones get the model's behaviour.
    pub fn fail_first(&self, model: &str, n: u32, b: Behaviour) {
        self.state
            .lock()
            .unwrap()
            .fail_first
            .insert(model.into(), (n, b));
    }

    /// Connections accepted so far, over all models.
    pub fn connections(&self) -> u32 {
        self.state.lock().unwrap().connections
    }

    pub fn counts(&self, model: &str) -> Counts {
        self.state
            .lock()
            .unwrap()
            .counts
            .get(model)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (up to 5s) until `model` has seen `n` abandoned requests; the abandonment is seen
    /// when the connection closes, a moment after the client gives up.
    pub async fn wait_abandoned(&self, model: &str, n: u32) -> Counts {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.counts(model);
            if c.abandoned >= n || Instant::now() > until {
                return c;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn count(&self, model: &str, f: impl FnOnce(&mut Counts)) {
        f(self
            .state
            .lock()
            .unwrap()
            .counts
            .entry(model.into())
            .or_default());
    }
}

struct Request {
    model: String,
    stream: bool,
    path: String,
    headers: Vec<(String, String)>,
}

async fn serve_connection(stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let addr = stream.local_addr().unwrap();
    let (rd, wr) = stream.into_split();
    serve_halves(rd, wr, addr, state, |rd, wr| {
        if let Ok(stream) = rd.reunite(wr) {
            let _ = stream.set_zero_linger();
        }
    })
    .await;
}

/// Serves one connection of any kind, by its halves: `reset` ends it with an RST where the
/// transport has one.
async fn serve_halves<R, W>(
    mut rd: R,
    mut wr: W,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    reset: impl FnOnce(R, W),
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    loop {
        let Some((req, authorization, body)) = read_request(&mut rd, &mut buf).await else {
            return;
        };
        let (path, headers) = (req.path.clone(), req.headers.clone());
        let prefilled = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "assistant");
        let behaviour = {
            let mut st = state.lock().unwrap();
            let c = st.counts.entry(req.model.clone()).or_default();
            c.requests += 1;
            c.last_authorization = authorization;
            c.last_body = Some(body);
            c.last_path = Some(path);
            c.last_headers = headers;
            let forced = match st.fail_first.get_mut(&req.model) {
                Some((n, b)) if *n > 0 => {
                    *n -= 1;
                    Some(b.clone())
                }
                _ => None,
            };
            let chosen = forced
                .or_else(|| st.behaviours.get(&req.model).cloned())
                .unwrap_or_else(|| {
                    Behaviour::status(404, r#"{"error":{"message":"model not found"}}"#)
                });
            st.counts.entry(req.model.clone()).or_default().open += 1;
            match chosen {
                Behaviour::Random(choices) if !choices.is_empty() => {
                    choices[fastrand::usize(..choices.len())].clone()
                }
                Behaviour::NoPrefill(_) if prefilled => Behaviour::status(
                    400,
                    r#"{"error":{"message":"This model does not support assistant message prefill.","type":"invalid_request_error"}}"#,
                ),
                Behaviour::NoPrefill(inner) => *inner,
                other => other,
            }
        };
        let up = Upstream {
            addr,
            state: state.clone(),
        };
        let outcome = respond(&req, behaviour, &mut rd, &mut wr).await;
        up.count(&req.model, |c| c.open -= 1);
        match outcome {
            Outcome::Completed => up.count(&req.model, |c| c.completed += 1),
            Outcome::Abandoned => {
                up.count(&req.model, |c| c.abandoned += 1);
                return;
            }
            Outcome::Closed => return,
            Outcome::Reset => {
                reset(rd, wr);
                return;
            }
        }
    }
}

enum Outcome {
    Completed,
    Abandoned,
    /// We ended the connection on purpose.
    Closed,
    /// Close with RST rather than FIN.
    Reset,
}

async fn read_request(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Option<(Request, Option<String>, serde_json::Value)> {
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut tmp = [0u8; 4096];
        let n = rd.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l[name.len() + 1..].trim().to_string())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let mut tmp = [0u8; 4096];
        let n = rd.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buf[header_end..header_end + len]).unwrap_or_default();
    buf.drain(..header_end + len);
    let request_line = head.lines().next().unwrap_or_default();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Gemini and Azure name the model in the path; the others in the body.
    let from_path = path
        .split("/models/")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .or_else(|| {
            path.split("/deployments/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
        });
    let req = Request {
        model: from_path
            .map(str::to_string)
            .unwrap_or_else(|| body["model"].as_str().unwrap_or_default().to_string()),
        stream: body["stream"].as_bool().unwrap_or(false) || path.contains("streamGenerateContent"),
        path,
        headers,
    };
    Some((req, header("authorization"), body))
}

/// Waits `d`, unless the client closes the connection first.
async fn wait_or_abandoned(rd: &mut (impl AsyncRead + Unpin), d: Duration) -> bool {
    if d.is_zero() {
        // No timer at all: a zero sleep still waits for the timer wheel's next tick.
        return false;
    }
    let mut tmp = [0u8; 64];
    tokio::select! {
        _ = sleep(d) => false,
        r = rd.read(&mut tmp) => matches!(r, Ok(0) | Err(_)),
    }
}

async fn forever_or_abandoned(rd: &mut (impl AsyncRead + Unpin)) -> Outcome {
    let mut tmp = [0u8; 64];
    loop {
        match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => return Outcome::Abandoned,
            Ok(_) => {}
        }
    }
}

fn sse(data: &str) -> Vec<u8> {
    let event = format!("data: {data}\n\n");
    format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
}

fn content_event(model: &str, text: &str) -> String {
    serde_json::json!({"id":"up-1","object":"chat.completion.chunk","model":model,
        "choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]})
    .to_string()
}

async fn respond(
    req: &Request,
    b: Behaviour,
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
) -> Outcome {
    const STREAM_HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    macro_rules! write_or_abandon {
        ($bytes:expr) => {
            if wr.write_all(AsRef::<[u8]>::as_ref(&$bytes)).await.is_err() {
                return Outcome::Abandoned;
            }
        };
    }
    macro_rules! wait {
        ($d:expr) => {
            if wait_or_abandoned(rd, $d).await {
                return Outcome::Abandoned;
            }
        };
    }
    match b {
        Behaviour::Hang => forever_or_abandoned(rd).await,
        Behaviour::Status {
            code,
            body,
            retry_after,
        } => {
            let ra = retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 {code} Status\r\ncontent-type: application/json\r\n{ra}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            write_or_abandon!(resp.into_bytes());
            Outcome::Completed
        }
        Behaviour::Answer {
            headers_after,
            first_chunk_after,
            chunks,
            chunk_interval,
        } => {
            wait!(headers_after);
            if !req.stream {
                wait!(first_chunk_after + chunk_interval * (chunks.len().saturating_sub(1) as u32));
                let text: String = chunks.concat();
                let body = serde_json::json!({
                    "id": "up-1", "object": "chat.completion", "model": req.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": chunks.len(), "total_tokens": 5 + chunks.len()}
                })
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                write_or_abandon!(resp.into_bytes());
                return Outcome::Completed;
            }
            write_or_abandon!(STREAM_HEAD);
            // A role-only first event, as OpenAI sends: it must not count as the first chunk.
            write_or_abandon!(sse(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#
            ));
            wait!(first_chunk_after);
            for (i, c) in chunks.iter().enumerate() {
                if i > 0 {
                    wait!(chunk_interval);
                }
                write_or_abandon!(sse(&content_event(&req.model, c)));
            }
            write_or_abandon!(sse(
                r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
            ));
            let usage = format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":{n},"total_tokens":{t}}}}}"#,
                n = chunks.len(),
                t = chunks.len() + 5
            );
            write_or_abandon!(sse(&usage));
            write_or_abandon!(sse("[DONE]"));
            write_or_abandon!(b"0\r\n\r\n".as_slice());
            Outcome::Completed
        }
        Behaviour::StallAfter { after } => {
            write_or_abandon!(STREAM_HEAD);
            for i in 0..after {
                write_or_abandon!(sse(&content_event(&req.model, &format!("part{i} "))));
            }
            forever_or_abandoned(rd).await
        }
        Behaviour::DoneThenHang { after } => {
            write_or_abandon!(STREAM_HEAD);
            for i in 0..after {
                write_or_abandon!(sse(&content_event(&req.model, &format!("part{i} "))));
            }
            write_or_abandon!(sse("[DONE]"));
            forever_or_abandoned(rd).await
        }
        Behaviour::ResetAfter { after } => {
            if after > 0 {
                write_or_abandon!(STREAM_HEAD);
                for i in 0..after {
                    write_or_abandon!(sse(&content_event(&req.model, &format!("part{i} "))));
                }
                let _ = wr.flush().await;
                sleep(Duration::from_millis(20)).await;
            }
            Outcome::Reset
        }
        Behaviour::MalformedSse { count } => {
            write_or_abandon!(STREAM_HEAD);
            for _ in 0..count {
                write_or_abandon!(sse("{this is not json"));
            }
            forever_or_abandoned(rd).await
        }
        Behaviour::Raw {
            status,
            headers,
            body,
        } => {
            let extra: String = headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect();
            let resp = format!(
                "HTTP/1.1 {status} Status\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            write_or_abandon!(resp.into_bytes());
            Outcome::Completed
        }
        Behaviour::Sse { body, cut_after } => {
            write_or_abandon!(STREAM_HEAD);
            let events: Vec<&str> = split_events(&body);
            for (i, event) in events.iter().enumerate() {
                if cut_after == Some(i) {
                    let _ = wr.flush().await;
                    sleep(Duration::from_millis(20)).await;
                    return Outcome::Reset;
                }
                if i > 0 {
                    wait!(Duration::from_millis(5));
                }
                write_or_abandon!(format!("{:x}\r\n{event}\r\n", event.len()).into_bytes());
            }
            // The body's end comes a moment after the last event, as from servers that flush
            // each event: a client that stops reading at the end marker never sees it.
            wait!(Duration::from_millis(5));
            write_or_abandon!(b"0\r\n\r\n".as_slice());
            Outcome::Completed
        }
        Behaviour::EndWithoutDone { after } => {
            write_or_abandon!(STREAM_HEAD);
            for i in 0..after {
                write_or_abandon!(sse(&content_event(&req.model, &format!("part{i} "))));
            }
            write_or_abandon!(b"0\r\n\r\n".as_slice());
            Outcome::Closed
        }
        // Resolved to one of its choices when the request arrived; an empty list answers 500.
        Behaviour::Random(_) | Behaviour::NoPrefill(_) => {
            write_or_abandon!(b"HTTP/1.1 500 Error\r\ncontent-length: 0\r\n\r\n".as_slice());
            Outcome::Completed
        }
    }
}

/// Splits an SSE body into events, each keeping its trailing blank line (LF or CRLF).
fn split_events(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let end = [
            rest.find("\r\n\r\n").map(|i| i + 4),
            rest.find("\n\n").map(|i| i + 2),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        if !event.trim().is_empty() {
            out.push(event);
        }
        rest = tail;
    }
    out
}
