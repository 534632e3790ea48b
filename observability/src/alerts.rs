//! Slack alerts through an incoming webhook.
//!
//! [`Alerts`] is a cheap handle: [`Alerts::raise`] and [`Alerts::resolve`] put a command on a
//! bounded queue and return at once (a full queue drops the command and counts it). One task
//! owns the HTTP client and decides what to post:
//!
//! - **Deduplication by fingerprint.** The first `raise` of a fingerprint posts at once and
//!   opens a window (`dedup_window`, 5 minutes by default). Repeats inside the window are only
//!   counted; when the window ends with repeats, one summary is posted ("N more since the last
//!   message", with the total count and first/last seen) and a new window opens. A window that
//!   ends without repeats closes quietly, and the next `raise` posts at once again.
//! - **Resolve.** `resolve` of a fingerprint that was raised posts a "resolved" message (with
//!   the count) and forgets the fingerprint; of an unknown one, nothing.
//! - **Rate limit.** Messages leave through a token bucket (1 per second, bursts of 5 by
//!   default: Slack allows about one message per second per webhook). Messages waiting for a
//!   token queue in an outbox of `outbox_capacity`; beyond it they are dropped and counted as
//!   `rate_limited`.
//! - **429.** Slack's `Retry-After` (seconds) is honoured: nothing is posted until it has passed,
//!   then the same message is sent again. 5xx and connection errors are retried with backoff
//!   up to `max_attempts`; other 4xx answers are counted as `failed`.
//!
//! Messages are Block Kit: a `header` (severity emoji and title), a `section` with the message
//! and service/node/severity/count fields, a `section` with the error chain, a `section` with
//! details, a `context` with first/last seen, trace id and fingerprint, and a top-level `text`
//! fallback for notifications.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::settings::SlackSettings;

/// Fingerprints remembered at most; lapsed ones are forgotten first.
const MAX_FINGERPRINTS: usize = 10_000;

/// How bad it is; sets the emoji and the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Wake someone up.
    Critical,
    /// Something failed (every ERROR log event).
    Error,
    /// Degraded, e.g. log shipping failing.
    Warning,
    /// For information.
    Info,
}

impl Severity {
    fn emoji(self) -> &'static str {
        match self {
            Severity::Critical => ":rotating_light:",
            Severity::Error => ":red_circle:",
            Severity::Warning => ":warning:",
            Severity::Info => ":information_source:",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Short, for the header (cut at 150 characters).
    pub title: String,
    /// What happened.
    pub message: String,
    /// How bad it is.
    pub severity: Severity,
    /// Extra name/value pairs (request id, route, ...); the first ten are shown.
    pub details: Vec<(String, String)>,
    /// The error and its causes, outermost first.
    pub error_chain: Vec<String>,
    /// Trace id of the request, to find its logs and spans.
    pub trace_id: Option<String>,
}

impl Alert {
    /// An alert with no details, error chain or trace id.
    pub fn new(title: impl Into<String>, message: impl Into<String>, severity: Severity) -> Self {
        Self {
            title: title.into(),
            message: message.into(),
            severity,
            details: Vec::new(),
            error_chain: Vec::new(),
            trace_id: None,
        }
    }
}

/// Counters of the alert sender since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Messages Slack accepted (alerts, summaries and resolutions).
    pub posted: u64,
    /// Raises folded into a window instead of posted.
    pub deduplicated: u64,
    /// Messages dropped because the rate limiter's outbox was full.
    pub rate_limited: u64,
    /// Commands dropped because the queue was full or the sender had stopped.
    pub dropped: u64,
    /// Messages given up on (refused, or out of attempts, or unsent at shutdown).
    pub failed: u64,
    /// 429 answers from Slack (each waited for).
    pub throttled: u64,
}

#[derive(Debug, Default)]
struct Stats {
    posted: AtomicU64,
    deduplicated: AtomicU64,
    rate_limited: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
}

impl Stats {
    fn count(&self, outcome: &'static str) {
        let counter = match outcome {
            "posted" => &self.posted,
            "deduplicated" => &self.deduplicated,
            "rate_limited" => &self.rate_limited,
            "dropped" => &self.dropped,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("chat_alerts_total", "outcome" => outcome).increment(1);
    }

    fn snapshot(&self) -> AlertStats {
        AlertStats {
            posted: self.posted.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
enum Command {
    Raise(String, Box<Alert>, DateTime<Utc>),
    Resolve(String, DateTime<Utc>),
}

/// A cheap handle for raising and resolving alerts. [`Alerts::disabled`] does nothing.
#[derive(Clone, Default)]
pub struct Alerts {
    inner: Option<(mpsc::Sender<Command>, Arc<Stats>)>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Alerts {
    /// A handle that drops everything (Slack not configured).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Starts the sender task on the current tokio runtime.
    pub fn start(
        settings: &SlackSettings,
        service: &str,
        node: &str,
    ) -> Result<(Self, AlertSender)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_rx) = watch::channel(None);
        let now = Instant::now();
        let worker = Worker {
            client,
            settings: settings.clone(),
            service: service.to_owned(),
            node: node.to_owned(),
            rx,
            stats: stats.clone(),
            shutdown: shutdown_rx,
            entries: HashMap::new(),
            outbox: VecDeque::new(),
            tokens: f64::from(settings.burst.max(1)),
            refilled: now,
            blocked_until: now,
        };
        let task = runtime.spawn(crate::guard::Worker::new(worker.run()));
        let alerts = Self {
            inner: Some((tx, stats.clone())),
        };
        Ok((
            alerts,
            AlertSender {
                shutdown,
                task,
                stats,
            },
        ))
    }

    /// Whether alerts go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Raises the alert under `fingerprint` (repeats of one fingerprint are deduplicated).
    /// Never waits.
    pub fn raise(&self, fingerprint: impl Into<String>, alert: Alert) {
        self.send(Command::Raise(
            fingerprint.into(),
            Box::new(alert),
            Utc::now(),
        ));
    }

    /// Posts "resolved" for `fingerprint` if it was raised. Never waits.
    pub fn resolve(&self, fingerprint: impl Into<String>) {
        self.send(Command::Resolve(fingerprint.into(), Utc::now()));
    }

    /// Counters so far (all zero when disabled).
    pub fn stats(&self) -> AlertStats {
        self.inner
            .as_ref()
            .map(|(_, s)| s.snapshot())
            .unwrap_or_default()
    }

    fn send(&self, command: Command) {
        if let Some((tx, stats)) = &self.inner
            && tx.try_send(command).is_err()
        {
            stats.count("dropped");
        }
    }
}

/// Owns the alert sender task; [`AlertSender::shutdown`] flushes it.
#[derive(Debug)]
pub struct AlertSender {
    shutdown: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
    stats: Arc<Stats>,
}

impl AlertSender {
    /// Posts pending summaries and queued messages (still rate limited) until `deadline`, then
    /// stops. Commands sent afterwards are dropped.
    pub async fn shutdown(self, deadline: Duration) -> AlertStats {
        let at = Instant::now() + deadline;
        let _ = self.shutdown.send(Some(at));
        let mut task = self.task;
        if tokio::time::timeout_at(at + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!("the Slack alert sender did not stop in time");
        }
        self.stats.snapshot()
    }
}

#[derive(Debug)]
struct Entry {
    alert: Alert,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    count: u64,
    /// Raises since the last message about this fingerprint.
    pending: u64,
    window_end: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Firing,
    Summary { since_last: u64 },
    Resolved,
}

#[derive(Debug)]
struct Outgoing {
    payload: Value,
    attempts: u32,
}

struct Worker {
    client: reqwest::Client,
    settings: SlackSettings,
    service: String,
    node: String,
    rx: mpsc::Receiver<Command>,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<Option<Instant>>,
    entries: HashMap<String, Entry>,
    outbox: VecDeque<Outgoing>,
    tokens: f64,
    refilled: Instant,
    blocked_until: Instant,
}

impl Worker {
    async fn run(mut self) {
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let deadline = *self.shutdown.borrow();
            if let Some(deadline) = deadline {
                self.drain(deadline).await;
                return;
            }
            let next_window = self
                .entries
                .values()
                .filter(|e| e.pending > 0)
                .map(|e| e.window_end)
                .min();
            let next_send = (!self.outbox.is_empty()).then(|| self.next_send_at());
            tokio::select! {
                biased;
                () = until_shutdown(&mut self.shutdown) => {}
                command = self.rx.recv() => match command {
                    Some(c) => self.handle(c),
                    None => {
                        // Every handle is gone: post what is left and stop.
                        self.drain(Instant::now() + Duration::from_secs(10)).await;
                        return;
                    }
                },
                () = tokio::time::sleep_until(next_window.unwrap_or_else(far)), if next_window.is_some() => {
                    self.close_windows(Instant::now(), false);
                }
                () = tokio::time::sleep_until(next_send.unwrap_or_else(far)), if next_send.is_some() => {
                    self.send_one().await;
                }
            }
        }
    }

    /// At shutdown: summaries for every open window, then the outbox until the deadline.
    async fn drain(&mut self, deadline: Instant) {
        while let Ok(c) = self.rx.try_recv() {
            self.handle(c);
        }
        self.rx.close();
        while let Ok(c) = self.rx.try_recv() {
            self.handle(c);
        }
        self.close_windows(Instant::now(), true);
        while !self.outbox.is_empty() {
            let at = self.next_send_at();
            if at > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            if tokio::time::timeout_at(deadline, self.send_one())
                .await
                .is_err()
            {
                break;
            }
        }
        for _ in self.outbox.drain(..) {
            self.stats.count("failed");
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Raise(fingerprint, alert, at) => {
                if let Some(entry) = self.entries.get_mut(&fingerprint) {
                    entry.count += 1;
                    entry.last_seen = at;
                    entry.alert = *alert;
                    if now < entry.window_end {
                        entry.pending += 1;
                        self.stats.count("deduplicated");
                        return;
                    }
                    // The window lapsed quietly: post again at once, with the count so far.
                    entry.pending = 0;
                    entry.window_end = now + self.settings.dedup_window;
                    let payload = self.render(&fingerprint, Kind::Firing);
                    self.enqueue(payload);
                    return;
                }
                if self.entries.len() >= MAX_FINGERPRINTS {
                    self.entries
                        .retain(|_, e| e.pending > 0 || now < e.window_end);
                    if self.entries.len() >= MAX_FINGERPRINTS {
                        self.stats.count("dropped");
                        return;
                    }
                }
                self.entries.insert(
                    fingerprint.clone(),
                    Entry {
                        alert: *alert,
                        first_seen: at,
                        last_seen: at,
                        count: 1,
                        pending: 0,
                        window_end: now + self.settings.dedup_window,
                    },
                );
                let payload = self.render(&fingerprint, Kind::Firing);
                self.enqueue(payload);
            }
            Command::Resolve(fingerprint, at) => {
                if let Some(entry) = self.entries.get_mut(&fingerprint) {
                    entry.last_seen = entry.last_seen.max(at);
                    let payload = self.render(&fingerprint, Kind::Resolved);
                    self.entries.remove(&fingerprint);
                    self.enqueue(payload);
                }
            }
        }
    }

    /// Posts a summary for every window that has ended (or all, at shutdown) with repeats.
    fn close_windows(&mut self, now: Instant, all: bool) {
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending > 0 && (all || e.window_end <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for fingerprint in due {
            let since_last = self.entries.get(&fingerprint).map_or(0, |e| e.pending);
            let payload = self.render(&fingerprint, Kind::Summary { since_last });
            if let Some(e) = self.entries.get_mut(&fingerprint) {
                e.pending = 0;
                e.window_end = now + self.settings.dedup_window;
            }
            self.enqueue(payload);
        }
    }

    fn enqueue(&mut self, payload: Value) {
        if self.outbox.len() >= self.settings.outbox_capacity {
            self.stats.count("rate_limited");
            return;
        }
        self.outbox.push_back(Outgoing {
            payload,
            attempts: 0,
        });
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.settings.rate_per_sec)
            .min(f64::from(self.settings.burst.max(1)));
        self.refilled = now;
    }

    /// When the next message may go: a token is available and no `Retry-After` is pending.
    fn next_send_at(&mut self) -> Instant {
        let now = Instant::now();
        self.refill(now);
        let token_at = if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.settings.rate_per_sec)
        };
        token_at.max(self.blocked_until)
    }

    async fn send_one(&mut self) {
        let now = Instant::now();
        self.refill(now);
        if self.tokens < 1.0 || now < self.blocked_until {
            return;
        }
        let Some(message) = self.outbox.front_mut() else {
            return;
        };
        self.tokens -= 1.0;
        message.attempts += 1;
        let response = self
            .client
            .post(&self.settings.webhook_url)
            .json(&message.payload)
            .send()
            .await;
        let retry = match response {
            Ok(r) if r.status().is_success() => {
                self.outbox.pop_front();
                self.stats.count("posted");
                return;
            }
            Ok(r) if r.status().as_u16() == 429 => {
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(300);
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                // Not the message's fault: it does not use up an attempt.
                message.attempts -= 1;
                self.blocked_until = Instant::now() + Duration::from_secs(wait);
                return;
            }
            Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%status, body = %body.chars().take(200).collect::<String>(), "Slack refused an alert");
                self.outbox.pop_front();
                self.stats.count("failed");
                return;
            }
            // reqwest puts the URL in its errors; the webhook URL is a secret.
            Err(e) => e.without_url().to_string(),
        };
        if message.attempts >= self.settings.max_attempts {
            tracing::warn!(error = %retry, "cannot post an alert to Slack; giving up on it");
            self.outbox.pop_front();
            self.stats.count("failed");
        } else {
            self.blocked_until = Instant::now()
                + crate::backoff::delay(
                    message.attempts,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                );
        }
    }

    fn render(&self, fingerprint: &str, kind: Kind) -> Value {
        let Some(entry) = self.entries.get(fingerprint) else {
            return Value::Null;
        };
        render(&self.service, &self.node, fingerprint, entry, kind)
    }
}

fn render(service: &str, node: &str, fingerprint: &str, entry: &Entry, kind: Kind) -> Value {
    let alert = &entry.alert;
    let sev = alert.severity;
    let title = truncate(&alert.title, 120);
    let header = match kind {
        Kind::Firing => format!("{} {title}", sev.emoji()),
        Kind::Summary { since_last } => format!("{} {title} (×{since_last} more)", sev.emoji()),
        Kind::Resolved => format!(":white_check_mark: Resolved: {title}"),
    };
    let fallback = match kind {
        Kind::Firing => format!("[{}] {title} ({service} on {node})", sev.name()),
        Kind::Summary { since_last } => format!(
            "[{}] {title}: {since_last} more since the last message, {} in all ({service} on {node})",
            sev.name(),
            entry.count
        ),
        Kind::Resolved => format!("[resolved] {title} ({service} on {node})"),
    };
    let mut fields = vec![
        field("Service", service),
        field("Node", node),
        field("Severity", sev.name()),
        field("Count", &entry.count.to_string()),
    ];
    if let Kind::Summary { since_last } = kind {
        fields.push(field("Since last message", &since_last.to_string()));
    }
    let message = match kind {
        Kind::Resolved => format!("Resolved. Last message: {}", alert.message),
        _ => alert.message.clone(),
    };
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": truncate(&header, 150), "emoji": true } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": truncate(&escape(&message), 2900) }, "fields": fields }),
    ];
    if !alert.error_chain.is_empty() && !matches!(kind, Kind::Resolved) {
        let chain = alert
            .error_chain
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if i == 0 {
                    e.clone()
                } else {
                    format!("caused by: {e}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Error chain*\n```{}```", truncate(&escape(&chain), 2800)) } }));
    }
    if !alert.details.is_empty() && !matches!(kind, Kind::Resolved) {
        let details: Vec<Value> = alert
            .details
            .iter()
            .take(10)
            .map(|(k, v)| field(k, v))
            .collect();
        blocks.push(json!({ "type": "section", "fields": details }));
    }
    let mut context = format!(
        "first seen {} · last seen {}",
        ts(entry.first_seen),
        ts(entry.last_seen)
    );
    if let Some(t) = &alert.trace_id {
        context.push_str(&format!(" · trace.id `{t}`"));
    }
    context.push_str(&format!(
        " · fingerprint `{}`",
        escape(&truncate(fingerprint, 200))
    ));
    blocks
        .push(json!({ "type": "context", "elements": [ { "type": "mrkdwn", "text": context } ] }));
    json!({ "text": fallback, "blocks": blocks })
}

fn field(name: &str, value: &str) -> Value {
    json!({ "type": "mrkdwn", "text": truncate(&format!("*{}*\n{}", escape(name), escape(value)), 1900) })
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Slack's mrkdwn treats these three as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

async fn until_shutdown(rx: &mut watch::Receiver<Option<Instant>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_kit_has_header_section_context_and_fallback() {
        let now = Utc::now();
        let mut alert = Alert::new("store <down>", "cannot append", Severity::Error);
        alert.error_chain = vec!["append failed".into(), "disk full".into()];
        alert.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
        let entry = Entry {
            alert,
            first_seen: now,
            last_seen: now,
            count: 3,
            pending: 0,
            window_end: Instant::now(),
        };
        let v = render("chatd", "n1", "fp", &entry, Kind::Summary { since_last: 2 });
        let types: Vec<&str> = v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["header", "section", "section", "context"]);
        assert!(v["text"].as_str().unwrap().contains("2 more"));
        assert!(
            v["blocks"][2]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("caused by: disk full")
        );
        assert!(
            v["blocks"][3]["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("0af765")
        );
    }

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(truncate("채팅방에서", 3), "채팅…");
    }
}
