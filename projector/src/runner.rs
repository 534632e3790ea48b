use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use eventlog::{EventLog, RecordedEvent};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{Error, ReadModels, Result, apply};

/// Most events applied in one read-model transaction.
const MAX_BATCH: usize = 2_000;
/// A busy projector begins a transaction at most this often: events that come sooner after
/// the last one began wait (in the log subscription) and are applied together with the next.
/// Each commit writes every page it dirtied to the WAL, whether it carries one event or fifty;
/// at thousands of events a second, one commit per handful cost a third of the projector's
/// time. An idle projector applies an event at once.
const APPLY_EVERY: Duration = Duration::from_millis(5);
/// Under a steady flow, while no reader waits for the projector, the interval stretches
/// towards this, in proportion to the events the last transaction carried (all the way from
/// [`STRETCH_EVENTS`] on): the pages a transaction dirties are mostly per room (timeline rows,
/// room row), so the more sends per room one transaction carries, the fewer pages per send it
/// writes (`cargo bench -p projector --bench unread -- spread`: 400 sends over 100 rooms per
/// transaction cost ~21 µs each, 2,000 cost ~15 µs). A reader that waits (a send waiting for
/// its projection, a read behind its user's own write) cuts the stretch short: the events
/// then wait at most [`APPLY_EVERY`].
const APPLY_EVERY_MAX: Duration = Duration::from_millis(250);
const STRETCH_EVENTS: usize = MAX_BATCH / 2;

/// A batch whose newest event was appended longer ago than this finds the projector behind
/// the log (catching up, when events come in pages of the log rather than as they commit):
/// the next transaction begins at once. Twice the longest stretch, so that a projector that
/// keeps up is never taken for one that does not.
const BEHIND: Duration = Duration::from_millis(2 * APPLY_EVERY_MAX.as_millis() as u64);

/// The least time between the beginnings of two transactions, after one of `events`, while
/// no reader waits. A full batch ([`MAX_BATCH`]) left events waiting, and a batch of old
/// events (see [`BEHIND`]) was read from the log's past: the projector is behind and begins
/// the next one at once. (Stretched after full batches too, it applied at most `MAX_BATCH`
/// per [`APPLY_EVERY_MAX`], 8,000 events a second, and fell further behind without end under
/// any faster flow.)
fn apply_interval(events: usize, behind: bool) -> Duration {
    if behind || events >= MAX_BATCH {
        return Duration::ZERO;
    }
    let flow = (events as f64 / STRETCH_EVENTS as f64).min(1.0);
    APPLY_EVERY + (APPLY_EVERY_MAX - APPLY_EVERY).mul_f64(flow)
}

/// How far the read models are: the position of the last applied event.
///
/// Many callers may wait at once (every send waits for its event to be applied), so waiting
/// does not watch the position itself: each waiter is filed under the position it needs, and
/// one dispatcher task per `Progress` wakes, at each step, only those whose position has been
/// reached (a step wakes the waiters it satisfies, not every waiter).
#[derive(Debug, Clone)]
pub struct Progress {
    rx: watch::Receiver<u64>,
    waiters: Arc<Waiters>,
}

#[derive(Debug)]
struct Waiters {
    /// By the position they wait for. `None` once the position will never move again.
    pending: Mutex<Option<BTreeMap<u64, Vec<oneshot::Sender<()>>>>>,
    dispatcher: Once,
    /// Told each time a waiter is filed (the projector, holding events back, hears of it).
    filed: Notify,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Option<BTreeMap<u64, Vec<oneshot::Sender<()>>>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters `position` satisfies.
    fn reached(&self, position: u64) {
        let done = {
            let mut pending = self.lock();
            let Some(pending) = pending.as_mut() else {
                return;
            };
            let later = pending.split_off(&(position + 1));
            std::mem::replace(pending, later)
        };
        for tx in done.into_values().flatten() {
            let _ = tx.send(());
        }
    }
}

/// The moving side of a [`Progress`], held by whoever applies the events: it publishes the
/// position, and hears of readers waiting for a position it has not reached. Dropping it fails
/// the waiters left (the position will not move again).
#[derive(Debug)]
pub struct Advance {
    tx: watch::Sender<u64>,
    waiters: Arc<Waiters>,
}

impl Advance {
    /// Publishes `position` (every event up to it applied); returns the previous one.
    pub fn send_replace(&self, position: u64) -> u64 {
        self.tx.send_replace(position)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Whether a reader waits for a position past `position`.
    fn awaited(&self, position: u64) -> bool {
        self.waiters
            .lock()
            .as_ref()
            .and_then(|pending| pending.last_key_value())
            .is_some_and(|(wanted, _)| *wanted > position)
    }

    /// Resolves once a reader has begun to wait since the last time it resolved (maybe for a
    /// position already reached: see [`Self::awaited`]). Cancel-safe.
    async fn waited(&self) {
        self.waiters.filed.notified().await;
    }
}

/// For one that does not care who waits (the search indexer): the position's sender alone.
impl From<Advance> for watch::Sender<u64> {
    fn from(advance: Advance) -> Self {
        advance.tx
    }
}

impl Progress {
    pub fn new() -> (Advance, Self) {
        let (tx, rx) = watch::channel(0);
        let waiters = Arc::new(Waiters {
            pending: Mutex::new(Some(BTreeMap::new())),
            dispatcher: Once::new(),
            filed: Notify::new(),
        });
        (
            Advance {
                tx,
                waiters: waiters.clone(),
            },
            Self { rx, waiters },
        )
    }

    pub fn position(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until every event up to `position` is applied, or `timeout` passes.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        if self.position() >= position {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.waiters.lock();
            let Some(pending) = pending.as_mut() else {
                return Err(Error::NotCaughtUp("the projector stopped"));
            };
            pending.entry(position).or_default().push(tx);
        }
        self.waiters.filed.notify_one();
        self.start_dispatcher();
        // The dispatcher may have handled the step that reached it before the waiter was
        // filed: look again now that it is.
        if self.position() >= position {
            return Ok(());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::NotCaughtUp("the projector stopped")),
            Err(_) => Err(Error::NotCaughtUp("timed out waiting for the projections")),
        }
    }

    /// The task that follows the position and wakes waiters, started by the first wait (in a
    /// runtime); it ends with the sender, failing the waiters left.
    fn start_dispatcher(&self) {
        self.waiters.dispatcher.call_once(|| {
            let mut rx = self.rx.clone();
            let waiters = self.waiters.clone();
            tokio::spawn(async move {
                loop {
                    let position = *rx.borrow_and_update();
                    waiters.reached(position);
                    if rx.changed().await.is_err() {
                        // The last step may not have been seen yet.
                        waiters.reached(*rx.borrow());
                        waiters.lock().take();
                        return;
                    }
                }
            });
        });
    }
}

/// Consumes the log from the stored checkpoint into the read models until `shutdown`,
/// publishing the applied position on `progress`. Returns an error if the log or the read
/// model fails; the caller's supervisor decides what then.
#[tracing::instrument(name = "projector", skip_all)]
pub async fn run(
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress: Advance,
    shutdown: CancellationToken,
) -> Result<()> {
    let loader = crate::unread::load_watched(models.clone(), shutdown.clone());
    let runner = apply_from_log(log, models, progress, shutdown);
    tokio::try_join!(runner, loader).map(|_| ())
}

async fn apply_from_log(
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress: Advance,
    shutdown: CancellationToken,
) -> Result<()> {
    let start = models.checkpoint().await?;
    progress.send_replace(start);
    tracing::info!(checkpoint = start, "projector starting");
    let mut events = log.subscribe(start);
    let mut pace = Pace::new(start);
    while let Some(batch) = pace.next_batch(&mut events, &progress, &shutdown).await? {
        let cache = models.unread_cache().clone();
        let events = batch.len();
        let applied = models
            .write(move |conn| apply::apply_batch(conn, &batch, &cache))
            .await?;
        models.applied(events);
        pace.applied(events, applied);
        progress.send_replace(applied);
    }
    Ok(())
}

/// When the projector begins its transactions, and what each carries.
struct Pace {
    /// When the last transaction began.
    began: tokio::time::Instant,
    /// The least time from then to the next, while no reader waits.
    every: Duration,
    /// The position the last transaction reached.
    applied: u64,
    /// Whether the last batch's newest event was older than [`BEHIND`].
    behind: bool,
}

impl Pace {
    fn new(applied: u64) -> Self {
        Self {
            began: tokio::time::Instant::now() - APPLY_EVERY_MAX,
            every: APPLY_EVERY,
            applied,
            behind: false,
        }
    }

    fn applied(&mut self, events: usize, position: u64) {
        self.every = apply_interval(events, self.behind);
        self.applied = position;
    }

    /// The events of the next transaction: the next one, and those that come until the
    /// interval since the last transaction has passed (only [`APPLY_EVERY`] of it while a
    /// reader waits for a position past the last one applied), and whatever else is ready
    /// then. `None` at shutdown.
    async fn next_batch<S>(
        &mut self,
        events: &mut S,
        progress: &Advance,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Arc<RecordedEvent>>>>
    where
        S: futures::Stream<Item = eventlog::Result<Arc<RecordedEvent>>> + Unpin,
    {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(None),
            next = events.next() => next,
        };
        let Some(first) = next else {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            return Err(Error::NotCaughtUp("the log subscription ended"));
        };
        let mut batch = vec![first?];
        // Busy: let the events of the next few milliseconds join this one.
        loop {
            let every = if progress.awaited(self.applied) {
                APPLY_EVERY.min(self.every)
            } else {
                self.every
            };
            if self.began.elapsed() >= every {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                // Someone began to wait: look again at what for.
                () = progress.waited() => {}
                () = tokio::time::sleep_until(self.began + every) => break,
            }
        }
        self.began = tokio::time::Instant::now();
        // Take whatever else is already waiting: one transaction for a burst. Unconstrained:
        // Tokio's budget would otherwise end the batch after 128 events, however many wait.
        while batch.len() < MAX_BATCH {
            match tokio::task::unconstrained(events.next()).now_or_never() {
                Some(Some(event)) => batch.push(event?),
                _ => break,
            }
        }
        self.behind = batch.last().is_some_and(|newest| {
            (chrono::Utc::now() - newest.recorded_at)
                .to_std()
                .is_ok_and(|age| age > BEHIND)
        });
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_stretches_with_the_events_of_the_last_transaction() {
        assert_eq!(apply_interval(1, false), Duration::from_nanos(5_245_000));
        assert_eq!(apply_interval(400, false), Duration::from_millis(103));
        assert_eq!(apply_interval(STRETCH_EVENTS, false), APPLY_EVERY_MAX);
        assert_eq!(apply_interval(MAX_BATCH - 1, false), APPLY_EVERY_MAX);
        assert_eq!(
            apply_interval(MAX_BATCH, false),
            Duration::ZERO,
            "full: at once"
        );
        assert_eq!(apply_interval(512, true), Duration::ZERO, "behind: at once");
    }

    type Item = eventlog::Result<Arc<RecordedEvent>>;

    fn event(position: u64) -> Item {
        event_at(position, chrono::Utc::now())
    }

    fn event_at(position: u64, recorded_at: chrono::DateTime<chrono::Utc>) -> Item {
        Ok(Arc::new(RecordedEvent {
            stream: "room-1".into(),
            version: position,
            position,
            event_id: uuid::Uuid::now_v7(),
            event_type: "message_sent".into(),
            schema_version: 1,
            data: Vec::new(),
            metadata: Vec::new(),
            recorded_at,
        }))
    }

    /// A projector whose last transaction carried a full batch (the interval fully
    /// stretched), fed by a channel; it has applied up to `applied`.
    fn stretched(
        applied: u64,
    ) -> (
        Pace,
        tokio::sync::mpsc::UnboundedSender<Item>,
        impl futures::Stream<Item = Item> + Unpin,
    ) {
        let mut pace = Pace::new(0);
        pace.began = tokio::time::Instant::now();
        pace.applied(STRETCH_EVENTS, applied);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (pace, tx, events)
    }

    /// With no reader waiting, the events of a steady flow wait for the stretched interval
    /// and go in one transaction.
    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_waits_for_the_stretch_when_no_one_reads() {
        let (advance, _progress) = Progress::new();
        let (mut pace, tx, mut events) = stretched(0);
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            for position in 1..=100 {
                if tx.send(event(position)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let batch = pace
            .next_batch(&mut events, &advance, &CancellationToken::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(start.elapsed(), APPLY_EVERY_MAX);
        // One event every 20 ms from 0 ms to 240 ms.
        assert_eq!(batch.len(), 13);
    }

    /// A flow faster than a full batch per stretched interval: after a full batch the next
    /// begins at once, so the projector keeps up with any flow its transactions can carry.
    /// (Stretched after full batches, 20,000 events waited 250 ms per 2,000 and a flow of
    /// 20,000 events a second fell behind by 12,000 a second.)
    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_applied_without_waiting_between_full_batches() {
        let (advance, _progress) = Progress::new();
        let (mut pace, tx, mut events) = stretched(0);
        for position in 1..=(3 * MAX_BATCH as u64) {
            tx.send(event(position)).unwrap();
        }
        let stop = CancellationToken::new();
        let first = pace.next_batch(&mut events, &advance, &stop).await;
        assert_eq!(first.unwrap().unwrap().len(), MAX_BATCH);
        pace.applied(MAX_BATCH, MAX_BATCH as u64);
        let start = tokio::time::Instant::now();
        for n in 2..=3u64 {
            let batch = pace.next_batch(&mut events, &advance, &stop).await;
            assert_eq!(batch.unwrap().unwrap().len(), MAX_BATCH);
            pace.applied(MAX_BATCH, n * MAX_BATCH as u64);
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait between full batches"
        );
    }

    /// Catching up from the log's past, events come in pages (512 from `eventlog::follow`),
    /// never a full batch: their age tells the projector it is behind, and it does not wait
    /// between them. (Stretched by their count, it would apply ~4,000 events a second, less
    /// than the flow it fell behind.)
    #[tokio::test(start_paused = true)]
    async fn old_events_are_applied_without_waiting() {
        let (advance, _progress) = Progress::new();
        let (mut pace, tx, mut events) = stretched(0);
        let stop = CancellationToken::new();
        let long_ago = chrono::Utc::now() - chrono::Duration::seconds(10);
        let page = 512u64;
        for position in 1..=page {
            tx.send(event_at(position, long_ago)).unwrap();
        }
        let first = pace.next_batch(&mut events, &advance, &stop).await;
        assert_eq!(first.unwrap().unwrap().len(), page as usize);
        pace.applied(page as usize, page);
        let start = tokio::time::Instant::now();
        for position in page + 1..=2 * page {
            tx.send(event_at(position, long_ago)).unwrap();
        }
        let second = pace.next_batch(&mut events, &advance, &stop).await;
        assert_eq!(second.unwrap().unwrap().len(), page as usize);
        assert_eq!(start.elapsed(), Duration::ZERO, "no stretch while behind");
        // A new event after them still goes at once (the last batch was behind); once it is
        // applied, the projector has caught up and the stretch is back.
        pace.applied(page as usize, 2 * page);
        tx.send(event(2 * page + 1)).unwrap();
        let third = pace.next_batch(&mut events, &advance, &stop).await;
        assert_eq!(third.unwrap().unwrap().len(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.applied(1, 2 * page + 1);
        tx.send(event(2 * page + 2)).unwrap();
        let fourth = pace.next_batch(&mut events, &advance, &stop).await;
        assert_eq!(fourth.unwrap().unwrap().len(), 1);
        // (Tokio's timer rounds up to the millisecond.)
        let waited = start.elapsed();
        assert!(waited >= apply_interval(1, false), "{waited:?}");
        assert!(waited <= apply_interval(1, false) + Duration::from_millis(1));
    }

    /// A reader that begins to wait while the projector holds events back has them applied
    /// at once (the stretch cut short), as has one that waits before its event arrives.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_cuts_the_stretch_short() {
        let (advance, progress) = Progress::new();
        let (mut pace, tx, mut events) = stretched(0);
        let stop = CancellationToken::new();
        let start = tokio::time::Instant::now();
        tx.send(event(1)).unwrap();
        let reader = {
            let progress = progress.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                progress.wait_for(1, LONG).await
            })
        };
        let batch = pace
            .next_batch(&mut events, &advance, &stop)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(20),
            "when the reader began to wait"
        );
        pace.applied(STRETCH_EVENTS, 1);
        advance.send_replace(1);
        reader.await.unwrap().unwrap();

        // Someone waits for event 2 before it comes: no stretch for it either.
        let reader = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.wait_for(2, LONG).await })
        };
        while !advance.awaited(1) {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = tokio::time::Instant::now();
        tx.send(event(2)).unwrap();
        let batch = pace
            .next_batch(&mut events, &advance, &stop)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            sent.elapsed(),
            Duration::ZERO,
            "{APPLY_EVERY:?} since the last began"
        );
        advance.send_replace(2);
        reader.await.unwrap().unwrap();
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn each_step_wakes_the_waiters_it_satisfies_and_no_others() {
        let (tx, progress) = Progress::new();
        let mut waits: Vec<_> = (1..=3u64)
            .map(|p| {
                let progress = progress.clone();
                tokio::spawn(async move { progress.wait_for(p, LONG).await })
            })
            .collect();
        // Every waiter is filed before the position moves.
        while progress.waiters.lock().as_ref().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(2);
        for wait in waits.drain(..2) {
            wait.await.unwrap().unwrap();
        }
        assert_eq!(
            progress.waiters.lock().as_ref().unwrap().len(),
            1,
            "3 still waits"
        );
        assert!(!waits[0].is_finished());
        tx.send_replace(3);
        waits.pop().unwrap().await.unwrap().unwrap();
        progress.wait_for(3, LONG).await.unwrap();
    }

    #[tokio::test]
    async fn waiters_fail_when_the_projector_stops() {
        let (tx, progress) = Progress::new();
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move { progress.wait_for(5, LONG).await })
        };
        while progress.waiters.lock().as_ref().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        drop(tx);
        assert!(matches!(
            waiting.await.unwrap(),
            Err(Error::NotCaughtUp("the projector stopped"))
        ));
        assert!(matches!(
            progress.wait_for(5, LONG).await,
            Err(Error::NotCaughtUp("the projector stopped"))
        ));
    }
}
