//! The built-in `mock/` provider: no network, configurable time to first chunk, speed, text and
//! failures. It powers the embedded default config and lets anyone see the deadline machinery
//! work without a provider key.

use std::time::Duration;

use futures_util::stream;
use tokio::time::{Instant, sleep_until};

use super::{
    ChatRequest, Chunk, ChunkStream, Completion, ErrorKind, ProviderError, estimate_tokens,
};
use crate::config::{MockFailure, MockSpec};
use crate::proto::{FinishReason, Role, Usage};

/// Sleeps until `due`, but not at all when it has passed: tokio's timer rounds every sleep up
/// to its next millisecond tick, which would make a zero-delay mock take a millisecond.
async fn wait_until(due: Instant) {
    if due > Instant::now() {
        sleep_until(due).await;
    }
}

#[derive(Debug)]
pub struct MockProvider {
    spec: MockSpec,
}

impl MockProvider {
    pub fn new(spec: MockSpec) -> Self {
        MockProvider { spec }
    }

    fn injected_failure(&self) -> Result<(), ProviderError> {
        let Some(failure) = self.spec.failure else {
            return Ok(());
        };
        let (kind, status, detail) = match failure {
            MockFailure::Hang | MockFailure::StallAfterFirstChunk => return Ok(()),
            MockFailure::RateLimit => (ErrorKind::RateLimited, 429, "mock: rate limited"),
            MockFailure::ServerError => (ErrorKind::Upstream, 503, "mock: service unavailable"),
            MockFailure::ConnectError => (ErrorKind::Connect, 0, "mock: connection refused"),
            MockFailure::AuthError => (ErrorKind::Auth, 401, "mock: invalid api key"),
            MockFailure::BadRequest => (ErrorKind::BadRequest, 400, "mock: bad request"),
            MockFailure::ContextWindow => (
                ErrorKind::ContextWindow,
                400,
                "mock: maximum context length exceeded",
            ),
        };
        let mut err = ProviderError::new(kind, status, detail);
        if kind == ErrorKind::RateLimited {
            err.wait_hint = Some(Duration::from_secs(1));
        }
        Err(err)
    }

    /// The answer to `req`: the configured text or, when the conversation ends with an
    /// assistant message that the text begins with (a prefill), the rest of it. So the mock
    /// continues an answer another deployment started, as a model that takes prefills does.
    fn answer<'a>(&'a self, req: &ChatRequest) -> &'a str {
        let text = self.spec.text.as_str();
        match req.messages.last() {
            Some(m) if m.role == Role::Assistant as i32 => {
                text.strip_prefix(m.content.as_str()).unwrap_or(text)
            }
            _ => text,
        }
    }

    /// The answer split into word-sized chunks, each keeping its trailing space.
    fn pieces(answer: &str) -> Vec<String> {
        answer.split_inclusive(' ').map(str::to_string).collect()
    }

    fn usage(&self, req: &ChatRequest) -> Usage {
        let chars = req.prompt_chars();
        let prompt = u32::try_from(estimate_tokens(chars)).unwrap_or(u32::MAX);
        let completion = Self::tokens(self.answer(req));
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            ..Default::default()
        }
    }

    fn tokens(answer: &str) -> u32 {
        Self::pieces(answer).len().try_into().unwrap_or(u32::MAX)
    }

    fn token_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.spec.tokens_per_second)
    }

    pub async fn complete(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        self.injected_failure()?;
        if matches!(
            self.spec.failure,
            Some(MockFailure::Hang | MockFailure::StallAfterFirstChunk)
        ) {
            std::future::pending::<()>().await;
        }
        let start = Instant::now();
        let answer = self.answer(req);
        let generation = self.token_interval() * Self::tokens(answer).saturating_sub(1);
        wait_until(start + self.spec.time_to_first_chunk + generation).await;
        Ok(Completion {
            text: answer.to_string(),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: Some(self.usage(req)),
        })
    }

    pub async fn stream(&self, req: &ChatRequest) -> Result<ChunkStream, ProviderError> {
        self.injected_failure()?;
        if self.spec.failure == Some(MockFailure::Hang) {
            std::future::pending::<()>().await;
        }
        let stall = self.spec.failure == Some(MockFailure::StallAfterFirstChunk);
        let interval = self.token_interval();
        let usage = self.usage(req);
        let mut chunks: Vec<Chunk> = Self::pieces(self.answer(req))
            .into_iter()
            .map(|delta| Chunk {
                delta,
                ..Chunk::default()
            })
            .collect();
        chunks.push(Chunk {
            delta: String::new(),
            finish_reason: Some(FinishReason::Stop),
            usage: Some(usage),
            ..Chunk::default()
        });
        // Each chunk is due at a fixed instant, so a slow consumer does not slow the schedule.
        let first_due = Instant::now() + self.spec.time_to_first_chunk;
        let schedule = chunks.into_iter().enumerate().map(move |(i, chunk)| {
            let due = first_due + interval * u32::try_from(i).unwrap_or(u32::MAX);
            (due, chunk)
        });
        let s = stream::unfold((schedule, 0usize), move |(mut schedule, sent)| async move {
            if stall && sent == 1 {
                std::future::pending::<()>().await;
            }
            let (due, chunk) = schedule.next()?;
            wait_until(due).await;
            Some((Ok(chunk), (schedule, sent + 1)))
        });
        Ok(Box::pin(s))
    }
}
