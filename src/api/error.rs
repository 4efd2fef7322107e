//! How a call fails as the API layer answers it: refused by the API itself, before routing
//! (a malformed request, the server at its cap), or failed in routing (routing's own
//! [`CallError`], in routing's terms). `status` turns either into a gRPC status.

use crate::routing::{CallError, CallFailure};

/// A failed call as the API answers it.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// A request field is malformed: found by shape validation, before the config is read.
    InvalidArgument { field: String, message: String },
    /// The server is at `server.max_concurrent_calls`: refused before any work.
    Overloaded { limit: u32 },
    /// The request's bytes would take the bytes being received across the server past
    /// `server.max_pending_request_bytes`: refused as they arrive.
    PendingBytesExhausted { limit: usize },
    /// No credential where one is required, or one that proves nothing. `why` never says
    /// which part of a key was wrong.
    Unauthenticated { why: &'static str },
    /// Routing failed the call.
    Call(CallError),
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        ApiError::Call(e)
    }
}

/// A request error naming its field: the one form every shape validation answers with.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

impl ApiError {
    /// What went wrong, for the status message: names the field, group or setting involved.
    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidArgument { field, message } => format!("`{field}` {message}"),
            ApiError::Overloaded { limit } => format!(
                "the router is at server.max_concurrent_calls ({limit} calls in flight); retry shortly or elsewhere"
            ),
            ApiError::PendingBytesExhausted { limit } => format!(
                "the router is receiving more request bytes than server.max_pending_request_bytes ({limit}) allows; retry shortly or elsewhere"
            ),
            ApiError::Unauthenticated { why } => why.to_string(),
            ApiError::Call(e) => e.message(),
        }
    }
}

/// A failed call with every attempt made before it; none when the API refused it.
#[derive(Debug)]
pub struct Failed {
    pub error: ApiError,
    pub attempts: Vec<crate::proto::Attempt>,
}

impl From<CallFailure> for Failed {
    fn from(f: CallFailure) -> Self {
        Failed {
            error: ApiError::Call(f.error),
            attempts: f.attempts,
        }
    }
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed {
            error,
            attempts: Vec::new(),
        }
    }
}
