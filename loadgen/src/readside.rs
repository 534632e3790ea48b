//! How far chatd's read side is behind when a window closes.
//!
//! Acks and deliveries come from the live path; the read models (timelines, room lists, unread
//! counts) and the search index follow the log behind it. A server that holds its acks and
//! deliveries only because its read side has stopped keeping up is not holding the rate: the
//! backlog there grows without end, and users see stale rooms and searches that miss. So at
//! the end of each window a probe user who takes no part in the load sends one message over
//! REST into a room of its own, and the generator times
//! - the send's answer: REST sends answer once the read models show the message
//!   (read-your-writes), so it waits for every event before it to be applied;
//! - until a search finds the message's unique word.
//!
//! Either past the scenario's bound marks the run saturated. The baseline has no read side.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::provision::PASSWORD;

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

    /// Sends one message and times its answer, then how long until a search finds it;
    /// waits at most `limit` for each.
    pub async fn measure(&self, limit: Duration) -> ReadSide {
        let word = format!("probe{}", uuid::Uuid::new_v4().simple());
        let mut seen = ReadSide {
            read_models_ms: None,
            search_ms: None,
            limit_ms: limit.as_secs_f64() * 1000.0,
            error: None,
        };
        let start = Instant::now();
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
            Ok(_) => seen.read_models_ms = Some(ms(start.elapsed())),
            Err(e) if e.is_timeout() => {}
            Err(e) => {
                seen.error = Some(format!("the probe's send failed: {e}"));
                return seen;
            }
        }
        let deadline = start + limit;
        while Instant::now() < deadline {
            let found = self
                .http
                .get(format!("{}/v1/search", self.base))
                .query(&[("q", word.as_str()), ("room_id", self.room.as_str())])
                .bearer_auth(&self.token)
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .send()
                .await;
            if let Ok(resp) = &found
                && resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(POLL, Duration::from_secs);
                tokio::time::sleep(wait.max(POLL)).await;
                continue;
            }
            match found.and_then(reqwest::Response::error_for_status) {
                Ok(resp) => {
                    let hits = resp.json::<serde_json::Value>().await.ok();
                    let any = hits
                        .as_ref()
                        .and_then(|h| h["hits"].as_array())
                        .is_some_and(|h| !h.is_empty());
                    if any {
                        seen.search_ms = Some(ms(start.elapsed()));
                        return seen;
                    }
                }
                Err(e) if e.is_timeout() => break,
                Err(e) => {
                    seen.error = Some(format!("the probe's search failed: {e}"));
                    return seen;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        seen
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
                "{what} {ms:.0} ms behind at the window's end > {bound_ms} ms"
            )),
            None => why.push(format!(
                "{what} more than {:.0} ms behind at the window's end",
                self.limit_ms
            )),
        };
        behind("read models", self.read_models_ms);
        behind("search", self.search_ms);
        why
    }
}
