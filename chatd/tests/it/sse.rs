//! `GET /v1/notifications` over a real socket: auth, `message` and `unread` events,
//! `Last-Event-ID` resume, presence through SSE.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Api, TestUser, spawn_app};

const DEADLINE: Duration = Duration::from_secs(20);

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) id: Option<String>,
    pub(crate) data: Value,
}

pub(crate) struct SseClient {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

pub(crate) async fn open(api: &Api, user: &TestUser, last_event_id: Option<&str>) -> SseClient {
    let mut req = api
        .http
        .get(format!("{}/v1/notifications", api.base))
        .query(&[("access_token", &user.token)]);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    SseClient {
        body: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
        buf: String::new(),
    }
}

impl SseClient {
    /// The next event (comments and heartbeats skipped), within the deadline.
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_owned(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (heartbeat)
                }
                return SseEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("an event in time")
                .expect("stream open")
                .expect("no error");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    pub(crate) async fn next_of(&mut self, kind: &str) -> SseEvent {
        loop {
            let e = self.next().await;
            if e.event == kind {
                return e;
            }
        }
    }
}

#[tokio::test]
async fn notifications_need_a_token() {
    let app = spawn_app().await;
    for query in ["", "?access_token=forged"] {
        let resp = app
            .http
            .get(format!("{}/v1/notifications{query}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{query}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "unauthorized");
    }
}

#[tokio::test]
async fn messages_and_unread_counts_arrive_and_last_event_id_resumes() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "notify", &[&bob]).await;
    let mut sse = open(&app.api, &bob, None).await;

    let sent = app.send(&alice, &room, "hello bob").await;
    let m = sse.next_of("message").await;
    assert_eq!(
        m.data,
        json!({"room_id": room, "seq": sent["seq"], "sender_id": alice.id, "preview": "hello bob"})
    );
    let first_id = m.id.clone().expect("message events carry an id");
    let u = sse.next_of("unread").await;
    assert_eq!(
        u.data,
        json!({"room_id": room, "unread_count": 1, "total": 1, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0})
    );
    assert_eq!(u.id, None, "unread events do not move Last-Event-ID");

    // Bob's own messages are not notified to him; a long body is previewed.
    app.send(&bob, &room, "my own").await;
    let long = "가".repeat(300);
    app.send(&alice, &room, &long).await;
    let m = sse.next_of("message").await;
    assert_eq!(m.data["sender_id"], alice.id.as_str());
    assert_eq!(m.data["preview"].as_str().unwrap().chars().count(), 100);
    let second_id = m.id.clone().unwrap();
    drop(sse);

    // Away: two more messages. Resuming from the second id replays exactly those, in order,
    // then the unread baseline.
    let mut missed = Vec::new();
    for body in ["while away 1", "while away 2"] {
        missed.push(app.send(&alice, &room, body).await["seq"].clone());
    }
    let mut sse = open(&app.api, &bob, Some(&second_id)).await;
    for (seq, body) in missed.iter().zip(["while away 1", "while away 2"]) {
        let m = sse.next().await;
        assert_eq!(m.event, "message");
        assert_eq!(
            (&m.data["seq"], m.data["preview"].as_str().unwrap()),
            (seq, body)
        );
    }
    let u = sse.next().await;
    assert_eq!(
        (u.event.as_str(), &u.data),
        (
            "unread",
            &json!({"room_id": room, "unread_count": 4, "total": 4, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0})
        ),
        "Bob's own message counts as read"
    );
    // And live again, without repeating anything.
    app.send(&alice, &room, "live again").await;
    let m = sse.next_of("message").await;
    assert_eq!(m.data["preview"], "live again");

    // Resuming from the first id replays everything after it (Bob's own message excluded).
    let mut sse = open(&app.api, &bob, Some(&first_id)).await;
    let mut previews = Vec::new();
    for _ in 0..4 {
        let m = sse.next().await;
        assert_eq!(m.event, "message");
        previews.push(
            m.data["preview"]
                .as_str()
                .unwrap()
                .chars()
                .take(12)
                .collect::<String>(),
        );
    }
    assert_eq!(
        previews,
        [
            "가가가가가가가가가가가가",
            "while away 1",
            "while away 2",
            "live again"
        ]
    );
}

#[tokio::test]
async fn a_bad_last_event_id_is_a_400() {
    let app = spawn_app().await;
    let bob = app.user("bob").await;
    let resp = app
        .http
        .get(format!("{}/v1/notifications", app.base))
        .bearer_auth(&bob.token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_parameter");
}

#[tokio::test]
async fn an_sse_connection_makes_its_user_online() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.create_room(&alice, "shared", &[&bob]).await;
    app.befriend(&bob, &alice).await;
    let (_, friends) = app.get("/v1/friends", &bob.token).await;
    assert_eq!(friends[0]["online"], false);
    let _sse = open(&app.api, &alice, None).await;
    let (_, friends) = app.get("/v1/friends", &bob.token).await;
    assert_eq!(
        friends[0]["online"], true,
        "online as soon as the stream is open"
    );
}

#[tokio::test]
async fn a_last_event_id_beyond_the_log_resumes_from_now() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "stale id", &[&bob]).await;
    let mut sse = open(&app.api, &bob, Some("999999")).await;
    app.send(&alice, &room, "still delivered").await;
    let m = sse.next_of("message").await;
    assert_eq!(m.data["preview"], "still delivered");
}
