//! Read-your-writes for commands answered before the read models showed them.
//!
//! A WebSocket `send` (and a REST send with `Prefer: return=minimal`) is answered as soon as
//! it is durable, without waiting for this node's projector. So that its sender still reads
//! what they wrote, the fence keeps, per user, the log position of their last such command
//! until the read models have reached it; the user's next read (a REST `GET`) waits for it
//! first. A sender's own pipeline of sends never waits on the projector; only a read does,
//! and only while the projector is behind that user's writes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use projector::Progress;
use schema::UserId;

/// Entries kept before positions the read models have passed are swept out (then again each
/// time the map has doubled since the last sweep).
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
pub struct ReadFence {
    progress: Progress,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The position each user's reads must wait for.
    pending: HashMap<UserId, u64>,
    /// Entries after the last sweep: the next one comes at twice as many.
    swept_to: usize,
}

impl ReadFence {
    pub fn new(progress: Progress) -> Self {
        Self {
            progress,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `user` was answered at `position` before the read models reached it.
    pub fn record(&self, user: UserId, position: u64) {
        if self.progress.position() >= position {
            return;
        }
        let mut inner = self.lock();
        let at = inner.pending.entry(user).or_default();
        *at = (*at).max(position);
        if inner.pending.len() >= SWEEP_AT.max(2 * inner.swept_to) {
            let reached = self.progress.position();
            inner.pending.retain(|_, at| *at > reached);
            inner.swept_to = inner.pending.len();
        }
    }

    /// The position `user`'s reads must wait for, if the read models have not reached it.
    fn pending(&self, user: UserId) -> Option<u64> {
        let mut inner = self.lock();
        let at = *inner.pending.get(&user)?;
        if self.progress.position() >= at {
            inner.pending.remove(&user);
            return None;
        }
        Some(at)
    }

    /// Waits until the read models show every command of `user`'s answered before they did,
    /// or `timeout` passes (then the read may be stale; `Err` says why).
    pub async fn wait(&self, user: UserId, timeout: Duration) -> projector::Result<()> {
        match self.pending(user) {
            Some(at) => self.progress.wait_for(at, timeout).await,
            None => Ok(()),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use uuid::Uuid;

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_read_waits_until_the_read_models_reach_the_users_last_write() {
        let (tx, progress) = Progress::new();
        let fence = ReadFence::new(progress);
        let (alice, bob) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
        tx.send_replace(3);
        fence.record(alice, 5);
        fence.record(alice, 4); // an older answer does not move the fence back

        assert!(
            fence.wait(bob, LONG).now_or_never().is_some(),
            "bob wrote nothing"
        );
        let mut read = Box::pin(fence.wait(alice, LONG));
        assert!((&mut read).now_or_never().is_none(), "at 3 of 5");
        tx.send_replace(4);
        tokio::task::yield_now().await;
        assert!((&mut read).now_or_never().is_none(), "at 4 of 5");
        tx.send_replace(5);
        read.await.unwrap();
        // Reached: forgotten, later reads do not wait.
        assert!(fence.wait(alice, LONG).now_or_never().is_some());
        assert_eq!(fence.len(), 0);
    }

    #[tokio::test]
    async fn a_write_the_read_models_already_show_is_not_kept() {
        let (tx, progress) = Progress::new();
        let fence = ReadFence::new(progress);
        tx.send_replace(7);
        fence.record(UserId(Uuid::now_v7()), 7);
        assert_eq!(fence.len(), 0);
    }

    #[tokio::test]
    async fn a_wait_gives_up_after_its_timeout() {
        let (_tx, progress) = Progress::new();
        let fence = ReadFence::new(progress);
        let alice = UserId(Uuid::now_v7());
        fence.record(alice, 1);
        assert!(fence.wait(alice, Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn users_who_never_read_again_are_swept_out() {
        let (tx, progress) = Progress::new();
        let fence = ReadFence::new(progress);
        for i in 0..SWEEP_AT as u64 - 1 {
            fence.record(UserId(Uuid::now_v7()), i + 1);
        }
        assert_eq!(fence.len(), SWEEP_AT - 1);
        tx.send_replace(SWEEP_AT as u64 / 2);
        // The next record sweeps the entries the read models have passed.
        fence.record(UserId(Uuid::now_v7()), SWEEP_AT as u64 + 1);
        assert_eq!(fence.len(), SWEEP_AT / 2);
    }
}
