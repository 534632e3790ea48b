//! Integration tests of the `eventlog` crate: the conformance suite against [`SqliteLog`], and
//! SQLite-specific behaviour (reopening, group commit, lag).

mod conformance;
mod follow;
mod jetstream;
mod kurrentdb;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventlog::EventLog;
use eventlog::sqlite::{Options, SqliteLog};
use tempfile::TempDir;

/// A temporary directory that hands out fresh log files; removed on drop.
#[derive(Debug)]
pub struct Fixture {
    dir: TempDir,
    opened: AtomicUsize,
    options: Options,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::with_options(Options::default())
    }
}

impl Fixture {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_options(options: Options) -> Self {
        Self {
            dir: TempDir::new().expect("temp dir"),
            opened: AtomicUsize::new(0),
            options,
        }
    }

    /// A path for a new log file.
    pub fn fresh_path(&self) -> PathBuf {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("log-{n}.db"))
    }

    /// Opens a fresh, empty log.
    pub async fn open(&self) -> SqliteLog {
        SqliteLog::open_with(self.fresh_path(), self.options.clone())
            .await
            .expect("open")
    }

    /// The factory the conformance suite takes.
    pub async fn make(&self) -> Arc<dyn EventLog> {
        Arc::new(self.open().await)
    }
}
