//! The scale-out event log: a NATS JetStream stream shared by every `chatd` node.
//!
//! # Layout
//!
//! One JetStream stream (default `CHAT_EVENTS`) holds every event as one message on subject
//! `<prefix>.<log stream>` (see [`wire`]). The global position is the JetStream stream
//! sequence; a log stream's version is carried in a header and is gapless because every
//! append is conditional (below).
//!
//! # Appending
//!
//! - **Optimistic concurrency.** Each append publishes with
//!   `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of the log stream's last
//!   event (known from a small per-node cache, or a direct get of the subject's last message),
//!   so JetStream itself refuses an append that raced another one; the appender refreshes and
//!   either retries (the versions still match) or reports a version conflict.
//! - **Atomicity.** An append of several events is one JetStream atomic batch
//!   (`allow_atomic`, server ≥ 2.12): all of its messages are stored, consecutively, or none.
//!   So is an [`EventLog::append_batch`] (the new events of all its groups in one atomic
//!   batch, conditional on one last subject sequence): the server stores it with one write to
//!   its file (and one replication round), and no other append can interleave with it. Pipelined
//!   single publishes would not do: each needs the expected last sequence of the one before,
//!   which is known only from its acknowledgement, and without it another node's append could
//!   land between two of them and break the versions.
//! - **R1 file streams: chains.** nats-server stages each atomic batch of an R1 file stream in
//!   a file store of its own (created with an fsync, then removed), one batch at a time for the
//!   whole stream: milliseconds per batch, which serialised every room behind every other. So
//!   there an [`EventLog::append_batch`] of several groups is a chain of conditional appends,
//!   one per group, each at the version the previous reached; a conflict after the first (another
//!   node appended in between) answers the group it hit and the later ones with
//!   [`Error::VersionConflict`], for the caller to decide again.
//! - **Duplicates, within the window.** Every message carries `Nats-Msg-Id` = its event id:
//!   JetStream drops a re-publish within the stream's duplicate window.
//! - **Duplicates, at any later time.** Each node keeps an [`index`] of every event id in the
//!   stream. An append first looks its ids up there. The index may lag the stream by a moment,
//!   but never by more than half the duplicate window (the append path checks, and waits for it
//!   to catch up otherwise), so any event the index has not seen is still inside JetStream's
//!   window. When JetStream refuses an append (wrong last sequence, duplicate id in a batch),
//!   the appender waits for the index to reach the stream's head and looks the ids up again:
//!   a retry of a stored append gets the original result whatever its expected version.
//! - **Durability.** An append returns when JetStream has acknowledged it: stored (and, with
//!   replicas, on a quorum). See `docs/jetstream.md` for the server's `sync_interval`.
//!
//! # Reading
//!
//! `read_all` and `read_stream` use batched direct gets (`allow_direct`, server ≥ 2.11);
//! `read_stream` starts from the position the index gives for the version. `subscribe` is an
//! ordered consumer: catch-up and live are one flow, and the client library recreates the
//! consumer from the last sequence it saw when it detects a gap.

pub mod index;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, StorageType};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{RwLock, watch};

use self::index::Index;
pub use self::index::IndexFeed;
use crate::{
    AppendResult, Error, EventLog, ExpectedVersion, NewEvent, RecordedEvent, Result, Subscription,
    validate,
};

/// JetStream's limit on the messages of one atomic batch (the server's default).
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// How to reach NATS and which stream to use.
#[derive(Clone)]
pub struct Options {
    /// Server URLs, comma-separated (`nats://a:4222,nats://b:4222`). Credentials in a URL
    /// (`nats://user:password@host`, `nats://token@host`) are used when `user`/`password`
    /// or `token` are not set, and never logged: see [`redact_url`].
    pub url: String,
    /// Connection name shown in the server's monitoring (the node name).
    pub client_name: String,
    /// A `.creds` file (JWT + NKey seed) for decentralised auth.
    pub credentials: Option<PathBuf>,
    /// User and password, or a token, for simple auth.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// PEM file of CA certificates to trust.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require TLS even if the server does not ask for it.
    pub require_tls: bool,
    /// The JetStream stream holding the events.
    pub stream: String,
    /// Subject prefix of event messages (`<prefix>.<log stream>`).
    pub subject_prefix: String,
    /// Replicas of the stream when this backend creates it (1 or 3, 5 in big clusters).
    pub replicas: usize,
    /// JetStream's duplicate window for the stream this backend creates.
    pub duplicate_window: Duration,
    /// The node-local event-id index file.
    pub index_path: PathBuf,
    /// Timeout of one request to the server.
    pub request_timeout: Duration,
    /// Where the event-id index reads the stream from.
    pub index_feed: IndexFeed,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("Options")
            .field("url", &redact_url(&self.url))
            .field("client_name", &self.client_name)
            .field("credentials", &self.credentials)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("require_tls", &self.require_tls)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("duplicate_window", &self.duplicate_window)
            .field("index_path", &self.index_path)
            .field("request_timeout", &self.request_timeout)
            .field("index_feed", &self.index_feed)
            .finish()
    }
}

/// `url` (comma-separated NATS server URLs) with the credentials of each replaced by `***`:
/// what may appear in a log line or an error. Works on malformed URLs too.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let start = server.find("://").map_or(0, |i| i + 3);
            let authority = &server[start..];
            let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
            match authority[..end].rfind('@') {
                Some(at) => format!("{}***{}", &server[..start], &authority[at..]),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Credentials found in a URL: (user, password), or (token, `None`).
type UrlCredentials = Option<(String, Option<String>)>;

/// The server addresses of `url` without their credentials (so the client library, which logs
/// addresses, never sees them), and the first credentials found: (user, password) or a token.
fn split_credentials(
    url: &str,
) -> std::result::Result<(Vec<async_nats::ServerAddr>, UrlCredentials), String> {
    let mut credentials = None;
    let mut servers = Vec::new();
    for part in url.split(',') {
        let addr: async_nats::ServerAddr = part
            .trim()
            .parse()
            .map_err(|e| format!("NATS URL {}: {e}", redact_url(part.trim())))?;
        if credentials.is_none()
            && let Some(user) = addr.username()
        {
            let decode = |s: &str| percent_decode(s);
            credentials = Some((decode(user), addr.password().map(decode)));
        }
        let mut bare = addr.into_inner();
        // Cannot fail: the URL has a host (ServerAddr checked it).
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        servers.push(
            async_nats::ServerAddr::from_url(bare)
                .map_err(|e| format!("NATS URL {}: {e}", redact_url(part.trim())))?,
        );
    }
    Ok((servers, credentials))
}

/// Undoes the percent-encoding of a URL's user or password (`p%40ss` → `p@ss`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Options {
    /// Defaults for `url`, keeping the index at `index_path`.
    pub fn new(url: impl Into<String>, index_path: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            client_name: "chatd".into(),
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            stream: "CHAT_EVENTS".into(),
            subject_prefix: "chat.events".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            index_path: index_path.into(),
            request_timeout: Duration::from_secs(10),
            index_feed: IndexFeed::OwnConsumer,
        }
    }

    /// Connects a NATS client with these options' address, auth and TLS.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let mut o = async_nats::ConnectOptions::new()
            .name(&self.client_name)
            .request_timeout(Some(self.request_timeout))
            .connection_timeout(self.request_timeout)
            .require_tls(self.require_tls);
        if let Some(path) = &self.credentials {
            o = o
                .credentials_file(path)
                .await
                .map_err(|e| unavailable(format!("credentials {}: {e}", path.display())))?;
        }
        let (servers, in_url) = split_credentials(&self.url).map_err(Error::InvalidArgument)?;
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            o = o.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            o = o.token(token.clone());
        }
        if self.token.is_none() && (self.user.is_none() || self.password.is_none()) {
            match in_url {
                Some((user, Some(password))) => o = o.user_and_password(user, password),
                Some((token, None)) => o = o.token(token),
                None => {}
            }
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        o.connect(servers).await.map_err(|e| {
            unavailable(format!(
                "cannot connect to NATS at {}: {e}",
                redact_url(&self.url)
            ))
        })
    }
}

fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(what.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// JetStream API error codes this backend tells apart.
mod codes {
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const BATCH_DUPLICATE_MSG_ID: u64 = 10201;
}

/// Most log streams whose last version and sequence a node remembers.
const TAIL_CACHE: usize = 100_000;
/// Most attempts of one append against a moving stream (`Any`, or a stale cache).
const MAX_ATTEMPTS: usize = 64;
/// Page size of direct-get batches.
const READ_PAGE: usize = 256;
/// A log stream's last event: version and stream sequence (0, 0 when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    version: u64,
    sequence: u64,
}

/// The JetStream event log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: Context,
    stream: stream::Stream,
    stream_name: String,
    prefix: String,
    window: Duration,
    index: Index,
    /// The log the index follows when its feed is [`IndexFeed::Given`] (weak: that log wraps
    /// this one).
    index_source: index::Source,
    /// When the index was last known to hold everything stored in the stream.
    index_fresh_at: Mutex<Option<Instant>>,
    tails: Mutex<HashMap<String, Tail>>,
    /// Whether a batch of several groups is written as a chain of conditional appends, one per
    /// group, rather than as one atomic batch: on an R1 file stream, where nats-server stages
    /// every atomic batch in a file store of its own (a directory created, fsynced and removed
    /// per batch, one batch at a time for the whole stream), which costs milliseconds per batch
    /// and serialises every room's appends behind each other.
    chain: bool,
    /// Appends hold it shared; `close` takes it exclusively, then flips `closed`.
    gate: RwLock<bool>,
    closed: watch::Sender<bool>,
}

impl JetStreamLog {
    /// Connects, creates the stream if it does not exist (file storage, the configured
    /// replicas and duplicate window, direct gets and atomic batches allowed, deletes and
    /// purges denied), opens the node's index and starts following the stream.
    pub async fn connect(options: Options) -> Result<Self> {
        let client = options.connect().await?;
        let version = client.server_info().version;
        if !server_at_least(&version, (2, 12)) {
            return Err(unavailable(format!(
                "nats-server {version} is too old: the JetStream backend needs 2.12 or newer \
                 (atomic batches)"
            )));
        }
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: options.stream.clone(),
            description: Some("chatd event log".into()),
            subjects: vec![format!("{}.>", options.subject_prefix)],
            storage: StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: options.duplicate_window,
            allow_direct: true,
            allow_atomic_publish: true,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        // A cluster that has just started has no JetStream meta leader for a few seconds.
        let deadline = Instant::now() + options.request_timeout * 3;
        let mut stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "JetStream not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(unavailable(format!("stream {}: {e}", options.stream)));
                }
            }
        };
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("stream {}: {e}", options.stream)))?
            .clone();
        if !info.config.allow_atomic_publish || !info.config.allow_direct {
            return Err(unavailable(format!(
                "stream {} exists without allow_atomic and allow_direct; enable both \
                 (`nats stream edit`)",
                options.stream
            )));
        }
        if info.config.num_replicas != options.replicas {
            tracing::warn!(
                stream = %options.stream,
                configured = options.replicas,
                actual = info.config.num_replicas,
                "the stream exists with another replica count; keeping it"
            );
        }
        let identity = format!("{}@{}", options.stream, info.created.unix_timestamp_nanos());
        let index_path = options.index_path.clone();
        let index = tokio::task::spawn_blocking(move || Index::open(&index_path, &identity))
            .await
            .map_err(|e| unavailable(format!("index: {e}")))??;
        let log = Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                stream_name: options.stream,
                prefix: options.subject_prefix,
                window: info.config.duplicate_window,
                index,
                index_source: watch::channel(None).0,
                index_fresh_at: Mutex::new(None),
                tails: Mutex::new(HashMap::new()),
                chain: info.config.num_replicas == 1 && info.config.storage == StorageType::File,
                gate: RwLock::new(false),
                closed: watch::channel(false).0,
            }),
        };
        let own = log.clone();
        tokio::spawn(log.inner.index.clone().follow(
            options.index_feed,
            move |after| own.subscribe(after),
            log.inner.index_source.subscribe(),
            log.inner.closed.subscribe(),
        ));
        Ok(log)
    }

    /// With [`IndexFeed::Given`]: the index follows `source`'s subscriptions from now on.
    /// `source` must be a log over this one (a [`crate::follow::Shared`] of it); it is held
    /// weakly, and the index stops when it is gone.
    pub fn index_from(&self, source: Weak<dyn EventLog>) {
        self.inner.index_source.send_replace(Some(source));
    }

    /// The NATS connection (for ephemeral subjects such as presence and typing).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    fn subject(&self, stream: &str) -> String {
        format!("{}.{}", self.inner.prefix, wire::encode_stream(stream))
    }

    /// Every event after `after`, from an ordered consumer.
    ///
    /// Losing the server (a NATS node going away, a consumer lost with its node) is not the
    /// end: the ordered consumer is recreated from the last event delivered, with backoff,
    /// until the log closes. Only a message that cannot be decoded ends the stream (with the
    /// error), since skipping it would be a silent gap.
    fn follow(&self, after: u64) -> Subscription {
        let log = self.clone();
        let mut closed = self.inner.closed.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut last = after;
            let mut backoff = Duration::from_millis(50);
            loop {
                if *closed.borrow() {
                    return;
                }
                let deliver_policy = if last == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: last + 1,
                    }
                };
                let messages = match log
                    .inner
                    .stream
                    .create_consumer(pull::OrderedConfig {
                        deliver_policy,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let mut messages = match messages {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, after = last, "cannot follow the stream; retrying");
                        tokio::select! {
                            _ = closed.wait_for(|c| *c) => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        next = messages.next() => next,
                    };
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, after = last, "lost the stream consumer; recreating it");
                            break;
                        }
                        None => break,
                    };
                    let item = match message.info() {
                        Ok(info) if info.stream_sequence <= last => continue,
                        Ok(info) => wire::decode(
                            &log.inner.prefix,
                            message.subject.as_str(),
                            info.stream_sequence,
                            message.headers.as_ref().unwrap_or(&HeaderMap::new()),
                            &message.payload,
                        )
                        .map(Arc::new),
                        Err(e) => Err(wire::corrupt(e)),
                    };
                    let failed = item.is_err();
                    if let Ok(event) = &item {
                        last = event.position;
                        backoff = Duration::from_millis(50);
                    }
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        stream.boxed()
    }

    /// The last event of a log stream, from the cache or the server.
    async fn tail(&self, stream: &str, subject: &str) -> Result<Tail> {
        if let Some(t) = lock(&self.inner.tails).get(stream) {
            return Ok(*t);
        }
        let tail = match self
            .inner
            .stream
            .direct_get_builder()
            .last_by_subject(subject)
            .send()
            .await
        {
            Ok(m) => Tail {
                version: wire::decode(&self.inner.prefix, &m.subject, m.sequence, &m.headers, &[])?
                    .version,
                sequence: m.sequence,
            },
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Tail {
                version: 0,
                sequence: 0,
            },
            Err(e) => return Err(unavailable(format!("direct get: {e}"))),
        };
        self.remember(stream, tail);
        Ok(tail)
    }

    fn remember(&self, stream: &str, tail: Tail) {
        let mut tails = lock(&self.inner.tails);
        if tails.len() >= TAIL_CACHE && !tails.contains_key(stream) {
            tails.clear();
        }
        tails.insert(stream.to_owned(), tail);
    }

    fn forget(&self, stream: &str) {
        lock(&self.inner.tails).remove(stream);
    }

    /// Makes sure the index holds every event older than half the duplicate window, so an id
    /// it does not know is either new or still remembered by JetStream.
    async fn ensure_index_fresh(&self) -> Result<()> {
        let limit = self.inner.window / 2;
        let fresh = lock(&self.inner.index_fresh_at).is_some_and(|at| at.elapsed() < limit);
        if fresh {
            return Ok(());
        }
        let asked = Instant::now();
        let head = self.head().await?;
        self.wait_for_index(head).await?;
        let mut at = lock(&self.inner.index_fresh_at);
        if at.is_none_or(|t| t < asked) {
            *at = Some(asked);
        }
        Ok(())
    }

    async fn wait_for_index(&self, position: u64) -> Result<()> {
        let deadline = self.inner.window / 4;
        tokio::time::timeout(deadline, self.inner.index.wait_for(position))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "the event-id index is more than {deadline:?} behind the stream"
                ))
            })
    }

    /// Looks the ids of the groups not answered yet up after the index has caught up with the
    /// whole stream.
    async fn judge_after_catching_up(
        &self,
        stream: &str,
        pending: &mut crate::Pending,
    ) -> Result<()> {
        let head = self.head().await?;
        self.wait_for_index(head).await?;
        let hits = self.inner.index.lookup(pending.ids()).await?;
        pending.answer(index::judge_groups(stream, pending.groups(), &hits));
        Ok(())
    }

    /// Writes the groups of `pending` not answered yet (`unanswered`, more than one) one after
    /// the other, each an append of its own conditional on the one before: the first at
    /// `expected`, each next one at the version the previous one reached (see
    /// [`Inner::chain`]). A conflict or failure before anything is written fails the call as
    /// [`Self::write`] would; after that, it answers the group it hit and every later one.
    async fn write_chained(
        &self,
        stream: &str,
        subject: &str,
        expected: ExpectedVersion,
        mut pending: crate::Pending,
        unanswered: &[usize],
        recorded_at: chrono::DateTime<Utc>,
    ) -> Result<Vec<Result<AppendResult>>> {
        let mut expected = expected;
        let mut written = false;
        for (n, &i) in unanswered.iter().enumerate() {
            let group = crate::Pending::new(vec![pending.groups()[i].clone()]);
            match self
                .write(stream, subject, expected, group, recorded_at)
                .await
                .map(|mut answers| answers.pop())
            {
                Ok(Some(answer)) => {
                    if let Ok(a) = &answer
                        && !a.duplicate
                    {
                        expected = ExpectedVersion::Exact(a.last_version);
                        written = true;
                    }
                    pending.answer_one(i, answer);
                }
                Ok(None) => {
                    pending.answer_one(i, Err(unavailable("a group got no answer")));
                }
                Err(e) if !written => return Err(e),
                Err(e) => {
                    // Not written (a conflict: another node appended in between), or not
                    // known to be: this group and the ones after it get the error.
                    for &rest in &unanswered[n..] {
                        pending.answer_one(rest, Err(e.clone()));
                    }
                    break;
                }
            }
        }
        Ok(pending.finish())
    }

    /// Writes the groups of `pending` not answered yet as one atomic append at `expected`.
    async fn write(
        &self,
        stream: &str,
        subject: &str,
        expected: ExpectedVersion,
        mut pending: crate::Pending,
        recorded_at: chrono::DateTime<Utc>,
    ) -> Result<Vec<Result<AppendResult>>> {
        let subject = subject.to_owned();
        for _ in 0..MAX_ATTEMPTS {
            let tail = self.tail(stream, &subject).await?;
            let matches = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => tail.version == 0,
                ExpectedVersion::Exact(v) => tail.version == v,
            };
            if !matches {
                // Perhaps our cache is stale; perhaps this is a retry of what made the stream
                // move. Ask the server, and the index, before calling it a conflict.
                self.forget(stream);
                let fresh = self.tail(stream, &subject).await?;
                if fresh != tail {
                    continue;
                }
                self.judge_after_catching_up(stream, &mut pending).await?;
                if pending.settled() {
                    return Ok(pending.finish());
                }
                return Err(Error::VersionConflict {
                    stream: stream.to_owned(),
                    expected,
                    actual: tail.version,
                });
            }
            let events: Vec<&NewEvent> = pending.to_write().collect();
            match self.publish(&subject, tail, &events, recorded_at).await? {
                Ok(outcome) if outcome.duplicate => {
                    // Inside JetStream's window: the id is stored, maybe in another stream.
                    self.forget(stream);
                    self.judge_after_catching_up(stream, &mut pending).await?;
                    if pending.settled() {
                        return Ok(pending.finish());
                    }
                    return Err(unavailable(
                        "JetStream reported a duplicate the index does not know",
                    ));
                }
                Ok(outcome) => {
                    let n = events.len() as u64;
                    let first_position = outcome.last_sequence + 1 - n;
                    self.remember(
                        stream,
                        Tail {
                            version: tail.version + n,
                            sequence: outcome.last_sequence,
                        },
                    );
                    return Ok(pending.written(
                        tail.version + 1,
                        |i| first_position + i,
                        recorded_at,
                    ));
                }
                Err(codes::WRONG_LAST_SEQUENCE) => self.forget(stream),
                Err(_) => {
                    // A duplicate id inside the batch's window.
                    self.forget(stream);
                    self.judge_after_catching_up(stream, &mut pending).await?;
                    if pending.settled() {
                        return Ok(pending.finish());
                    }
                }
            }
        }
        Err(unavailable(format!(
            "stream {stream} kept moving for {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Publishes `events` as versions `tail.version + 1 ..`, conditional on the subject's last
    /// sequence. Returns the last sequence, or the JetStream error code.
    async fn publish(
        &self,
        subject: &str,
        tail: Tail,
        events: &[&NewEvent],
        recorded_at: chrono::DateTime<Utc>,
    ) -> Result<std::result::Result<PublishOutcome, u64>> {
        let headers = |i: usize| {
            let mut h = wire::headers(events[i], tail.version + 1 + i as u64, recorded_at);
            if i == 0 {
                h.insert(
                    wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                    tail.sequence.to_string().as_str(),
                );
            }
            h
        };
        let subject = subject.to_owned();
        if events.len() == 1 {
            let ack = self
                .inner
                .js
                .publish_with_headers(subject, headers(0), events[0].data.clone().into())
                .await
                .map_err(|e| unavailable(format!("publish: {e}")))?
                .await;
            return match ack {
                Ok(ack) => Ok(Ok(PublishOutcome {
                    last_sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    Ok(Err(codes::WRONG_LAST_SEQUENCE))
                }
                Err(e) => Err(unavailable(format!("publish: {e}"))),
            };
        }
        // An atomic batch: every message but the last is published without waiting; the
        // commit (the last) answers for all of them.
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let n = events.len();
        for (i, event) in events.iter().enumerate() {
            let mut h = headers(i);
            h.insert("Nats-Batch-Id", batch_id.as_str());
            h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 < n {
                self.inner
                    .client
                    .publish_with_headers(subject.clone(), h, event.data.clone().into())
                    .await
                    .map_err(|e| unavailable(format!("publish: {e}")))?;
                continue;
            }
            h.insert("Nats-Batch-Commit", "1");
            let reply = self
                .inner
                .client
                .request_with_headers(subject.clone(), h, event.data.clone().into())
                .await
                .map_err(|e| unavailable(format!("batch commit: {e}")))?;
            let ack: BatchAck = serde_json::from_slice(&reply.payload)
                .map_err(|e| unavailable(format!("batch commit answer: {e}")))?;
            return match (ack.error, ack.seq, ack.count) {
                (Some(err), _, _) => match err.err_code {
                    codes::WRONG_LAST_SEQUENCE | codes::BATCH_DUPLICATE_MSG_ID => {
                        Ok(Err(err.err_code))
                    }
                    _ => Err(unavailable(format!(
                        "batch refused: {} ({})",
                        err.description, err.err_code
                    ))),
                },
                (None, Some(seq), Some(count)) if count == n as u64 => Ok(Ok(PublishOutcome {
                    last_sequence: seq,
                    duplicate: false,
                })),
                _ => Err(unavailable("batch commit answer is incomplete")),
            };
        }
        unreachable!("events is not empty")
    }

    /// A batched direct get: up to `limit` messages from `start` on, on `subject` (may be a
    /// wildcard).
    async fn direct_batch(
        &self,
        start: u64,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(format!("subscribe: {e}")))?;
        let request = serde_json::json!({
            "seq": start.max(1),
            "next_by_subj": subject,
            "batch": limit,
        });
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.inner.stream_name),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(|e| unavailable(format!("direct get: {e}")))?;
        let mut out = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .map_err(|_| unavailable("direct get timed out"))?
                .ok_or_else(|| unavailable("direct get ended early"))?;
            if let Some(status) = message.status {
                // 204: end of batch; 404: nothing (more) to read.
                return match status.as_u16() {
                    204 | 404 => Ok(out),
                    code => Err(unavailable(format!(
                        "direct get: status {code} {}",
                        message.description.unwrap_or_default()
                    ))),
                };
            }
            let headers = message.headers.unwrap_or_default();
            let subject = headers
                .get("Nats-Subject")
                .map(|v| v.as_str().to_owned())
                .ok_or_else(|| wire::corrupt("direct get without Nats-Subject"))?;
            let sequence = headers
                .get("Nats-Sequence")
                .and_then(|v| v.as_str().parse().ok())
                .ok_or_else(|| wire::corrupt("direct get without Nats-Sequence"))?;
            out.push(wire::decode(
                &self.inner.prefix,
                &subject,
                sequence,
                &headers,
                &message.payload,
            )?);
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PublishOutcome {
    last_sequence: u64,
    duplicate: bool,
}

#[derive(Debug, Deserialize)]
struct BatchAck {
    error: Option<ApiError>,
    seq: Option<u64>,
    count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    err_code: u64,
    #[serde(default)]
    description: String,
}

fn server_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// A stream fed by a task through a small channel (ends when the task returns).
fn async_stream<T, F, Fut>(f: F) -> futures::stream::BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> futures::stream::BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn append_batch(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<AppendResult>>> {
        validate(stream, expected, &batch)?;
        let total: usize = batch.iter().map(Vec::len).sum();
        if total > MAX_EVENTS_PER_APPEND {
            return Err(Error::InvalidArgument(format!(
                "{total} events in one append; JetStream takes at most {MAX_EVENTS_PER_APPEND}"
            )));
        }
        let gate = self.inner.gate.read().await;
        if *gate {
            return Err(Error::Closed);
        }
        let mut pending = crate::Pending::new(batch);
        self.ensure_index_fresh().await?;
        let hits = self.inner.index.lookup(pending.ids()).await?;
        pending.answer(index::judge_groups(stream, pending.groups(), &hits));
        if pending.settled() {
            return Ok(pending.finish());
        }
        let subject = self.subject(stream);
        let recorded_at = Utc::now().trunc_subsecs(6);
        let unanswered = pending.unanswered();
        if self.inner.chain && unanswered.len() > 1 {
            return self
                .write_chained(
                    stream,
                    &subject,
                    expected,
                    pending,
                    &unanswered,
                    recorded_at,
                )
                .await;
        }
        self.write(stream, &subject, expected, pending, recorded_at)
            .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let from_version = from_version.max(1);
        if limit == 0 || stream.is_empty() {
            return Ok(Vec::new());
        }
        let subject = self.subject(stream);
        let mut start = self.inner.index.seek(stream, from_version).await?;
        let mut out = Vec::new();
        loop {
            let page = self.direct_batch(start, &subject, READ_PAGE).await?;
            let n = page.len();
            if let Some(last) = page.last() {
                start = last.position + 1;
            }
            out.extend(
                page.into_iter()
                    .filter(|e| e.version >= from_version)
                    .take(limit - out.len()),
            );
            if out.len() >= limit || n < READ_PAGE {
                return Ok(out);
            }
        }
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let all = format!("{}.>", self.inner.prefix);
        let mut out = Vec::new();
        let mut start = after + 1;
        while out.len() < limit {
            let want = (limit - out.len()).min(READ_PAGE);
            let page = self.direct_batch(start, &all, want).await?;
            let n = page.len();
            if let Some(last) = page.last() {
                start = last.position + 1;
            }
            out.extend(page);
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    async fn head(&self) -> Result<u64> {
        let info = self
            .inner
            .js
            .get_stream_no_info(&self.inner.stream_name)
            .await
            .map_err(|e| unavailable(format!("stream: {e}")))?
            .get_info()
            .await
            .map_err(|e| unavailable(format!("stream info: {e}")))?;
        Ok(info.state.last_sequence)
    }

    fn subscribe(&self, after: u64) -> Subscription {
        self.follow(after)
    }

    async fn close(&self) {
        let mut gate = self.inner.gate.write().await;
        if *gate {
            return;
        }
        *gate = true;
        self.inner.closed.send_replace(true);
        if let Err(e) = self.inner.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection on close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_every_server_of_a_url() {
        assert_eq!(
            redact_url("nats://u:p@a:4222, tls://tok@b/x?y=1@z,nats://c:4222,u:p@d"),
            "nats://***@a:4222, tls://***@b/x?y=1@z,nats://c:4222,***@d"
        );
        assert_eq!(redact_url("not a url:p@ss@"), "***@");
    }

    #[test]
    fn credentials_are_taken_out_of_the_addresses() {
        let (servers, creds) =
            split_credentials("nats://al%40ce:p%3Ass@a:4222,nats://b:4223").unwrap();
        let urls: Vec<&str> = servers.iter().map(|s| s.as_url_str()).collect();
        assert_eq!(urls, ["nats://a:4222", "nats://b:4223"]);
        assert_eq!(creds, Some(("al@ce".into(), Some("p:ss".into()))));
        let (_, token) = split_credentials("s3cr3t@a").unwrap();
        assert_eq!(token, Some(("s3cr3t".into(), None)));
        let err = split_credentials("nats://u:s3cr3t@a,http://u:s3cr3t@b").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
