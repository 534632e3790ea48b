//! The embedded event log: one SQLite file in WAL mode, written with group commit.
//!
//! # Design
//!
//! - **One writer.** A dedicated thread owns the only write connection. [`SqliteLog::append`]
//!   sends a request over a bounded channel and waits for the answer on a oneshot. The writer
//!   takes the first waiting request plus whatever else is already queued (up to
//!   [`Options::max_batch`]) and runs them all in one transaction (a busy writer first waits
//!   until [`Options::commit_every`] after its last transaction began, so that more join); a request of several events
//!   (one append of several, or an [`EventLog::append_batch`]) runs inside its own `SAVEPOINT`
//!   (a single-event one is one `INSERT`, atomic by itself), so that a failing request
//!   (version conflict, storage error) leaves the others alone.
//!   After `COMMIT` — with `synchronous=FULL`, the batch is then on disk — it answers every
//!   caller and then publishes the new events to live subscribers, in position order.
//! - **Idempotency first.** Each request's event ids are looked up, group by group, before its
//!   expected version is checked, so a retry of a stored append gets the original result even
//!   when its expected version has gone stale. Requests earlier in the same transaction count
//!   as stored.
//! - **Gapless positions.** The writer assigns positions itself from an in-memory counter that
//!   only moves for requests that are written; a failed transaction resets it from the file.
//! - **Checkpoints** (copying the WAL back into the database file, with an fsync) run on a
//!   thread of their own, so commits do not stall behind them.
//! - **Reads** run on Tokio's blocking pool with a small pool of read-only connections; WAL
//!   lets them run alongside the writer.
//! - **Subscriptions** register with the live broadcast first, then page through the file from
//!   the requested position, then switch to the broadcast, skipping what they have already
//!   yielded. A subscriber that falls behind the broadcast (lags), or sees a position jump,
//!   reads the file again from where it was; it is never failed for being slow.
//!
//! # File format
//!
//! `events`, with the global position as the rowid and `UNIQUE(event_id)` (idempotency
//! lookups); `event_id` is the 16-byte UUID, `recorded_at` microseconds since the Unix epoch.
//! `stream_index` maps `(stream, version)` to the position; `indexed` holds the position up to
//! which it is complete. `PRAGMA user_version` holds the schema version (2; a version-1 file,
//! whose `events` table carried `UNIQUE(stream, version)` instead, is converted when opened).
//!
//! **The stream index is written in batches.** An index entry written with each event
//! dirtied one page of the index per stream per commit — most of the WAL and checkpoint
//! traffic of a busy log with many streams (a commit every few milliseconds touching a
//! different page for each room in it). The writer keeps the entries of the newest events
//! (after `indexed`) in memory and writes them all at once, sorted, inside a transaction
//! that commits anyway, once [`Options::index_every`] have gathered: a stream's entries then
//! share pages. A reader finds a stream's newest events by scanning the events after
//! `indexed` (about `index_every` rows, by position, plus the events of the transaction that
//! crossed it), in the same snapshot; the
//! writer knows the newest version of each stream in that tail from memory, and rebuilds
//! that memory from the file when it opens.
//!
//! # Requests it rejects
//!
//! Besides what the [`EventLog`] contract rejects (no events, an event id twice in one
//! request) the log rejects with [`Error::InvalidArgument`]: an empty stream name, one longer
//! than [`crate::MAX_STREAM_NAME_LEN`] bytes or with control characters, and `Exact(0)` (use
//! `NoStream`).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    AppendResult, Error, ErrorKind, EventLog, ExpectedVersion, NewEvent, Pending, RecordedEvent,
    Result, Subscription, validate,
};

/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// The events table, under the name given.
fn events_table(name: &str) -> String {
    format!(
        "CREATE TABLE {name} (
            position       INTEGER PRIMARY KEY,
            stream         TEXT    NOT NULL,
            version        INTEGER NOT NULL,
            event_id       BLOB    NOT NULL UNIQUE,
            event_type     TEXT    NOT NULL,
            schema_version INTEGER NOT NULL,
            data           BLOB    NOT NULL,
            metadata       BLOB    NOT NULL,
            recorded_at    INTEGER NOT NULL
        ) STRICT;"
    )
}

/// The stream index and how far it goes (see the module docs).
const STREAM_INDEX: &str = "
CREATE TABLE stream_index (
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) STRICT, WITHOUT ROWID;
CREATE TABLE indexed (upto INTEGER NOT NULL) STRICT;
";

/// A new file.
fn schema() -> String {
    format!(
        "{}{STREAM_INDEX}INSERT INTO indexed VALUES (0); PRAGMA user_version = {SCHEMA_VERSION};",
        events_table("events")
    )
}

/// Version 1 to 2: the events table again without `UNIQUE(stream, version)` (SQLite cannot
/// drop a table constraint), its entries moved to `stream_index`. Copies the whole log once.
/// The stream index is filled first, in the order of the old table's `(stream, version)`
/// index, so that its inserts are sequential. The old table's pages stay in the file as free
/// pages, reused by later appends.
fn migrate_from_v1() -> String {
    format!(
        "{STREAM_INDEX}
        INSERT INTO stream_index SELECT stream, version, position FROM events
            ORDER BY stream, version;
        INSERT INTO indexed SELECT coalesce(max(position), 0) FROM events;
        {}
        INSERT INTO events_v2 SELECT position, stream, version, event_id, event_type,
            schema_version, data, metadata, recorded_at FROM events;
        DROP TABLE events;
        ALTER TABLE events_v2 RENAME TO events;
        PRAGMA user_version = {SCHEMA_VERSION};",
        events_table("events_v2")
    )
}

/// A stream's indexed events from a version on. Columns in the order [`decode_row`] reads
/// them.
const READ_STREAM_INDEXED: &str = "SELECT e.stream, e.version, e.position, e.event_id, \
     e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at \
     FROM stream_index s JOIN events e ON e.position = s.position \
     WHERE s.stream = ?1 AND s.version >= ?2 ORDER BY s.version LIMIT ?3";

/// A stream's events among those not indexed yet (after `indexed`), from a version on: a scan
/// of the newest events by position. Columns in the order [`decode_row`] reads them.
const READ_STREAM_TAIL: &str = "SELECT stream, version, position, event_id, event_type, \
     schema_version, data, metadata, recorded_at FROM events \
     WHERE position > (SELECT upto FROM indexed) AND stream = ?1 AND version >= ?2 \
     ORDER BY position LIMIT ?3";

/// Columns in the order [`decode_row`] reads them.
const READ_ALL: &str = "SELECT stream, version, position, event_id, event_type, \
     schema_version, data, metadata, recorded_at FROM events \
     WHERE position > ?1 ORDER BY position LIMIT ?2";

/// A stream's last indexed version, 0 if none: one seek to the end of the stream's entries in
/// the stream index. (The writer knows the versions of the events not indexed yet.)
const STREAM_VERSION: &str = "SELECT coalesce(max(version), 0) FROM stream_index WHERE stream = ?1";

/// Tuning knobs for [`SqliteLog::open_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Most append requests committed in one transaction. Default 1024.
    pub max_batch: usize,
    /// A busy writer begins a transaction at most this often: requests that come sooner after
    /// the last one began wait and are committed together with the next (group commit, as
    /// PostgreSQL's `commit_delay`). Each commit costs an `fsync` and a WAL write of every page
    /// it dirtied, whether it carries one request or twenty. An idle writer commits a request
    /// at once. Default 2 ms; zero commits whatever is queued as soon as the last commit ends.
    pub commit_every: Duration,
    /// Append requests that may wait for the writer before [`SqliteLog::append`] itself waits
    /// for room (back-pressure). Default 8192.
    pub queue_capacity: usize,
    /// Live events buffered per subscriber; a subscriber further behind than this reads the
    /// file instead. Default 4096.
    pub live_capacity: usize,
    /// Events fetched per read while a subscription catches up. Default 1024.
    pub catch_up_page: usize,
    /// Idle read-only connections kept open for reuse. Default 4.
    pub max_idle_readers: usize,
    /// How long a connection waits for a lock held by another connection (a backup tool, a
    /// checkpoint) before failing with [`Error::Unavailable`]. Default 5 s.
    pub busy_timeout: Duration,
    /// Events written between two checkpoints (copying the WAL back into the database file),
    /// which run on a thread of their own so that commits do not wait for them. 0 runs them
    /// inline in the writer instead, as SQLite does by default. Default 1000.
    pub checkpoint_every: usize,
    /// Events whose stream-index entries are written together, in the first transaction after
    /// this many have gathered (see the module docs): more share more index pages, and make
    /// reads of a stream's newest events scan more rows. At least 1. Default 2048.
    pub index_every: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            commit_every: Duration::from_millis(2),
            queue_capacity: 8192,
            live_capacity: 4096,
            catch_up_page: 1024,
            max_idle_readers: 4,
            busy_timeout: Duration::from_secs(5),
            checkpoint_every: 1000,
            index_every: 2048,
        }
    }
}

/// Counters of the writer's work since [`SqliteLog::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions committed (each one `fsync`). Fewer than `requests` under concurrency:
    /// that is group commit at work.
    pub batches: u64,
    /// Append requests (an `append` or an `append_batch` each) answered from committed batches (written, duplicates and rejected).
    pub requests: u64,
    /// Events written.
    pub events: u64,
    /// Batches whose transaction failed (every request in them got [`Error::Unavailable`]).
    pub failed_batches: u64,
    /// Time spent in `COMMIT` (writing the WAL and fsyncing it), in microseconds.
    pub commit_micros: u64,
}

/// The embedded SQLite event log. Cheap to clone: clones share the writer, readers and
/// subscribers.
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: Options,
    /// `None` once closed. Appenders clone it for the duration of one send.
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    /// `None` once closed. The writer holds the other sender; subscribers end when both are
    /// gone.
    live: Mutex<Option<broadcast::Sender<Arc<RecordedEvent>>>>,
    /// Taken by the first `close`; the async mutex makes concurrent closes wait for it.
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    readers: ReaderPool,
    shared: Arc<Shared>,
}

/// State the writer publishes to handles.
#[derive(Debug, Default)]
struct Shared {
    head: AtomicU64,
    batches: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
    failed_batches: AtomicU64,
    commit_micros: AtomicU64,
}

enum Command {
    Append(AppendRequest),
    Pause(PauseRequest),
}

/// What one append request is answered with: see [`EventLog::append_batch`].
type Answers = Result<Vec<Result<AppendResult>>>;

struct AppendRequest {
    stream: String,
    expected: ExpectedVersion,
    batch: Vec<Vec<NewEvent>>,
    reply: oneshot::Sender<Answers>,
}

struct PauseRequest {
    paused: oneshot::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

/// Holds the writer between two batches until dropped; see [`SqliteLog::pause_writer`].
#[derive(Debug)]
pub struct WriterPause {
    _release: std::sync::mpsc::Sender<()>,
}

/// Locks a std mutex, ignoring poisoning: every critical section here is a single `take`,
/// `push` or `pop`, which cannot leave the data half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(err: impl fmt::Display) -> Error {
    Error::Unavailable(err.to_string())
}

impl fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.inner.path)
            .field("head", &self.inner.shared.head.load(Ordering::Relaxed))
            .field("closed", &lock(&self.inner.commands).is_none())
            .finish()
    }
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` with default [`Options`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Options::default()).await
    }

    /// Opens (creating if needed) the log at `path`.
    ///
    /// Starts the writer thread, which opens the file, creates the schema if the file is new
    /// and loads the head position; this returns once it has.
    pub async fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let options = Options {
            max_batch: options.max_batch.max(1),
            queue_capacity: options.queue_capacity.max(1),
            live_capacity: options.live_capacity.max(1),
            catch_up_page: options.catch_up_page.max(1),
            index_every: options.index_every.max(1),
            ..options
        };
        let (commands, command_rx) = mpsc::channel(options.queue_capacity);
        let (live, _) = broadcast::channel(options.live_capacity);
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = oneshot::channel();

        let writer_path = path.clone();
        let writer_live = live.clone();
        let writer_shared = shared.clone();
        let writer_options = options.clone();
        let handle = std::thread::Builder::new()
            .name("eventlog-writer".into())
            .spawn(move || {
                let (max_batch, every) = (writer_options.max_batch, writer_options.commit_every);
                match Writer::open(&writer_path, &writer_options, writer_live, writer_shared) {
                    Ok(writer) => {
                        // The opener may have given up waiting; the writer then just drains
                        // an empty channel and stops.
                        let _ = ready_tx.send(Ok(()));
                        writer.run(command_rx, max_batch, every);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .map_err(|e| unavailable(format_args!("cannot start the writer thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                // The thread has returned already; joining cannot block for long.
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
                return Err(err);
            }
            Err(_) => return Err(unavailable("the writer thread died while opening")),
        }
        tracing::debug!(path = %path.display(), head = shared.head.load(Ordering::Relaxed), "event log opened");

        Ok(Self {
            inner: Arc::new(Inner {
                readers: ReaderPool {
                    path: path.clone(),
                    idle: Mutex::new(Vec::new()),
                    closed: AtomicBool::new(false),
                    max_idle: options.max_idle_readers,
                    busy_timeout: options.busy_timeout,
                },
                path,
                options,
                commands: Mutex::new(Some(commands)),
                live: Mutex::new(Some(live)),
                writer: tokio::sync::Mutex::new(Some(handle)),
                shared,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the log runs with (after clamping zeros to one).
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.shared;
        Stats {
            batches: s.batches.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            commit_micros: s.commit_micros.load(Ordering::Relaxed),
        }
    }

    /// Append requests waiting for the writer right now.
    pub fn queued(&self) -> usize {
        lock(&self.inner.commands)
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Stops the writer between two batches until the returned guard is dropped: appends queue
    /// up meanwhile (and then go out together in the next batch). For maintenance that needs
    /// the file still, such as copying it, and for tests that need a known batch.
    ///
    /// Returns once the writer has finished the batches queued before this call. [`close`]
    /// waits for the guard to be dropped.
    ///
    /// [`close`]: EventLog::close
    pub async fn pause_writer(&self) -> Result<WriterPause> {
        let sender = self.sender()?;
        let (paused, paused_rx) = oneshot::channel();
        let (release_tx, release) = std::sync::mpsc::channel();
        sender
            .send(Command::Pause(PauseRequest { paused, release }))
            .await
            .map_err(|_| self.send_failed())?;
        drop(sender);
        paused_rx
            .await
            .map_err(|_| unavailable("the writer thread stopped"))?;
        Ok(WriterPause {
            _release: release_tx,
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>> {
        lock(&self.inner.commands).clone().ok_or(Error::Closed)
    }

    /// Why a send to the writer failed: the log was closed meanwhile, or the writer died.
    fn send_failed(&self) -> Error {
        if lock(&self.inner.commands).is_some() {
            unavailable("the writer thread stopped")
        } else {
            Error::Closed
        }
    }

    /// Runs `read` with a pooled read-only connection on the blocking pool.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(read))
            .await
            .map_err(|e| unavailable(format_args!("read task failed: {e}")))?
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn append_batch(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
    ) -> Answers {
        validate(stream, expected, &batch)?;
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            stream: stream.to_owned(),
            expected,
            batch,
            reply,
        };
        sender
            .send(Command::Append(request))
            .await
            .map_err(|_| self.send_failed())?;
        // Let go of the sender before waiting, so a concurrent close sees the channel drain.
        drop(sender);
        answer
            .await
            .map_err(|_| unavailable("the writer thread stopped"))?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.to_owned();
        self.read(move |conn| read_stream_with(conn, &stream, from_version.max(1), limit))
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| read_all_with(conn, after, limit))
            .await
    }

    async fn head(&self) -> Result<u64> {
        // The writer stores the head after each COMMIT, before answering any append: it is
        // exactly the durable head, and reading it does not touch the file.
        if self.inner.readers.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(self.inner.shared.head.load(Ordering::Acquire))
    }

    fn subscribe(&self, after: u64) -> Subscription {
        // Register with the broadcast before reading anything: whatever commits from now on is
        // delivered there, and whatever committed before is in the file.
        let Some(live) = lock(&self.inner.live)
            .as_ref()
            .map(broadcast::Sender::subscribe)
        else {
            return futures::stream::empty().boxed();
        };
        let state = SubscriptionState {
            log: self.clone(),
            live,
            last: after,
            buffer: VecDeque::new(),
            catching_up: true,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed()
    }

    async fn close(&self) {
        let mut writer = self.inner.writer.lock().await;
        // No new appends or subscriptions from here on.
        drop(lock(&self.inner.commands).take());
        drop(lock(&self.inner.live).take());
        if let Some(handle) = writer.take() {
            // The writer answers what is queued, then sees the channel closed and returns.
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("the event-log writer thread panicked"),
                Err(e) => tracing::error!(error = %e, "joining the event-log writer failed"),
            }
            self.inner.readers.close();
            tracing::debug!(path = %self.inner.path.display(), "event log closed");
        }
    }
}

/// The indexed part of the stream, then (if the limit leaves room) its events not indexed yet,
/// in one snapshot: every indexed version of a stream is below its versions not indexed yet.
fn read_stream_with(
    conn: &Connection,
    stream: &str,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let snapshot = conn.unchecked_transaction().map_err(unavailable)?;
    let mut out = Vec::with_capacity(limit.min(256));
    for sql in [READ_STREAM_INDEXED, READ_STREAM_TAIL] {
        let left = limit - out.len();
        if left == 0 {
            break;
        }
        let mut stmt = snapshot.prepare_cached(sql).map_err(unavailable)?;
        let rows = stmt
            .query_map(
                params![stream, sql_int(from_version), sql_limit(left)],
                decode_row,
            )
            .map_err(unavailable)?;
        for row in rows {
            out.push(row.map_err(unavailable)?);
        }
    }
    // Ended here rather than by the drop, which would ignore a failure: a connection left
    // inside its snapshot must not go back to the pool.
    snapshot.commit().map_err(unavailable)?;
    Ok(out)
}

fn read_all_with(conn: &Connection, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn.prepare_cached(READ_ALL).map_err(unavailable)?;
    let rows = stmt
        .query_map(params![sql_int(after), sql_limit(limit)], decode_row)
        .map_err(unavailable)?;
    collect_rows(rows, limit)
}

/// A position or version as SQLite stores it; beyond `i64::MAX` (never reached) it saturates.
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn collect_rows(
    rows: impl Iterator<Item = rusqlite::Result<RecordedEvent>>,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::with_capacity(limit.min(256));
    for row in rows {
        out.push(row.map_err(unavailable)?);
    }
    Ok(out)
}

/// Decodes a row of [`READ_STREAM_INDEXED`], [`READ_STREAM_TAIL`] or [`READ_ALL`].
fn decode_row(row: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let id: [u8; 16] = row.get(3)?;
    let micros: i64 = row.get(8)?;
    let recorded_at = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| rusqlite::Error::IntegralValueOutOfRange(8, micros))?;
    Ok(RecordedEvent {
        stream: row.get(0)?,
        version: row.get(1)?,
        position: row.get(2)?,
        event_id: Uuid::from_bytes(id),
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        data: row.get(6)?,
        metadata: row.get(7)?,
        recorded_at,
    })
}

fn micros_to_time(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| unavailable(format_args!("stored timestamp {micros} is out of range")))
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Page cache of the writer, in KiB: the hot parts of both indexes stay in memory.
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Page cache of each reader and of the checkpointer, in KiB.
const READER_CACHE_KIB: i64 = 8 * 1024;

fn configure(conn: &Connection, busy_timeout: Duration, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // Savepoint journals and sorts stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Negative: a size in KiB rather than in pages.
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(())
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
    max_idle: usize,
    busy_timeout: Duration,
}

impl ReaderPool {
    /// Runs `f` with an idle connection (or a new one) and puts it back afterwards. Blocking.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let conn = match lock(&self.idle).pop() {
            Some(conn) => conn,
            None => self.open().map_err(unavailable)?,
        };
        let result = f(&conn);
        // A connection that failed is dropped rather than reused: it may be the cause.
        if result.is_ok() {
            let mut idle = lock(&self.idle);
            // Checked under the lock, so a concurrent `close` cannot miss this connection.
            if !self.closed.load(Ordering::Acquire) && idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        result
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, self.busy_timeout, READER_CACHE_KIB)?;
        Ok(conn)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(std::mem::take(&mut *lock(&self.idle)));
    }
}

// ---------------------------------------------------------------------------------------------
// The writer

struct Writer {
    conn: Connection,
    /// Position the next written event gets.
    next_position: u64,
    live: broadcast::Sender<Arc<RecordedEvent>>,
    shared: Arc<Shared>,
    /// Set when a transaction failed: the in-memory state must be reloaded from the file.
    stale: bool,
    /// `None` when checkpoints run inline (`Options::checkpoint_every == 0`).
    checkpointer: Option<Checkpointer>,
    /// Events written since the checkpointer was last woken.
    unchecked: usize,
    checkpoint_every: usize,
    /// The stream-index entries (stream, version, position) of the events after `indexed`,
    /// in position order, including those of the transaction under way.
    unindexed: Vec<(String, u64, u64)>,
    /// The last version of each stream among [`Self::unindexed`].
    tail_versions: std::collections::HashMap<String, u64>,
    index_every: usize,
}

/// Copies the WAL back into the database file on its own thread and connection, so that the
/// writer's commits do not wait for it (a checkpoint rewrites pages and fsyncs the file).
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path, busy_timeout: Duration) -> Result<Self> {
        let conn = Connection::open(path)
            .and_then(|conn| {
                configure(&conn, busy_timeout, READER_CACHE_KIB)?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                Ok(conn)
            })
            .map_err(|e| unavailable(format_args!("cannot open {}: {e}", path.display())))?;
        // One pending wake-up is enough: a checkpoint copies everything committed so far.
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("eventlog-checkpointer".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match result {
                        Ok((wal, copied)) => tracing::trace!(wal, copied, "checkpoint"),
                        Err(e) => tracing::warn!(error = %e, "event-log checkpoint failed"),
                    }
                }
            })
            .map_err(|e| unavailable(format_args!("cannot start the checkpointer: {e}")))?;
        Ok(Self { wake, thread })
    }

    /// Asks for a checkpoint; false if one is pending already.
    fn wake(&self) -> bool {
        self.wake.try_send(()).is_ok()
    }

    /// Lets the current checkpoint finish and stops the thread.
    fn stop(self) {
        drop(self.wake);
        if self.thread.join().is_err() {
            tracing::error!("the event-log checkpointer thread panicked");
        }
    }
}

/// What the writer tells one appender once the batch is settled.
type Answer = (oneshot::Sender<Answers>, Answers);

impl Writer {
    fn open(
        path: &Path,
        options: &Options,
        live: broadcast::Sender<Arc<RecordedEvent>>,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| unavailable(format_args!("cannot open {}: {e}", path.display())))?;
        let background = options.checkpoint_every > 0;
        Self::init(&conn, options.busy_timeout, background)
            .map_err(|e| unavailable(format_args!("cannot initialise {}: {e}", path.display())))?;
        let checkpointer = if background {
            Some(Checkpointer::start(path, options.busy_timeout)?)
        } else {
            None
        };
        let mut writer = Self {
            conn,
            next_position: 1,
            live,
            shared,
            stale: true,
            checkpointer,
            unchecked: 0,
            checkpoint_every: options.checkpoint_every,
            unindexed: Vec::new(),
            tail_versions: Default::default(),
            index_every: options.index_every,
        };
        writer.reload()?;
        Ok(writer)
    }

    fn init(
        conn: &Connection,
        busy_timeout: Duration,
        background_checkpoints: bool,
    ) -> rusqlite::Result<()> {
        configure(conn, busy_timeout, WRITER_CACHE_KIB)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode is {mode}, WAL is required"
            )));
        }
        // WAL + FULL: every COMMIT is fsynced before it returns, so an acknowledged append
        // survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        if background_checkpoints {
            // The checkpointer thread does the work. The writer still checkpoints if the WAL
            // reaches 40 MiB, which happens only when appends never pause long enough for
            // the checkpointer to catch up completely (SQLite can restart the WAL from its
            // beginning only then); by that time almost everything is copied already.
            conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        }
        // Do not keep a big WAL file around after a burst.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 => conn.execute_batch(&format!("BEGIN IMMEDIATE; {} COMMIT;", schema())),
            1 => {
                tracing::info!("converting the event log to schema version {SCHEMA_VERSION}");
                conn.execute_batch(&format!("BEGIN IMMEDIATE; {} COMMIT;", migrate_from_v1()))
            }
            SCHEMA_VERSION => Ok(()),
            other => Err(rusqlite::Error::InvalidParameterName(format!(
                "unknown event-log schema version {other} (this build knows {SCHEMA_VERSION})"
            ))),
        }
    }

    /// Reloads the in-memory state from the file.
    fn reload(&mut self) -> Result<()> {
        let head: u64 = self
            .conn
            .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(unavailable)?;
        self.unindexed = self
            .conn
            .prepare(
                "SELECT stream, version, position FROM events \
                 WHERE position > (SELECT upto FROM indexed) ORDER BY position",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(unavailable)?;
        self.tail_versions = self
            .unindexed
            .iter()
            .map(|(stream, version, _)| (stream.clone(), *version))
            .collect();
        self.next_position = head + 1;
        self.shared.head.store(head, Ordering::Release);
        self.stale = false;
        Ok(())
    }

    /// Serves commands until every sender is gone.
    fn run(mut self, mut commands: mpsc::Receiver<Command>, max_batch: usize, every: Duration) {
        let mut received = Vec::with_capacity(max_batch);
        let mut batch = Vec::with_capacity(max_batch);
        let mut answers = Vec::with_capacity(max_batch);
        let mut began = Instant::now().checked_sub(every);
        // Waits for the first command, then takes whatever else is queued, without waiting.
        while commands.blocking_recv_many(&mut received, max_batch) > 0 {
            // Busy (the last transaction began less than `every` ago): let the requests of the
            // next moment join this one.
            if let Some(wait) = began.and_then(|b| every.checked_sub(b.elapsed()))
                && !wait.is_zero()
            {
                std::thread::sleep(wait);
                while received.len() < max_batch
                    && let Ok(command) = commands.try_recv()
                {
                    received.push(command);
                }
            }
            began = Some(Instant::now());
            for command in received.drain(..) {
                match command {
                    Command::Append(request) => batch.push(request),
                    Command::Pause(pause) => {
                        if !batch.is_empty() {
                            self.commit_batch(&mut batch, &mut answers);
                        }
                        let _ = pause.paused.send(());
                        // Returns when the guard is dropped.
                        let _ = pause.release.recv();
                    }
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch, &mut answers);
            }
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
    }

    /// Runs `batch` in one transaction and answers every request in it.
    fn commit_batch(&mut self, batch: &mut Vec<AppendRequest>, answers: &mut Vec<Answer>) {
        let mut written = Vec::new();
        let outcome = self.run_transaction(batch, answers, &mut written);
        let shared = &self.shared;
        match outcome {
            Ok(()) => {
                shared.head.store(self.next_position - 1, Ordering::Release);
                self.unchecked += written.len();
                if self.unchecked >= self.checkpoint_every
                    && let Some(checkpointer) = &self.checkpointer
                    && checkpointer.wake()
                {
                    self.unchecked = 0;
                }
                shared.batches.fetch_add(1, Ordering::Relaxed);
                shared
                    .requests
                    .fetch_add(answers.len() as u64, Ordering::Relaxed);
                shared
                    .events
                    .fetch_add(written.len() as u64, Ordering::Relaxed);
                for (reply, result) in answers.drain(..) {
                    // The appender may have gone away (cancelled); the events stay written.
                    let _ = reply.send(result);
                }
                if self.live.receiver_count() > 0 {
                    for event in written {
                        // Fails only without receivers, which is fine.
                        let _ = self.live.send(Arc::new(event));
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, requests = answers.len() + batch.len(), "event-log batch failed");
                shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                if !self.conn.is_autocommit()
                    && let Err(e) = self.conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %e, "event-log rollback failed");
                }
                self.stale = true;
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "event-log state reload failed; retrying with the next batch");
                }
                let requests = answers.drain(..).map(|(reply, _)| reply);
                let rest = batch.drain(..).map(|request| request.reply);
                for reply in requests.chain(rest) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        batch.clear();
    }

    /// The transaction of one batch. On `Ok` everything in `answers` is committed; on `Err`
    /// nothing is, whatever `answers` says, and requests not yet taken are left in `batch`.
    fn run_transaction(
        &mut self,
        batch: &mut Vec<AppendRequest>,
        answers: &mut Vec<Answer>,
        written: &mut Vec<RecordedEvent>,
    ) -> Result<()> {
        if self.stale {
            self.reload()?;
        }
        self.exec_cached("BEGIN IMMEDIATE")?;
        if self.unindexed.len() >= self.index_every {
            self.write_stream_index()?;
        }
        // One timestamp for the whole batch, stored to the microsecond so that what an append
        // returns equals what reads return.
        let now = Utc::now().trunc_subsecs(6);
        for request in batch.drain(..) {
            let AppendRequest {
                stream,
                expected,
                batch,
                reply,
            } = request;
            match self.apply(&stream, expected, batch, now, written) {
                // SQLite rolls the whole transaction back on some errors (I/O, memory, disk
                // full), even of a read such as an idempotency lookup: then nothing before is
                // written, and nothing after may run outside a transaction (the in-memory
                // versions would no longer match the file). The batch fails as a whole.
                Ok(_) if self.conn.is_autocommit() => {
                    let abort = unavailable("SQLite rolled the transaction back");
                    answers.push((reply, Err(abort.clone())));
                    return Err(abort);
                }
                Ok(result) => answers.push((reply, result)),
                Err(abort) => {
                    answers.push((reply, Err(abort.clone())));
                    return Err(abort);
                }
            }
        }
        let commit = Instant::now();
        self.exec_cached("COMMIT")?;
        let micros = u64::try_from(commit.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared
            .commit_micros
            .fetch_add(micros, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the entries of [`Self::unindexed`] into the stream index, sorted so that each
    /// stream's go into its pages together, inside the transaction under way (if it fails,
    /// [`Self::reload`] restores what it took).
    fn write_stream_index(&mut self) -> Result<()> {
        let Some(&(_, _, upto)) = self.unindexed.last() else {
            return Ok(());
        };
        let mut entries = std::mem::take(&mut self.unindexed);
        self.tail_versions.clear();
        entries.sort_unstable();
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT INTO stream_index (stream, version, position) VALUES (?1, ?2, ?3)",
            )
            .map_err(unavailable)?;
        for (stream, version, position) in &entries {
            insert
                .execute(params![stream, sql_int(*version), sql_int(*position)])
                .map_err(unavailable)?;
        }
        self.conn
            .prepare_cached("UPDATE indexed SET upto = ?1")
            .and_then(|mut s| s.execute([sql_int(upto)]))
            .map_err(unavailable)?;
        Ok(())
    }

    /// One append request, inside the batch's transaction. The inner result is the answer to
    /// the request; an outer error means the transaction itself is broken and must be
    /// abandoned.
    fn apply(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
        now: DateTime<Utc>,
        written: &mut Vec<RecordedEvent>,
    ) -> Result<Answers> {
        let mut pending = Pending::new(batch);
        // Lookups write nothing: when they fail, only this request fails (unless SQLite rolled
        // the transaction back, which the caller checks).
        if let Err(err) = pending.judge(|group| match self.find_stored(stream, group) {
            Ok(stored) => Ok(stored.map(Ok)),
            Err(e) if e.kind() == ErrorKind::IdempotencyMismatch => Ok(Some(Err(e))),
            Err(e) => Err(e),
        }) {
            return Ok(Err(err));
        }
        if pending.settled() {
            return Ok(Ok(pending.finish()));
        }
        let first_version = match self.check_version(stream, expected) {
            Ok(version) => version,
            Err(err) => return Ok(Err(err)),
        };
        let events = pending.take_to_write();
        let count = events.len() as u64;
        let first_position = self.next_position;
        let mark = written.len();
        // A request of several events needs a savepoint to fail alone; a single INSERT is
        // atomic by itself (SQLite undoes a failed statement), so one event needs none.
        let savepoint = count > 1;
        if savepoint {
            self.exec_cached("SAVEPOINT request")?;
        }
        match self.insert(stream, first_version, events, now, written) {
            Ok(()) => {
                if savepoint {
                    self.exec_cached("RELEASE request")?;
                }
                let last_version = first_version + count - 1;
                self.unindexed.extend(
                    (0..count).map(|i| (stream.to_owned(), first_version + i, first_position + i)),
                );
                self.tail_versions.insert(stream.to_owned(), last_version);
                self.next_position += count;
                Ok(Ok(pending.written(
                    first_version,
                    |i| first_position + i,
                    now,
                )))
            }
            Err(err) => {
                written.truncate(mark);
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (I/O error, disk full).
                    return Err(err);
                }
                if savepoint {
                    self.exec_cached("ROLLBACK TO request")?;
                    self.exec_cached("RELEASE request")?;
                }
                Ok(Err(err))
            }
        }
    }

    /// The version the next event of `stream` gets, if the stream is at `expected`.
    fn check_version(&self, stream: &str, expected: ExpectedVersion) -> Result<u64> {
        let actual: u64 = match self.tail_versions.get(stream) {
            Some(&version) => version,
            None => self
                .conn
                .prepare_cached(STREAM_VERSION)
                .and_then(|mut s| s.query_row([stream], |r| r.get(0)))
                .map_err(unavailable)?,
        };
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        };
        if ok {
            Ok(actual + 1)
        } else {
            Err(Error::VersionConflict {
                stream: stream.to_owned(),
                expected,
                actual,
            })
        }
    }

    fn exec_cached(&self, sql: &str) -> Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(unavailable)
    }

    fn insert(
        &mut self,
        stream: &str,
        first_version: u64,
        events: Vec<NewEvent>,
        now: DateTime<Utc>,
        written: &mut Vec<RecordedEvent>,
    ) -> Result<()> {
        let micros = now.timestamp_micros();
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO events (position, stream, version, event_id, event_type, \
                 schema_version, data, metadata, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(unavailable)?;
        for (i, event) in events.into_iter().enumerate() {
            let position = self.next_position + i as u64;
            let version = first_version + i as u64;
            stmt.execute(params![
                position,
                stream,
                version,
                event.event_id.as_bytes(),
                event.event_type,
                event.schema_version,
                event.data,
                event.metadata,
                micros,
            ])
            .map_err(unavailable)?;
            written.push(RecordedEvent {
                stream: stream.to_owned(),
                version,
                position,
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                data: event.data,
                metadata: event.metadata,
                recorded_at: now,
            });
        }
        Ok(())
    }

    /// The original result if every event id is stored already (in `stream`, in this order,
    /// consecutively); `None` if none is; [`Error::IdempotencyMismatch`] otherwise.
    fn find_stored(&self, stream: &str, events: &[NewEvent]) -> Result<Option<AppendResult>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT stream = ?2, version, position, recorded_at FROM events WHERE event_id = ?1",
            )
            .map_err(unavailable)?;
        let mut stored = 0usize;
        let mut first: Option<(u64, u64, i64)> = None;
        let mut in_place = true;
        for (i, event) in events.iter().enumerate() {
            let row: Option<(bool, u64, u64, i64)> = stmt
                .query_row(params![event.event_id.as_bytes(), stream], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
                .map_err(unavailable)?;
            let Some((same_stream, version, position, recorded_at)) = row else {
                continue;
            };
            stored += 1;
            let (v0, p0, _) = *first.get_or_insert((version, position, recorded_at));
            let i = i as u64;
            in_place &= same_stream && version == v0 + i && position == p0 + i;
        }
        let Some((first_version, first_position, recorded_at)) = first else {
            return Ok(None);
        };
        if stored < events.len() {
            return Err(Error::IdempotencyMismatch(format!(
                "{stored} of the {} event ids are stored already",
                events.len()
            )));
        }
        if !in_place {
            return Err(Error::IdempotencyMismatch(format!(
                "the event ids are stored, but not as one append of these events to stream {stream}"
            )));
        }
        let count = events.len() as u64;
        Ok(Some(AppendResult {
            first_version,
            last_version: first_version + count - 1,
            first_position,
            last_position: first_position + count - 1,
            recorded_at: micros_to_time(recorded_at)?,
            duplicate: true,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

struct SubscriptionState {
    log: SqliteLog,
    live: broadcast::Receiver<Arc<RecordedEvent>>,
    /// Position of the last event yielded (or the starting point).
    last: u64,
    /// Events read from the file, not yet yielded.
    buffer: VecDeque<Arc<RecordedEvent>>,
    /// Reading from the file rather than the broadcast.
    catching_up: bool,
    done: bool,
}

impl SubscriptionState {
    async fn next(&mut self) -> Option<Result<Arc<RecordedEvent>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                self.last = event.position;
                return Some(Ok(event));
            }
            if self.catching_up {
                let page = self.log.inner.options.catch_up_page;
                match self.log.read_all(self.last, page).await {
                    Ok(events) => {
                        // A short page means the file had nothing more when read; anything
                        // committed since is in the broadcast, which we joined earlier.
                        if events.len() < page {
                            self.catching_up = false;
                        }
                        self.buffer.extend(events.into_iter().map(Arc::new));
                    }
                    Err(Error::Closed) => self.done = true,
                    Err(err) => {
                        self.done = true;
                        return Some(Err(err));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                // Already yielded from the file (the seam).
                Ok(event) if event.position <= self.last => {}
                Ok(event) if event.position == self.last + 1 => {
                    self.last = event.position;
                    return Some(Ok(event));
                }
                // Positions are gapless, so a jump means something was missed: the file has
                // it, since events are published only after they are committed.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_idempotency_lookups_are_index_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("log.db")).unwrap();
        Writer::init(&conn, Duration::from_secs(1), true).unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        for sql in [
            STREAM_VERSION,
            "SELECT stream = ?2, version, position, recorded_at FROM events WHERE event_id = ?1",
            READ_STREAM_INDEXED,
            READ_STREAM_TAIL,
            READ_ALL,
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("SEARCH"), "{sql}: {plan}");
            // `indexed` has one row; the others must be searched, never scanned or sorted
            // (the tail read is a rowid range over the events not indexed yet: by design).
            assert!(!plan.contains("SCAN events"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN stream_index"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN e"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN s"), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    /// The query plan alone does not tell a seek from a range scan over one stream's entries;
    /// the number of VM steps does.
    #[test]
    fn lookups_do_not_grow_with_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("log.db")).unwrap();
        Writer::init(&conn, Duration::from_secs(1), false).unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO events (position, stream, version, event_id, event_type, \
                 schema_version, data, metadata, recorded_at) VALUES (?1, ?2, ?1, ?3, 't', 1, \
                 x'', x'', 0)",
            )
            .unwrap();
        let mut index = conn
            .prepare("INSERT INTO stream_index (stream, version, position) VALUES (?1, ?2, ?2)")
            .unwrap();
        // 5,000 indexed events, then 10 not indexed yet.
        for v in 1..=5010u64 {
            insert
                .execute(params![v, "big", Uuid::new_v4().as_bytes()])
                .unwrap();
            if v <= 5000 {
                index.execute(params!["big", v]).unwrap();
            }
        }
        conn.execute("UPDATE indexed SET upto = 5000", []).unwrap();
        let steps = |sql: &str, param: &dyn rusqlite::ToSql| {
            let mut stmt = conn.prepare(sql).unwrap();
            let mut rows = stmt.query([param]).unwrap();
            while rows.next().unwrap().is_some() {}
            drop(rows);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        // A stream's newest events: the tail after `indexed`, not the whole log.
        let mut tail = conn.prepare(READ_STREAM_TAIL).unwrap();
        let rows = tail
            .query_map(params!["big", 1, 100], decode_row)
            .unwrap()
            .count();
        assert_eq!(rows, 10);
        let tail_steps = tail.get_status(rusqlite::StatementStatus::VmStep);
        assert!(tail_steps < 500, "the tail read took {tail_steps} VM steps");
        let version = steps(STREAM_VERSION, &"big");
        assert!(
            version < 100,
            "stream version lookup took {version} VM steps"
        );
        let id = Uuid::new_v4();
        let stored = steps(
            "SELECT stream = 'big', version, position, recorded_at FROM events WHERE event_id = ?1",
            &id.as_bytes().as_slice(),
        );
        assert!(stored < 100, "event id lookup took {stored} VM steps");
    }

    /// A file of schema version 1 (the events table with `UNIQUE(stream, version)`) is
    /// converted when opened: everything in it reads back, versions and idempotency carry on.
    #[tokio::test]
    async fn a_version_1_file_is_converted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE events (
                position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
                event_id BLOB NOT NULL UNIQUE, event_type TEXT NOT NULL,
                schema_version INTEGER NOT NULL, data BLOB NOT NULL, metadata BLOB NOT NULL,
                recorded_at INTEGER NOT NULL, UNIQUE (stream, version)
             ) STRICT;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for (i, (stream, version)) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
            .into_iter()
            .enumerate()
        {
            conn.execute(
                "INSERT INTO events VALUES (?1, ?2, ?3, ?4, 't', 1, x'01', x'', 0)",
                params![i as u64 + 1, stream, version, ids[i].as_bytes()],
            )
            .unwrap();
        }
        drop(conn);

        let log = SqliteLog::open(&path).await.unwrap();
        let a = log.read_stream("a", 1, 10).await.unwrap();
        let got: Vec<(u64, u64)> = a.iter().map(|e| (e.version, e.position)).collect();
        assert_eq!(got, [(1, 1), (2, 3), (3, 5)]);
        assert_eq!(log.read_stream("b", 2, 10).await.unwrap()[0].position, 4);
        assert_eq!(log.head().await.unwrap(), 5);
        let event = |id| NewEvent {
            event_id: id,
            event_type: "t".into(),
            schema_version: 1,
            data: vec![1],
            metadata: vec![],
        };
        let retry = log
            .append("b", ExpectedVersion::Any, vec![event(ids[3])])
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!((retry.first_version, retry.first_position), (2, 4));
        let conflict = log
            .append("a", ExpectedVersion::Exact(2), vec![event(Uuid::now_v7())])
            .await
            .unwrap_err();
        assert!(matches!(conflict, Error::VersionConflict { actual: 3, .. }));
        let next = log
            .append("a", ExpectedVersion::Exact(3), vec![event(Uuid::now_v7())])
            .await
            .unwrap();
        assert_eq!((next.first_version, next.first_position), (4, 6));
        log.close().await;

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // The converted table has no (stream, version) constraint left to maintain.
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list('events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1, "only UNIQUE(event_id)");
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let e = |id| NewEvent {
            event_id: id,
            event_type: "t".into(),
            schema_version: 1,
            data: vec![],
            metadata: vec![],
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let validate = |stream: &str, expected, events: &[NewEvent]| {
            validate(stream, expected, &[events.to_vec()])
        };
        let kind = |r: Result<()>| r.unwrap_err().kind();
        let invalid = crate::ErrorKind::InvalidArgument;
        assert_eq!(kind(validate("s", ExpectedVersion::Any, &[])), invalid);
        assert_eq!(kind(validate("", ExpectedVersion::Any, &[e(a)])), invalid);
        assert_eq!(
            kind(validate("a\nb", ExpectedVersion::Any, &[e(a)])),
            invalid
        );
        let long = "x".repeat(crate::MAX_STREAM_NAME_LEN + 1);
        assert_eq!(
            kind(validate(&long, ExpectedVersion::Any, &[e(a)])),
            invalid
        );
        assert_eq!(
            kind(validate("s", ExpectedVersion::Exact(0), &[e(a)])),
            invalid
        );
        assert_eq!(
            kind(validate("s", ExpectedVersion::Any, &[e(a), e(a)])),
            invalid
        );
        assert_eq!(
            kind(validate("s", ExpectedVersion::Any, &[e(a), e(b), e(a)])),
            invalid
        );
        validate("s", ExpectedVersion::Any, &[e(a), e(b)]).unwrap();
        validate("room-1", ExpectedVersion::Exact(3), &[e(a)]).unwrap();
        // Batches: no empty group, an id once in the whole batch.
        let batch = |groups: &[&[NewEvent]]| {
            let groups: Vec<Vec<NewEvent>> = groups.iter().map(|g| g.to_vec()).collect();
            crate::validate("s", ExpectedVersion::Any, &groups)
        };
        assert_eq!(kind(batch(&[])), invalid);
        assert_eq!(kind(batch(&[&[e(a)], &[]])), invalid);
        assert_eq!(kind(batch(&[&[e(a)], &[e(b), e(a)]])), invalid);
        batch(&[&[e(a)], &[e(b)]]).unwrap();
    }
}
