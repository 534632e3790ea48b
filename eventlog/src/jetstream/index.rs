//! The node-local event-id index of the JetStream and KurrentDB backends.
//!
//! JetStream's own duplicate suppression (`Nats-Msg-Id`) only remembers ids for the stream's
//! duplicate window (minutes). The product promises that a retried send is recognised at any
//! later time, so each node keeps this index: a SQLite file mapping every event id in the
//! stream to its (log stream, version, position, recorded_at), filled by a task that follows
//! the JetStream stream. It also maps (log stream, version) to a position, so reading a long
//! stream from a middle version starts where it should instead of scanning from the start.
//!
//! It is a cache of the stream, not a source of truth: delete it and it refills. It is only
//! trusted for what it has seen ([`Index::covered`]); the append path makes sure it covers
//! everything older than the duplicate window before relying on it (see the module above).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{AppendResult, Error, EventLog, RecordedEvent, Result, Subscription};

/// An index follower writes at most this often: events that come sooner after its last write
/// began join the next one (one SQLite commit each, whatever it carries).
const INDEX_EVERY: Duration = Duration::from_millis(10);

/// While no append waits for the index, it writes when this many events have gathered or the
/// oldest of them has waited [`INDEX_PATIENCE`]: each write dirties a page of the by-stream
/// index per log stream it touches, so under a steady flow fewer, larger writes cost far less
/// (on JetStream nothing waits for the index but a conflict and the check once per half
/// duplicate window; on KurrentDB every append does, so there it writes every 10 ms as before).
const MOST_PER_WRITE: usize = 2000;

/// See [`MOST_PER_WRITE`].
const INDEX_PATIENCE: Duration = Duration::from_millis(500);

/// Where the node's event-id index reads the log's events from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexFeed {
    /// A subscription of its own to the backend: every event reaches the node once more for
    /// the index.
    #[default]
    OwnConsumer,
    /// A subscription of the log given to the backend's `index_from`: a
    /// [`crate::follow::Shared`] over it, whose one follower then also feeds the index, so each
    /// event reaches the node once. Until it is given the index stands still, and appends that
    /// need it wait for it.
    Given,
}

/// The log a [`IndexFeed::Given`] index follows, once given (weak: that log wraps the backend
/// that owns the index).
pub(crate) type Source = watch::Sender<Option<Weak<dyn EventLog>>>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ids (
    event_id    BLOB    PRIMARY KEY,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ids_by_stream ON ids (stream, version, position);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT, WITHOUT ROWID;
";

/// Where an indexed event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub stream: String,
    pub version: u64,
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    covered: watch::Sender<u64>,
    /// The highest position an append has waited for.
    wanted: watch::Sender<u64>,
    /// Transactions written by [`Index::apply`].
    #[cfg(test)]
    writes: std::sync::atomic::AtomicUsize,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("event-id index: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Index {
    /// Opens (creating) the index at `path` for the JetStream stream `identity` (its name and
    /// creation time). An index built from another stream is emptied first.
    pub fn open(path: &Path, identity: &str) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let write = Connection::open(path).map_err(failed)?;
        write
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA cache_size = -16384;",
            )
            .map_err(failed)?;
        write.execute_batch(SCHEMA).map_err(failed)?;
        let stored: Option<String> = write
            .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(failed)?;
        if stored.as_deref() != Some(identity) {
            if stored.is_some() {
                tracing::warn!(
                    index = %path.display(),
                    "the event-id index belongs to another JetStream stream; rebuilding it"
                );
            }
            write
                .execute_batch("DELETE FROM ids; DELETE FROM meta;")
                .map_err(failed)?;
            write
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('identity', ?1), ('covered', '0')",
                    [identity],
                )
                .map_err(failed)?;
        }
        let covered: u64 = write
            .query_row("SELECT value FROM meta WHERE key = 'covered'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(failed)?
            .parse()
            .map_err(failed)?;
        let read = Connection::open(path).map_err(failed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                write: Mutex::new(write),
                read: Mutex::new(read),
                covered: watch::channel(covered).0,
                wanted: watch::channel(0).0,
                #[cfg(test)]
                writes: Default::default(),
            }),
        })
    }

    /// The position up to which every event is indexed.
    pub fn covered(&self) -> u64 {
        *self.inner.covered.borrow()
    }

    /// Waits until the index covers `position` (its follower writes what it holds at once).
    pub async fn wait_for(&self, position: u64) {
        let mut rx = self.inner.covered.subscribe();
        if *rx.borrow() >= position {
            return;
        }
        self.inner.wanted.send_if_modified(|wanted| {
            let more = position > *wanted;
            *wanted = (*wanted).max(position);
            more
        });
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|c| *c >= position).await;
    }

    /// Whether an append waits for a position the index does not cover yet.
    fn awaited(&self) -> bool {
        *self.inner.wanted.borrow() > self.covered()
    }

    /// Keeps the index following the log until `closed` turns true: through `own` (the
    /// backend's own subscription after a position) or, with [`IndexFeed::Given`], through the
    /// log `source` is given. A failed subscription or write is logged and followed again from
    /// what the index covers, with backoff.
    pub(crate) async fn follow(
        self,
        feed: IndexFeed,
        own: impl Fn(u64) -> Subscription,
        source: watch::Receiver<Option<Weak<dyn EventLog>>>,
        closed: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut began = tokio::time::Instant::now() - INDEX_EVERY;
        loop {
            let mut events = match feed {
                IndexFeed::OwnConsumer => own(self.covered()),
                IndexFeed::Given => {
                    let (mut source, mut closed) = (source.clone(), closed.clone());
                    let given = tokio::select! {
                        _ = closed.wait_for(|c| *c) => return,
                        given = source.wait_for(Option::is_some) => given
                            .ok()
                            .and_then(|s| s.as_ref().and_then(Weak::upgrade)),
                    };
                    let Some(given) = given else {
                        return; // the node is gone
                    };
                    given.subscribe(self.covered())
                }
            };
            let mut wanted = self.inner.wanted.subscribe();
            let failed = loop {
                // Gather events until an append waits for them, enough have come, or the
                // oldest has waited long enough; then write them in one transaction.
                let mut batch = Vec::new();
                let mut due = tokio::time::Instant::now() + INDEX_PATIENCE;
                let failed = loop {
                    let awaited = !batch.is_empty() && self.awaited();
                    let soonest = began + INDEX_EVERY;
                    if batch.len() >= MOST_PER_WRITE
                        || (awaited || tokio::time::Instant::now() >= due)
                            && tokio::time::Instant::now() >= soonest
                    {
                        break None;
                    }
                    let wake = if awaited { soonest } else { due.max(soonest) };
                    tokio::select! {
                        biased;
                        item = events.next() => match item {
                            None => return, // closed
                            Some(Ok(event)) => {
                                if batch.is_empty() {
                                    due = tokio::time::Instant::now() + INDEX_PATIENCE;
                                }
                                batch.push(event);
                            }
                            Some(Err(e)) => break Some(e),
                        },
                        _ = wanted.changed() => {}
                        () = tokio::time::sleep_until(wake), if !batch.is_empty() => {}
                    }
                };
                if !batch.is_empty() {
                    began = tokio::time::Instant::now();
                    match self.apply(batch).await {
                        Ok(()) => backoff = Duration::from_millis(100),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot update the event-id index");
                            break e;
                        }
                    }
                }
                if let Some(e) = failed {
                    break e;
                }
            };
            if matches!(failed, Error::Closed) || *closed.borrow() {
                return;
            }
            tracing::warn!(error = %failed, "event-id index follower failed; restarting");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Indexes a batch of events (in position order) and moves the covered position to the
    /// last one.
    pub async fn apply(&self, events: Vec<Arc<RecordedEvent>>) -> Result<()> {
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = lock(&inner.write);
            let tx = conn.transaction().map_err(failed)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO ids (event_id, stream, version, position, recorded_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(failed)?;
                for e in &events {
                    insert
                        .execute(params![
                            e.event_id.as_bytes().as_slice(),
                            e.stream,
                            e.version as i64,
                            e.position as i64,
                            e.recorded_at.timestamp_micros()
                        ])
                        .map_err(failed)?;
                }
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'covered'",
                    [last.to_string()],
                )
                .map_err(failed)?;
            }
            tx.commit().map_err(failed)?;
            #[cfg(test)]
            inner
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            inner.covered.send_replace(last);
            Ok(())
        })
        .await
        .map_err(failed)?
    }

    /// Where each of `ids` is, if indexed.
    pub async fn lookup(&self, ids: Vec<Uuid>) -> Result<Vec<Option<Hit>>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Option<Hit>>> {
            let conn = lock(&inner.read);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT stream, version, position, recorded_at FROM ids WHERE event_id = ?1",
                )
                .map_err(failed)?;
            ids.iter()
                .map(|id| {
                    stmt.query_row([id.as_bytes().as_slice()], |r| {
                        Ok(Hit {
                            stream: r.get(0)?,
                            version: r.get::<_, i64>(1)? as u64,
                            position: r.get::<_, i64>(2)? as u64,
                            recorded_at: DateTime::from_timestamp_micros(r.get(3)?)
                                .unwrap_or_default(),
                        })
                    })
                    .optional()
                    .map_err(failed)
                })
                .collect()
        })
        .await
        .map_err(failed)?
    }

    /// The position to start scanning `stream`'s subject from to find `from_version`: the
    /// event's own position when indexed, else just after the last indexed event of the stream
    /// before it (or after everything the index covers, if the stream has no indexed events).
    pub async fn seek(&self, stream: &str, from_version: u64) -> Result<u64> {
        let inner = self.inner.clone();
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let conn = lock(&inner.read);
            // Read the covered position first: everything the query below misses is after it.
            let covered = *inner.covered.borrow();
            let before: Option<(i64, i64)> = conn
                .prepare_cached(
                    "SELECT version, position FROM ids WHERE stream = ?1 AND version <= ?2 \
                     ORDER BY version DESC LIMIT 1",
                )
                .map_err(failed)?
                .query_row(params![stream, from_version as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(failed)?;
            Ok(match before {
                Some((v, p)) if v as u64 == from_version => p as u64,
                Some((_, p)) => p as u64 + 1,
                None => {
                    let any: Option<i64> = conn
                        .prepare_cached("SELECT 1 FROM ids WHERE stream = ?1 LIMIT 1")
                        .map_err(failed)?
                        .query_row([&stream], |r| r.get(0))
                        .optional()
                        .map_err(failed)?;
                    // Versions below `from_version` are unknown but the stream has indexed
                    // events above it: start from the beginning.
                    if any.is_some() { 1 } else { covered + 1 }
                }
            })
        })
        .await
        .map_err(failed)?
    }
}

/// [`judge`] for each group of a batch; `hits` are the lookups of all their ids, in order.
pub(crate) fn judge_groups(
    stream: &str,
    groups: &[Vec<crate::NewEvent>],
    hits: &[Option<Hit>],
) -> Vec<Option<Result<AppendResult>>> {
    let mut offset = 0;
    groups
        .iter()
        .map(|group| {
            let ids: Vec<uuid::Uuid> = group.iter().map(|e| e.event_id).collect();
            let mine = hits.get(offset..offset + ids.len()).unwrap_or_default();
            offset += ids.len();
            judge(stream, &ids, mine)
        })
        .collect()
}

/// What a request whose ids are (partly) stored gets: the original result if every id is
/// stored in `stream` in request order, else a mismatch. `None` if no id is stored.
fn judge(stream: &str, ids: &[uuid::Uuid], hits: &[Option<Hit>]) -> Option<Result<AppendResult>> {
    if hits.iter().all(Option::is_none) {
        return None;
    }
    let mismatch = || {
        Some(Err(Error::IdempotencyMismatch(format!(
            "{} of the {} event ids are stored already{}",
            hits.iter().filter(|h| h.is_some()).count(),
            ids.len(),
            if hits.iter().flatten().any(|h| h.stream != stream) {
                ", in another stream"
            } else {
                ""
            }
        ))))
    };
    let stored: Vec<&Hit> = hits.iter().flatten().collect();
    if stored.len() != ids.len() {
        return mismatch();
    }
    let first = stored[0];
    let in_order = stored.iter().enumerate().all(|(i, h)| {
        h.stream == stream
            && h.version == first.version + i as u64
            && h.recorded_at == first.recorded_at
    });
    if !in_order {
        return mismatch();
    }
    let last = stored[stored.len() - 1];
    Some(Ok(AppendResult {
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
        recorded_at: first.recorded_at,
        duplicate: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::sync::mpsc;

    fn event(position: u64) -> Arc<RecordedEvent> {
        Arc::new(RecordedEvent {
            stream: format!("room-{}", position % 7),
            version: position,
            position,
            event_id: Uuid::now_v7(),
            event_type: "message_sent".into(),
            schema_version: 1,
            data: Vec::new(),
            metadata: Vec::new(),
            recorded_at: Utc::now(),
        })
    }

    /// An index following a channel of events (its own feed), and the channel's sender.
    fn following(dir: &tempfile::TempDir) -> (Index, mpsc::UnboundedSender<Arc<RecordedEvent>>) {
        let index = Index::open(&dir.path().join("index.db"), "test").unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = std::sync::Mutex::new(Some(rx));
        let own = move |_after: u64| -> Subscription {
            let mut rx = rx.lock().unwrap().take().expect("subscribed once");
            Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok))
        };
        tokio::spawn(index.clone().follow(
            IndexFeed::OwnConsumer,
            own,
            watch::channel(None).1,
            watch::channel(false).1,
        ));
        (index, tx)
    }

    /// Waits until the index covers `position` without asking it to hurry.
    async fn covers(index: &Index, position: u64) {
        let mut rx = index.inner.covered.subscribe();
        rx.wait_for(|c| *c >= position).await.unwrap();
    }

    /// Events trickling in (ten every 20 ms for 400 ms) with no append waiting are written in
    /// one transaction, not one per 10 ms.
    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_is_written_in_few_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tx) = following(&dir);
        let mut position = 0;
        for _ in 0..20 {
            for _ in 0..10 {
                position += 1;
                tx.send(event(position)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        covers(&index, position).await;
        assert_eq!(index.inner.writes.load(Ordering::SeqCst), 1);
    }

    /// An append that waits for the index has what it waits for written at once (within the
    /// 10 ms between writes), not when the index's patience runs out.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_append_has_the_events_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (index, tx) = following(&dir);
        for position in 1..=5 {
            tx.send(event(position)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(index.covered(), 0, "nothing written before anyone waits");
        let asked = tokio::time::Instant::now();
        index.wait_for(5).await;
        assert!(asked.elapsed() <= INDEX_EVERY, "{:?}", asked.elapsed());
        assert_eq!(index.inner.writes.load(Ordering::SeqCst), 1);
    }
}
