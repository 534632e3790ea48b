//! Integration tests of the search index: the real SQLite event log, the real indexer task,
//! queries through `SearchIndex::search`.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod harness;
mod indexing;
mod languages;
mod paging;
