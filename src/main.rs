//! `llm-router`: serve, or check a config. Parses flags and hands over to the library.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use llm_router::config::{Config, Source};

const USAGE: &str = "\
llm-router: a gRPC router for LLM calls

USAGE:
    llm-router [serve] [--config FILE] [--listen ADDR]
    llm-router check-config [FILE]
    llm-router --help | --version

With no --config (and no LLMROUTER_CONFIG), serves the built-in default config, whose mock/
model groups need no provider keys. Environment overrides: LLMROUTER__ROUTER_SETTINGS__TIMEOUT=30s.
Log level: RUST_LOG (default info).";

enum Command {
    Serve {
        config: Option<PathBuf>,
        listen: Option<String>,
    },
    CheckConfig {
        config: Option<PathBuf>,
    },
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter().peekable();
    let sub = match it.peek().map(|s| s.as_str()) {
        Some("serve") => {
            it.next();
            "serve"
        }
        Some("check-config") => {
            it.next();
            "check-config"
        }
        _ => "serve",
    };
    let mut config = None;
    let mut listen = None;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a file")?));
            }
            "--listen" if sub == "serve" => {
                listen = Some(it.next().ok_or("--listen needs an address")?.clone());
            }
            other if sub == "check-config" && config.is_none() && !other.starts_with('-') => {
                config = Some(PathBuf::from(other));
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let config = config.or_else(|| std::env::var_os("LLMROUTER_CONFIG").map(PathBuf::from));
    Ok(match sub {
        "check-config" => Command::CheckConfig { config },
        _ => Command::Serve { config, listen },
    })
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    let source = path.map_or(Source::BuiltIn, |p| Source::File(p));
    let config = Config::load(source).map_err(|e| e.to_string())?;
    for key in &config.ignored_keys {
        tracing::warn!(
            key,
            "LiteLLM config key is accepted but has no effect in llm-router"
        );
    }
    Ok(config)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

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
        Command::CheckConfig { config } => match load(config.as_ref()) {
            Ok(cfg) => {
                print!("{}", cfg.routing_table());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, listen } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match serve(cfg, listen) {
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
async fn serve(mut cfg: Config, listen: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(addr) = listen {
        cfg.server.listen = addr
            .parse()
            .map_err(|_| format!("--listen: `{addr}` is not an address"))?;
    }
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    tracing::info!(addr = %listener.local_addr()?, groups = cfg.groups.len(), "llm-router serving");
    llm_router::run(listener, Arc::new(cfg), shutdown_signal()).await?;
    tracing::info!("llm-router stopped");
    Ok(())
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
