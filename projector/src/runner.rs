use std::sync::Arc;
use std::time::Duration;

use eventlog::EventLog;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Error, ReadModels, Result, apply};

/// Most events applied in one read-model transaction.
const MAX_BATCH: usize = 2_000;

/// How far the read models are: the position of the last applied event.
#[derive(Debug, Clone)]
pub struct Progress(watch::Receiver<u64>);

impl Progress {
    pub fn new() -> (watch::Sender<u64>, Self) {
        let (tx, rx) = watch::channel(0);
        (tx, Self(rx))
    }

    pub fn position(&self) -> u64 {
        *self.0.borrow()
    }

    /// Waits until every event up to `position` is applied, or `timeout` passes.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.0.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::NotCaughtUp("the projector stopped")),
            Err(_) => Err(Error::NotCaughtUp("timed out waiting for the projections")),
        }
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
        // Take whatever else is already waiting: one transaction for a burst.
        while batch.len() < MAX_BATCH {
            match events.next().now_or_never() {
                Some(Some(event)) => batch.push(event?),
                _ => break,
            }
        }
        let cache = models.unread_cache().clone();
        let applied = models
            .write(move |conn| apply::apply_batch(conn, &batch, &cache))
            .await?;
        progress.send_replace(applied);
    }
}
