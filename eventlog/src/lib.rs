//! The event log: the only source of truth.
//!
//! [`EventLog`] is the port every backend implements:
//! - [`EventLog::append`] writes events to one stream, atomically, if the stream is at the
//!   [`ExpectedVersion`]; it is idempotent by event id — appending events whose ids are already
//!   stored returns the original [`AppendResult`] (with `duplicate: true`) and writes nothing;
//! - [`EventLog::append_batch`] is several such appends to one stream (one per command, say)
//!   written as one: one expected version, one atomic write (one fsync, one JetStream atomic
//!   batch, one KurrentDB append), each part still idempotent on its own;
//! - [`EventLog::read_stream`] and [`EventLog::read_all`] read back;
//! - [`EventLog::subscribe`] delivers every event after a global position: first what is
//!   stored (catch-up), then new events as they become durable (live), with no gap and no
//!   duplicate at the seam.
//!
//! Versions are per stream, gapless, starting at 1 (a room's version is its `seq`). Positions
//! are global, strictly increasing in commit order, starting at 1; position 0 means "before
//! everything".
//!
//! [`follow::Shared`] wraps any backend so that every subscription of a process is served from
//! one follower of the log.
//!
//! Backends: [`sqlite::SqliteLog`] (the embedded default) and [`jetstream::JetStreamLog`]
//! (NATS JetStream, for several nodes). The dev-only `eventlog-testkit` crate holds the
//! conformance suite every backend must pass.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use uuid::Uuid;

pub mod follow;
pub mod jetstream;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod sqlite;

/// An event to append. The payload is opaque to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Idempotency key: the log stores each event id at most once.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Vec<u8>,
    /// JSON object with tracing context and the like; may be empty.
    pub metadata: Vec<u8>,
}

impl NewEvent {
    /// The metadata that carries `traceparent` (read back by
    /// [`RecordedEvent::live_traceparent`]); empty without one.
    pub fn trace_metadata(traceparent: Option<&str>) -> Vec<u8> {
        traceparent
            .map(|tp| {
                serde_json::json!({ "traceparent": tp })
                    .to_string()
                    .into_bytes()
            })
            .unwrap_or_default()
    }
}

/// A stored event with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    /// 1-based, gapless within the stream.
    pub version: u64,
    /// Global, strictly increasing in commit order.
    pub position: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    /// When the event became durable (set by the log, the same for every event of one append).
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The W3C `traceparent` the event's metadata carries (the trace of the request that
    /// appended it), so consumers can continue that trace — while it is live: `None` for an
    /// event recorded over a minute ago (a catch-up or a rebuild replaying history would
    /// otherwise hang spans on traces long finished).
    pub fn live_traceparent(&self) -> Option<String> {
        if self.metadata.is_empty() || Utc::now() - self.recorded_at > chrono::TimeDelta::minutes(1)
        {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            traceparent: Option<String>,
        }
        serde_json::from_slice::<Meta>(&self.metadata)
            .ok()?
            .traceparent
    }
}

/// The state a stream must be in for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (has no events).
    NoStream,
    /// The stream's last version must be exactly this (≥ 1).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// The expectation matching a stream whose last version is `version` (0 = empty).
    pub fn at(version: u64) -> Self {
        if version == 0 {
            Self::NoStream
        } else {
            Self::Exact(version)
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first appended event.
    pub first_version: u64,
    /// Version of the last appended event: the stream's version right after this append.
    pub last_version: u64,
    /// Global position of the first appended event.
    pub first_position: u64,
    /// Global position of the last appended event; wait for projections to reach it for
    /// read-your-writes.
    pub last_position: u64,
    pub recorded_at: DateTime<Utc>,
    /// True when the events were already stored: nothing was written and the positions are
    /// those of the original append.
    pub duplicate: bool,
}

/// What kind of failure an [`Error`] is, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stream is not at the expected version; reload and decide again.
    VersionConflict,
    /// Some but not all of the event ids are stored already, or they are stored in another
    /// stream: the caller reused ids for different events.
    IdempotencyMismatch,
    /// The request itself is malformed (no events, bad stream name).
    InvalidArgument,
    /// The storage failed or is unreachable; the append may be retried.
    Unavailable,
    /// The log is shutting down.
    Closed,
}

/// Event-log failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The stream's version differs from the expected one.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    VersionConflict {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// Event ids reused for different events.
    #[error("event ids already stored for other events: {0}")]
    IdempotencyMismatch(String),
    /// Malformed request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Storage failure.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The log has shut down.
    #[error("event log is closed")]
    Closed,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::VersionConflict { .. } => ErrorKind::VersionConflict,
            Self::IdempotencyMismatch(_) => ErrorKind::IdempotencyMismatch,
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Closed => ErrorKind::Closed,
        }
    }
}

/// Event-log result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Catch-up-then-live stream of events after a position. Ends only on error or shutdown.
pub type Subscription = BoxStream<'static, Result<Arc<RecordedEvent>>>;

/// The event-log port.
#[async_trait]
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Appends `events` (at least one) to `stream` atomically if it is at `expected`.
    /// Returns only once the events are durable. A batch of one: see [`Self::append_batch`].
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let mut answers = self.append_batch(stream, expected, vec![events]).await?;
        answers
            .pop()
            .unwrap_or_else(|| Err(Error::Unavailable("a batch of one got no answer".into())))
    }

    /// Appends several groups of events (at least one, each of at least one event; an event id
    /// at most once in the whole batch) to `stream` in one atomic write, and answers each group
    /// as [`Self::append`] would have answered it alone:
    ///
    /// - a group whose ids are all stored already (as one append, in this stream) is answered
    ///   with its original result, `duplicate: true`, and not written again; a group whose ids
    ///   are partly stored, or stored elsewhere, gets [`Error::IdempotencyMismatch`] and is not
    ///   written. Neither affects the other groups;
    /// - the other groups are written together, in batch order, at consecutive versions right
    ///   after `expected`, with one `recorded_at` — or, if the stream is not at `expected`,
    ///   none is and the whole call fails with [`Error::VersionConflict`] (when every group is
    ///   answered already there is nothing to check and no conflict).
    ///
    /// The outer error is for the batch as a whole (conflict, malformed request, storage); the
    /// inner ones, in group order, are each group's. Returns only once the writes are durable.
    ///
    /// One exception to "one atomic write": the JetStream backend on an R1 file stream writes
    /// the groups one after the other, each conditional on the previous (see
    /// `jetstream`'s module docs). If the stream moves between two of them (another writer),
    /// the groups from there on are answered with [`Error::VersionConflict`] and not written;
    /// the caller decides them again.
    async fn append_batch(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<AppendResult>>>;

    /// Up to `limit` events of `stream` with version ≥ `from_version`, in version order.
    /// An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `limit` events with position > `after`, in position order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// Position of the last durable event (0 when empty).
    async fn head(&self) -> Result<u64>;

    /// Every event with position > `after`: stored ones first, then live ones, in order,
    /// without gaps or duplicates.
    fn subscribe(&self, after: u64) -> Subscription;

    /// Stops taking appends, finishes (makes durable and answers) those already submitted,
    /// and releases the storage. Appends after this fail with [`Error::Closed`].
    async fn close(&self);
}

/// Longest stream name accepted, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 256;

/// Rejects malformed requests (the same way in every backend) before they reach storage.
pub(crate) fn validate(
    stream: &str,
    expected: ExpectedVersion,
    batch: &[Vec<NewEvent>],
) -> Result<()> {
    if stream.is_empty() {
        return Err(Error::InvalidArgument("stream name is empty".into()));
    }
    if stream.len() > MAX_STREAM_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "stream name is {} bytes long, the limit is {MAX_STREAM_NAME_LEN}",
            stream.len()
        )));
    }
    if stream.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(
            "stream name contains control characters".into(),
        ));
    }
    if expected == ExpectedVersion::Exact(0) {
        return Err(Error::InvalidArgument(
            "expected version 0 does not exist; use NoStream for an empty stream".into(),
        ));
    }
    if batch.is_empty() || batch.iter().any(Vec::is_empty) {
        return Err(Error::InvalidArgument("no events to append".into()));
    }
    match batch {
        [events] => match events.as_slice() {
            [_] => {}
            [a, b] if a.event_id != b.event_id => {}
            _ => unique_ids(events.iter())?,
        },
        _ => unique_ids(batch.iter().flatten())?,
    }
    Ok(())
}

fn unique_ids<'a>(events: impl Iterator<Item = &'a NewEvent>) -> Result<()> {
    let mut seen = HashSet::new();
    for e in events {
        if !seen.insert(e.event_id) {
            return Err(duplicate_in_request(e.event_id));
        }
    }
    Ok(())
}

/// A batch on its way into a backend: each group's answer, once known.
pub(crate) struct Pending {
    groups: Vec<Vec<NewEvent>>,
    /// Events per group (kept apart: [`Self::take_to_write`] empties the groups).
    sizes: Vec<u64>,
    answers: Vec<Option<Result<AppendResult>>>,
}

impl Pending {
    pub(crate) fn new(groups: Vec<Vec<NewEvent>>) -> Self {
        let answers = groups.iter().map(|_| None).collect();
        let sizes = groups.iter().map(|g| g.len() as u64).collect();
        Self {
            groups,
            sizes,
            answers,
        }
    }

    /// Answers every group not answered yet for which `judge` (an idempotency lookup) has an
    /// answer; an outer error from it fails the whole batch.
    pub(crate) fn judge(
        &mut self,
        mut judge: impl FnMut(&[NewEvent]) -> Result<Option<Result<AppendResult>>>,
    ) -> Result<()> {
        for (group, answer) in self.groups.iter().zip(&mut self.answers) {
            if answer.is_none() {
                *answer = judge(group)?;
            }
        }
        Ok(())
    }

    /// Every event id, group by group.
    pub(crate) fn ids(&self) -> Vec<Uuid> {
        self.groups.iter().flatten().map(|e| e.event_id).collect()
    }

    /// The groups, for lookups that take them all at once.
    pub(crate) fn groups(&self) -> &[Vec<NewEvent>] {
        &self.groups
    }

    /// Answers the groups from `answers` (one per group, in order) where it has one.
    pub(crate) fn answer(&mut self, answers: Vec<Option<Result<AppendResult>>>) {
        for (mine, theirs) in self.answers.iter_mut().zip(answers) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }

    /// The indexes of the groups not answered yet, in order.
    pub(crate) fn unanswered(&self) -> Vec<usize> {
        (0..self.answers.len())
            .filter(|&i| self.answers[i].is_none())
            .collect()
    }

    /// Answers group `i` (if it is not answered yet).
    pub(crate) fn answer_one(&mut self, i: usize, answer: Result<AppendResult>) {
        if let Some(mine @ None) = self.answers.get_mut(i) {
            *mine = Some(answer);
        }
    }

    /// Whether every group is answered (nothing left to write).
    pub(crate) fn settled(&self) -> bool {
        self.answers.iter().all(Option::is_some)
    }

    /// The events of the groups still to write, in order.
    pub(crate) fn to_write(&self) -> impl Iterator<Item = &NewEvent> {
        self.groups
            .iter()
            .zip(&self.answers)
            .filter(|(_, a)| a.is_none())
            .flat_map(|(g, _)| g)
    }

    /// Takes the groups still to write out (for a backend that consumes them).
    pub(crate) fn take_to_write(&mut self) -> Vec<NewEvent> {
        self.groups
            .iter_mut()
            .zip(&self.answers)
            .filter(|(_, a)| a.is_none())
            .flat_map(|(g, _)| std::mem::take(g))
            .collect()
    }

    /// The answers once the groups still to write are written at versions from
    /// `first_version`, the `i`-th written event at `position(i)`.
    pub(crate) fn written(
        self,
        first_version: u64,
        position: impl Fn(u64) -> u64,
        recorded_at: DateTime<Utc>,
    ) -> Vec<Result<AppendResult>> {
        let mut offset = 0u64;
        self.sizes
            .into_iter()
            .zip(self.answers)
            .map(|(n, answer)| {
                answer.unwrap_or_else(|| {
                    let (first, last) = (offset, offset + n - 1);
                    offset += n;
                    Ok(AppendResult {
                        first_version: first_version + first,
                        last_version: first_version + last,
                        first_position: position(first),
                        last_position: position(last),
                        recorded_at,
                        duplicate: false,
                    })
                })
            })
            .collect()
    }

    /// The answers of a batch with nothing left to write.
    pub(crate) fn finish(self) -> Vec<Result<AppendResult>> {
        self.answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| Err(Error::Unavailable("a group was not answered".into())))
            })
            .collect()
    }
}

fn duplicate_in_request(id: Uuid) -> Error {
    Error::InvalidArgument(format!(
        "event id {id} appears more than once in the request"
    ))
}
