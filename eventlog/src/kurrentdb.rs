//! The event log on KurrentDB (formerly EventStoreDB), through its official gRPC client
//! (the `kurrentdb` crate). Built with the `kurrentdb` cargo feature; see `docs/kurrentdb.md`.
//!
//! # Layout
//!
//! Each log stream is one KurrentDB stream named `<prefix><log stream>` (`chat-room-…`,
//! `chat-user-…`): a log stream's version is its KurrentDB revision + 1. Each event is one
//! KurrentDB event with the same id and type; its data is the payload, and its custom metadata
//! is an [`envelope`]: the schema version, the time the log recorded it, then the caller's
//! metadata bytes.
//!
//! # Positions
//!
//! KurrentDB orders `$all` by `(commit, prepare)` pairs of transaction-log offsets. Every event
//! of one append shares the commit position; each event has its own prepare position (where
//! its record is in the log). Appends over gRPC are single-stream implicit transactions, written
//! contiguously by the one log writer, so prepare positions increase in exactly the `$all`
//! order. The log's `u64` position is therefore the **prepare position**: unique per event,
//! strictly increasing in `$all` order, no information about order lost. To start reading or
//! subscribing after a `u64` position `p`, the backend needs the event's full `(commit, p)`
//! pair: it reads `$all` backwards from `(p, p)` (the events of `p`'s own append come first) to
//! find it ([`KurrentLog::resolve`]). Every reader also checks the order it is given, and fails
//! loudly instead of delivering an event whose position does not increase.
//!
//! # Appending
//!
//! - **Optimistic concurrency.** One append — or one [`EventLog::append_batch`], the new events
//!   of all its groups together — is one KurrentDB append with the exact expected
//!   revision (`NoStream`, `StreamRevision(v - 1)` or `Any`): atomic for its events, refused
//!   with "wrong expected version" when the stream moved; that maps to
//!   [`Error::VersionConflict`].
//! - **Idempotency.** KurrentDB deduplicates by event id itself when a retry carries the same
//!   expected revision (it answers success and writes nothing). The log's promise is wider: a
//!   stored id is recognised whatever the retry expects, and ids stored in another stream are a
//!   mismatch. So, like the JetStream backend, each node keeps an event-id
//!   [`index`](crate::jetstream::index) filled by following `$all`; an append first makes the
//!   index reach the head of the log and looks its ids up, and looks again whenever KurrentDB
//!   refuses the append or answers it as a duplicate.
//! - **No multi-stream append.** KurrentDB appends to one stream atomically, never several; the
//!   port never asks for more (one command, one stream), so nothing relies on it. The one check
//!   that spans streams, "this id is stored in another stream", is made from the index and is
//!   not atomic with the append: two nodes appending the same new ids to two different streams
//!   at the same moment can both succeed (the JetStream backend catches that; this one cannot).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStreamOptions, ResolvedEvent, StreamPosition, StreamState,
    SubscribeToAllOptions, SubscriptionFilter,
};
use tokio::sync::{RwLock, mpsc, watch};

use crate::jetstream::IndexFeed;
use crate::jetstream::index::{self, Index};
use crate::{
    AppendResult, Error, EventLog, ExpectedVersion, NewEvent, RecordedEvent, Result, Subscription,
    validate,
};

/// Most events in one append (the `(commit, prepare)` lookup reads back at most this many).
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// How long an append waits for the node's event-id index to reach the head of the log.
const INDEX_DEADLINE: Duration = Duration::from_secs(30);

/// How long a subscription waits before resubscribing after an error.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// How to reach KurrentDB and which streams are the chat's.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connection string: `kurrentdb://host:2113?tls=false`, or a cluster
    /// (`kurrentdb+discover://…`, `kurrentdb://a:2113,b:2113,c:2113`), as the client takes it.
    pub url: String,
    /// Prefix of every KurrentDB stream the log writes (and of the `$all` filter).
    pub stream_prefix: String,
    /// The node-local event-id index file.
    pub index_path: PathBuf,
    /// Where the event-id index reads `$all` from.
    pub index_feed: IndexFeed,
}

impl Options {
    pub fn new(url: impl Into<String>, index_path: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            stream_prefix: "chat-".into(),
            index_path: index_path.into(),
            index_feed: IndexFeed::OwnConsumer,
        }
    }
}

fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("kurrentdb: {what}"))
}

/// The custom metadata of every event: `0xC1`, the schema version (4 bytes, big-endian), the
/// recorded time in microseconds since the epoch (8 bytes, big-endian), then the caller's
/// metadata. KurrentDB's own `created` timestamp reaches the client with whole seconds only,
/// and the log promises one exact `recorded_at` for all events of an append.
pub mod envelope {
    use chrono::{DateTime, Utc};

    const TAG: u8 = 0xC1;
    const HEADER: usize = 13;

    pub fn encode(schema_version: u32, recorded_at: DateTime<Utc>, metadata: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + metadata.len());
        out.push(TAG);
        out.extend_from_slice(&schema_version.to_be_bytes());
        out.extend_from_slice(&recorded_at.timestamp_micros().to_be_bytes());
        out.extend_from_slice(metadata);
        out
    }

    /// `(schema version, recorded at, metadata)`, or `None` for metadata another writer made.
    pub fn decode(bytes: &[u8]) -> Option<(u32, DateTime<Utc>, &[u8])> {
        if bytes.len() < HEADER || bytes[0] != TAG {
            return None;
        }
        let version = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
        let micros = i64::from_be_bytes(bytes[5..13].try_into().ok()?);
        Some((
            version,
            DateTime::from_timestamp_micros(micros)?,
            &bytes[HEADER..],
        ))
    }
}

/// The KurrentDB event log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KurrentLog {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    index: Index,
    /// The log the index follows when its feed is [`IndexFeed::Given`].
    index_source: index::Source,
    /// `true` once closed; appends hold it for reading while they run.
    gate: RwLock<bool>,
    closed: watch::Sender<bool>,
}

impl KurrentLog {
    /// Connects, opens the event-id index and starts filling it from `$all`.
    pub async fn connect(options: Options) -> Result<Self> {
        if options.stream_prefix.is_empty() || options.stream_prefix.starts_with('$') {
            return Err(Error::InvalidArgument(
                "the KurrentDB stream prefix must be non-empty and not start with '$'".into(),
            ));
        }
        let settings: ClientSettings = options
            .url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("KurrentDB connection string: {e}")))?;
        let client = Client::new(settings).map_err(unavailable)?;
        // The index belongs to this database and prefix: identified by the first chat event
        // (a database recreated under the same address has another one).
        let first = read_all_events(
            &client,
            &ReadAllOptions::default()
                .forwards()
                .position(StreamPosition::Start)
                .filter(filter(&options.stream_prefix))
                .max_count(1),
        )
        .await?;
        let identity = format!(
            "kurrentdb {} {}",
            options.stream_prefix,
            first
                .first()
                .map_or("empty".into(), |e| e.get_original_event().id.to_string())
        );
        let index = {
            let path = options.index_path.clone();
            tokio::task::spawn_blocking(move || Index::open(&path, &identity))
                .await
                .map_err(unavailable)??
        };
        let log = Self {
            inner: Arc::new(Inner {
                client,
                prefix: options.stream_prefix,
                index,
                index_source: watch::channel(None).0,
                gate: RwLock::new(false),
                closed: watch::channel(false).0,
            }),
        };
        let own = log.clone();
        tokio::spawn(log.inner.index.clone().follow(
            options.index_feed,
            move |after| own.follow(after),
            log.inner.index_source.subscribe(),
            log.inner.closed.subscribe(),
        ));
        Ok(log)
    }

    /// With [`IndexFeed::Given`]: the index follows `source`'s subscriptions from now on.
    /// `source` must be a log over this one (a [`crate::follow::Shared`] of it); it is held
    /// weakly, and the index stops when it is gone.
    pub fn index_from(&self, source: std::sync::Weak<dyn EventLog>) {
        self.inner.index_source.send_replace(Some(source));
    }

    /// The `(commit, prepare)` position of the chat event whose prepare position is `after`
    /// (see the module docs). `Start` for 0.
    async fn resolve(&self, after: u64) -> Result<StreamPosition<Position>> {
        if after == 0 {
            return Ok(StreamPosition::Start);
        }
        let guess = Position {
            commit: after,
            prepare: after,
        };
        let before = read_all_events(
            &self.inner.client,
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::Position(guess))
                .filter(filter(&self.inner.prefix))
                .max_count(MAX_EVENTS_PER_APPEND + 1),
        )
        .await?;
        for e in &before {
            let position = e.get_original_event().position;
            if position.prepare == after {
                return Ok(StreamPosition::Position(position));
            }
            if position.prepare < after {
                break;
            }
        }
        // Not behind `(after, after)`: the event is the first of its append, at `(after, after)`.
        Ok(StreamPosition::Position(guess))
    }

    /// Catch-up-then-live events after `after`, in order, ending when the log closes.
    fn follow(&self, after: u64) -> Subscription {
        let (tx, mut rx) = mpsc::channel::<Result<Arc<RecordedEvent>>>(256);
        let log = self.clone();
        tokio::spawn(async move {
            let mut closed = log.inner.closed.subscribe();
            let mut last = after;
            'subscribe: loop {
                if *closed.borrow() {
                    return;
                }
                let start = match log.resolve(last).await {
                    Ok(start) => start,
                    Err(e) => {
                        tracing::warn!(error = %e, "resolving a KurrentDB position; retrying");
                        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                        continue;
                    }
                };
                let mut sub = log
                    .inner
                    .client
                    .subscribe_to_all(
                        &SubscribeToAllOptions::default()
                            .position(start)
                            .filter(filter(&log.inner.prefix)),
                    )
                    .await;
                loop {
                    let next = tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        next = sub.next() => next,
                    };
                    let event = match next {
                        Ok(resolved) => log.recorded(&resolved),
                        Err(e) => {
                            tracing::warn!(error = %e, "KurrentDB subscription failed; resubscribing");
                            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                            continue 'subscribe;
                        }
                    };
                    let event = match event {
                        Ok(e) if e.position <= last => continue, // at or before the start
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    last = event.position;
                    if tx.send(Ok(Arc::new(event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    /// The log's view of a KurrentDB event.
    fn recorded(&self, resolved: &ResolvedEvent) -> Result<RecordedEvent> {
        let e = resolved.get_original_event();
        let stream = e
            .stream_id()
            .strip_prefix(self.inner.prefix.as_str())
            .ok_or_else(|| unavailable(format!("event of stream {} read", e.stream_id())))?;
        let (schema_version, recorded_at, metadata) = envelope::decode(&e.custom_metadata)
            .ok_or_else(|| {
                unavailable(format!(
                    "event {} of stream {} was not written by chatd",
                    e.id,
                    e.stream_id()
                ))
            })?;
        Ok(RecordedEvent {
            stream: stream.to_owned(),
            version: e.revision + 1,
            position: e.position.prepare,
            event_id: e.id,
            event_type: e.event_type.clone(),
            schema_version,
            data: e.data.to_vec(),
            metadata: metadata.to_vec(),
            recorded_at,
        })
    }

    fn name(&self, stream: &str) -> String {
        format!("{}{stream}", self.inner.prefix)
    }

    /// Makes the index cover the head of the log, then judges the groups not answered yet by
    /// it.
    async fn judge_after_catching_up(
        &self,
        stream: &str,
        pending: &mut crate::Pending,
    ) -> Result<()> {
        let head = self.head().await?;
        tokio::time::timeout(INDEX_DEADLINE, self.inner.index.wait_for(head))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "the event-id index is more than {INDEX_DEADLINE:?} behind the log"
                ))
            })?;
        let hits = self.inner.index.lookup(pending.ids()).await?;
        pending.answer(index::judge_groups(stream, pending.groups(), &hits));
        Ok(())
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentLog")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn filter(prefix: &str) -> SubscriptionFilter {
    SubscriptionFilter::on_stream_name().add_prefix(prefix)
}

/// Every event a read returns.
async fn read_all_events(client: &Client, options: &ReadAllOptions) -> Result<Vec<ResolvedEvent>> {
    let mut read = client.read_all(options).await.map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(e) = read.next().await.map_err(unavailable)? {
        out.push(e);
    }
    Ok(out)
}

/// Stored as binary whatever the payload: the log's data is opaque bytes, and KurrentDB's JSON
/// events are re-encoded by the client (not byte for byte).
fn event_data(e: &NewEvent, recorded_at: DateTime<Utc>) -> EventData {
    EventData::binary(&e.event_type, e.data.clone().into())
        .id(e.event_id)
        .metadata(envelope::encode(e.schema_version, recorded_at, &e.metadata).into())
}

#[async_trait]
impl EventLog for KurrentLog {
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
                "{total} events in one append; the KurrentDB backend takes at most \
                 {MAX_EVENTS_PER_APPEND}"
            )));
        }
        let gate = self.inner.gate.read().await;
        if *gate {
            return Err(Error::Closed);
        }
        let mut pending = crate::Pending::new(batch);
        self.judge_after_catching_up(stream, &mut pending).await?;
        if pending.settled() {
            return Ok(pending.finish());
        }
        let recorded_at = Utc::now().trunc_subsecs(6);
        let state = match expected {
            ExpectedVersion::Any => StreamState::Any,
            ExpectedVersion::NoStream => StreamState::NoStream,
            ExpectedVersion::Exact(v) => StreamState::StreamRevision(v - 1),
        };
        let name = self.name(stream);
        let ids: Vec<uuid::Uuid> = pending.to_write().map(|e| e.event_id).collect();
        let data: Vec<EventData> = pending
            .to_write()
            .map(|e| event_data(e, recorded_at))
            .collect();
        let written = self
            .inner
            .client
            .append_to_stream(
                name.as_str(),
                &AppendToStreamOptions::default().stream_state(state),
                data,
            )
            .await;
        let written = match written {
            // No position: KurrentDB took it for a retry of a stored append.
            Ok(w) if w.position == Position::start() => None,
            Ok(w) => Some(w),
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                self.judge_after_catching_up(stream, &mut pending).await?;
                if pending.settled() {
                    return Ok(pending.finish());
                }
                return Err(Error::VersionConflict {
                    stream: stream.to_owned(),
                    expected,
                    actual: match current {
                        CurrentRevision::Current(r) => r + 1,
                        CurrentRevision::NoStream => 0,
                    },
                });
            }
            Err(e) => return Err(unavailable(format!("append to {name}: {e}"))),
        };
        let Some(written) = written else {
            self.judge_after_catching_up(stream, &mut pending).await?;
            if pending.settled() {
                return Ok(pending.finish());
            }
            return Err(unavailable("a duplicate the index does not know"));
        };
        // The answer carries one position for the whole append: read back each event's.
        let n = ids.len() as u64;
        let first_version = written.next_expected_version + 2 - n;
        let stored = self.read_stream(stream, first_version, ids.len()).await?;
        let matches =
            stored.len() == ids.len() && stored.iter().zip(&ids).all(|(s, id)| s.event_id == *id);
        let (Some(first), true) = (stored.first(), matches) else {
            return Err(unavailable(format!(
                "the events written to {name} at revision {} are not the ones appended",
                written.next_expected_version
            )));
        };
        let recorded_at = first.recorded_at;
        Ok(pending.written(
            first_version,
            // In range: `matches` checked there is one stored event per written one.
            |i| stored[i as usize].position,
            recorded_at,
        ))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if limit == 0 || stream.is_empty() {
            return Ok(Vec::new());
        }
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from_version.max(1) - 1))
            .max_count(limit);
        let mut read = match self
            .inner
            .client
            .read_stream(self.name(stream).as_str(), &options)
            .await
        {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(e)) => out.push(self.recorded(&e)?),
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(out),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = self.resolve(after).await?;
        let read = read_all_events(
            &self.inner.client,
            &ReadAllOptions::default()
                .forwards()
                .position(start)
                .filter(filter(&self.inner.prefix))
                .max_count(limit + 1),
        )
        .await?;
        let mut out: Vec<RecordedEvent> = Vec::with_capacity(limit);
        for e in &read {
            let e = self.recorded(e)?;
            let last = out.last().map_or(after, |l| l.position);
            if e.position <= after {
                continue;
            }
            if e.position <= last {
                return Err(unavailable(format!(
                    "$all went from position {last} to {}",
                    e.position
                )));
            }
            out.push(e);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn head(&self) -> Result<u64> {
        let last = read_all_events(
            &self.inner.client,
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .filter(filter(&self.inner.prefix))
                .max_count(1),
        )
        .await?;
        Ok(last
            .first()
            .map_or(0, |e| e.get_original_event().position.prepare))
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
    }
}
