use thiserror::Error;

/// Projection failure.
#[derive(Debug, Error)]
pub enum Error {
    /// The read-model database failed.
    #[error("read model storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// Reading the event log failed.
    #[error("event log: {0}")]
    Log(#[from] eventlog::Error),
    /// A stored event could not be decoded: a bug or data from a newer version.
    #[error(transparent)]
    Decode(#[from] schema::events::DecodeError),
    /// Waiting for the projections timed out or they stopped.
    #[error("projections are not caught up: {0}")]
    NotCaughtUp(&'static str),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// Projection result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
