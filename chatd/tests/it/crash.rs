//! Kill the real `chatd` (SIGKILL) while sends are in flight: after a restart every
//! acknowledged message is there with the seq it was acknowledged with, seqs have no gaps, and
//! the read models equal a fresh rebuild from the log. Also: SIGTERM drains and exits cleanly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{Api, ChatdProcess, TestUser, rebuild};

/// (room, message_id) -> (seq, body) of every acknowledged send.
type Acked = Arc<Mutex<HashMap<(String, String), (u64, String)>>>;

/// Everything a client can read, for comparing two servers' read models.
async fn snapshot(api: &Api, users: &[&TestUser], rooms: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for u in users {
        let (status, list) = api.get("/v1/rooms", &u.token).await;
        assert_eq!(status, StatusCode::OK);
        out.insert(format!("rooms of {}", u.username), list);
    }
    for r in rooms {
        let (_, detail) = api.get(&format!("/v1/rooms/{r}"), &users[0].token).await;
        out.insert(format!("room {r}"), detail);
        out.insert(
            format!("history {r}"),
            Value::Array(api.full_history(users[0], r).await),
        );
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_sigkill_and_read_models_match_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mut rooms = Vec::new();
    for name in ["one", "two", "three"] {
        rooms.push(api.create_room(&alice, name, &[&bob]).await);
    }

    // Acknowledged sends: (room, message_id) -> (seq, body).
    let acked: Acked = Arc::default();
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut senders = Vec::new();
    for worker in 0..8 {
        let (api, acked, count_tx, rooms) =
            (api.clone(), acked.clone(), count_tx.clone(), rooms.clone());
        let user = if worker % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        senders.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let room = &rooms[i % rooms.len()];
                let body = format!("w{worker} m{i}");
                let sent = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&user.token)
                    .json(&json!({"body": body, "client_msg_id": format!("w{worker}-{i}")}))
                    .send()
                    .await;
                // The server died: whatever was not answered was not acknowledged.
                let Ok(resp) = sent else { return };
                if resp.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(v) = resp.json::<Value>().await else {
                    return;
                };
                let id = v["message_id"].as_str().unwrap().to_owned();
                acked
                    .lock()
                    .unwrap()
                    .insert((room.clone(), id), (v["seq"].as_u64().unwrap(), body));
                count_tx.send_modify(|n| *n += 1);
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), count_rx.wait_for(|n| *n >= 300))
        .await
        .expect("300 sends acknowledged within 2 minutes")
        .unwrap();
    server.kill9();
    server.wait().await;
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    // Restart on the same data dir; tokens stay valid (the JWT secret is kept there).
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let mut stored = HashMap::new();
    for room in &rooms {
        let history = api.full_history(&alice, room).await;
        let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gapless seqs in {room}"
        );
        for e in history.iter().filter(|e| e["type"] == "message_sent") {
            let key = (room.clone(), e["message_id"].as_str().unwrap().to_owned());
            stored.insert(
                key,
                (
                    e["seq"].as_u64().unwrap(),
                    e["body"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    for (key, value) in &acked {
        assert_eq!(
            stored.get(key),
            Some(value),
            "acknowledged message {key:?} lost or changed"
        );
    }

    // New sends continue the sequence.
    let next = api.send(&alice, &rooms[0], "after the crash").await;
    let last = stored
        .iter()
        .filter(|((r, _), _)| r == &rooms[0])
        .map(|(_, (s, _))| *s)
        .max()
        .unwrap();
    assert_eq!(next["seq"].as_u64().unwrap(), last + 1);

    // Graceful stop, rebuild the read models from the log, compare.
    let live = snapshot(&api, &[&alice, &bob], &rooms).await;
    server.terminate();
    assert!(server.wait().await.success(), "SIGTERM exits cleanly");
    rebuild(dir.path()).await;
    let mut server = ChatdProcess::start(dir.path()).await;
    let rebuilt = snapshot(&server.api, &[&alice, &bob], &rooms).await;
    assert_eq!(
        live, rebuilt,
        "read models after the crash equal a fresh rebuild"
    );
    server.terminate();
    assert!(server.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_in_flight_requests_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let room = api.create_room(&alice, "drain", &[]).await;

    let (started_tx, mut started_rx) = watch::channel(0usize);
    let started_tx = Arc::new(started_tx);
    let mut senders = Vec::new();
    for worker in 0..6 {
        let (api, user, room, started_tx) =
            (api.clone(), alice.clone(), room.clone(), started_tx.clone());
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let resp = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&user.token)
                    .json(&json!({"body": format!("w{worker} m{i}")}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked.push(
                            r.json::<Value>().await.unwrap()["message_id"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                        );
                        started_tx.send_modify(|n| *n += 1);
                    }
                    // Refused during shutdown (connection closed or 503): not acknowledged.
                    _ => return acked,
                }
            }
            acked
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), started_rx.wait_for(|n| *n >= 50))
        .await
        .unwrap()
        .unwrap();
    server.terminate();
    assert!(server.wait().await.success(), "graceful exit");
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }

    let server = ChatdProcess::start(dir.path()).await;
    let history = server.api.full_history(&alice, &room).await;
    let stored: std::collections::HashSet<&str> = history
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(id.as_str()),
            "acknowledged {id} missing after graceful shutdown"
        );
    }
}
