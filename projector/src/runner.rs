use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use eventlog::EventLog;
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, watch};
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
/// Under a steady flow the interval stretches towards this, in proportion to the events the
/// last transaction carried (all the way from [`STRETCH_EVENTS`] on): the pages a transaction
/// dirties are mostly per room (timeline, room row, unread blocks), so the more sends per room
/// one transaction carries, the fewer pages per send it writes (`cargo bench -p projector
/// --bench unread -- spread`: 50 sends over 100 rooms per transaction cost ~33 µs each, 400
/// cost ~20 µs). A read that waits for the projector waits up to this much longer under load.
const APPLY_EVERY_MAX: Duration = Duration::from_millis(40);
const STRETCH_EVENTS: usize = 400;

/// The least time between the beginnings of two transactions, after one of `events`.
fn apply_interval(events: usize) -> Duration {
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

impl Progress {
    pub fn new() -> (watch::Sender<u64>, Self) {
        let (tx, rx) = watch::channel(0);
        let waiters = Arc::new(Waiters {
            pending: Mutex::new(Some(BTreeMap::new())),
            dispatcher: Once::new(),
        });
        (tx, Self { rx, waiters })
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
    progress: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Result<()> {
    let loader = crate::unread::load_watched(models.clone(), shutdown.clone());
    let runner = apply_from_log(log, models, progress, shutdown);
    tokio::try_join!(runner, loader).map(|_| ())
}

async fn apply_from_log(
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Result<()> {
    let start = models.checkpoint().await?;
    progress.send_replace(start);
    tracing::info!(checkpoint = start, "projector starting");
    let mut events = log.subscribe(start);
    let mut began = tokio::time::Instant::now() - APPLY_EVERY_MAX;
    let mut every = APPLY_EVERY;
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            next = events.next() => next,
        };
        let Some(first) = next else {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            return Err(Error::NotCaughtUp("the log subscription ended"));
        };
        let mut batch = vec![first?];
        // Busy: let the events of the next few milliseconds join this one.
        if began.elapsed() < every {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(began + every) => {}
            }
        }
        began = tokio::time::Instant::now();
        // Take whatever else is already waiting: one transaction for a burst.
        while batch.len() < MAX_BATCH {
            match events.next().now_or_never() {
                Some(Some(event)) => batch.push(event?),
                _ => break,
            }
        }
        let cache = models.unread_cache().clone();
        let events = batch.len();
        every = apply_interval(events);
        let applied = models
            .write(move |conn| apply::apply_batch(conn, &batch, &cache))
            .await?;
        models.applied(events);
        progress.send_replace(applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_stretches_with_the_events_of_the_last_transaction() {
        assert_eq!(apply_interval(1), Duration::from_nanos(5_087_500));
        assert_eq!(apply_interval(200), Duration::from_micros(22_500));
        assert_eq!(apply_interval(STRETCH_EVENTS), APPLY_EVERY_MAX);
        assert_eq!(apply_interval(MAX_BATCH), APPLY_EVERY_MAX);
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
