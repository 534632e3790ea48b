//! The event log, metered: append latency and failures, for `/metrics` and the alert rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use eventlog::{AppendResult, EventLog, ExpectedVersion, NewEvent, RecordedEvent, Subscription};

use super::metrics::names;

/// Failures the alert rules watch, counted since start.
#[derive(Debug, Default)]
pub struct Failures {
    pub append_errors: AtomicU64,
    pub forced_disconnects: AtomicU64,
}

/// The event log, timed: every append's latency and every failed append (a version
/// conflict is not a failure: it is how optimistic concurrency works).
#[derive(Debug)]
pub struct MeteredLog {
    inner: Arc<dyn EventLog>,
    failures: Arc<Failures>,
}

impl MeteredLog {
    pub fn wrap(inner: Arc<dyn EventLog>, failures: Arc<Failures>) -> Arc<dyn EventLog> {
        Arc::new(Self { inner, failures })
    }
}

#[async_trait]
impl EventLog for MeteredLog {
    #[tracing::instrument(
        name = "eventlog.append",
        skip_all,
        fields(stream, groups = batch.len(), events = batch.iter().map(Vec::len).sum::<usize>())
    )]
    async fn append_batch(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        batch: Vec<Vec<NewEvent>>,
    ) -> eventlog::Result<Vec<eventlog::Result<AppendResult>>> {
        tracing::Span::current().record("stream", stream);
        let started = Instant::now();
        let result = self.inner.append_batch(stream, expected, batch).await;
        metrics::histogram!(names::APPEND_DURATION).record(started.elapsed().as_secs_f64());
        let errors: Vec<&eventlog::Error> = match &result {
            Ok(answers) => answers.iter().filter_map(|a| a.as_ref().err()).collect(),
            Err(e) => vec![e],
        };
        for e in errors {
            let kind = e.kind();
            if kind != eventlog::ErrorKind::VersionConflict {
                let kind = format!("{kind:?}").to_ascii_lowercase();
                metrics::counter!(names::APPEND_ERRORS, "kind" => kind).increment(1);
                self.failures.append_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> eventlog::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> eventlog::Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, limit).await
    }

    async fn head(&self) -> eventlog::Result<u64> {
        self.inner.head().await
    }

    fn subscribe(&self, after: u64) -> Subscription {
        self.inner.subscribe(after)
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
