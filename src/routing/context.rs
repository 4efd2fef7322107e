//! What a call may use, fixed when it arrives. The API layer builds one per call; routing reads
//! it wherever a call may reach a model group (see [`super::reach`]).
//!
//! Its identity is empty until the server tells callers apart: then every call is anonymous and
//! may use every group, as it always could. Per-caller policy (allowed groups, limits, budgets)
//! belongs here, next to the identity it is for.

use crate::config::ModelGroup;

/// What one call may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// Who is calling, as proven (a client certificate, an API key, a header from a configured
    /// trusted peer); `None` for an anonymous call, which is every call for now.
    pub identity: Option<Identity>,
}

/// A caller's proven identity: a SPIFFE id, a certificate's name or an API key's name. Never a
/// secret: it may be logged and labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

impl CallContext {
    /// A call from a caller nobody has identified.
    pub fn anonymous() -> Self {
        CallContext::default()
    }

    /// Whether the call may use `group`: every group, until callers have policies.
    pub fn allows(&self, _group: &ModelGroup) -> bool {
        true
    }
}
