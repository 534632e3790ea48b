use thiserror::Error;

/// Why a query was refused: the caller's input, never a server fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryProblem {
    /// Empty or only whitespace.
    Empty,
    /// Longer than [`crate::MAX_QUERY_CHARS`].
    TooLong,
    /// Only punctuation or symbols: no word, CJK character or emoji to look for.
    NothingToSearch,
    /// Only `-excluded` words: nothing to look for.
    OnlyExclusions,
}

impl std::fmt::Display for QueryProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "the query is empty",
            Self::TooLong => "the query is too long",
            Self::NothingToSearch => {
                "the query has nothing to search for (no letters, digits, CJK characters or emoji)"
            }
            Self::OnlyExclusions => "the query only excludes words; add a word to look for",
        })
    }
}

/// What kind of failure an [`Error`] is, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query text cannot be searched for.
    InvalidQuery,
    /// The cursor is not one this server handed out for this query.
    InvalidCursor,
    /// The index or the log failed.
    Unavailable,
    /// A bug or a background task that died.
    Internal,
}

/// Search failure.
#[derive(Debug, Error)]
pub enum Error {
    /// The query text cannot be searched for.
    #[error("{0}")]
    InvalidQuery(QueryProblem),
    /// The cursor could not be decoded or belongs to another query or sort.
    #[error("invalid cursor: {0}")]
    InvalidCursor(&'static str),
    /// The Tantivy index failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// Files of the index directory could not be read or removed.
    #[error("search index files: {0}")]
    Io(#[from] std::io::Error),
    /// Reading the event log failed.
    #[error("event log: {0}")]
    Log(#[from] eventlog::Error),
    /// A stored event could not be decoded: a bug or data from a newer version.
    #[error(transparent)]
    Decode(#[from] schema::events::DecodeError),
    /// A blocking task panicked, the indexer stopped, or the log subscription ended.
    #[error("search task failed: {0}")]
    Task(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidQuery(_) => ErrorKind::InvalidQuery,
            Self::InvalidCursor(_) => ErrorKind::InvalidCursor,
            Self::Index(_) | Self::Io(_) | Self::Log(_) => ErrorKind::Unavailable,
            Self::Decode(_) | Self::Task(_) => ErrorKind::Internal,
        }
    }
}

/// Search result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
