//! Logging: plain or JSON lines on stderr, filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes in a file or a log pipeline are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // The current span already carries every field; the list would repeat it.
            .with_span_list(false)
            .try_init(),
        LogFormat::Plain => builder.try_init(),
    };
}

/// Runs `log`, a line about a registry as a whole (rate limited, a credential helper that
/// failed), in a root span of its own. Inside a review it would land in the review's span,
/// which names its review only once a line of the review's own is due
/// (`admission::ReviewSpan`): an unnamed review around a line no one review caused.
pub fn about_registry(log: impl FnOnce()) {
    // At `warn`, the level of every such line: a span filtered out would leave the review's.
    tracing::warn_span!(parent: None, "registry").in_scope(log)
}
