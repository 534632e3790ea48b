//! Typed settings: flags, each overridable by a `CHAT_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// chatd — an event-sourced chat server.
///
/// With no arguments it serves on the embedded default: the event log and the read models
/// are SQLite files in the data directory; nothing else needs to be installed.
/// Log verbosity follows `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Parser)]
#[command(name = "chatd", version, about, long_about)]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        env = "CHAT_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Directory for the event log, the read models and the generated JWT secret.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Secret for signing access tokens (HS256). Default: generated once and kept in
    /// `<data-dir>/jwt_secret`. Never printed.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of access tokens, in seconds.
    #[arg(
        long,
        env = "CHAT_ACCESS_TOKEN_TTL",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(10..=7 * 24 * 3600),
        global = true
    )]
    pub access_token_ttl_secs: u64,

    /// Lifetime of refresh tokens (sliding with each refresh), in days.
    #[arg(
        long,
        env = "CHAT_REFRESH_TOKEN_TTL_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3650),
        global = true
    )]
    pub refresh_token_ttl_days: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = 64 * 1024, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: usize,

    /// How long shutdown waits for in-flight requests, in seconds.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Frames queued per WebSocket connection before a client that cannot keep up is
    /// disconnected (it then resumes without loss).
    #[arg(long, env = "CHAT_WS_QUEUE", default_value_t = 4096, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub ws_queue: usize,

    /// How long a user stays shown online after their last connection closed, in
    /// milliseconds (so a reconnecting client does not flap).
    #[arg(long, env = "CHAT_PRESENCE_GRACE_MS", default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub presence_grace_ms: u64,

    /// Frames a WebSocket client may send per second (bursts of twice as many are allowed);
    /// more are refused with `rate_limited`.
    #[arg(long, env = "CHAT_WS_RATE", default_value_t = 20, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ws_rate: u32,

    /// Memory cost of new password hashes (argon2id), in KiB. The default follows OWASP;
    /// lower it only for load tests that provision many users.
    #[arg(long, env = "CHAT_ARGON2_MEMORY_KIB", default_value_t = 19_456, global = true,
          value_parser = clap::value_parser!(u32).range(8..=4_194_304))]
    pub argon2_memory_kib: u32,

    /// Iterations of new password hashes (argon2id).
    #[arg(long, env = "CHAT_ARGON2_ITERATIONS", default_value_t = 2, global = true,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub argon2_iterations: u32,

    /// Longest a sent, edited or deleted message waits before search reflects it, in
    /// milliseconds (the search index commits in batches at most this far apart).
    #[arg(long, env = "CHAT_SEARCH_COMMIT_MS", default_value_t = 250, global = true,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub search_commit_ms: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Delete the read models and the search index and rebuild them by replaying the event
    /// log, then exit.
    Rebuild,
}

impl Settings {
    /// Settings for tests and embedding: defaults, the given data dir, a free port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut s = Self::parse_from(["chatd"]);
        s.data_dir = data_dir.into();
        s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        s
    }

    pub fn events_path(&self) -> PathBuf {
        self.data_dir.join("events.db")
    }

    pub fn read_models_path(&self) -> PathBuf {
        self.data_dir.join("readmodels.db")
    }

    pub fn search_path(&self) -> PathBuf {
        self.data_dir.join("search")
    }

    pub fn search_indexer(&self) -> search::IndexerSettings {
        search::IndexerSettings {
            commit_interval: Duration::from_millis(self.search_commit_ms),
            ..search::IndexerSettings::default()
        }
    }

    pub fn presence_grace(&self) -> Duration {
        Duration::from_millis(self.presence_grace_ms)
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }
}
