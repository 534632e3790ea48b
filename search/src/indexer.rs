//! The indexer: the one owner of the `IndexWriter`, consuming the log.
//!
//! `message_sent` adds a document, `message_edited` replaces it (same room, seq, sent time
//! and position; new body), `message_deleted` removes it. Tantivy orders adds and deletes by
//! operation stamp, so a send, an edit and a delete of one message in the same batch end as
//! they should. Commits are batched: after [`IndexerSettings::commit_interval`] from the first
//! uncommitted change, or at once when [`IndexerSettings::commit_docs`] changes are waiting.
//! Under load the interval stretches (see [`next_interval`]), up to
//! [`IndexerSettings::max_commit_interval`]: with the documents the last commit covered (each
//! commit starts a segment, whose setup, files and later merge cost the same for ten documents
//! as for a thousand, so a steady flow is committed in fewer, bigger segments), and so that
//! commits never take more than about a fifth of the indexer's time.
//! Each commit carries the position of the last event it covers in its payload, so after a
//! crash the index resumes from exactly what it holds: nothing skipped, nothing twice.
//!
//! The writer lives on a thread of its own (`search-indexer`) that lowers its scheduling
//! priority ([`IndexerSettings::nice`]) before it opens the `IndexWriter`, so Tantivy's indexing
//! and merge threads, which it starts, inherit the lower priority too: indexing takes the CPU
//! that delivery leaves over, and under load it falls behind rather than slowing sends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventLog, RecordedEvent};
use futures::{FutureExt, StreamExt};
use schema::events::Event;
use schema::streams;
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::index::{INDEX_VERSION, Payload, SearchIndex};
use crate::{Error, Result};

/// Most events taken from the log for one trip to the writer …
const MAX_BATCH: usize = 4_096;
/// … and most payload bytes, so a lagging indexer does not hold many large messages at once
/// (bodies are up to 64 KiB).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The events that change the index; the others only move its checkpoint.
/// The events the index follows: message changes, and a room's deletion (which takes every
/// message of the room out).
const MESSAGE_EVENTS: [&str; 4] = [
    "message_sent",
    "message_edited",
    "message_deleted",
    "room_deleted",
];

/// How the indexer batches its work.
#[derive(Debug, Clone, Copy)]
pub struct IndexerSettings {
    /// How long a change waits for its commit (and so to become searchable) when commits are
    /// cheap.
    pub commit_interval: Duration,
    /// The longest the interval stretches to when commits are slow (a busy node): a commit
    /// then covers more changes, leaving CPU to the senders, and a change still becomes
    /// searchable within about this plus one commit.
    pub max_commit_interval: Duration,
    /// Commit at once when this many changes are waiting.
    pub commit_docs: usize,
    /// A commit that covered this many changes or more (a steady flow) makes the next wait
    /// [`Self::max_commit_interval`]; fewer stretch it in proportion.
    pub stretch_docs: usize,
    /// How long a checkpoint-only change (events that touch no message) waits for a commit.
    pub checkpoint_interval: Duration,
    /// Indexing threads of the `IndexWriter`.
    pub threads: usize,
    /// Memory the `IndexWriter` may buffer, over all threads.
    pub memory_budget_bytes: usize,
    /// Whether the indexing threads (Tantivy's merges included) run under Linux's
    /// `SCHED_IDLE`: on a core nothing else wants, yielding it at once to any thread that
    /// wakes (see `priority::idle_current_thread`). [`Self::nice`] applies when not.
    pub idle: bool,
    /// How much nicer than the rest of the process the indexing threads run (Linux `nice`
    /// increment, 0–19; 0 keeps the process's priority) when not [`Self::idle`]. Ignored where
    /// threads cannot have their own priority.
    pub nice: i32,
}

impl Default for IndexerSettings {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(250),
            max_commit_interval: Duration::from_millis(700),
            commit_docs: 20_000,
            // About 2,000 messages/s at the 250 ms interval: a busy node.
            stretch_docs: 500,
            checkpoint_interval: Duration::from_secs(5),
            // One thread indexes far faster than a node takes messages (see
            // docs/benchmarks.md), and each thread's in-memory segment adds tens of MB of
            // peak memory; the server's cores are better spent serving.
            threads: 1,
            memory_budget_bytes: 32 << 20,
            idle: true,
            nice: 10,
        }
    }
}

/// What a document needs besides its body, to rebuild it on an edit.
#[derive(Debug, Clone, Copy)]
struct Meta {
    room: Uuid,
    sender: Uuid,
    seq: u64,
    sent_at: i64,
    position: u64,
}

/// The writer and what it has not committed yet. Lives on the [`WriterThread`].
struct Writer {
    index: SearchIndex,
    writer: IndexWriter,
    /// Documents added since the last commit (not visible to the searcher yet).
    added: HashMap<Uuid, Meta>,
    /// Messages deleted since the last commit.
    deleted: HashSet<Uuid>,
    /// Index operations since the last commit.
    uncommitted: usize,
    /// Position of the last event applied.
    applied: u64,
    /// Position in the last commit's payload.
    committed: u64,
}

impl Writer {
    fn open(index: SearchIndex, settings: &IndexerSettings) -> Result<Self> {
        let threads = settings.threads.max(1);
        // Tantivy wants at least 15 MB per thread.
        let budget = settings.memory_budget_bytes.max(threads * (16 << 20));
        let writer = index.inner.index.writer_with_num_threads(threads, budget)?;
        let committed = index.checkpoint()?;
        Ok(Self {
            index,
            writer,
            added: HashMap::new(),
            deleted: HashSet::new(),
            uncommitted: 0,
            applied: committed,
            committed,
        })
    }

    fn apply(&mut self, batch: &[Arc<RecordedEvent>]) -> Result<()> {
        for recorded in batch {
            if recorded.position <= self.applied {
                continue;
            }
            let span = tracecontext::continuing(
                recorded
                    .live_traceparent()
                    .filter(|_| MESSAGE_EVENTS.contains(&recorded.event_type.as_str())),
                || tracing::info_span!("projection.apply", projection = "search", event.position = recorded.position, event.type = %recorded.event_type),
            );
            let _entered = span.enter();
            self.apply_one(recorded)?;
            self.applied = recorded.position;
        }
        Ok(())
    }

    fn apply_one(&mut self, recorded: &RecordedEvent) -> Result<()> {
        if !MESSAGE_EVENTS.contains(&recorded.event_type.as_str()) {
            return Ok(());
        }
        let Some(room) = streams::room_of(&recorded.stream) else {
            return Ok(());
        };
        let event = Event::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        )?;
        let fields = self.index.inner.fields;
        match event {
            Event::MessageSent {
                message_id,
                sender_id,
                body,
                ..
            } => {
                let meta = Meta {
                    room: room.0,
                    sender: sender_id.0,
                    seq: recorded.version,
                    sent_at: recorded.recorded_at.timestamp_micros(),
                    position: recorded.position,
                };
                // A message id is added once; replays past the checkpoint cannot reach here.
                self.add(message_id.0, meta, body.as_str())?;
            }
            Event::MessageEdited {
                message_id, body, ..
            } => {
                let id = message_id.0;
                let Some(meta) = self.meta_of(id)? else {
                    // Deleted already (or never indexed): nothing to replace.
                    return Ok(());
                };
                self.writer
                    .delete_term(Term::from_field_bytes(fields.message_id, id.as_bytes()));
                self.add(id, meta, body.as_str())?;
            }
            Event::MessageDeleted { message_id, .. } => {
                let id = message_id.0;
                self.writer
                    .delete_term(Term::from_field_bytes(fields.message_id, id.as_bytes()));
                self.added.remove(&id);
                self.deleted.insert(id);
                self.uncommitted += 1;
            }
            Event::RoomDeleted { .. } => {
                self.writer
                    .delete_term(Term::from_field_bytes(fields.room_id, room.0.as_bytes()));
                let gone: Vec<Uuid> = self
                    .added
                    .iter()
                    .filter(|(_, m)| m.room == room.0)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    self.added.remove(&id);
                    self.deleted.insert(id);
                }
                self.uncommitted += 1;
            }
            _ => {}
        }
        Ok(())
    }

    fn add(&mut self, id: Uuid, meta: Meta, body: &str) -> Result<()> {
        let f = self.index.inner.fields;
        let mut doc = TantivyDocument::default();
        doc.add_bytes(f.message_id, id.as_bytes());
        doc.add_bytes(f.room_id, meta.room.as_bytes());
        doc.add_bytes(f.sender_id, meta.sender.as_bytes());
        doc.add_u64(f.seq, meta.seq);
        doc.add_i64(f.sent_at, meta.sent_at);
        doc.add_u64(f.position, meta.position);
        doc.add_text(f.body, body);
        self.writer.add_document(doc)?;
        self.deleted.remove(&id);
        self.added.insert(id, meta);
        self.uncommitted += 1;
        Ok(())
    }

    /// The room, seq, sender and times of a message that is in the index or about to be.
    fn meta_of(&self, id: Uuid) -> Result<Option<Meta>> {
        if let Some(meta) = self.added.get(&id) {
            return Ok(Some(*meta));
        }
        if self.deleted.contains(&id) {
            return Ok(None);
        }
        let f = self.index.inner.fields;
        let searcher = self.index.searcher();
        let query = TermQuery::new(
            Term::from_field_bytes(f.message_id, id.as_bytes()),
            IndexRecordOption::Basic,
        );
        let found = searcher.search(
            &query,
            &tantivy::collector::TopDocs::with_limit(1).order_by_score(),
        )?;
        let Some((_, address)) = found.first() else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(*address)?;
        let uuid = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_bytes())
                .and_then(|b| Uuid::from_slice(b).ok())
        };
        let num = |field| doc.get_first(field).and_then(|v| v.as_u64());
        Ok(Some(Meta {
            room: uuid(f.room_id).ok_or_else(|| Error::Task("stored room id".into()))?,
            sender: uuid(f.sender_id).ok_or_else(|| Error::Task("stored sender id".into()))?,
            seq: num(f.seq).unwrap_or_default(),
            sent_at: doc
                .get_first(f.sent_at)
                .and_then(|v| v.as_i64())
                .unwrap_or_default(),
            position: num(f.position).unwrap_or_default(),
        }))
    }

    /// Commits everything applied, with its position, and makes it searchable.
    fn commit(&mut self) -> Result<()> {
        let payload = Payload {
            version: INDEX_VERSION,
            position: self.applied,
        };
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload.encode());
        prepared.commit()?;
        self.index.inner.reader.reload()?;
        self.added.clear();
        self.deleted.clear();
        self.uncommitted = 0;
        self.committed = self.applied;
        Ok(())
    }
}

/// Work for the writer's thread.
type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// The writer's own thread, at lower priority (see the module docs). Dropping this ends it
/// (after the job in hand); the writer is dropped there, abandoning merges in flight (their
/// files are collected on the next start): waiting for them could hold up shutdown for
/// seconds.
#[derive(Debug)]
struct WriterThread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    /// Starts the thread, which lowers its priority and opens the writer; returns the
    /// position of the index's last commit.
    async fn start(index: SearchIndex, settings: IndexerSettings) -> Result<(Self, u64)> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (opened, open) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || {
                if settings.idle {
                    priority::idle_current_thread("search indexer");
                } else {
                    priority::lower_current_thread(settings.nice, "search indexer");
                }
                let mut writer = match Writer::open(index, &settings) {
                    Ok(writer) => {
                        let _ = opened.send(Ok(writer.committed));
                        writer
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&mut writer);
                }
            })
            .map_err(|e| Error::Task(format!("cannot start the indexer thread: {e}")))?;
        let this = Self {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        let committed = open
            .await
            .map_err(|_| Error::Task("the indexer thread died while opening".into()))??;
        Ok((this, committed))
    }

    /// Runs `f` on the writer, on its thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |w| {
            let _ = reply.send(f(w));
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| Error::Task("the index writer was lost".into()))?;
        answer
            .await
            .map_err(|_| Error::Task("the index writer was lost".into()))?
    }

    /// Ends the thread and waits for it.
    async fn stop(mut self) -> Result<()> {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(|_| Error::Task("the indexer thread panicked".into()))?;
        }
        Ok(())
    }
}

/// Consumes the log from the index's checkpoint until `shutdown`, publishing on `progress`
/// the position up to which every message event is searchable. Returns an error if the log
/// or the index fails; the caller's supervisor decides what then.
#[tracing::instrument(name = "search_indexer", skip_all)]
pub async fn run(
    log: Arc<dyn EventLog>,
    index: SearchIndex,
    progress: watch::Sender<u64>,
    shutdown: CancellationToken,
    settings: IndexerSettings,
) -> Result<()> {
    let (writer, start) = WriterThread::start(index, settings).await?;
    progress.send_replace(start);
    tracing::info!(checkpoint = start, "search indexer starting");
    let mut events = log.subscribe(start);
    // When the uncommitted work must be committed.
    let mut due: Option<Instant> = None;
    let mut interval = settings.commit_interval;
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = sleep_until(due), if due.is_some() => {
                let started = Instant::now();
                let (applied, docs) = writer
                    .run(|w| {
                        let docs = w.uncommitted;
                        w.commit().map(|()| (w.applied, docs))
                    })
                    .await?;
                interval = next_interval(&settings, started.elapsed(), docs);
                progress.send_replace(applied);
                due = None;
                continue;
            }
            next = events.next() => next,
        };
        let Some(first) = next else {
            if shutdown.is_cancelled() {
                break;
            }
            return Err(Error::Task("the log subscription ended".into()));
        };
        let first = first?;
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        // Take whatever else is already waiting: one trip to the writer for a burst.
        // Unconstrained: Tokio's budget would otherwise end the batch after 128 events.
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match tokio::task::unconstrained(events.next()).now_or_never() {
                Some(Some(event)) => {
                    let event = event?;
                    bytes += event.data.len();
                    batch.push(event);
                }
                _ => break,
            }
        }
        let (uncommitted, applied) = writer
            .run(move |w| {
                w.apply(&batch)?;
                Ok((w.uncommitted, w.applied))
            })
            .await?;
        let now = Instant::now();
        if uncommitted >= settings.commit_docs {
            writer.run(|w| w.commit()).await?;
            progress.send_replace(applied);
            due = None;
        } else if uncommitted > 0 {
            due = Some(earliest(due, now + interval));
        } else {
            // Nothing to make searchable: the searchable state already reflects these
            // events. Persist the checkpoint lazily.
            progress.send_replace(applied);
            due = Some(earliest(due, now + settings.checkpoint_interval));
        }
    }
    // Shutting down: keep what was applied so the next start need not redo it.
    let applied = writer
        .run(|w| {
            if w.applied > w.committed {
                w.commit()?;
            }
            Ok(w.applied)
        })
        .await?;
    progress.send_replace(applied);
    writer.stop().await?;
    tracing::info!("search indexer stopped");
    Ok(())
}

/// The wait before the next timed commit, given how long the last one took and how many
/// changes it covered: the longer of five times its duration (so commits stay about a fifth of
/// the indexer's time) and the configured interval stretched towards the maximum in proportion
/// to its changes (all the way from [`IndexerSettings::stretch_docs`] on); never below the
/// configured interval nor above the maximum.
fn next_interval(settings: &IndexerSettings, last_commit: Duration, docs: usize) -> Duration {
    let (min, max) = (
        settings.commit_interval,
        settings.max_commit_interval.max(settings.commit_interval),
    );
    let flow = (docs as f64 / settings.stretch_docs.max(1) as f64).min(1.0);
    let by_docs = min + (max - min).mul_f64(flow);
    (last_commit * 5).max(by_docs).clamp(min, max)
}

fn earliest(a: Option<Instant>, b: Instant) -> Instant {
    a.map_or(b, |a| a.min(b))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn cheap_commits_keep_the_configured_interval() {
        let s = IndexerSettings::default();
        assert_eq!(next_interval(&s, ms(0), 0), s.commit_interval);
        assert_eq!(next_interval(&s, ms(40), 0), s.commit_interval);
    }

    #[test]
    fn slow_commits_stretch_the_interval_up_to_the_maximum() {
        let s = IndexerSettings::default();
        assert_eq!(next_interval(&s, ms(100), 0), ms(500));
        assert_eq!(next_interval(&s, ms(400), 0), s.max_commit_interval);
        // A configured interval above the maximum wins: it is never shortened.
        let long = IndexerSettings {
            commit_interval: ms(2_000),
            ..s
        };
        assert_eq!(next_interval(&long, ms(1_000), 0), ms(2_000));
        assert_eq!(next_interval(&long, ms(0), s.stretch_docs), ms(2_000));
    }

    #[test]
    fn a_steady_flow_of_changes_stretches_the_interval_in_proportion() {
        let s = IndexerSettings::default();
        let (min, max) = (s.commit_interval, s.max_commit_interval);
        assert_eq!(next_interval(&s, ms(0), s.stretch_docs), max);
        assert_eq!(next_interval(&s, ms(0), 100 * s.stretch_docs), max);
        assert_eq!(
            next_interval(&s, ms(0), s.stretch_docs / 2),
            (min + max) / 2
        );
        // The longer of the two stretches wins.
        assert_eq!(next_interval(&s, ms(100), s.stretch_docs / 2), ms(500));
        assert_eq!(
            next_interval(&s, ms(60), s.stretch_docs / 2),
            (min + max) / 2
        );
    }
}
