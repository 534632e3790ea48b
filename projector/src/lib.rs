//! Projections: the read side, built from the log and disposable.
//!
//! - [`ReadModels`] owns the read-model SQLite file (separate from the log): its schema, a
//!   pool of read connections for queries, and the one write connection the runner uses.
//! - [`run`] consumes the log from the stored checkpoint and applies batches of events;
//!   each batch's read-model changes and the new checkpoint commit in one transaction, so a
//!   crash neither skips nor double-applies an event.
//! - [`Progress`] tells callers how far the projections are, so a command handler can wait
//!   for its own append to be visible (read-your-writes).
//! - [`UnreadWatch`] follows the unread counts of a user online on this node, kept in memory
//!   and moved by the same batches, exactly (see the `unread` module).
//!
//! - [`queries`] reads the core read models, [`features`] those of the message features
//!   (read counts per message, threads, reactions, mentions, pins).
//!
//! Delete the file (or run `chatd rebuild`) and the next start replays the whole log. The file
//! also carries a schema version; a file written by another version is rebuilt automatically.

mod apply;
mod error;
pub mod features;
pub mod queries;
mod runner;
mod store;
mod unread;

pub use error::{Error, Result};
pub use runner::{Advance, Progress, run};
pub use store::ReadModels;
pub use unread::{UnreadChanges, UnreadWatch};
