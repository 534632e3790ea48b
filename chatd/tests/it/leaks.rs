//! Text the read side no longer holds is never served again: a deleted message's text and an
//! edited message's earlier text, over every way an event reaches a client — REST history,
//! WebSocket `resume` (the same catch-up fills gaps), SSE `Last-Event-ID` replay — against
//! the real binary, over real sockets, checked on the raw bytes received.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Api, ChatdProcess, TestUser};
use crate::revocation::{until_pong, ws};

const DEADLINE: Duration = Duration::from_secs(20);

/// Texts that were current once and must never be shown again.
const GONE: [&str; 4] = [
    "deleted-original-text",
    "deleted-after-edit-text",
    "first-draft-text",
    "second-draft-text",
];
/// The one text still standing.
const CURRENT: &str = "final-draft-text";

async fn change(api: &Api, user: &TestUser, method: Method, path: &str, body: Option<Value>) {
    let (status, got) = api.call(method, path, Some(&user.token), body).await;
    assert!(status.is_success(), "{path}: {status} {got}");
}

/// Every text frame of the WebSocket after `resume` from seq 0, up to the pong of a ping sent
/// after it (everything the resume sends comes before that pong).
async fn ws_resume_frames(api: &Api, user: &TestUser, room: &str) -> Vec<String> {
    let mut ws = ws(api, &user.token).await;
    let resume = json!({"type": "resume", "rooms": {room: 0}});
    ws.send(Message::text(resume.to_string())).await.unwrap();
    until_pong(&mut ws).await
}

/// Every byte of the notification stream opened with `Last-Event-ID: 0`, up to its first
/// `unread` event (which follows the replay).
async fn sse_replay_bytes(api: &Api, user: &TestUser) -> String {
    let resp = api
        .http
        .get(format!("{}/v1/notifications", api.base))
        .bearer_auth(&user.token)
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut bytes = String::new();
    while !bytes.contains("event: unread") {
        let chunk = tokio::time::timeout(DEADLINE, body.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        bytes.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    bytes
}

#[tokio::test]
async fn deleted_and_edited_away_text_is_never_served_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChatdProcess::start(dir.path()).await;
    let api = &server.api;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let room = api.create_room(&alice, "leaks", &[&bob]).await;
    let messages = format!("/v1/rooms/{room}/messages");
    let id = |sent: &Value| sent["message_id"].as_str().unwrap().to_owned();

    // Sent, edited, deleted.
    let deleted = id(&api.send(&alice, &room, GONE[0]).await);
    let path = format!("{messages}/{deleted}");
    change(
        api,
        &alice,
        Method::PATCH,
        &path,
        Some(json!({"body": GONE[1]})),
    )
    .await;
    change(api, &alice, Method::DELETE, &path, None).await;
    // Sent, edited twice.
    let edited = id(&api.send(&alice, &room, GONE[2]).await);
    let path = format!("{messages}/{edited}");
    change(
        api,
        &alice,
        Method::PATCH,
        &path,
        Some(json!({"body": GONE[3]})),
    )
    .await;
    change(
        api,
        &alice,
        Method::PATCH,
        &path,
        Some(json!({"body": CURRENT})),
    )
    .await;

    let rest = serde_json::to_string(&api.full_history(&bob, &room).await).unwrap();
    let resumed = ws_resume_frames(api, &bob, &room).await;
    let replayed = sse_replay_bytes(api, &bob).await;
    for (how, bytes) in [
        ("REST history", &rest),
        ("WebSocket resume", &resumed.concat()),
        ("SSE replay", &replayed),
    ] {
        for text in GONE {
            assert!(!bytes.contains(text), "{how} shows {text:?}: {bytes}");
        }
        assert!(
            bytes.contains(CURRENT),
            "{how} shows the current text: {bytes}"
        );
    }

    // One view: what the resume replayed is exactly the REST history.
    let history = api.full_history(&bob, &room).await;
    let replayed_events: Vec<Value> = resumed
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter(|f| f["type"] == "event")
        .map(|f| f["event"].clone())
        .collect();
    assert_eq!(replayed_events, history);
    let sent: Vec<&Value> = history
        .iter()
        .filter(|e| e["type"] == "message_sent")
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].get("body").is_none(), "deleted: {}", sent[0]);
    assert_eq!(sent[1]["body"], CURRENT);
}
