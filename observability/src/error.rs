//! The crate's error type.

/// What can go wrong while setting telemetry up. Nothing fails once it runs: the shipper and the
/// alert sender count and log their failures instead of returning them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable holds a value that cannot be used.
    #[error("{name}: {reason}")]
    InvalidSetting {
        /// The variable (or settings field).
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The Elasticsearch client could not be built (bad URL, unreadable CA certificate, ...).
    #[error("cannot build the Elasticsearch client: {0}")]
    Elasticsearch(String),
    /// The HTTP client for Slack or OTLP could not be built.
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(String),
    /// The OTLP span exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Otlp(String),
    /// Log shipping, alerts and OTLP export run as tasks on the caller's tokio runtime.
    #[error(
        "telemetry with log shipping, alerts or OTLP export must be set up inside a tokio runtime"
    )]
    NoRuntime,
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
