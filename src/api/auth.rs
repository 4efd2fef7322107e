//! Who is calling: the one place a call's caller is worked out from what it proved, in this
//! order of trust:
//!
//! 1. the client certificate of its connection (mTLS on the gRPC port), verified against
//!    `server.tls.client_ca_file` when the connection was accepted;
//! 2. `auth.trusted_header`, set by a proxy (Envoy's or Istio's `x-forwarded-client-cert`,
//!    Linkerd's `l5d-client-id`), believed only from `trusted_peers`;
//! 3. an API key in `authorization: Bearer <key>`, for callers without a proven identity.
//!
//! The first that proves something decides. A presented key that matches no caller is
//! refused, even where credentials are optional: a typo must not quietly turn a limited caller
//! into an anonymous one. Keys are never logged or echoed, in whole or in part, and a refusal
//! never says what about a key was wrong.

use std::sync::Arc;

use tonic::Request;
use tonic::metadata::MetadataMap;

use super::error::ApiError;
use crate::config::auth::{Auth, CallerPolicy, HeaderFormat, TrustedHeader};
use crate::listen::conn::PeerInfo;
use crate::routing::{CallContext, CallerName, Identity};

/// Longest trusted-header value read; a longer one is no identity.
const MAX_HEADER_LEN: usize = 8192;
/// Longest identity taken from a header.
const MAX_IDENTITY_LEN: usize = 512;
/// Longest key read from `authorization`.
const MAX_KEY_LEN: usize = 1024;

/// The context of a call from `req`'s caller, or why it is refused.
pub fn call_context<T>(auth: &Auth, req: &Request<T>) -> Result<CallContext, ApiError> {
    // Nothing is configured: nothing is read, and every call is as it always was.
    if auth.is_off() {
        return Ok(CallContext::anonymous());
    }
    let peer = req.extensions().get::<PeerInfo>();
    let proven = peer.and_then(|p| p.identity.clone()).or_else(|| {
        auth.trusted_header
            .as_ref()
            .and_then(|h| header_identity(h, req.metadata(), peer))
    });
    if let Some(identity) = proven {
        return match auth.caller_by_identity(&identity) {
            Some(p) => Ok(named(p, Some(identity))),
            None => match &auth.default {
                Some(d) => Ok(CallContext {
                    identity: Some(Identity(identity)),
                    caller: CallerName::Unknown,
                    policy: Some(d.clone()),
                }),
                None if auth.required => Err(ApiError::Unauthenticated {
                    why: "the caller's identity is not a configured caller (and auth.default is not set)",
                }),
                None => Ok(CallContext {
                    identity: Some(Identity(identity)),
                    caller: CallerName::Unknown,
                    policy: None,
                }),
            },
        };
    }
    match bearer(req.metadata()) {
        Some(Ok(key)) => match auth.caller_by_key(key) {
            Some(p) => Ok(named(p, None)),
            None => Err(ApiError::Unauthenticated {
                why: "the API key is not valid",
            }),
        },
        Some(Err(())) => Err(ApiError::Unauthenticated {
            why: "the `authorization` metadata must be `Bearer <key>`",
        }),
        None if auth.required => Err(ApiError::Unauthenticated {
            why: "this router requires a credential: a client certificate, or `authorization: Bearer <key>` metadata",
        }),
        None => Ok(CallContext::anonymous()),
    }
}

fn named(p: &Arc<CallerPolicy>, identity: Option<Arc<str>>) -> CallContext {
    let name = p.name.clone();
    CallContext {
        identity: Some(Identity(identity.unwrap_or_else(|| name.clone()))),
        caller: CallerName::Named(name),
        policy: Some(p.clone()),
    }
}

/// The key in `authorization: Bearer <key>`: `None` without the metadata, `Err` when it is
/// not of that form.
fn bearer(metadata: &MetadataMap) -> Option<Result<&[u8], ()>> {
    let value = metadata.get("authorization")?.as_bytes();
    let Some(scheme) = value.get(..7) else {
        return Some(Err(()));
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Some(Err(()));
    }
    let key = value[7..].trim_ascii();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Some(Err(()));
    }
    Some(Ok(key))
}

/// The identity a trusted proxy's header names, when the peer is one of `trusted_peers`.
fn header_identity(
    h: &TrustedHeader,
    metadata: &MetadataMap,
    peer: Option<&PeerInfo>,
) -> Option<Arc<str>> {
    let value = metadata.get(h.name.as_str())?;
    let from = peer.and_then(|p| p.remote)?.ip();
    if !h.trusted_peers.iter().any(|c| c.contains(from)) {
        tracing::debug!(header = %h.name, peer = %from, "identity header from an untrusted peer ignored");
        return None;
    }
    let value = value.to_str().ok().filter(|v| v.len() <= MAX_HEADER_LEN)?;
    let identity = match h.format {
        HeaderFormat::Plain => value.trim(),
        HeaderFormat::Xfcc => xfcc_uri(value)?,
    };
    (!identity.is_empty() && identity.len() <= MAX_IDENTITY_LEN).then(|| Arc::from(identity))
}

/// The `URI=` field of the last element of an `x-forwarded-client-cert` value: the element the
/// nearest proxy added, for the client it accepted. Elements are separated by `,` and fields by
/// `;`, outside double quotes (a `Subject="CN=a,O=b"` holds both).
fn xfcc_uri(value: &str) -> Option<&str> {
    let last = split_unquoted(value, b',').last()?;
    split_unquoted(last, b';').find_map(|field| {
        let (key, v) = field.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// `s` cut at `sep` where it is outside double quotes (a `\"` inside quotes is kept).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' && quoted {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            cuts.push(&s[start..i]);
            start = i + 1;
        }
    }
    cuts.push(&s[start..]);
    cuts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_takes_the_last_elements_uri() {
        let v = r#"By=spiffe://cluster.local/ns/llm/sa/router;Hash=ab12;Subject="CN=x,O=a;b";URI=spiffe://cluster.local/ns/search/sa/ranker"#;
        assert_eq!(
            xfcc_uri(v),
            Some("spiffe://cluster.local/ns/search/sa/ranker")
        );
        let two = format!("URI=spiffe://outer/edge,{v}");
        assert_eq!(
            xfcc_uri(&two),
            Some("spiffe://cluster.local/ns/search/sa/ranker")
        );
        assert_eq!(xfcc_uri("Hash=ab12;Subject=\"CN=x\""), None);
        assert_eq!(
            xfcc_uri(r#"Subject="CN=\"a,URI=spiffe://fake\"";URI=spiffe://real"#),
            Some("spiffe://real")
        );
    }

    #[test]
    fn bearer_keys_are_read_strictly() {
        let mut m = MetadataMap::new();
        assert!(bearer(&m).is_none());
        m.insert(
            "authorization",
            "Bearer k-0123456789abcdef".parse().unwrap(),
        );
        assert_eq!(bearer(&m), Some(Ok(&b"k-0123456789abcdef"[..])));
        m.insert(
            "authorization",
            "bearer   k-0123456789abcdef ".parse().unwrap(),
        );
        assert_eq!(bearer(&m), Some(Ok(&b"k-0123456789abcdef"[..])));
        for bad in ["Basic abc", "Bearer", "Bearer ", "k-0123456789abcdef"] {
            m.insert("authorization", bad.parse().unwrap());
            assert_eq!(bearer(&m), Some(Err(())), "{bad}");
        }
    }
}
