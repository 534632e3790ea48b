//! Ships ECS lines to Elasticsearch with `_bulk` `create` requests into a data stream.
//!
//! The official client, `elasticsearch` 9.1.0-alpha.1, is pinned exactly: every release of the
//! crate is an alpha, so updates must be deliberate. Only `_bulk` is used.
//!
//! Nothing here may slow the server down: the log layer calls [`ShipperHandle::try_send`],
//! which never waits. Lines wait in a queue bounded by count and by bytes; when it is full new
//! lines are dropped and counted. One task owns the client; it sends a batch when it is full
//! (`batch_size` lines or `batch_bytes`) or when the oldest line has waited `flush_interval`.
//! A batch refused with 429 or 5xx, or lost to a connection error or a timeout, is retried
//! with exponential backoff and jitter until it goes through; items of a 200 response that
//! carry 429 (or 5xx) are retried the same way on their own, other item errors (mapping
//! conflicts) and other 4xx responses are counted as failed and not retried. While a batch is
//! retried the queue fills up and further lines are dropped: memory stays bounded and the
//! oldest lines win. Delivery is at least once: a batch whose response was lost (timeout) is
//! sent again and may be indexed twice.
//!
//! After failing continuously for `failing_alert_after` the shipper raises the
//! `observability.log_shipping` alert, and resolves it on the next success.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::Url;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::{Alert, Alerts, Severity};
use crate::error::{Error, Result};
use crate::settings::ElasticsearchSettings;

/// Fingerprint of the alert raised while shipping fails.
pub const SHIPPING_ALERT: &str = "observability.log_shipping";

const CREATE: &str = r#"{"create":{}}"#;

/// Counters of the shipper since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipperStats {
    /// Lines taken into the queue.
    pub accepted: u64,
    /// Lines Elasticsearch acknowledged.
    pub shipped: u64,
    /// Lines refused because the queue was full (or the shipper had stopped).
    pub dropped: u64,
    /// Lines given up on: refused by Elasticsearch, or still unsent at the shutdown deadline.
    pub failed: u64,
    /// `_bulk` requests that went through.
    pub batches_ok: u64,
    /// `_bulk` requests (or item subsets) sent again.
    pub batch_retries: u64,
    /// Batches given up on.
    pub batches_failed: u64,
    /// Lines in the queue now.
    pub queue_depth: usize,
    /// Bytes of lines in the queue now.
    pub queue_bytes: usize,
}

#[derive(Debug, Default)]
struct Shared {
    max_bytes: usize,
    depth: AtomicUsize,
    bytes: AtomicUsize,
    accepted: AtomicU64,
    shipped: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    batches_ok: AtomicU64,
    batch_retries: AtomicU64,
    batches_failed: AtomicU64,
}

impl Shared {
    fn stats(&self) -> ShipperStats {
        ShipperStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            shipped: self.shipped.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            batches_ok: self.batches_ok.load(Ordering::Relaxed),
            batch_retries: self.batch_retries.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            queue_depth: self.depth.load(Ordering::Relaxed),
            queue_bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn events(&self, outcome: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        let counter = match outcome {
            "shipped" => &self.shipped,
            "dropped" => &self.dropped,
            _ => &self.failed,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("chat_log_shipper_events_total", "outcome" => outcome)
            .increment(n as u64);
    }

    fn batch(&self, outcome: &'static str) {
        let counter = match outcome {
            "ok" => &self.batches_ok,
            "retry" => &self.batch_retries,
            _ => &self.batches_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("chat_log_shipper_batches_total", "outcome" => outcome).increment(1);
    }
}

/// A cheap handle to the shipper's queue.
#[derive(Clone)]
pub struct ShipperHandle {
    tx: mpsc::Sender<String>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShipperHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ShipperHandle {
    /// Queues one ECS JSON line (no trailing newline). Never waits: returns `false` and counts
    /// the line as dropped when the queue is full by count or by bytes.
    pub fn try_send(&self, line: String) -> bool {
        let len = line.len();
        let before = self.shared.bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.shared.max_bytes {
            self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
            self.shared.events("dropped", 1);
            return false;
        }
        match self.tx.try_send(line) {
            Ok(()) => {
                self.shared.depth.fetch_add(1, Ordering::Relaxed);
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
                self.shared.events("dropped", 1);
                false
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ShipperStats {
        self.shared.stats()
    }
}

/// The shipper: its queue and the task that owns the Elasticsearch client.
#[derive(Debug)]
pub struct Shipper {
    handle: ShipperHandle,
    shutdown: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Shipper {
    /// Builds the client and starts the shipping task on the current tokio runtime.
    pub fn start(settings: &ElasticsearchSettings, alerts: Alerts) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let client = client(settings)?;
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            max_bytes: settings.queue_bytes,
            ..Shared::default()
        });
        let (shutdown, shutdown_rx) = watch::channel(None);
        let worker = Worker {
            client,
            settings: settings.clone(),
            rx,
            shared: shared.clone(),
            shutdown: shutdown_rx,
            alerts,
            failing_since: None,
            alert_raised: false,
        };
        let task = runtime.spawn(crate::guard::Worker::new(worker.run()));
        Ok(Self {
            handle: ShipperHandle { tx, shared },
            shutdown,
            task,
        })
    }

    /// A handle for producers.
    pub fn handle(&self) -> ShipperHandle {
        self.handle.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> ShipperStats {
        self.handle.stats()
    }

    /// Sends what is queued, retrying until `deadline` at most, then stops the task. Lines still
    /// unsent then are counted as failed; lines offered afterwards are dropped.
    pub async fn shutdown(self, deadline: Duration) -> ShipperStats {
        let at = Instant::now() + deadline;
        let _ = self.shutdown.send(Some(at));
        // The task gives up at the deadline itself; the extra second covers a request that is
        // being torn down.
        let mut task = self.task;
        if tokio::time::timeout_at(at + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!("the log shipper did not stop in time");
        }
        self.handle.stats()
    }
}

fn client(s: &ElasticsearchSettings) -> Result<Elasticsearch> {
    let es = |e: &dyn std::fmt::Display| Error::Elasticsearch(e.to_string());
    let url = Url::parse(&s.url).map_err(|e| es(&e))?;
    let mut builder =
        TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(s.request_timeout);
    if let Some(key) = &s.api_key {
        builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
    } else if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
    }
    if let Some(path) = &s.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Elasticsearch(format!("{}: {e}", path.display())))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| es(&e))?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    Ok(Elasticsearch::new(builder.build().map_err(|e| es(&e))?))
}

/// How one `_bulk` attempt went.
enum Attempt {
    /// Every item acknowledged, or failed for good (counted already).
    Done,
    /// These lines should be sent again (all of them, or the items that got 429/5xx).
    Retry(Vec<String>, String),
    /// The request was refused for good (4xx other than 429).
    Refused(String),
}

struct Worker {
    client: Elasticsearch,
    settings: ElasticsearchSettings,
    rx: mpsc::Receiver<String>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<Option<Instant>>,
    alerts: Alerts,
    failing_since: Option<Instant>,
    alert_raised: bool,
}

impl Worker {
    fn deadline(&self) -> Option<Instant> {
        *self.shutdown.borrow()
    }

    fn take(&mut self, line: &str) {
        self.shared.depth.fetch_sub(1, Ordering::Relaxed);
        self.shared.bytes.fetch_sub(line.len(), Ordering::Relaxed);
    }

    async fn run(mut self) {
        loop {
            let mut batch: Vec<String> = Vec::new();
            let mut bytes = 0;
            if self.deadline().is_none() {
                // Wait for the first line, then for a full batch or the flush interval.
                tokio::select! {
                    line = self.rx.recv() => match line {
                        Some(line) => {
                            self.take(&line);
                            bytes += line.len();
                            batch.push(line);
                        }
                        None => return,
                    },
                    () = until_shutdown(&mut self.shutdown) => {}
                }
                let flush_at = Instant::now() + self.settings.flush_interval;
                while !batch.is_empty()
                    && batch.len() < self.settings.batch_size
                    && bytes < self.settings.batch_bytes
                    && self.deadline().is_none()
                {
                    tokio::select! {
                        line = self.rx.recv() => match line {
                            Some(line) => {
                                self.take(&line);
                                bytes += line.len();
                                batch.push(line);
                            }
                            None => break,
                        },
                        () = tokio::time::sleep_until(flush_at) => break,
                        () = until_shutdown(&mut self.shutdown) => break,
                    }
                }
            }
            if let Some(deadline) = self.deadline() {
                // Shutting down: send what is queued now, no waiting for more.
                while batch.len() < self.settings.batch_size && bytes < self.settings.batch_bytes {
                    match self.rx.try_recv() {
                        Ok(line) => {
                            self.take(&line);
                            bytes += line.len();
                            batch.push(line);
                        }
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return;
                }
                if Instant::now() >= deadline {
                    let mut n = batch.len();
                    while let Ok(line) = self.rx.try_recv() {
                        self.take(&line);
                        n += 1;
                    }
                    self.shared.events("failed", n);
                    return;
                }
            }
            metrics::gauge!("chat_log_shipper_queue_depth")
                .set(self.shared.depth.load(Ordering::Relaxed) as f64);
            self.ship(batch).await;
        }
    }

    /// Sends one batch, retrying until it is through, refused, or the shutdown deadline passes.
    async fn ship(&mut self, mut lines: Vec<String>) {
        let mut attempt = 0u32;
        loop {
            let outcome = match self.deadline() {
                Some(d) => tokio::time::timeout_at(d, self.attempt(&lines))
                    .await
                    .unwrap_or_else(|_| Attempt::Retry(lines.clone(), "shutdown deadline".into())),
                None => self.attempt(&lines).await,
            };
            match outcome {
                Attempt::Done => {
                    self.shared.batch("ok");
                    self.succeeded();
                    return;
                }
                Attempt::Refused(reason) => {
                    self.shared.events("failed", lines.len());
                    self.shared.batch("failed");
                    tracing::warn!(error = %reason, lines = lines.len(), "Elasticsearch refused a batch of log lines");
                    self.failed(&reason);
                    return;
                }
                Attempt::Retry(rest, reason) => {
                    lines = rest;
                    self.failed(&reason);
                }
            }
            attempt += 1;
            let delay = crate::backoff::delay(
                attempt,
                self.settings.backoff_initial,
                self.settings.backoff_max,
            );
            let mut wake = Instant::now() + delay;
            loop {
                if let Some(d) = self.deadline() {
                    if wake >= d {
                        self.shared.events("failed", lines.len());
                        self.shared.batch("failed");
                        return;
                    }
                    wake = wake.min(d);
                }
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => break,
                    changed = self.shutdown.changed() => {
                        if changed.is_err() {
                            // The owner is gone without asking to flush: nothing to wait for.
                            tokio::time::sleep_until(wake).await;
                            break;
                        }
                    }
                }
            }
            self.shared.batch("retry");
        }
    }

    async fn attempt(&self, lines: &[String]) -> Attempt {
        let mut body: Vec<&str> = Vec::with_capacity(lines.len() * 2);
        for line in lines {
            body.push(CREATE);
            body.push(line);
        }
        let response = self
            .client
            .bulk(BulkParts::Index(&self.settings.data_stream))
            // The client's default is application/json, which Elasticsearch accepts too; proxies
            // and collectors in between expect the bulk format's own type.
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )
            .filter_path(&["errors", "items.*.status", "items.*.error"])
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(lines.to_vec(), e.to_string()),
        };
        let status = response.status_code().as_u16();
        if status == 429 || status >= 500 {
            return Attempt::Retry(lines.to_vec(), format!("HTTP {status}"));
        }
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Attempt::Retry(lines.to_vec(), e.to_string()),
        };
        if !(200..300).contains(&status) {
            return Attempt::Refused(format!("HTTP {status}: {}", truncate(&text, 500)));
        }
        let parsed: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Attempt::Refused(format!("unreadable bulk response: {e}")),
        };
        if parsed.get("errors").and_then(Value::as_bool) != Some(true) {
            self.shared.events("shipped", lines.len());
            return Attempt::Done;
        }
        let items = parsed
            .get("items")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut retry = Vec::new();
        let mut shipped = 0;
        let mut failed = 0;
        let mut first_error = None;
        for (i, line) in lines.iter().enumerate() {
            let item = items
                .get(i)
                .and_then(|it| it.get("create").or_else(|| it.get("index")));
            let item_status = item
                .and_then(|it| it.get("status"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            match item_status {
                200..=299 => shipped += 1,
                429 | 500..=599 => retry.push(line.clone()),
                _ => {
                    failed += 1;
                    if first_error.is_none() {
                        first_error = Some(
                            item.and_then(|it| it.get("error"))
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| format!("item status {item_status}")),
                        );
                    }
                }
            }
        }
        self.shared.events("shipped", shipped);
        self.shared.events("failed", failed);
        if let Some(e) = first_error {
            tracing::warn!(error = %truncate(&e, 500), failed, "Elasticsearch refused log lines");
        }
        if retry.is_empty() {
            Attempt::Done
        } else {
            let n = retry.len();
            Attempt::Retry(retry, format!("{n} items refused with 429 or 5xx"))
        }
    }

    fn failed(&mut self, reason: &str) {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert_with(|| {
            tracing::warn!(error = %reason, "shipping logs to Elasticsearch is failing; retrying");
            now
        });
        if !self.alert_raised && now.duration_since(since) >= self.settings.failing_alert_after {
            self.alert_raised = true;
            self.alerts.raise(
                SHIPPING_ALERT,
                Alert {
                    title: "Log shipping to Elasticsearch is failing".to_owned(),
                    message: format!(
                        "No batch has gone through for {}s; lines are queued and then dropped.",
                        now.duration_since(since).as_secs()
                    ),
                    severity: Severity::Warning,
                    details: vec![
                        ("data_stream".to_owned(), self.settings.data_stream.clone()),
                        (
                            "dropped so far".to_owned(),
                            self.shared.stats().dropped.to_string(),
                        ),
                    ],
                    error_chain: vec![reason.to_owned()],
                    trace_id: None,
                },
            );
        }
    }

    fn succeeded(&mut self) {
        if self.failing_since.take().is_some() {
            tracing::info!("shipping logs to Elasticsearch works again");
        }
        if std::mem::take(&mut self.alert_raised) {
            self.alerts.resolve(SHIPPING_ALERT);
        }
    }
}

/// Resolves when shutdown is asked for; never if the owner went away without asking (the
/// layer still holds a handle, so lines keep being shipped).
async fn until_shutdown(rx: &mut watch::Receiver<Option<Instant>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
