//! A log, an index and a running indexer in a fresh temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projector::Progress;
use schema::events::Event;
use schema::{MessageBody, MessageId, RoomId, UserId, streams};
use search::{IndexerSettings, SearchIndex, SearchPage, SearchRequest, Sort, UserQuery};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Waits for the indexer this long at most; a test that needs longer has found a bug.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Harness {
    _tmp: Option<TempDir>,
    pub log: Arc<SqliteLog>,
    pub index: SearchIndex,
    pub progress: Progress,
    stop: CancellationToken,
    task: Option<JoinHandle<search::Result<()>>>,
}

impl Harness {
    /// A fresh log and index, indexer running.
    pub async fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = Self::open(tmp.path()).await;
        h._tmp = Some(tmp);
        h.start();
        h
    }

    /// Like [`Self::new`] in a directory the caller keeps.
    pub async fn new_in(dir: &Path) -> Self {
        let mut h = Self::open(dir).await;
        h.start();
        h
    }

    pub async fn log_head(&self) -> u64 {
        self.log.head().await.unwrap()
    }

    /// Opens the log and the index in `dir` without starting the indexer.
    pub async fn open(dir: &Path) -> Self {
        let log = Arc::new(SqliteLog::open(dir.join("events.db")).await.unwrap());
        let head = log.head().await.unwrap();
        let index = SearchIndex::open_for_log(dir.join("search"), head).unwrap();
        let (_, progress) = Progress::new();
        Self {
            _tmp: None,
            log,
            index,
            progress,
            stop: CancellationToken::new(),
            task: None,
        }
    }

    pub fn start(&mut self) {
        let (tx, progress) = Progress::new();
        self.progress = progress;
        self.stop = CancellationToken::new();
        let log: Arc<dyn EventLog> = self.log.clone();
        self.task = Some(tokio::spawn(search::run(
            log,
            self.index.clone(),
            tx.into(),
            self.stop.clone(),
            IndexerSettings::default(),
        )));
    }

    /// Stops the indexer gracefully (it commits what it applied).
    pub async fn stop_indexer(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops the indexer and closes the log; the directory stays.
    pub async fn close(mut self) -> Option<TempDir> {
        self.stop_indexer().await;
        self.log.close().await;
        self._tmp.take()
    }

    async fn append(&self, room: RoomId, event: Event) -> u64 {
        let new = NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: event.type_name().to_owned(),
            schema_version: event.schema_version(),
            data: event.encode(),
            metadata: Vec::new(),
        };
        self.log
            .append(&streams::room(room), ExpectedVersion::Any, vec![new])
            .await
            .unwrap()
            .last_position
    }

    /// Appends a `message_sent`; returns the message id and its log position.
    pub async fn send_as(&self, room: RoomId, sender: UserId, body: &str) -> (MessageId, u64) {
        let id = MessageId::new();
        let event = Event::MessageSent {
            message_id: id,
            sender_id: sender,
            body: MessageBody::parse(body).unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        };
        (id, self.append(room, event).await)
    }

    pub async fn send(&self, room: RoomId, body: &str) -> (MessageId, u64) {
        self.send_as(room, UserId(uuid::Uuid::nil()), body).await
    }

    pub async fn edit(&self, room: RoomId, id: MessageId, body: &str) -> u64 {
        let event = Event::MessageEdited {
            message_id: id,
            sender_id: UserId(uuid::Uuid::nil()),
            body: MessageBody::parse(body).unwrap(),
            mentions: vec![],
        };
        self.append(room, event).await
    }

    pub async fn delete(&self, room: RoomId, id: MessageId) -> u64 {
        let event = Event::MessageDeleted {
            message_id: id,
            sender_id: UserId(uuid::Uuid::nil()),
        };
        self.append(room, event).await
    }

    pub async fn delete_room(&self, room: RoomId) -> u64 {
        let event = Event::RoomDeleted {
            by: UserId(uuid::Uuid::nil()),
        };
        self.append(room, event).await
    }

    /// Waits until everything up to the log's head is searchable.
    pub async fn caught_up(&self) {
        let head = self.log.head().await.unwrap();
        self.progress.wait_for(head, DEADLINE).await.unwrap();
    }

    pub fn search(&self, q: &str, rooms: &[RoomId]) -> SearchPage {
        self.search_with(q, rooms, |_| {})
    }

    pub fn search_with(
        &self,
        q: &str,
        rooms: &[RoomId],
        tweak: impl FnOnce(&mut SearchRequest),
    ) -> SearchPage {
        let mut req = SearchRequest {
            query: UserQuery::parse(q).unwrap(),
            rooms: rooms.to_vec(),
            sender: None,
            from: None,
            to: None,
            sort: Sort::Recent,
            limit: 100,
            cursor: None,
        };
        tweak(&mut req);
        self.index.search(&req).unwrap()
    }

    /// Ids of every hit of `q` in `rooms` (one page of up to 100).
    pub fn ids(&self, q: &str, rooms: &[RoomId]) -> Vec<MessageId> {
        self.search(q, rooms)
            .hits
            .into_iter()
            .map(|h| h.message_id)
            .collect()
    }
}
