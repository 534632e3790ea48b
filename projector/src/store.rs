use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use schema::UserId;

use crate::unread::{UnreadCache, UnreadWatch};
use crate::{Error, Result};

/// Bump when the read-model schema or the meaning of a projection changes: files with another
/// version (or another block size, see [`crate::queries::BLOCK_BITS`]) are deleted and rebuilt
/// from the log on open.
const SCHEMA_VERSION: i64 = 7 * 100 + crate::queries::BLOCK_BITS as i64;

const SCHEMA: &str = r#"
CREATE TABLE checkpoint (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE users (
    user_id       BLOB PRIMARY KEY,
    username      TEXT NOT NULL,
    username_lc   TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    registered_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE rooms (
    room_id          BLOB PRIMARY KEY,
    kind             TEXT NOT NULL,
    name             TEXT,
    visibility       TEXT NOT NULL,
    created_by       BLOB NOT NULL,
    created_at       INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    member_count     INTEGER NOT NULL,
    last_message_id  BLOB
) WITHOUT ROWID;

-- Membership and the member's read marker (seq of the last event read; starts at the join).
CREATE TABLE members (
    room_id    BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    joined_seq INTEGER NOT NULL,
    read_seq   INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, room_id);

-- Every room event, as clients page through it. Deleting a message removes the text from
-- its message_sent and message_edited rows.
CREATE TABLE timeline (
    room_id     BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    message_id  BLOB,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
CREATE INDEX timeline_by_message ON timeline (message_id) WHERE message_id IS NOT NULL;

-- Current state of each message (edits and deletes applied).
CREATE TABLE messages (
    message_id BLOB PRIMARY KEY,
    room_id    BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    sender_id  BLOB NOT NULL,
    body       TEXT NOT NULL,
    sent_at    INTEGER NOT NULL,
    edited_at  INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- Live (not deleted) messages per block of seqs (seq >> BLOCK_BITS), of each room and of each
-- sender in it: an unread count adds the blocks after the marker instead of counting their
-- messages one by one (see queries::UNREAD).
CREATE TABLE live_blocks (
    room_id BLOB NOT NULL,
    block   INTEGER NOT NULL,
    live    INTEGER NOT NULL,
    PRIMARY KEY (room_id, block)
) WITHOUT ROWID;
CREATE TABLE live_blocks_by_sender (
    room_id   BLOB NOT NULL,
    sender_id BLOB NOT NULL,
    block     INTEGER NOT NULL,
    live      INTEGER NOT NULL,
    PRIMARY KEY (room_id, sender_id, block)
) WITHOUT ROWID;

CREATE TABLE friends (
    user_id   BLOB NOT NULL,
    friend_id BLOB NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;

CREATE INDEX public_rooms ON rooms (visibility, member_count);

-- Sessions that have ended (for any reason): their access tokens are refused.
CREATE TABLE ended_sessions (
    session_id BLOB PRIMARY KEY,
    ended_at   INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Step 4: room administration, account management, friendships with consent, sessions.
/// (`friends` now holds accepted friendships, both directions.)
const SCHEMA_ADMIN: &str = r#"
ALTER TABLE users ADD COLUMN status_message TEXT;
ALTER TABLE users ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN topic TEXT;
ALTER TABLE rooms ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
-- 'owner', 'admin' or 'member'.
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member';

CREATE TABLE bans (
    room_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;

-- Invitations waiting for the invitee's consent.
CREATE TABLE invitations (
    room_id    BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    invited_by BLOB NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX invitations_by_user ON invitations (user_id);

CREATE TABLE blocks (
    user_id    BLOB NOT NULL,
    blocked_id BLOB NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks (blocked_id, user_id);

CREATE TABLE friend_requests (
    from_id BLOB NOT NULL,
    to_id   BLOB NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;
CREATE INDEX friend_requests_to ON friend_requests (to_id, from_id);

-- Live login sessions (an ended session's row is deleted).
CREATE TABLE sessions (
    session_id   BLOB PRIMARY KEY,
    user_id      BLOB NOT NULL,
    started_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_user ON sessions (user_id);
"#;

/// The read-model database: a write connection for the runner, a pool of readers for queries.
#[derive(Debug, Clone)]
pub struct ReadModels {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: WriterThread,
    readers: Mutex<Vec<Connection>>,
    /// Watched users' unread counts, moved by the writer (see [`crate::unread`]).
    unread: UnreadCache,
    checkpointer: Checkpointer,
}

/// Work for the writer's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The write connection, on its own thread at lower priority: the projector's transactions
/// are the read side's work, and on a busy node they wait for the CPU that sending and
/// delivery leave over (see the `priority` crate) instead of delaying them. Dropping this
/// ends the thread after the job in hand and waits for it, so the file is closed when the
/// models are.
#[derive(Debug)]
struct WriterThread {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    fn start(mut conn: Connection, wal: PathBuf, nice: i32) -> Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("models-writer".into())
            .spawn(move || {
                priority::lower_current_thread(nice, "read-model writer");
                while let Ok(job) = inbox.recv() {
                    job(&mut conn);
                    restart_long_wal(&conn, &wal);
                }
            })
            .map_err(|e| Error::Task(format!("cannot start the read-model writer: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        let lost = || Error::Task("the read-model writer was lost".into());
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(lost)?;
        answer.await.map_err(|_| lost())?
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Events applied between two checkpoints (copying the WAL back into the database file).
const CHECKPOINT_EVERY: usize = 2_000;

/// A WAL file longer than this is restarted from its beginning by the writer, and cut back to
/// this length. The checkpointer's passive checkpoints run beside the writer and, while it
/// keeps committing, never catch up with it: without the restart the WAL grew as long as the
/// load lasted (800 MB after a minute at 2,000 messages/s in one room).
const WAL_LIMIT: u64 = if cfg!(test) {
    1024 * 1024
} else {
    64 * 1024 * 1024
};

/// Copies the WAL back into the database file on its own thread and connection, so that the
/// projector's commits never wait for it (SQLite's automatic checkpoint runs inside the
/// `COMMIT` that crosses its threshold, rewriting pages and syncing the file: a stall of the
/// projector, and of every send waiting for its projection). The thread ends with the models.
#[derive(Debug)]
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    /// Events applied since the last wake-up.
    unchecked: AtomicUsize,
}

impl Checkpointer {
    fn start(path: &Path, nice: i32) -> Result<Self> {
        let conn = Connection::open(path)?;
        configure(&conn)?;
        // One pending wake-up is enough: a checkpoint copies everything committed so far.
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("models-checkpoint".into())
            .spawn(move || {
                priority::lower_current_thread(nice, "read-model checkpointer");
                while woken.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "read-model checkpoint failed");
                    }
                }
            })
            .map_err(|e| Error::Task(format!("cannot start the checkpointer: {e}")))?;
        Ok(Self {
            wake,
            unchecked: AtomicUsize::new(0),
        })
    }

    /// `events` more were committed: wakes the thread every [`CHECKPOINT_EVERY`].
    fn applied(&self, events: usize) {
        let unchecked = self.unchecked.fetch_add(events, Ordering::Relaxed) + events;
        if unchecked >= CHECKPOINT_EVERY && self.wake.try_send(()).is_ok() {
            self.unchecked.store(0, Ordering::Relaxed);
        }
    }
}

/// Run by the writer between its transactions: once the WAL is longer than [`WAL_LIMIT`],
/// copies what the checkpointer has not yet copied and waits for the readers still reading
/// the WAL, so that the next commit starts the WAL over (and cuts the file back,
/// `journal_size_limit`). A pause of the writer every [`WAL_LIMIT`] of commits.
fn restart_long_wal(conn: &Connection, wal: &Path) {
    if std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_LIMIT)
        && let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
    {
        tracing::warn!(error = %e, "read-model WAL restart failed");
    }
}

/// The writer's transactions take the write lock when they begin. A deferred one reads first
/// and would then have to upgrade its read lock while a restarting checkpoint holds the write
/// lock: SQLite fails that at once (`database is locked`), without waiting, to avoid a deadlock.
pub(crate) fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // The read model can always be rebuilt from the log, so it need not fsync each commit;
    // WAL with NORMAL stays consistent after a crash, it may only lose the newest commits,
    // which the checkpoint (in the same transaction) then replays.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl ReadModels {
    /// Opens (creating or rebuilding as needed) the read-model file at `path`. Blocking. Its
    /// writes run on a thread `nice` steps nicer than the caller (Linux nice increment; 0
    /// keeps normal priority).
    pub fn open(path: impl AsRef<Path>, nice: i32) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            let conn = Connection::open(&path)?;
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            drop(conn);
            if version != SCHEMA_VERSION {
                tracing::warn!(path = %path.display(), found = version, want = SCHEMA_VERSION,
                    "read model has another schema version; rebuilding it from the log");
                Self::delete(&path)?;
            }
        }
        let fresh = !path.exists();
        let writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        // Checkpoints run on the checkpointer's thread, not in the writer's commits.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
        if fresh {
            writer.execute_batch(SCHEMA)?;
            writer.execute_batch(SCHEMA_ADMIN)?;
            writer.execute_batch(crate::features::SCHEMA)?;
            writer.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tracing::info!(path = %path.display(), "created read model; it will be built from the log");
        }
        let checkpointer = Checkpointer::start(&path, nice)?;
        let wal = {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            PathBuf::from(wal)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                writer: WriterThread::start(writer, wal, nice)?,
                path,
                readers: Mutex::new(Vec::new()),
                unread: UnreadCache::default(),
                checkpointer,
            }),
        })
    }

    /// Removes a read-model file and its WAL side files, so the next open rebuilds it.
    pub fn delete(path: &Path) -> Result<()> {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(PathBuf::from(p)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Task(format!("cannot delete read model: {e}"))),
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a pooled read-only connection, off the async worker threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner
                .readers
                .lock()
                .map_err(|_| Error::Task("reader pool poisoned".into()))?
                .pop();
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    configure(&c)?;
                    c
                }
            };
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs `f` with the write connection, on the writer's thread. Only the runner writes.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.inner.writer.run(f).await
    }

    /// Watches `user`'s unread counts. Never waits: the first watch of a user queues them for
    /// loading (off the projector's write connection, see `crate::unread`); the watch is woken
    /// once they are loaded, and follows the projector from then on. Dropping the last watch of
    /// a user frees their counts.
    pub fn watch_unread(&self, user: UserId) -> UnreadWatch {
        self.inner.unread.watch(user)
    }

    /// `events` more were committed by the writer.
    pub(crate) fn applied(&self, events: usize) {
        self.inner.checkpointer.applied(events);
    }

    pub(crate) fn unread_cache(&self) -> &UnreadCache {
        &self.inner.unread
    }

    /// The position of the last event applied (0 when none).
    pub async fn checkpoint(&self) -> Result<u64> {
        self.write(|c| crate::apply::checkpoint(c)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.db");
        let models = ReadModels::open(&path, 0).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let initial = size();
        // Commits go to the WAL only: the writer does not checkpoint by itself (while the WAL
        // is shorter than `WAL_LIMIT`).
        models
            .write(|c| {
                c.execute_batch("CREATE TABLE filler (x BLOB)")?;
                let tx = c.transaction()?;
                for _ in 0..48 {
                    tx.execute("INSERT INTO filler VALUES (zeroblob(4096))", [])?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
        let before = size();
        assert!(
            before < initial + 100 * 1024,
            "the writer checkpointed: {before} bytes"
        );
        // At the threshold the checkpointer is woken, and copies the WAL back.
        models.applied(CHECKPOINT_EVERY);
        let deadline = Instant::now() + Duration::from_secs(30);
        while size() < before + 150 * 1024 {
            assert!(Instant::now() < deadline, "no checkpoint: {} bytes", size());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes run on the writer's own thread, nicer than the caller by the given increment;
    /// the caller's thread keeps its priority.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn writes_run_on_a_thread_nicer_by_the_setting() {
        let own = priority::current_thread_nice().unwrap();
        if own + 4 > 19 {
            test_support::skip!("the tests already run at nice {own}; nothing lower to see");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let models = ReadModels::open(dir.path().join("models.db"), 4).unwrap();
        let (nice, name) = models
            .write(|_| {
                let me = std::thread::current();
                Ok((
                    priority::current_thread_nice(),
                    me.name().map(str::to_owned),
                ))
            })
            .await
            .unwrap();
        assert_eq!(nice, Some(own + 4));
        assert_eq!(name.as_deref(), Some("models-writer"));
        assert_eq!(priority::current_thread_nice(), Some(own));
    }

    /// The writer commits without pause while readers keep reading: passive checkpoints alone
    /// never let the WAL start over, and it grew by every commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_continuous_commits_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.db");
        let models = ReadModels::open(&path, 0).unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        models
            .write(|c| Ok(c.execute_batch("CREATE TABLE filler (x BLOB)")?))
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (models, stop) = (models.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        models
                            .read(|c| {
                                Ok(c.query_row("SELECT count(*) FROM filler", [], |r| {
                                    r.get::<_, i64>(0)
                                })?)
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        // 20 × the limit, in commits of 16 pages, each followed by a checkpointer wake-up.
        let mut longest = 0;
        for _ in 0..(20 * WAL_LIMIT / (16 * 4096)) {
            models
                .write(|c| {
                    // As the projector: the batch reads its checkpoint before it writes.
                    let tx = begin(c)?;
                    tx.query_row("SELECT count(*) FROM filler", [], |_| Ok(()))?;
                    for _ in 0..16 {
                        tx.execute("INSERT INTO filler VALUES (zeroblob(4000))", [])?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
                .unwrap();
            models.applied(CHECKPOINT_EVERY);
            longest = longest.max(std::fs::metadata(&wal).unwrap().len());
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
        assert!(
            longest < 10 * WAL_LIMIT,
            "the WAL grew to {longest} bytes (limit {WAL_LIMIT})"
        );
    }
}
