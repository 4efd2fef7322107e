//! Where state shared by every replica is kept: a Redis (or Valkey) server, named by
//! LiteLLM's `router_settings` keys (`redis_url`, or `redis_host`, `redis_port` and
//! `redis_password`), with llm-router's own `redis_namespace`, `redis_sync_interval`,
//! `redis_timeout` and `redis_ca_file`. Unset, every replica keeps its own state.

use std::{path::PathBuf, time::Duration};

/// The shared store's settings (`router_settings.redis_*`).
#[derive(Debug, Clone)]
pub struct SharedState {
    /// Where Redis is, with its password: the client's `Debug` redacts the password, and it
    /// is never displayed.
    pub redis: redis::ConnectionInfo,
    /// `redis://host:port/db` (or `rediss://`), without credentials: what logs and
    /// check-config show.
    pub shown: String,
    /// The server's certificate is checked against this PEM bundle instead of the system
    /// roots (`redis_ca_file`, `rediss://` only).
    pub ca_file: Option<PathBuf>,
    /// The prefix every key starts with after `llmrouter:`; `None` derives one from the
    /// deployments of the running config, so that routers with different model lists on one
    /// Redis never mix.
    pub namespace: Option<String>,
    /// How often each replica sends what it counted and reads what the others did.
    /// Default 100ms.
    pub sync_interval: Duration,
    /// The longest one exchange with Redis may take before the replica goes on with its own
    /// state for the interval. Default 250ms.
    pub timeout: Duration,
}

impl SharedState {
    /// One line for check-config and start-up.
    pub fn describe(&self) -> String {
        format!(
            "shared through {} (namespace {}, sync every {}, timeout {}{})",
            self.shown,
            self.namespace
                .as_deref()
                .map_or("derived from the model list".to_string(), |n| format!(
                    "`{n}`"
                )),
            super::duration::display(self.sync_interval),
            super::duration::display(self.timeout),
            self.ca_file
                .as_ref()
                .map_or(String::new(), |p| format!(", CA {}", p.display())),
        )
    }
}
