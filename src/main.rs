//! `llm-router`: serve, or check a config. Parses flags and hands over to the library.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use llm_router::config::{Config, Source};

const USAGE: &str = "\
llm-router: a gRPC router for LLM calls

USAGE:
    llm-router [serve] [--config FILE] [--listen ADDR] [--admin-listen ADDR|none]
    llm-router check-config [FILE]
    llm-router health-check [--addr HOST:PORT] [--service NAME] [--timeout DURATION]
    llm-router sleep SECONDS
    llm-router --help | --version

health-check asks a server's grpc.health.v1 service (default 127.0.0.1:50051, the overall
service) and exits 0 when it is SERVING, 1 otherwise: for container health checks and the
Helm test. sleep waits, for preStop hooks in images that have no shell.

With no --config (and no LLMROUTER_CONFIG), serves the built-in default config, whose mock/
model groups need no provider keys. Environment overrides: LLMROUTER__ROUTER_SETTINGS__TIMEOUT=30s.
Logs: JSON lines unless stderr is a terminal (LLMROUTER_LOG_FORMAT=json|text overrides);
level from RUST_LOG (default info).";

enum Command {
    Serve {
        config: Option<PathBuf>,
        listen: Option<String>,
        admin_listen: Option<String>,
    },
    CheckConfig {
        config: Option<PathBuf>,
    },
    HealthCheck {
        addr: String,
        service: String,
        timeout: Duration,
    },
    Sleep(Duration),
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter().peekable();
    let sub = match it.peek().map(|s| s.as_str()) {
        Some(s @ ("serve" | "check-config" | "health-check" | "sleep")) => {
            it.next();
            s
        }
        _ => "serve",
    };
    let mut config = None;
    let mut listen = None;
    let mut admin_listen = None;
    let mut addr = "127.0.0.1:50051".to_string();
    let mut service = String::new();
    let mut timeout = Duration::from_secs(2);
    let mut sleep = None;
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} needs a value"));
        match (sub, arg.as_str()) {
            (_, "-h" | "--help") => return Ok(Command::Help),
            (_, "-V" | "--version") => return Ok(Command::Version),
            ("serve" | "check-config", "--config" | "-c") => {
                config = Some(PathBuf::from(value(arg)?))
            }
            ("serve", "--listen") => listen = Some(value(arg)?),
            ("serve", "--admin-listen") => admin_listen = Some(value(arg)?),
            ("check-config", other) if config.is_none() && !other.starts_with('-') => {
                config = Some(PathBuf::from(other));
            }
            ("health-check", "--addr") => addr = value(arg)?,
            ("health-check", "--service") => service = value(arg)?,
            ("health-check", "--timeout") => {
                timeout = llm_router::config::duration::parse(&value(arg)?)
                    .map_err(|e| format!("--timeout: {e}"))?;
            }
            ("sleep", secs) if sleep.is_none() => {
                sleep = Some(
                    llm_router::config::duration::parse(secs).map_err(|e| format!("sleep: {e}"))?,
                );
            }
            (_, other) => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let config = config.or_else(|| std::env::var_os("LLMROUTER_CONFIG").map(PathBuf::from));
    Ok(match sub {
        "check-config" => Command::CheckConfig { config },
        "health-check" => Command::HealthCheck {
            addr,
            service,
            timeout,
        },
        "sleep" => Command::Sleep(sleep.ok_or("sleep needs a number of seconds")?),
        _ => Command::Serve {
            config,
            listen,
            admin_listen,
        },
    })
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    let source = path.map_or(Source::BuiltIn, |p| Source::File(p));
    Config::load(source).map_err(|e| e.to_string())
}

/// Logs what the config accepted but will not act on. Called once logging is up.
fn log_config_warnings(config: &Config) {
    for ignored in &config.ignored_keys {
        tracing::warn!(
            key = %ignored.key,
            why = %ignored.why,
            "LiteLLM config key is accepted but has no effect in llm-router"
        );
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("llm-router {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Sleep(d) => {
            std::thread::sleep(d);
            ExitCode::SUCCESS
        }
        Command::HealthCheck {
            addr,
            service,
            timeout,
        } => match health_check(&addr, &service, timeout) {
            Ok(status) if status == "SERVING" => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Ok(status) => {
                println!("{status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("health-check: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => match load(config.as_ref()) {
            // check-config prints its findings; it does not log.
            Ok(cfg) => {
                print!("{}", cfg.routing_table());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match serve(cfg, config, listen, admin_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[tokio::main]
async fn serve(
    mut cfg: Config,
    config_path: Option<PathBuf>,
    listen: Option<String>,
    admin_listen: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(addr) = listen {
        cfg.server.listen = addr
            .parse()
            .map_err(|_| format!("--listen: `{addr}` is not an address"))?;
    }
    if let Some(addr) = admin_listen {
        cfg.server.admin_listen = match addr.as_str() {
            "none" => None,
            _ => Some(
                addr.parse()
                    .map_err(|_| format!("--admin-listen: `{addr}` is not an address or `none`"))?,
            ),
        };
    }
    let tracer =
        match llm_router::telemetry::traces::endpoint_from_env(cfg.otlp_endpoint.as_deref()) {
            Some(endpoint) => Some(llm_router::telemetry::traces::provider(&endpoint)?),
            None => None,
        };
    llm_router::telemetry::logging::init(tracer.as_ref(), &cfg.log_level);
    log_config_warnings(&cfg);
    let grpc = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    let admin = match cfg.server.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (server.admin_listen): {e}"))?,
        ),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    tracing::info!(
        addr = %grpc.local_addr()?,
        admin_addr = %admin_addr.map_or("none".to_string(), |a| a.to_string()),
        groups = cfg.groups.len(),
        "llm-router serving"
    );
    let listeners = llm_router::Listeners { grpc, admin };
    match config_path {
        // A config file is watched for changes and reloaded on SIGHUP.
        Some(path) => {
            let reload = llm_router::reload::ConfigFile {
                path,
                on_sighup: true,
            };
            llm_router::run_with_reload(listeners, Arc::new(cfg), reload, shutdown_signal()).await?
        }
        None => {
            // SIGHUP would otherwise end the process; with no file there is nothing to reload.
            #[cfg(unix)]
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::warn!(
                            "SIGHUP ignored: serving the built-in config, no file to reload"
                        );
                    }
                });
            }
            llm_router::run(listeners, Arc::new(cfg), shutdown_signal()).await?
        }
    }
    if let Some(tracer) = tracer {
        // Flushes the spans still batched.
        if let Err(e) = tracer.shutdown() {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
    tracing::info!("llm-router stopped");
    Ok(())
}

/// Asks `addr`'s grpc.health.v1 service for `service`'s status, all within `timeout`.
#[tokio::main(flavor = "current_thread")]
async fn health_check(addr: &str, service: &str, timeout: Duration) -> Result<String, String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("`{addr}` is not an address: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        let status =
            ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
        Ok(status.as_str_name().to_string())
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
