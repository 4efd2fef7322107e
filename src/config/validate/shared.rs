//! `router_settings.redis_*`: where state shared by every replica is kept. No error or
//! warning shows the URL or the password: either may hold a secret.

use std::{path::PathBuf, time::Duration};

use redis::IntoConnectionInfo;

use super::{Errors, resolve_secret};
use crate::config::raw::{RawConfig, RawPort};
use crate::config::shared::SharedState;

const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Faster than this, syncing costs Redis more than it buys; slower, replicas see each other
/// too late for a minute's limits to mean much.
const SYNC_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(10));
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(10));
const DEFAULT_PORT: u16 = 6379;
const MAX_NAMESPACE_LEN: usize = 128;

pub(super) fn shared_state(
    raw: &RawConfig,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<SharedState> {
    let rs = &raw.router_settings;
    let text = |value: &Option<String>, key: &str, errs: &mut Errors| {
        value
            .as_deref()
            .and_then(|v| resolve_secret(v.trim(), key, lookup_env, errs))
    };
    let url = text(&rs.redis_url, "router_settings.redis_url", errs);
    let host = text(&rs.redis_host, "router_settings.redis_host", errs);
    let password = text(&rs.redis_password, "router_settings.redis_password", errs);
    let port = rs
        .redis_port
        .as_ref()
        .and_then(|p| port(p, lookup_env, errs));

    let mut info = match (url, host) {
        (None, None) => {
            for (set, key) in [
                (rs.redis_port.is_some(), "redis_port"),
                (rs.redis_password.is_some(), "redis_password"),
                (rs.redis_namespace.is_some(), "redis_namespace"),
                (rs.redis_sync_interval.is_some(), "redis_sync_interval"),
                (rs.redis_timeout.is_some(), "redis_timeout"),
                (rs.redis_ca_file.is_some(), "redis_ca_file"),
            ] {
                if set {
                    errs.add(
                        format!("router_settings.{key}"),
                        "needs router_settings.redis_url or redis_host",
                    );
                }
            }
            return None;
        }
        (Some(_), Some(_)) => {
            errs.add(
                "router_settings.redis_host",
                "give either redis_url or redis_host (with redis_port), not both",
            );
            return None;
        }
        (Some(url), None) => {
            if rs.redis_port.is_some() {
                errs.add(
                    "router_settings.redis_port",
                    "the port goes in redis_url when redis_url is set",
                );
            }
            let url = url.expose();
            let scheme = url.split("://").next().unwrap_or_default();
            if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys") || !url.contains("://")
            {
                errs.add(
                    "router_settings.redis_url",
                    "must be a redis:// or rediss:// URL (valkey:// and valkeys:// too): redis://[:password@]host[:port][/db]",
                );
                return None;
            }
            match url.into_connection_info() {
                Ok(info) => info,
                Err(_) => {
                    // The client's error may quote the URL, and with it a password.
                    errs.add(
                        "router_settings.redis_url",
                        "is not a valid Redis URL: redis://[:password@]host[:port][/db]",
                    );
                    return None;
                }
            }
        }
        (None, Some(host)) => {
            let host = host.expose();
            if host.is_empty() || host.contains("://") || host.contains('/') || host.contains('@') {
                errs.add(
                    "router_settings.redis_host",
                    "must be a host name or address; a URL goes in redis_url",
                );
                return None;
            }
            match redis::ConnectionAddr::Tcp(host.to_string(), port.unwrap_or(DEFAULT_PORT))
                .into_connection_info()
            {
                Ok(info) => info,
                Err(_) => {
                    errs.add("router_settings.redis_host", "is not a valid host");
                    return None;
                }
            }
        }
    };
    if let Some(password) = password {
        if info.redis_settings().password().is_some() {
            errs.add(
                "router_settings.redis_password",
                "redis_url already carries a password; give it once",
            );
        }
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    let tls = match info.addr() {
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
            errs.add(
                "router_settings.redis_url",
                "`#insecure` (no certificate check) is not supported: give the server's CA in redis_ca_file",
            );
            true
        }
        redis::ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    let shown = shown(&info);

    let ca_file = rs.redis_ca_file.as_deref().map(|p| {
        if !tls {
            errs.add(
                "router_settings.redis_ca_file",
                "applies to rediss:// only: the connection is plaintext",
            );
        }
        PathBuf::from(p)
    });
    if let Some(p) = &ca_file
        && tls
        && std::fs::metadata(p).is_err()
    {
        errs.add(
            "router_settings.redis_ca_file",
            format!("cannot read {}", p.display()),
        );
    }

    let namespace = rs.redis_namespace.as_deref().map(str::trim).map(|n| {
        let ok = !n.is_empty()
            && n.len() <= MAX_NAMESPACE_LEN
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if !ok {
            errs.add(
                "router_settings.redis_namespace",
                format!("must be 1 to {MAX_NAMESPACE_LEN} letters, digits or `-_.:/`"),
            );
        }
        n.to_string()
    });
    let within = |key: &str,
                  d: Option<Duration>,
                  default,
                  (lo, hi): (Duration, Duration),
                  errs: &mut Errors| {
        let d = d.unwrap_or(default);
        if !(lo..=hi).contains(&d) {
            errs.add(
                key,
                format!(
                    "must be from {} to {}",
                    crate::config::duration::display(lo),
                    crate::config::duration::display(hi)
                ),
            );
        }
        d
    };
    let sync_interval = within(
        "router_settings.redis_sync_interval",
        rs.redis_sync_interval,
        DEFAULT_SYNC_INTERVAL,
        SYNC_INTERVAL_RANGE,
        errs,
    );
    let timeout = within(
        "router_settings.redis_timeout",
        rs.redis_timeout,
        DEFAULT_TIMEOUT,
        TIMEOUT_RANGE,
        errs,
    );
    Some(SharedState {
        redis: info,
        shown,
        ca_file,
        namespace,
        sync_interval,
        timeout,
    })
}

fn port(
    raw: &RawPort,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) -> Option<u16> {
    const KEY: &str = "router_settings.redis_port";
    let n = match raw {
        RawPort::Number(n) => *n,
        RawPort::Text(t) => {
            let t = resolve_secret(t.trim(), KEY, lookup_env, errs)?;
            match t.expose().trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    errs.add(KEY, "must be a port number");
                    return None;
                }
            }
        }
    };
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.add(KEY, "must be a port number from 1 to 65535");
            None
        }
    }
}

/// The server's address as logs may show it: scheme, host, port and database, no credentials.
fn shown(info: &redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        _ => "a unix socket".to_string(),
    }
}
