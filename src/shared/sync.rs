//! The sync task: every `redis_sync_interval`, one script call carries what this replica
//! counted to Redis and brings back what the others did, for every deployment and caller at
//! once. A failed or slow exchange never touches a call: the entries put their counts back
//! for the next try and count alone meanwhile. Trouble is logged once per episode, counted
//! by kind, and shown on /healthz; the connection manager reconnects by itself.

use std::{
    sync::{Arc, LazyLock, Weak},
    time::Duration,
};

use redis::{Value, aio::ConnectionManager};
use tokio::time::{Instant, MissedTickBehavior};

use super::caller::{CallerReply, CallerSent, SharedCaller};
use super::deployment::{DeploymentReply, DeploymentSent, FAIL_FIELDS, SharedDeployment};
use super::{Inner, KEY_PREFIX, lock};
use crate::config::FailKind;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("sync.lua")));

/// What one sync carries, entry by entry, in the order of its keys.
struct Batch {
    keys: Vec<String>,
    args: Vec<String>,
    deployments: Vec<(Arc<SharedDeployment>, DeploymentSent)>,
    callers: Vec<(Arc<SharedCaller>, CallerSent)>,
}

/// Why an exchange failed, as the metric's `kind` label says it.
#[derive(Debug)]
enum Trouble {
    Timeout,
    Connection(String),
    Reply(String),
}

impl Trouble {
    fn kind(&self) -> &'static str {
        match self {
            Trouble::Timeout => "timeout",
            Trouble::Connection(_) => "connection",
            Trouble::Reply(_) => "reply",
        }
    }
}

/// A run of failed exchanges, from the first to the next success.
struct Episode {
    since: std::time::SystemTime,
    failures: u64,
}

pub(super) async fn run(inner: Weak<Inner>) {
    let Some(first) = inner.upgrade() else {
        return;
    };
    let settings = first.settings.clone();
    let metrics = first.metrics.clone();
    drop(first);
    let mut con = match connect(&settings) {
        Ok(con) => con,
        Err(e) => {
            tracing::error!(redis = %settings.shown, error = %e, "cannot set up the shared store's client; every replica counts alone");
            metrics.set_shared_state_detail(format!("not set up ({e}); this replica counts alone"));
            return;
        }
    };
    let mut ticker = tokio::time::interval(settings.sync_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut episode: Option<Episode> = None;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(batch) = inner.batch() else {
            continue;
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(settings.timeout, exchange(&mut con, &batch)).await
        {
            Ok(Ok(values)) => parse(&values, &batch),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Trouble::Timeout),
        };
        match result {
            Ok((deployments, callers)) => {
                let now = Instant::now();
                for ((d, sent), reply) in batch.deployments.into_iter().zip(deployments) {
                    d.settle(now, sent, reply);
                }
                for ((c, _sent), reply) in batch.callers.into_iter().zip(callers) {
                    c.settle(reply);
                }
                metrics.shared_state_synced();
                if let Some(e) = episode.take() {
                    tracing::info!(
                        redis = %settings.shown,
                        failed_syncs = e.failures,
                        "the shared store answers again: replicas share their state"
                    );
                }
                metrics.set_shared_state_detail(format!(
                    "ok ({}, last sync {}ms)",
                    settings.shown,
                    started.elapsed().as_millis()
                ));
            }
            Err(trouble) => {
                for (d, sent) in batch.deployments {
                    d.restore(sent);
                }
                for (c, sent) in batch.callers {
                    c.restore(sent);
                }
                metrics.shared_state_error(trouble.kind());
                let e = episode.get_or_insert_with(|| {
                    tracing::warn!(
                        redis = %settings.shown,
                        error = %describe(&trouble, &settings),
                        timeout_ms = settings.timeout.as_millis() as u64,
                        "the shared store does not answer: this replica counts alone until it does (logged once until it is back)"
                    );
                    Episode {
                        since: std::time::SystemTime::now(),
                        failures: 0,
                    }
                });
                e.failures += 1;
                let since = e
                    .since
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                metrics.set_shared_state_detail(format!(
                    "unreachable since {} ({} failed syncs, last: {}): this replica counts alone",
                    crate::config::auth::utc(since),
                    e.failures,
                    describe(&trouble, &settings)
                ));
            }
        }
    }
}

/// The error as logs and /healthz show it: the client's words, with the password (should a
/// message ever quote it) taken out.
fn describe(t: &Trouble, settings: &crate::config::shared::SharedState) -> String {
    let text = match t {
        Trouble::Timeout => format!(
            "no answer within redis_timeout ({}ms)",
            settings.timeout.as_millis()
        ),
        Trouble::Connection(e) | Trouble::Reply(e) => e.clone(),
    };
    match settings.redis.redis_settings().password() {
        Some(p) if !p.is_empty() => text.replace(p, "<redacted>"),
        _ => text,
    }
}

fn connect(settings: &crate::config::shared::SharedState) -> Result<ConnectionManager, String> {
    let client = match &settings.ca_file {
        Some(path) => {
            let root = std::fs::read(path)
                .map_err(|e| format!("cannot read redis_ca_file {}: {e}", path.display()))?;
            redis::Client::build_with_tls(
                settings.redis.clone(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )
        }
        None => redis::Client::open(settings.redis.clone()),
    }
    .map_err(|e| format!("{:?}", e.kind()))?;
    // Each attempt bounded by the exchange's own timeout; the manager reconnects after a
    // failure, and the next tick tries again.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

async fn exchange(con: &mut ConnectionManager, batch: &Batch) -> Result<Vec<Value>, Trouble> {
    let mut call = SCRIPT.prepare_invoke();
    for k in &batch.keys {
        call.key(k);
    }
    for a in &batch.args {
        call.arg(a);
    }
    call.invoke_async::<Vec<Value>>(con).await.map_err(|e| {
        // The client's own response and connection timeouts are redis_timeout too.
        if e.is_timeout() {
            Trouble::Timeout
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            Trouble::Connection(e.to_string())
        } else {
            Trouble::Reply(e.to_string())
        }
    })
}

impl Inner {
    /// What the next sync carries; `None` while there is nothing to sync, or no namespace yet.
    fn batch(&self) -> Option<Batch> {
        let ns = lock(&self.namespace).clone()?;
        let now = Instant::now();
        let deployments: Vec<(String, Arc<SharedDeployment>)> = lock(&self.deployments)
            .values()
            .map(|(h, d)| (h.clone(), d.clone()))
            .collect();
        let callers: Vec<(String, Arc<SharedCaller>)> = lock(&self.callers)
            .values()
            .map(|(h, c)| (h.clone(), c.clone()))
            .collect();
        if deployments.is_empty() && callers.is_empty() {
            return None;
        }
        // A replica not heard from for this long has stopped (or lost Redis): its in-flight
        // counts no longer hold back the others.
        let stale = (self.settings.sync_interval * 5).max(Duration::from_secs(2));
        let mut args = vec![
            self.clock.unix_ms(now).to_string(),
            self.replica.clone(),
            stale.as_millis().to_string(),
            deployments.len().to_string(),
            FailKind::COUNT.to_string(),
        ];
        let mut keys = Vec::with_capacity(deployments.len() + callers.len());
        let mut batch_d = Vec::with_capacity(deployments.len());
        for (hash, d) in deployments {
            keys.push(format!("{KEY_PREFIX}:{{{ns}}}:deployment:{hash}"));
            let mut entry = String::with_capacity(160);
            let sent = d.take(now, &mut entry);
            args.push(entry);
            batch_d.push((d, sent));
        }
        let mut batch_c = Vec::with_capacity(callers.len());
        for (hash, c) in callers {
            keys.push(format!("{KEY_PREFIX}:{{{ns}}}:caller:{hash}"));
            let mut entry = String::with_capacity(120);
            let sent = c.take(now, &mut entry);
            args.push(entry);
            batch_c.push((c, sent));
        }
        Some(Batch {
            keys,
            args,
            deployments: batch_d,
            callers: batch_c,
        })
    }
}

/// One entry's reply, read token by token in the script's order.
struct Reader<'a> {
    tokens: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Reader<'a> {
    fn of(value: Option<&'a Value>) -> Result<Reader<'a>, Trouble> {
        let text = match value {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).map_err(|_| {
                Trouble::Reply("the sync script answered bytes that are not text".into())
            })?,
            Some(Value::SimpleString(s)) => s.as_str(),
            Some(_) => {
                return Err(Trouble::Reply(
                    "the sync script answered an unexpected value".into(),
                ));
            }
            None => return Err(Trouble::Reply("the sync script's answer is short".into())),
        };
        Ok(Reader {
            tokens: text.split_ascii_whitespace(),
        })
    }

    fn text(&mut self) -> Result<String, Trouble> {
        self.tokens
            .next()
            .map(str::to_string)
            .ok_or_else(|| Trouble::Reply("the sync script's answer is short".into()))
    }

    fn number(&mut self) -> Result<f64, Trouble> {
        self.tokens
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                Trouble::Reply("the sync script answered a count that is not a number".into())
            })
    }

    fn counts<const N: usize>(&mut self) -> Result<(String, [f64; N], [f64; N]), Trouble> {
        let tag = self.text()?;
        let mut others = [0.0; N];
        for o in &mut others {
            *o = self.number()?.max(0.0);
        }
        let mut own = [0.0; N];
        for o in &mut own {
            *o = self.number()?;
        }
        Ok((tag, others, own))
    }

    fn end(mut self) -> Result<(), Trouble> {
        match self.tokens.next() {
            None => Ok(()),
            Some(_) => Err(Trouble::Reply(
                "the sync script's answer is too long".into(),
            )),
        }
    }
}

type Replies = (Vec<DeploymentReply>, Vec<CallerReply>);

fn parse(values: &[Value], batch: &Batch) -> Result<Replies, Trouble> {
    let mut values = values.iter();
    let mut deployments = Vec::with_capacity(batch.deployments.len());
    for _ in &batch.deployments {
        let mut r = Reader::of(values.next())?;
        let usage = r.counts::<2>()?;
        let fails = r.counts::<FAIL_FIELDS>()?;
        let cooling_until_ms = r.number()? as u64;
        let others_in_flight = r.number()?.clamp(0.0, f64::from(u32::MAX)) as u32;
        r.end()?;
        deployments.push(DeploymentReply {
            usage,
            fails,
            cooling_until_ms,
            others_in_flight,
        });
    }
    let mut callers = Vec::with_capacity(batch.callers.len());
    for _ in &batch.callers {
        let mut r = Reader::of(values.next())?;
        let requests = r.counts::<2>()?;
        let spend = r.counts::<1>()?;
        let others_in_flight = r.number()?.clamp(0.0, f64::from(u32::MAX)) as u32;
        r.end()?;
        callers.push(CallerReply {
            requests,
            spend,
            others_in_flight,
        });
    }
    if values.next().is_some() {
        return Err(Trouble::Reply(
            "the sync script's answer is too long".into(),
        ));
    }
    Ok((deployments, callers))
}
