//! Full-text search over chat messages: a Tantivy index that is a projection of the log.
//!
//! - [`SearchIndex`] owns the index directory: schema, version check, the checkpoint in the
//!   commit payload, the reader, and [`SearchIndex::search`].
//! - [`run`] is the indexer, the one owner of the `IndexWriter`: it consumes the log from the
//!   index's checkpoint, adds, replaces and removes message documents, and commits in batches
//!   (by time and size), publishing the searchable position on a watch channel (chatd
//!   wraps it in a `projector::Progress`).
//! - [`analyzer`] is the dictionary-free, CJK-aware text analysis used on both sides.
//! - [`UserQuery`] parses the query language (words, `"phrases"`, `-exclusions`); no input
//!   is a syntax error.
//!
//! Delete the directory (or run `chatd rebuild`) and the next start replays the whole log.
//! An index written by another [`INDEX_VERSION`], or ahead of the log, is rebuilt too.
//! See `docs/search.md` for the design.

pub mod analyzer;
mod error;
mod index;
mod indexer;
mod query;
mod search;

pub use error::{Error, ErrorKind, QueryProblem, Result};
pub use index::{INDEX_VERSION, SearchIndex};
pub use indexer::{IndexerSettings, run};
pub use query::{Clause, MAX_QUERY_CHARS, UserQuery};
pub use search::{Hit, SearchPage, SearchRequest, Sort};
