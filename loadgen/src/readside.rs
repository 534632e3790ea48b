//! How far chatd's read side is behind while it is loaded.
//!
//! Acks and deliveries come from the live path; the read models (timelines, room lists, unread
//! counts) and the search index follow the log behind it. A server that holds its acks and
//! deliveries only because its read side has stopped keeping up is not holding the rate: the
//! backlog there grows without end, and users see stale rooms and searches that miss. So in
//! the last quarter of each window, with the load still running, a probe user who takes no
//! part in the load sends one message over REST into a room of its own, and the generator
//! times, at the same time,
//! - the send's answer: REST sends answer once the read models show the message
//!   (read-your-writes), so it waits for every event before it to be applied — what a user's
//!   REST send costs on the loaded server;
//! - until a search finds the message's unique word.
//!
//! Either past the scenario's bound marks the run saturated. chatd answers a REST send after
//! at most 5 s even if its read models are further behind (its read-your-writes timeout), so
//! bounds are below that. The baseline has no read side.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::provision::PASSWORD;

/// How long the probe waits at most for the send's answer and for the search: longer than
/// chatd's read-your-writes timeout, after which it answers anyway.
pub const LIMIT: Duration = Duration::from_secs(6);
/// The largest `--read-side-ms` that means anything (see the module docs).
pub const MAX_BOUND_MS: f64 = 5000.0;

/// How often a search for the probe's word is repeated until it finds it (within chatd's
/// default request rate, 20 a second; a 429 is waited out, as its `Retry-After` says).
const POLL: Duration = Duration::from_millis(50);

/// A user and a room of its own, on a chatd.
#[derive(Debug, Clone)]
pub struct Probe {
    http: reqwest::Client,
    base: String,
    token: String,
    room: String,
}

/// What the probe saw at the end of a window.
#[derive(Debug, Clone, Serialize)]
pub struct ReadSide {
    /// From the REST send until its answer: the append and then the read models catching up
    /// with it. `None`: no answer within the limit, or an error (in `error`).
    pub read_models_ms: Option<f64>,
    /// From the REST send until a search found it. `None`: not within the limit.
    pub search_ms: Option<f64>,
    /// How long the probe waited at most, for each.
    pub limit_ms: f64,
    pub error: Option<String>,
}

impl Probe {
    /// Registers (or logs in) `{prefix}probe` and creates a room with no other member, so no
    /// connection of the load sees the probe's messages.
    pub async fn provision(base: &str, prefix: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let name = format!("{prefix}probe");
        let creds = json!({"username": name, "password": PASSWORD});
        let register = http
            .post(format!("{base}/v1/auth/register"))
            .json(&creds)
            .send()
            .await?;
        let status = register.status().as_u16();
        anyhow::ensure!(status == 201 || status == 409, "register {name}: {status}");
        let login: serde_json::Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&creds)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = login["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned();
        let room: serde_json::Value = http
            .post(format!("{base}/v1/rooms"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("{prefix}probe-room"), "member_ids": []}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let room = room["room_id"].as_str().context("room_id")?.to_owned();
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            room,
        })
    }

    /// Sends one message and times its answer and, at the same time, how long until a search
    /// finds it; waits at most `limit` for each.
    pub async fn measure(&self, limit: Duration) -> ReadSide {
        let word = format!("probe{}", uuid::Uuid::new_v4().simple());
        let start = Instant::now();
        let deadline = start + limit;
        let (send_failed, failed) = tokio::sync::watch::channel(false);
        let send = async {
            let sent = self
                .http
                .post(format!("{}/v1/rooms/{}/messages", self.base, self.room))
                .bearer_auth(&self.token)
                .timeout(limit)
                .json(&json!({"body": format!("read side {word}")}))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match sent {
                Ok(_) => Ok(Some(ms(start.elapsed()))),
                Err(e) if e.is_timeout() => Ok(None),
                Err(e) => {
                    send_failed.send_replace(true);
                    Err(format!("the probe's send failed: {e}"))
                }
            }
        };
        let (sent, found) = tokio::join!(send, self.search(&word, start, deadline, failed));
        let mut seen = ReadSide {
            read_models_ms: None,
            search_ms: None,
            limit_ms: ms(limit),
            error: None,
        };
        match (sent, found) {
            (Err(e), _) | (_, Err(e)) => seen.error = Some(e),
            (Ok(read_models), Ok(search)) => {
                seen.read_models_ms = read_models;
                seen.search_ms = search;
            }
        }
        seen
    }

    /// Searches for `word` until found (the time since `start`), `deadline` passes (`None`),
    /// or the send fails (`None`; the send reports it).
    async fn search(
        &self,
        word: &str,
        start: Instant,
        deadline: Instant,
        send_failed: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<f64>, String> {
        while Instant::now() < deadline && !*send_failed.borrow() {
            let found = self
                .http
                .get(format!("{}/v1/search", self.base))
                .query(&[("q", word), ("room_id", self.room.as_str())])
                .bearer_auth(&self.token)
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .send()
                .await;
            let mut wait = POLL;
            if let Ok(resp) = &found
                && resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(POLL, Duration::from_secs)
                    .max(POLL);
            } else {
                match found.and_then(reqwest::Response::error_for_status) {
                    Ok(resp) => {
                        let hits = resp.json::<serde_json::Value>().await.ok();
                        let any = hits
                            .as_ref()
                            .and_then(|h| h["hits"].as_array())
                            .is_some_and(|h| !h.is_empty());
                        if any {
                            return Ok(Some(ms(start.elapsed())));
                        }
                    }
                    Err(e) if e.is_timeout() => return Ok(None),
                    Err(e) => return Err(format!("the probe's search failed: {e}")),
                }
            }
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
        }
        Ok(None)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl ReadSide {
    /// Why this makes a run saturated under `bound_ms` (empty: it kept up).
    pub fn saturation(&self, bound_ms: f64) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(e) = &self.error {
            why.push(e.clone());
            return why;
        }
        let mut behind = |what: &str, took: Option<f64>| match took {
            Some(ms) if ms <= bound_ms => {}
            Some(ms) => why.push(format!(
                "{what} {ms:.0} ms behind late in the window > {bound_ms} ms"
            )),
            None => why.push(format!(
                "{what} more than {:.0} ms behind late in the window",
                self.limit_ms
            )),
        };
        behind("read models", self.read_models_ms);
        behind("search", self.search_ms);
        why
    }
}
