//! Log output: JSON lines for collectors, a human format on a terminal. `LLMROUTER_LOG_FORMAT`
//! (`json` or `text`) overrides the choice; `RUST_LOG` sets the level (default `info`). Logs
//! never carry provider keys or prompt text.

use std::io::IsTerminal;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match std::env::var("LLMROUTER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(terminal).init();
    }
}
