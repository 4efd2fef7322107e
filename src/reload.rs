//! Config hot reload. The config file is read every `server.config_watch_interval` and on
//! SIGHUP; when its text changed (or on SIGHUP, always) it is parsed and validated like at
//! start-up, then the router built from it is swapped in atomically. Calls in flight finish on
//! the snapshot they started with. An invalid file is logged and counted, and the previous
//! config keeps serving.
//!
//! Reading the text, rather than watching for file events, is what works with Kubernetes:
//! a mounted ConfigMap is updated by swapping a symlink, which inotify on the file never sees.
//! The files callers' keys are read from (`file:PATH`, a mounted Secret) are read with it, so
//! that a rotated key applies without a restart.

use std::{path::PathBuf, sync::Arc};

use crate::config::{Config, Source};
use crate::routing::SharedRouter;
use crate::telemetry::Metrics;

/// The file a server reloads its config from.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Whether SIGHUP forces a reload (the binary sets it; tests in one process do not).
    pub on_sighup: bool,
}

/// The file's text now, read before serving starts: the running config's, so that a change
/// made after start-up is never taken for the starting point.
pub(crate) fn snapshot(file: &ConfigFile) -> Option<Vec<u8>> {
    std::fs::read(&file.path).ok()
}

/// The contents of the key files `config` read keys from (`None` for one unreadable now).
async fn key_files(config: &Config) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(config.auth.key_files.len());
    for path in &config.auth.key_files {
        out.push(tokio::fs::read(path).await.ok());
    }
    out
}

/// The key files' contents now, read before serving starts, for the same reason as
/// [`snapshot`]: read once the watcher's task runs, a key rotated meanwhile would be taken for
/// the running one and never applied.
pub(crate) fn key_snapshot(config: &Config) -> Vec<Option<Vec<u8>>> {
    config
        .auth
        .key_files
        .iter()
        .map(|path| std::fs::read(path).ok())
        .collect()
}

/// Watches the file until the task is aborted. `last` is the text the running config came
/// from, `last_keys` its key files' contents ([`key_snapshot`]).
pub(crate) async fn watch(
    file: ConfigFile,
    mut last: Option<Vec<u8>>,
    mut last_keys: Vec<Option<Vec<u8>>>,
    routers: Arc<SharedRouter>,
    metrics: Arc<Metrics>,
) {
    // The file's own settings as last loaded, apart from command-line overrides, to tell which
    // restart-only settings the file changed.
    let mut file_config = last
        .as_deref()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|yaml| Config::load(Source::Yaml(yaml)).ok())
        .map(|c| RestartOnly::of(&c));
    let mut hangup = Hangup::new(file.on_sighup);
    let mut unreadable = false;
    loop {
        let interval = routers.current().config().server.config_watch_interval;
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            () = hangup.recv() => true,
        };
        let text = match tokio::fs::read(&file.path).await {
            Ok(text) => {
                unreadable = false;
                text
            }
            Err(e) => {
                // Said once, not every interval; the previous config keeps serving.
                if forced || !unreadable {
                    tracing::error!(
                        path = %file.path.display(),
                        error = %e,
                        "cannot read the config file to reload it; the previous config keeps serving"
                    );
                }
                unreadable = true;
                continue;
            }
        };
        let keys = key_files(routers.current().config()).await;
        let keys_changed = keys != last_keys;
        if !forced && !keys_changed && last.as_ref() == Some(&text) {
            continue;
        }
        last = Some(text.clone());
        last_keys = keys;
        let why = if forced {
            "SIGHUP"
        } else if keys_changed {
            "key file changed"
        } else {
            "file changed"
        };
        if let Some(applied) = apply(&file, &text, file_config.as_ref(), &routers, &metrics, why) {
            file_config = Some(applied);
        }
    }
}

/// Loads and swaps in the config in `text`; returns the file's restart-only settings when
/// applied.
fn apply(
    file: &ConfigFile,
    text: &[u8],
    previous_file: Option<&RestartOnly>,
    routers: &SharedRouter,
    metrics: &Metrics,
    why: &str,
) -> Option<RestartOnly> {
    let path = file.path.display();
    let loaded = std::str::from_utf8(text)
        .map_err(|_| "the file is not UTF-8 text".to_string())
        .and_then(|yaml| Config::load(Source::Yaml(yaml)).map_err(|e| e.to_string()));
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            metrics.reload("rejected");
            tracing::error!(
                path = %path,
                trigger = why,
                error = %e,
                "config reload rejected; the previous config keeps serving"
            );
            return None;
        }
    };
    let running = routers.current();
    let from_file = RestartOnly::of(&config);
    let before = previous_file
        .cloned()
        .unwrap_or_else(|| RestartOnly::of(running.config()));
    for key in before.changes(&from_file) {
        tracing::warn!(
            key,
            "this setting changed in the reloaded config but only takes effect after a restart"
        );
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // The addresses are bound: the snapshot says what is actually served.
    config.server.listen = running.config().server.listen;
    config.server.admin_listen = running.config().server.admin_listen;
    let groups = config.groups.len();
    match routers.reload(Arc::new(config)) {
        Ok(()) => {
            metrics.reload("applied");
            tracing::info!(path = %path, trigger = why, groups, "config reloaded");
            Some(from_file)
        }
        Err(e) => {
            metrics.reload("rejected");
            tracing::error!(path = %path, error = %e, "config reload failed; the previous config keeps serving");
            None
        }
    }
}

/// How a setting's value reads, to compare two configs by.
pub type ReadSetting = fn(&Config) -> String;

/// The settings read once at start-up, which a reload cannot change: the one list of them,
/// each by its key and how its value reads. A reload that changes one says so, and the running
/// value stays until a restart. A new start-up-only setting goes here.
pub const RESTART_ONLY: &[(&str, ReadSetting)] = &[
    ("server.listen", |c| c.server.listen.to_string()),
    ("server.admin_listen", |c| {
        format!("{:?}", c.server.admin_listen)
    }),
    ("server.max_concurrent_streams", |c| {
        c.server.max_concurrent_streams.to_string()
    }),
    ("server.max_request_bytes", |c| {
        c.server.max_request_bytes.to_string()
    }),
    ("server.max_pending_request_bytes", |c| {
        c.server.max_pending_request_bytes.to_string()
    }),
    ("server.tls", |c| format!("{:?}", c.server.tls)),
    ("router_settings.redis_*", |c| {
        c.shared_state
            .as_ref()
            .map_or_else(String::new, |s| s.describe())
    }),
    ("telemetry.otlp_endpoint", |c| {
        format!("{:?}", c.otlp_endpoint)
    }),
    ("telemetry.log_level", |c| c.log_level.clone()),
];

/// A config's values of the [`RESTART_ONLY`] settings, in that list's order.
#[derive(Debug, Clone, PartialEq)]
struct RestartOnly(Vec<String>);

impl RestartOnly {
    fn of(c: &Config) -> RestartOnly {
        RestartOnly(RESTART_ONLY.iter().map(|(_, read)| read(c)).collect())
    }

    /// The keys whose values differ.
    fn changes(&self, new: &RestartOnly) -> Vec<&'static str> {
        RESTART_ONLY
            .iter()
            .zip(self.0.iter().zip(&new.0))
            .filter_map(|((key, _), (old, new))| (old != new).then_some(*key))
            .collect()
    }
}

/// SIGHUP, when asked for and available; otherwise never.
struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn new(enabled: bool) -> Hangup {
        use tokio::signal::unix::{SignalKind, signal};
        Hangup(enabled.then(|| signal(SignalKind::hangup())).and_then(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads follow file changes only"))
                .ok()
        }))
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                if s.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "model_list:\n  - {{ model_name: g, litellm_params: {{ model: mock/a }} }}\n{extra}"
        );
        Config::load(Source::Yaml(&yaml)).unwrap()
    }

    #[test]
    fn a_reload_names_each_start_up_setting_it_changed_and_no_other() {
        let before = RestartOnly::of(&config("server: { listen: 127.0.0.1:7001 }\n"));
        let after = RestartOnly::of(&config(
            "server: { listen: 127.0.0.1:7002, max_request_bytes: 1024 }\nrouter_settings: { num_retries: 1 }\n",
        ));
        assert_eq!(
            before.changes(&after),
            ["server.listen", "server.max_request_bytes"]
        );
        assert!(before.changes(&before).is_empty());
        assert_eq!(before.0.len(), RESTART_ONLY.len());
    }
}
