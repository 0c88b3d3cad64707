//! The log subscriber. Logs go to stderr, so stdout carries only what scripts read (keys,
//! tables, summaries). The level comes from `RUST_LOG` (default `info`).
//!
//! A line logged while a request is served carries its id (see [`super::http`]). The id is
//! read from the request's task when a line is written, rather than kept in a span entered
//! around every request: requests mostly log nothing, and a span costs every one of them.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, colours on a terminal, `request=<id>` in front of the
    /// lines of a request.
    #[default]
    Text,
    /// One JSON object per line, for log collectors; a request's lines have `request_id`.
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
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi);
            builder
                .with_ansi(ansi)
                .event_format(WithRequestId { inner, json: false })
                .init();
        }
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json();
            builder
                .json()
                .event_format(WithRequestId { inner, json: true })
                .init();
        }
    }
}

/// Adds the id of the request being served to a line made by `inner`.
struct WithRequestId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = super::current_request_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "request={id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // Ids are made of characters JSON needs no escape for (see `http::usable`).
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"request_id\":\"{id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}
