//! The log subscriber. Logs go to stderr, so stdout carries only what scripts read (keys,
//! tables, summaries). The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, colours on a terminal, the request's span in front.
    #[default]
    Text,
    /// One JSON object per line, for log collectors; the request id is in `span.id`.
    Json,
}

/// Installs the subscriber for the whole process.
pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
