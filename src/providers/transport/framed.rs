//! A provider's streamed response as chunks: the body's bytes cut into events by a framing
//! (SSE today; a binary framing such as AWS's event-stream is another [`Framing`]), each event
//! read by the wire format's [`EventParser`]. What every stream needs whatever its framing is
//! kept here once: the bound on unreadable events and their count, the stream's end (marker,
//! clean end after a finish reason, or cut short), redaction of its errors, and handing the
//! connection back to the pool after the end marker.

use std::{ops::Deref, pin::Pin, sync::Arc, time::Duration};

use futures_util::{FutureExt, Stream, StreamExt, stream};

use super::redact;
use crate::config::Secret;
use crate::providers::{Chunk, ChunkStream, ErrorKind, ProviderError, excerpt};

/// How a body's bytes are cut into events.
pub trait Framing: Send + 'static {
    /// An event as the framing yields it, owned; the parser reads it as [`Self::Data`].
    type Event: Deref<Target = Self::Data> + Send;
    type Data: ?Sized;

    /// Takes the next bytes of the body, split anywhere.
    fn push(&mut self, bytes: &[u8]);

    /// The next complete event, if one is buffered. `Err` when the bytes break the framing
    /// (a line, frame or event too long, a bad checksum): the stream breaks.
    fn next_event(&mut self) -> Result<Option<Self::Event>, String>;

    /// The body ended: the last event, if the framing lets one end without its terminator.
    fn finish(&mut self) -> Result<Option<Self::Event>, String>;

    /// `event` with every secret in it replaced, when it holds one; `None` when it holds none.
    /// An event that fails to parse (or is an error) is read again redacted, so that the
    /// excerpt its error keeps is cut from text that holds no secret, not one the cut went
    /// through.
    fn redacted(event: &Self::Data, secrets: &[Secret]) -> Option<Self::Event>;
}

/// What one event means to a stream.
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

/// A wire format's reading of its events (`E`: an SSE event's data by default).
pub trait EventParser<E: ?Sized = str>: Send + 'static {
    fn event(&mut self, event: &E) -> Result<Step, ProviderError>;
    /// Called when the byte stream ends without a `Done` and before any finish reason: the
    /// stream was cut short, and this says how in the format's terms. (A body that ends cleanly
    /// after a finish reason is a complete answer, marker or not: several servers end so.)
    fn cut_short(&self) -> ProviderError;
}

/// An event that does not parse, as a [`Step`].
pub fn malformed_event(e: impl std::fmt::Display, data: &str) -> Step {
    Step::Malformed(format!("malformed stream event ({e}): {}", excerpt(data)))
}

type BodyBytes = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, super::pool::BodyError>> + Send>>;

/// How long, and how much, a body is read past its end marker to reach its end.
const RELEASE_TIME: Duration = Duration::from_secs(2);
const RELEASE_BYTES: usize = 64 * 1024;

struct StreamState<F, P> {
    bytes: BodyBytes,
    framing: F,
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
/// ends cleanly after a finish reason; a cut, an error event, a framing error, or more than
/// `max_malformed` unreadable events yields one `Err` and ends. Unreadable events up to that
/// limit are skipped, and counted on the next chunk ([`Chunk::skipped_events`]).
pub fn framed_stream<F, P>(
    response: super::pool::Response,
    framing: F,
    parser: P,
    max_malformed: u32,
    secrets: Arc<[Secret]>,
) -> ChunkStream
where
    F: Framing,
    P: EventParser<F::Data>,
{
    let state = StreamState {
        bytes: Box::pin(response.bytes_stream()),
        framing,
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

/// What the stream does after an event.
enum Then {
    Yield(Chunk),
    Next,
    End,
    Fail(ProviderError),
}

impl<F: Framing, P: EventParser<F::Data>> StreamState<F, P> {
    /// Yields `chunk`, with the malformed events skipped since the last one.
    fn chunk(mut self, mut chunk: Chunk) -> Option<(Result<Chunk, ProviderError>, Self)> {
        self.finished |= chunk.finish_reason.is_some();
        chunk.skipped_events = std::mem::take(&mut self.malformed_unreported);
        Some((Ok(chunk), self))
    }

    /// Reads one event. One the format cannot read, or that is an error, is read again with
    /// the deployment's secrets taken out first (see [`Framing::redacted`]).
    fn read(&mut self, event: &F::Data) -> Then {
        let mut step = self.parser.event(event);
        if matches!(step, Err(_) | Ok(Step::Malformed(_)))
            && let Some(clean) = F::redacted(event, &self.secrets)
        {
            step = self.parser.event(&clean);
        }
        match step {
            Ok(Step::Chunk(chunk)) => Then::Yield(chunk),
            Ok(Step::Skip) => Then::Next,
            Ok(Step::Malformed(detail)) => match self.malformed(detail) {
                Ok(()) => Then::Next,
                Err(e) => Then::Fail(e),
            },
            Ok(Step::Done) => Then::End,
            Err(e) => Then::Fail(e),
        }
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

    fn fail(mut self, mut e: ProviderError) -> Option<(Result<Chunk, ProviderError>, Self)> {
        self.over = true;
        e.detail = redact(&self.secrets, &e.detail);
        Some((Err(e), self))
    }
}

fn framing_error(e: String) -> ProviderError {
    ProviderError::new(ErrorKind::Upstream, 200, e)
}

async fn next_chunk<F: Framing, P: EventParser<F::Data>>(
    mut st: StreamState<F, P>,
) -> Option<(Result<Chunk, ProviderError>, StreamState<F, P>)> {
    if st.over {
        return None;
    }
    loop {
        match st.framing.next_event() {
            Ok(Some(event)) => match st.read(&event) {
                Then::Yield(chunk) => return st.chunk(chunk),
                Then::Next => continue,
                Then::End => {
                    release(st.bytes);
                    return None;
                }
                Then::Fail(e) => return st.fail(e),
            },
            Ok(None) => {}
            Err(e) => return st.fail(framing_error(e)),
        }
        match st.bytes.next().await {
            Some(Ok(bytes)) => st.framing.push(&bytes),
            Some(Err(e)) => {
                let e = ProviderError::new(ErrorKind::Upstream, 200, format!("stream broken: {e}"));
                return st.fail(e);
            }
            None => {
                // A last event may lack its terminator.
                if let Ok(Some(event)) = st.framing.finish() {
                    match st.read(&event) {
                        Then::Yield(chunk) => {
                            st.bytes = Box::pin(stream::empty());
                            return st.chunk(chunk);
                        }
                        Then::End => return None,
                        Then::Next => {}
                        Then::Fail(e) => return st.fail(e),
                    }
                }
                // The body ended without the format's end marker: a complete answer if a finish
                // reason came, else a stream cut short.
                if st.finished {
                    return None;
                }
                let e = st.parser.cut_short();
                return st.fail(e);
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
