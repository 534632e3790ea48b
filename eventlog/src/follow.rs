//! One follower of the log per process, shared by every consumer.
//!
//! [`Shared`] wraps a log: appends and reads go to it unchanged, but [`EventLog::subscribe`] is
//! served from a single subscription of the wrapped log (the **follower**, run by the future
//! [`Shared::start`] returns), whose events are handed out in-process as the same
//! `Arc<RecordedEvent>` to every consumer. On JetStream an event then crosses NATS once per
//! node, not once per consumer.
//!
//! Each consumer keeps its own position and its own bounded lag: it reads the follower's
//! events from a broadcast buffer of `capacity` events. A consumer that falls further behind
//! than that (a slow search indexer) never holds the follower or the others back; it loses its
//! place in the buffer and catches up from the log by itself, reading pages of it
//! ([`EventLog::read_all`]) from its own last position, until it reaches the follower again.
//! A consumer that starts behind the follower (a checkpoint older than the head) does the
//! same. Reading, not subscribing: on JetStream a catch-up is direct gets, not a consumer
//! of its own that would outlive it on the server. The seam is exact: joining the buffer and
//! reading the follower's last position happen under one lock, so the buffer holds every
//! event after that position, and the pages deliver everything up to it. Only after the
//! follower has stopped (the log closed or failed) does a consumer subscribe to the log
//! itself. Per consumer: log order, no gap, no duplicate.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    AppendResult, EventLog, ExpectedVersion, NewEvent, RecordedEvent, Result, Subscription,
};

/// Events a consumer may fall behind the follower before it catches up from the log.
pub const DEFAULT_CAPACITY: usize = 8_192;
/// Events read from the log at a time while catching up.
const CATCH_UP_PAGE: usize = 512;

/// A log whose subscriptions share one follower (see the module docs).
pub struct Shared {
    inner: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

struct Fanout {
    /// The sender (`None` once the follower has stopped) and the position of the last event
    /// sent, changed together.
    tail: Mutex<Tail>,
    capacity: usize,
}

struct Tail {
    tx: Option<broadcast::Sender<Arc<RecordedEvent>>>,
    position: u64,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, Tail> {
        // Nothing panics while it is held.
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of every event after the returned position; `None` once the follower has
    /// stopped.
    fn join(&self) -> Option<(u64, broadcast::Receiver<Arc<RecordedEvent>>)> {
        let tail = self.lock();
        let rx = tail.tx.as_ref()?.subscribe();
        Some((tail.position, rx))
    }
}

impl Shared {
    /// Wraps `inner`. The returned future is the follower: it follows the log from its head
    /// now, and must run for subscriptions to go live; it ends when the log's subscription
    /// does (on close), or with its error.
    pub async fn start(
        inner: Arc<dyn EventLog>,
        capacity: usize,
    ) -> Result<(Arc<Self>, impl Future<Output = Result<()>> + Send + 'static)> {
        let head = inner.head().await?;
        let (tx, _) = broadcast::channel(capacity.max(1));
        let fanout = Arc::new(Fanout {
            tail: Mutex::new(Tail {
                tx: Some(tx),
                position: head,
            }),
            capacity: capacity.max(1),
        });
        let follow = {
            let (fanout, mut events) = (fanout.clone(), inner.subscribe(head));
            async move {
                let result = loop {
                    match events.next().await {
                        Some(Ok(event)) => {
                            let mut tail = fanout.lock();
                            tail.position = event.position;
                            if let Some(tx) = &tail.tx {
                                // No receiver is not an error: nobody is following yet.
                                let _ = tx.send(event);
                            }
                        }
                        Some(Err(e)) => break Err(e),
                        None => break Ok(()),
                    }
                };
                // Receivers end; later subscriptions read the log directly.
                fanout.lock().tx = None;
                result
            }
        };
        Ok((Arc::new(Self { inner, fanout }), follow))
    }
}

/// One consumer's subscription: from the buffer while it keeps up, from pages of the log
/// while it catches up.
struct Follow {
    log: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
    /// The position of the last event delivered.
    last: u64,
    /// The buffer, and the follower's position when this consumer joined it.
    joined: Option<(u64, broadcast::Receiver<Arc<RecordedEvent>>)>,
    /// While catching up: the rest of the page read from the log after `last`.
    page: VecDeque<Arc<RecordedEvent>>,
    /// After the follower stopped: a subscription of the log, from `last`.
    private: Option<Subscription>,
    /// The follower has stopped: only `private` is left.
    detached: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Arc<RecordedEvent>>, Self)> {
        loop {
            if self.joined.is_none() && !self.detached {
                self.joined = self.fanout.join();
                self.detached = self.joined.is_none();
            }
            let behind = match &self.joined {
                Some((target, rx)) => {
                    // Caught up from the log while the buffer overflowed: join again.
                    if self.last < *target && rx.len() >= self.fanout.capacity {
                        self.joined = None;
                        continue;
                    }
                    self.last < *target
                }
                None => true,
            };
            if behind && !self.detached {
                if self.page.is_empty() {
                    match self.log.read_all(self.last, CATCH_UP_PAGE).await {
                        Ok(page) => self.page = page.into_iter().map(Arc::new).collect(),
                        Err(e) => return Some((Err(e), self)),
                    }
                }
                match self.page.pop_front() {
                    Some(event) if event.position <= self.last => continue,
                    Some(event) => {
                        self.last = event.position;
                        return Some((Ok(event), self));
                    }
                    // Nothing readable after `last` yet, though the follower has passed it
                    // (a JetStream replica answering the read may lag the leader by a moment):
                    // read again shortly.
                    None => {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        continue;
                    }
                }
            }
            if behind {
                let (log, last) = (&self.log, self.last);
                let private = self.private.get_or_insert_with(|| log.subscribe(last));
                match private.next().await {
                    Some(Ok(event)) if event.position <= self.last => continue,
                    Some(Ok(event)) => {
                        self.last = event.position;
                        return Some((Ok(event), self));
                    }
                    Some(Err(e)) => return Some((Err(e), self)),
                    None => return None,
                }
            }
            self.page.clear();
            let Some((_, rx)) = &mut self.joined else {
                continue;
            };
            match rx.recv().await {
                Ok(event) if event.position <= self.last => {}
                Ok(event) => {
                    self.last = event.position;
                    return Some((Ok(event), self));
                }
                // Fell further behind than the buffer: catch up from the log.
                Err(RecvError::Lagged(_)) => self.joined = None,
                // The follower stopped (the log closed, or failed): what is left is the log's.
                Err(RecvError::Closed) => {
                    self.joined = None;
                    self.detached = true;
                }
            }
        }
    }
}

#[async_trait]
impl EventLog for Shared {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn append_batch(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<AppendResult>>> {
        self.inner.append_batch(stream, expected, batch).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, limit).await
    }

    async fn head(&self) -> Result<u64> {
        self.inner.head().await
    }

    fn subscribe(&self, after: u64) -> Subscription {
        let follow = Follow {
            log: self.inner.clone(),
            fanout: self.fanout.clone(),
            last: after,
            joined: None,
            page: VecDeque::new(),
            private: None,
            detached: false,
        };
        futures::stream::unfold(follow, Follow::next).boxed()
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
