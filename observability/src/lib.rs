//! Telemetry, initialised once by the binary.
//!
//! Logs go to stdout: one JSON object per line (for collectors) unless stdout is a terminal,
//! where a human-readable format is used. `RUST_LOG` sets the filter (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which keeps tests that start several servers in one process simple.
pub fn init(service_name: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if std::io::stdout().is_terminal() {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(service = service_name, "telemetry initialised");
    }
}
