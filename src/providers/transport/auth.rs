//! How a request proves who sends it: the auth step of an [`Endpoint`](super::Endpoint), run
//! on each request once its bytes are final. Three kinds: headers fixed when the endpoint is
//! built (API keys: free per request), a signature over the final method, URL, headers and body
//! (AWS SigV4), or a bearer token from a source that fetches and refreshes it (an OAuth2
//! service account). The wire format never sees which: a cloud that serves a known model
//! family is that family's body and events on another auth step.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::config::Secret;
use crate::providers::{ErrorKind, ProviderError};

/// A request as an auth step sees it, with everything a signature covers.
pub struct Outgoing<'a> {
    pub method: &'static str,
    pub url: &'a url::Url,
    /// The request's headers so far (the endpoint's own, trace context, content type); the
    /// step adds its own.
    pub headers: &'a mut HeaderMap,
    /// The body exactly as it will be sent.
    pub body: &'a [u8],
}

/// Signs a request's final bytes by setting headers on it.
pub trait Sign: Send + Sync + fmt::Debug {
    fn sign(&self, request: &mut Outgoing<'_>) -> Result<(), ProviderError>;
}

/// A future a [`TokenSource`] answers with.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Secret, ProviderError>> + Send + 'a>>;

/// Bearer tokens that expire: each call gives one valid for at least the next request,
/// fetching or refreshing it as needed (and sharing one fetch among concurrent callers).
pub trait TokenSource: Send + Sync + fmt::Debug {
    fn token(&self) -> TokenFuture<'_>;
}

/// An endpoint's auth step.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Headers fixed when the endpoint is built (API keys and the deployment's extra headers),
    /// already among the endpoint's headers: nothing more per request.
    #[default]
    Static,
    /// Signs each request's final bytes.
    Sign(Arc<dyn Sign>),
    /// Sends `authorization: Bearer <token>` with the source's current token.
    Token(Arc<dyn TokenSource>),
}

impl Auth {
    /// Proves `request`. Returns a secret that must be kept out of the request's error text (a
    /// token, which the provider may echo), if the step added one.
    pub async fn apply(&self, request: &mut Outgoing<'_>) -> Result<Option<Secret>, ProviderError> {
        match self {
            Auth::Static => Ok(None),
            Auth::Sign(signer) => signer.sign(request).map(|()| None),
            Auth::Token(source) => {
                let token = source.token().await?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        ProviderError::new(
                            ErrorKind::Auth,
                            0,
                            "the token source gave a token that cannot be sent in a header",
                        )
                    })?;
                value.set_sensitive(true);
                request.headers.insert(AUTHORIZATION, value);
                Ok(Some(token))
            }
        }
    }
}
