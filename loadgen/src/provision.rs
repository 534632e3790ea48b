//! Users, rooms and memberships: through chatd's REST API, or made up for the baseline.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::scenario::Scenario;

pub const PASSWORD: &str = "load-generator-password";
/// Requests in flight while provisioning.
const PARALLEL: usize = 32;
/// Members per create/invite request (the API's limit).
const CHUNK: usize = 1000;

/// What the connections need.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per user: id and access token (empty for the baseline).
    pub users: Vec<(String, String)>,
    /// Per room: id and member indexes.
    pub rooms: Vec<(String, Vec<usize>)>,
}

impl Plan {
    /// Rooms of each user, by room index.
    pub fn rooms_of(&self) -> Vec<Vec<usize>> {
        let mut of = vec![Vec::new(); self.users.len()];
        for (r, (_, members)) in self.rooms.iter().enumerate() {
            for &u in members {
                of[u].push(r);
            }
        }
        of
    }
}

/// Made-up ids: the baseline has no accounts.
pub fn synthetic(s: &Scenario) -> Plan {
    Plan {
        users: (0..s.users)
            .map(|_| (Uuid::new_v4().to_string(), String::new()))
            .collect(),
        rooms: (0..s.rooms)
            .map(|r| (Uuid::new_v4().to_string(), s.room_members(r)))
            .collect(),
    }
}

async fn call(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Registers (or logs in) `prefix0…` and creates the rooms.
pub async fn chatd(
    base: &str,
    prefix: &str,
    s: &Scenario,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Plan> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    progress.set_length((s.users + s.rooms) as u64);
    progress.set_message("provisioning users");
    let users: Vec<(String, String)> = futures::stream::iter(0..s.users)
        .map(|i| {
            let (http, base) = (http.clone(), base.to_owned());
            let name = format!("{prefix}{i}");
            async move {
                let creds = json!({"username": name, "password": PASSWORD});
                let (status, body) = call(
                    &http,
                    format!("{base}/v1/auth/register"),
                    None,
                    creds.clone(),
                )
                .await?;
                anyhow::ensure!(
                    status == 201 || status == 409,
                    "register {name}: {status} {body}"
                );
                let (status, body) =
                    call(&http, format!("{base}/v1/auth/login"), None, creds).await?;
                anyhow::ensure!(status == 200, "login {name}: {status} {body}");
                let id = body["user_id"].as_str().context("user_id")?.to_owned();
                let token = body["access_token"]
                    .as_str()
                    .context("access_token")?
                    .to_owned();
                Ok((id, token))
            }
        })
        .buffered(PARALLEL)
        .inspect_ok(|_| progress.inc(1))
        .try_collect()
        .await?;
    progress.set_message("creating rooms");
    let rooms: Vec<(String, Vec<usize>)> = futures::stream::iter(0..s.rooms)
        .map(|r| {
            let (http, base, users) = (http.clone(), base.to_owned(), &users);
            let members = s.room_members(r);
            let name = format!("{prefix}room{r}");
            async move {
                let owner = &users[members[0]];
                let ids: Vec<&str> = members[1..].iter().map(|&u| users[u].0.as_str()).collect();
                let mut chunks = ids.chunks(CHUNK);
                let first = chunks.next().unwrap_or_default();
                let (status, body) = call(
                    &http,
                    format!("{base}/v1/rooms"),
                    Some(&owner.1),
                    json!({"name": name, "member_ids": first}),
                )
                .await?;
                anyhow::ensure!(status == 201, "create {name}: {status} {body}");
                let id = body["room_id"].as_str().context("room_id")?.to_owned();
                for chunk in chunks {
                    let (status, body) = call(
                        &http,
                        format!("{base}/v1/rooms/{id}/members"),
                        Some(&owner.1),
                        json!({"user_ids": chunk}),
                    )
                    .await?;
                    anyhow::ensure!(
                        (200..300).contains(&status),
                        "invite to {name}: {status} {body}"
                    );
                }
                Ok((id, members))
            }
        })
        .buffered(PARALLEL)
        .inspect_ok(|_| progress.inc(1))
        .try_collect()
        .await?;
    Ok(Plan { users, rooms })
}

/// Each room's last seq now (`GET /v1/rooms` of each room's first member), so connections
/// resume after it rather than replaying the room's history.
pub async fn room_seqs(base: &str, plan: &Plan) -> anyhow::Result<Vec<u64>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut owners: Vec<usize> = plan.rooms.iter().map(|(_, m)| m[0]).collect();
    owners.sort_unstable();
    owners.dedup();
    let listed: Vec<Value> = futures::stream::iter(owners)
        .map(|u| {
            let req = http
                .get(format!("{base}/v1/rooms"))
                .bearer_auth(&plan.users[u].1);
            async move {
                let resp = req.send().await?.error_for_status()?;
                anyhow::Ok(resp.json::<Value>().await?)
            }
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    let mut last: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for rooms in &listed {
        for room in rooms.as_array().into_iter().flatten() {
            if let (Some(id), Some(seq)) = (room["room_id"].as_str(), room["last_seq"].as_u64()) {
                last.insert(id, seq);
            }
        }
    }
    Ok(plan
        .rooms
        .iter()
        .map(|(id, _)| last.get(id.as_str()).copied().unwrap_or(0))
        .collect())
}
