//! Typed settings: flags, each overridable by a `CHAT_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// chatd — an event-sourced chat server.
///
/// With no arguments it serves on the embedded default: the event log and the read models
/// are SQLite files in the data directory; nothing else needs to be installed.
/// Log verbosity follows `RUST_LOG` (default `info`); the OpenTelemetry SDK reads its other
/// `OTEL_*` variables itself.
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

    /// Address for the operations endpoints (`/metrics`, `/readyz`, `/healthz`). When set,
    /// they are served only there (the public listener answers 404 for them); unset, they
    /// are served on `--listen`.
    #[arg(long, env = "CHAT_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<SocketAddr>,

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

    /// Shards of the live hub (tasks that each own a share of the connections, by user).
    /// Default: [`default_hub_shards`].
    #[arg(long, env = "CHAT_HUB_SHARDS", global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub hub_shards: Option<usize>,

    /// How long a user stays shown online after their last connection closed, in
    /// milliseconds (so a reconnecting client does not flap).
    #[arg(long, env = "CHAT_PRESENCE_GRACE_MS", default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub presence_grace_ms: u64,

    /// Frames a user's WebSockets together may send per second, REST message sends included
    /// (bursts of twice as many are allowed); more are refused with `rate_limited`.
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

    #[command(flatten)]
    pub limits: LimitSettings,

    #[command(flatten)]
    pub nats: NatsSettings,

    /// KurrentDB (EventStoreDB) connection string (`kurrentdb://host:2113?tls=false`): the
    /// event log is KurrentDB, one stream per aggregate (`chat-room-…`). Needs a chatd built
    /// with `--features kurrentdb`; not together with `CHAT_NATS_URL` (docs/kurrentdb.md).
    #[arg(
        long = "kurrentdb-url",
        env = "CHAT_KURRENTDB_URL",
        hide_env_values = true,
        global = true
    )]
    pub kurrentdb_url: Option<String>,

    /// Logs, log shipping, alerts and traces (the `observability` crate's settings).
    #[command(flatten)]
    pub telemetry: observability::TelemetryArgs,

    /// This node's name in logs and in NATS connection names. Default: the host name.
    #[arg(long, env = "CHAT_NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// How long a sent, edited or deleted message waits before search reflects it, in
    /// milliseconds, while the node is quiet (the search index commits in batches this far
    /// apart; under load the gap stretches up to 700 ms so commits do not crowd out sends).
    #[arg(long, env = "CHAT_SEARCH_COMMIT_MS", default_value_t = 250, global = true,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub search_commit_ms: u64,

    /// Run the search indexer's threads (Tantivy's merges included) under Linux's
    /// `SCHED_IDLE`: they use only CPU that nothing else wants, and sending and delivery take
    /// a core from them the moment they wake; search falls behind under load instead of
    /// slowing them. `false` runs them at `CHAT_SEARCH_NICE` instead.
    #[arg(long, env = "CHAT_SEARCH_IDLE", default_value_t = true, global = true,
          action = clap::ArgAction::Set)]
    pub search_idle: bool,

    /// With `CHAT_SEARCH_IDLE=false`: how much nicer (lower priority) than the rest of chatd
    /// the search indexer's threads run, as a Linux nice increment: indexing then gets the CPU
    /// that sending and delivery leave over, and search falls behind under load instead of
    /// slowing them. 0 indexes at normal priority.
    #[arg(long, env = "CHAT_SEARCH_NICE", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub search_nice: i32,

    /// How much nicer (lower priority) than the rest of chatd the read models' writer and
    /// checkpointer run, as a Linux nice increment: the projector's transactions then get the
    /// CPU that sending and delivery leave over, and under load the read models fall behind by
    /// a few batches (which then cost less per event) instead of delaying acks and deliveries.
    /// 0 projects at normal priority.
    #[arg(long, env = "CHAT_PROJECTOR_NICE", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub projector_nice: i32,

    /// Alert when a projection (read models, search, live fan-out) is this many seconds
    /// behind the log.
    #[arg(long, env = "CHAT_ALERT_LAG_SECS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub alert_lag_secs: u64,

    /// Alert when this many live clients are disconnected as too slow within a minute.
    #[arg(long, env = "CHAT_ALERT_DISCONNECTS_PER_MIN", default_value_t = 50, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub alert_disconnects_per_min: u64,

    /// Alert when this many logins fail (wrong username or password) within a minute.
    #[arg(long, env = "CHAT_ALERT_FAILED_LOGINS_PER_MIN", default_value_t = 20, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub alert_failed_logins_per_min: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Throttling and bounds (docs/limits.md). Rates refused answer 429 with `Retry-After`;
/// saturation answers 503 with `Retry-After`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitSettings {
    /// REST requests one user may make per second (bursts of twice as many).
    #[arg(long, env = "CHAT_REQUEST_RATE", default_value_t = 20, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub request_rate: u32,

    /// Failed logins an account may have before each further attempt must wait (see
    /// `CHAT_LOGIN_BACKOFF_MS`).
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_failures_per_account: u32,

    /// Failed logins one source address may have before each further attempt must wait.
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_ADDRESS", default_value_t = 20, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_failures_per_address: u32,

    /// The first wait after too many failed logins, in milliseconds; it doubles with every
    /// further attempt.
    #[arg(long, env = "CHAT_LOGIN_BACKOFF_MS", default_value_t = 1000, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub login_backoff_ms: u64,

    /// The longest wait after failed logins, in seconds; an account or address without a
    /// login attempt for this long starts over.
    #[arg(long, env = "CHAT_LOGIN_BACKOFF_MAX_SECS", default_value_t = 900, global = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_backoff_max_secs: u64,

    /// Registrations one source address may make per minute.
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_MIN", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub registrations_per_min: u32,

    /// Password hashes computed at once (logins, registrations). Default: the number of CPUs.
    #[arg(long, env = "CHAT_HASH_CONCURRENCY", global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub hash_concurrency: Option<usize>,

    /// How long a login or registration waits for a password-hash slot, in milliseconds,
    /// before it is refused with 503 `overloaded`.
    #[arg(long, env = "CHAT_HASH_WAIT_MS", default_value_t = 2000, global = true,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub hash_wait_ms: u64,

    /// The most users one request may invite (`member_ids` of a new room, `user_ids` of an
    /// invitation); at most 1000, the domain's own bound.
    #[arg(long, env = "CHAT_INVITE_MAX_USERS", default_value_t = 100, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub invite_max_users: usize,

    /// Users one user may invite per minute (to new rooms and existing ones together).
    #[arg(long, env = "CHAT_INVITES_PER_MIN", default_value_t = 200, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub invites_per_min: u32,

    /// WebSocket and SSE connections one user may hold at once.
    #[arg(long, env = "CHAT_LIVE_CONNECTIONS_PER_USER", default_value_t = 20, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub live_connections_per_user: usize,

    /// Connections the server holds at once (HTTP, WebSocket and SSE together); further ones
    /// are answered 503 `overloaded` and closed.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers, in seconds; also how long an
    /// idle keep-alive connection is kept waiting for its next request.
    #[arg(long, env = "CHAT_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,

    /// A connection on which nothing is read or written for this many seconds is closed (a
    /// stalled request body, a response nobody reads). Keep it above 15 s, the SSE heartbeat
    /// interval (WebSockets, once upgraded, have their own pings and idle limit).
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_SECS", default_value_t = 60, global = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,

    /// WebSocket `resume` frames one user may send per minute.
    #[arg(long, env = "CHAT_RESUMES_PER_MIN", default_value_t = 60, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub resumes_per_min: u32,

    /// The most rooms one `resume` frame may name.
    #[arg(long, env = "CHAT_RESUME_MAX_ROOMS", default_value_t = 1000, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub resume_max_rooms: usize,

    /// The most log events an SSE `Last-Event-ID` replay scans; a client further behind
    /// starts live (its unread counts tell it where it stands).
    #[arg(long, env = "CHAT_SSE_REPLAY_LIMIT", default_value_t = 10_000, global = true,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub sse_replay_limit: u64,

    /// Rooms a node holds in memory to decide their commands (one actor each); beyond it the
    /// least recently used is let go (and loaded from the log again when next used).
    #[arg(long, env = "CHAT_ROOM_CACHE", default_value_t = 10_000, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub room_cache: usize,

    /// Keys (users, addresses) each rate-limit table remembers; the least recently seen are
    /// forgotten first.
    #[arg(long, env = "CHAT_LIMIT_KEYS", default_value_t = 100_000, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(100..=100_000_000))]
    pub limit_keys: usize,

    /// Proxies (addresses or networks, comma-separated: `10.0.0.0/8,::1`) whose
    /// `X-Forwarded-For` names the client. Unset: the peer address is the client's.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", value_delimiter = ',', global = true,
          value_parser = parse_network)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A network (`10.0.0.0/8`) or a single address.
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network"))
}

/// The scale-out backend: when `CHAT_NATS_URL` is set, the event log is a NATS JetStream
/// stream shared by every node, and presence and typing cross nodes over NATS subjects.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server URLs, comma-separated (`nats://n1:4222,nats://n2:4222`). Unset: the
    /// embedded SQLite log.
    #[arg(long = "nats-url", env = "CHAT_NATS_URL", global = true)]
    pub url: Option<String>,

    /// A NATS `.creds` file (JWT and NKey seed).
    #[arg(long = "nats-creds", env = "CHAT_NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,

    /// NATS user name (with `CHAT_NATS_PASSWORD`).
    #[arg(long = "nats-user", env = "CHAT_NATS_USER", global = true)]
    pub user: Option<String>,

    /// NATS password.
    #[arg(
        long = "nats-password",
        env = "CHAT_NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,

    /// NATS authentication token.
    #[arg(
        long = "nats-token",
        env = "CHAT_NATS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// PEM file of the CA certificates that sign the NATS servers' certificates.
    #[arg(long = "nats-tls-ca", env = "CHAT_NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with `CHAT_NATS_TLS_KEY`.
    #[arg(long = "nats-tls-cert", env = "CHAT_NATS_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// Client key (PEM) for mutual TLS.
    #[arg(long = "nats-tls-key", env = "CHAT_NATS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Refuse to talk to NATS without TLS.
    #[arg(
        long = "nats-require-tls",
        env = "CHAT_NATS_REQUIRE_TLS",
        global = true
    )]
    pub require_tls: bool,

    /// The JetStream stream holding the event log.
    #[arg(
        long = "nats-stream",
        env = "CHAT_NATS_STREAM",
        default_value = "CHAT_EVENTS",
        global = true
    )]
    pub stream: String,

    /// Subject prefix: events go to `<prefix>.events.<stream>`, presence and typing to
    /// `<prefix>.live.*`.
    #[arg(
        long = "nats-subject-prefix",
        env = "CHAT_NATS_SUBJECT_PREFIX",
        default_value = "chat",
        global = true
    )]
    pub subject_prefix: String,

    /// Replicas of the stream when chatd creates it: 1 on one server, 3 in a cluster.
    #[arg(long = "nats-replicas", env = "CHAT_NATS_REPLICAS", default_value_t = 1, global = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5))]
    pub replicas: usize,

    /// JetStream's duplicate window for the stream when chatd creates it, in seconds. Retries
    /// are recognised at any time regardless; this only bounds the server's memory for ids.
    #[arg(long = "nats-duplicate-window", env = "CHAT_NATS_DUPLICATE_WINDOW", default_value_t = 120, global = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duplicate_window_secs: u64,
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
    /// Settings for tests and embedding: defaults, the given data dir, a free port. The
    /// environment is not read: a `CHAT_*` variable the caller happens to have changes nothing.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self::for_data_dir_with(data_dir, &[]).expect("the defaults parse")
    }

    /// [`Self::for_data_dir`] with these flags (`["--ws-rate", "100"]`) set.
    pub fn for_data_dir_with(
        data_dir: impl Into<PathBuf>,
        flags: &[&str],
    ) -> Result<Self, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("chatd").chain(flags.iter().copied()))?;
        let mut s = Self::from_arg_matches(&matches)?;
        s.data_dir = data_dir.into();
        s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(s)
    }

    pub fn events_path(&self) -> PathBuf {
        self.data_dir.join("events.db")
    }

    pub fn read_models_path(&self) -> PathBuf {
        self.data_dir.join("readmodels.db")
    }

    /// The node-local event-id index of the JetStream backend.
    pub fn jetstream_index_path(&self) -> PathBuf {
        self.data_dir.join("jetstream-index.db")
    }

    /// The node-local event-id index of the KurrentDB backend.
    pub fn kurrentdb_index_path(&self) -> PathBuf {
        self.data_dir.join("kurrentdb-index.db")
    }

    /// This node's name: `CHAT_NODE_NAME`, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "chatd".to_owned())
        })
    }

    /// The JetStream backend's options, when NATS is configured.
    pub fn jetstream(&self) -> Option<eventlog::jetstream::Options> {
        let n = &self.nats;
        let url = n.url.clone()?;
        let mut o = eventlog::jetstream::Options::new(url, self.jetstream_index_path());
        o.client_name = format!("chatd {}", self.node_name());
        o.credentials = n.creds.clone();
        o.user = n.user.clone();
        o.password = n.password.clone();
        o.token = n.token.clone();
        o.tls_ca = n.tls_ca.clone();
        o.tls_cert = n.tls_cert.clone();
        o.tls_key = n.tls_key.clone();
        o.require_tls = n.require_tls;
        o.stream = n.stream.clone();
        o.subject_prefix = format!("{}.events", n.subject_prefix);
        o.replicas = n.replicas;
        o.duplicate_window = Duration::from_secs(n.duplicate_window_secs);
        Some(o)
    }

    pub fn search_path(&self) -> PathBuf {
        self.data_dir.join("search")
    }

    pub fn search_indexer(&self) -> search::IndexerSettings {
        search::IndexerSettings {
            commit_interval: Duration::from_millis(self.search_commit_ms),
            idle: self.search_idle,
            nice: self.search_nice,
            ..search::IndexerSettings::default()
        }
    }

    pub fn alert_thresholds(&self) -> crate::ops::monitor::Thresholds {
        crate::ops::monitor::Thresholds {
            lag: Duration::from_secs(self.alert_lag_secs),
            disconnects_per_minute: self.alert_disconnects_per_min,
            failed_logins_per_minute: self.alert_failed_logins_per_min,
        }
    }

    pub fn connection_limits(&self) -> crate::http::server::ConnectionLimits {
        crate::http::server::ConnectionLimits {
            max_connections: self.limits.max_connections,
            header_read_timeout: Duration::from_secs(self.limits.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(self.limits.idle_timeout_secs),
        }
    }

    pub fn hash_wait(&self) -> Duration {
        Duration::from_millis(self.limits.hash_wait_ms)
    }

    pub fn presence_grace(&self) -> Duration {
        Duration::from_millis(self.presence_grace_ms)
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs)
    }
}

/// One hub shard per two cores (at least one). A shard delivers hundreds of thousands of
/// frames a second on one core, while the connections' writes, the projector and the search
/// indexer need the other cores: on the 2-core benchmark machine a second shard made
/// big-room delivery slower, not faster (docs/benchmarks.md).
pub fn default_hub_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
