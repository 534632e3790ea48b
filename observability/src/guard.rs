//! Marks the threads polling the shipper and the alert sender, so that what they (and the HTTP
//! clients they drive) log is not shipped or alerted on again: a failing shipper must not feed
//! itself.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is polling one of our workers right now.
pub(crate) fn in_worker() -> bool {
    IN_WORKER.with(Cell::get)
}

/// A worker future; sets the flag while it is polled.
pub(crate) struct Worker<F>(Pin<Box<F>>);

impl<F> Worker<F> {
    pub(crate) fn new(f: F) -> Self {
        Self(Box::pin(f))
    }
}

impl<F: Future> Future for Worker<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let was = IN_WORKER.with(|f| f.replace(true));
        let out = self.0.as_mut().poll(cx);
        IN_WORKER.with(|f| f.set(was));
        out
    }
}
