//! The WebSocket over real sockets: auth at the upgrade, acks, live order, resume, membership
//! changes, bad frames, slow consumers.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Api, ChatdProcess, TestUser, spawn_app, spawn_app_in, spawn_app_with};

const DEADLINE: Duration = Duration::from_secs(20);
/// Frames that tests of room events skip over.
const SIDE_FRAMES: [&str; 3] = ["unread", "typing", "presence"];

pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn ws_url(api: &Api, token: Option<&str>) -> String {
    let base = api.base.replacen("http://", "ws://", 1);
    match token {
        Some(t) => format!("{base}/v1/ws?access_token={t}"),
        None => format!("{base}/v1/ws"),
    }
}

pub(crate) async fn connect(api: &Api, user: &TestUser) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(api, Some(&user.token)))
        .await
        .expect("upgrade");
    Client { ws }
}

impl Client {
    pub(crate) async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next JSON frame that is not a side frame (`unread`, `typing`, `presence`), within
    /// the deadline.
    pub(crate) async fn next(&mut self) -> Value {
        loop {
            let f = self.next_any().await;
            if !SIDE_FRAMES.contains(&f["type"].as_str().unwrap_or_default()) {
                return f;
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub(crate) async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.next_any().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// The next JSON frame, within the deadline.
    pub(crate) async fn next_any(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame in time");
            match msg.expect("connection open").expect("no error") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Event frames until `room` reaches `seq`, checking order per room on the way.
    pub(crate) async fn events_until(&mut self, room: &str, seq: u64) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let f = self.next().await;
            assert_eq!(f["type"], "event", "{f}");
            let done = f["room_id"] == room && f["seq"].as_u64().unwrap() >= seq;
            events.push(f);
            if done {
                return events;
            }
        }
    }

    /// Closes the connection and waits until the server has closed its side.
    pub(crate) async fn close(&mut self) {
        self.ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, self.ws.next()).await {}
    }

    /// Sends a ping and returns every frame, side frames included, before the pong. The ping
    /// is a barrier: everything queued for us before it was read is in the result.
    pub(crate) async fn drain_any(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let f = self.next_any().await;
            if f["type"] == "pong" {
                return before;
            }
            before.push(f);
        }
    }

    /// Sends a ping and returns every frame before the pong.
    pub(crate) async fn drain(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let f = self.next().await;
            if f["type"] == "pong" {
                return before;
            }
            before.push(f);
        }
    }
}

/// Per room, the seqs received must be consecutive.
pub(crate) fn assert_gapless(events: &[Value]) -> HashMap<String, Vec<u64>> {
    let mut by_room: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        by_room
            .entry(e["room_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["seq"].as_u64().unwrap());
    }
    for (room, seqs) in &by_room {
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0] + 1, "gap or duplicate in {room}: {seqs:?}");
        }
    }
    by_room
}

#[tokio::test]
async fn the_upgrade_refuses_missing_or_bad_tokens() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    for url in [ws_url(&app.api, None), ws_url(&app.api, Some("garbage"))] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
    }
    // A bearer header works as well as the query parameter.
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(ws_url(&app.api, None))
            .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade with header");
    let mut client = Client { ws };
    assert!(client.drain().await.is_empty());
}

#[tokio::test]
async fn sends_are_acked_once_durable_and_a_retry_gets_the_same_ack() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "ws", &[]).await;
    let mut ws = connect(&app.api, &alice).await;
    let send =
        json!({"type": "send", "room_id": room, "body": "over the socket", "client_msg_id": "k1"});
    ws.send(send.clone()).await;
    // Our own message arrives as an event too; the ack may come before or after it.
    let mut ack = None;
    let mut echoed = None;
    while ack.is_none() || echoed.is_none() {
        let f = ws.next().await;
        match f["type"].as_str().unwrap() {
            "ack" => ack = Some(f),
            "event" if f["event"]["type"] == "message_sent" => echoed = Some(f),
            "event" => assert_eq!(f["seq"], 1, "only the creation may precede: {f}"),
            other => panic!("unexpected {other}: {f}"),
        }
    }
    let ack = ack.unwrap();
    assert_eq!(ack["client_msg_id"], "k1");
    assert_eq!(ack["seq"], 2);
    assert_eq!(echoed.unwrap()["event"]["body"], "over the socket");
    ws.send(send).await;
    let again = ws.next().await;
    assert_eq!(again, ack, "same ack, nothing new stored");
    assert_eq!(app.full_history(&alice, &room).await.len(), 2);

    let bad = json!({"type": "send", "room_id": room, "body": "   ", "client_msg_id": "k2"});
    ws.send(bad).await;
    let err = ws.next().await;
    assert_eq!(
        err,
        json!({"type": "error", "ref": "k2", "code": "validation_failed", "detail": err["detail"]})
    );
}

/// A socket's sends are acknowledged once durable, without waiting for the read models (held
/// back here by a transaction that keeps their file's write lock); the sender's next read
/// waits for them instead, and then shows the send. Other users' reads do not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_do_not_wait_for_the_read_models_but_the_senders_next_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "fence", &[&bob]).await;
    let mut ws = connect(&app.api, &alice).await;
    let newest = format!("/v1/rooms/{room}/messages?limit=1");
    let (_, before) = app.get(&newest, &alice.token).await;
    let before = before["events"][0]["seq"].as_u64().unwrap();

    let hold = rusqlite::Connection::open(dir.path().join("readmodels.db")).unwrap();
    hold.busy_timeout(DEADLINE).unwrap();
    hold.execute_batch("BEGIN IMMEDIATE").unwrap();
    ws.send(json!({"type": "send", "room_id": room, "body": "held", "client_msg_id": "k1"}))
        .await;
    let ack = ws.next_of("ack").await;
    assert_eq!(ack["seq"], before + 1);
    let (status, page) = app.get(&newest, &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["events"][0]["seq"], before,
        "the projector is held: {page}"
    );

    let api = app.api.clone();
    let token = alice.token.clone();
    let path = newest.clone();
    let mut read = tokio::spawn(async move { api.get(&path, &token).await });
    // Not answered while the read models do not show her send (it would be, at once,
    // showing the older state, without the fence).
    let early = tokio::time::timeout(Duration::from_millis(500), &mut read).await;
    assert!(
        early.is_err(),
        "answered before the read models showed the send: {early:?}"
    );
    hold.execute_batch("ROLLBACK").unwrap();
    let (status, page) = read.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["seq"], ack["seq"], "{page}");
    assert_eq!(page["events"][0]["body"], "held");
}

/// A socket's `read` frame, like its sends, is settled once durable: it does not hold the
/// socket's next frames until the read models show it (held back as above; it would hold them
/// for the read-your-writes bound, 5 s). The reader's next `GET` waits for them instead, and
/// then shows the room read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_frame_does_not_wait_for_the_read_models_but_the_readers_next_get_does() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path()).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "read", &[&bob]).await;
    let sent = app.send(&alice, &room, "unread until bob reads it").await;
    let (_, unread) = app.get("/v1/unread", &bob.token).await;
    assert_eq!(unread["total"], 1, "{unread}");
    let mut ws = connect(&app.api, &bob).await;

    let hold = rusqlite::Connection::open(dir.path().join("readmodels.db")).unwrap();
    hold.busy_timeout(DEADLINE).unwrap();
    hold.execute_batch("BEGIN IMMEDIATE").unwrap();
    ws.send(json!({"type": "read", "room_id": room, "seq": sent["seq"]}))
        .await;
    ws.send(json!({"type": "send", "room_id": room, "body": "read it", "client_msg_id": "k1"}))
        .await;
    let ack = tokio::time::timeout(Duration::from_secs(4), ws.next_of("ack")).await;
    assert!(ack.is_ok(), "the read frame held the socket's next frame");

    let api = app.api.clone();
    let token = bob.token.clone();
    let mut read = tokio::spawn(async move { api.get("/v1/unread", &token).await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut read).await;
    assert!(
        early.is_err(),
        "answered before the read models showed the read marker: {early:?}"
    );
    hold.execute_batch("ROLLBACK").unwrap();
    let (status, unread) = read.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{unread}");
    assert_eq!(unread["total"], 0, "{unread}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_events_from_several_senders_arrive_in_order_without_gaps() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let rooms = [
        app.create_room(&alice, "one", &[&bob, &carol]).await,
        app.create_room(&carol, "two", &[&bob, &alice]).await,
    ];
    let mut ws = connect(&app.api, &bob).await;
    // Only a late room creation (seq 1) may arrive before anything is sent.
    let early = ws.drain().await;
    assert!(early.iter().all(|e| e["seq"] == 1), "{early:?}");

    let mut senders = Vec::new();
    for user in [alice.clone(), carol.clone()] {
        for room in rooms.clone() {
            let (api, user) = (app.api.clone(), user.clone());
            senders.push(tokio::spawn(async move {
                for i in 0..20 {
                    api.send(&user, &room, &format!("{} {i}", user.username))
                        .await;
                }
            }));
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    // Each room: room_created (seq 1) then 40 messages, live from seq 2 to 41 (seq 1 too if the
    // hub saw the creation after Bob connected).
    let mut events = early;
    let mut done = std::collections::HashSet::new();
    while done.len() < rooms.len() {
        let e = ws.next().await;
        if e["seq"] == 41 {
            done.insert(e["room_id"].as_str().unwrap().to_owned());
        }
        events.push(e);
    }
    let by_room = assert_gapless(&events);
    for room in &rooms {
        let seqs: Vec<u64> = by_room[room].iter().copied().filter(|s| *s >= 2).collect();
        assert_eq!(seqs, (2..=41).collect::<Vec<u64>>());
    }
    assert!(ws.drain().await.is_empty(), "nothing extra");
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed_then_goes_live() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "resume", &[&bob]).await;
    let mut ws = connect(&app.api, &bob).await;
    let early = ws.drain().await;
    assert!(early.iter().all(|e| e["seq"] == 1), "{early:?}");
    for i in 0..5 {
        app.send(&alice, &room, &format!("before {i}")).await;
    }
    // The hub follows the log on its own, so the room's creation (seq 1) may still arrive
    // live after connecting; order and gaplessness hold either way.
    let mut seen = early;
    seen.extend(ws.events_until(&room, 6).await);
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs == (2..=6).collect::<Vec<u64>>() || seqs == (1..=6).collect::<Vec<u64>>(),
        "{seqs:?}"
    );
    drop(ws);

    for i in 0..10 {
        app.send(&alice, &room, &format!("missed {i}")).await;
    }
    let mut ws = connect(&app.api, &bob).await;
    ws.send(json!({"type": "resume", "rooms": {room.clone(): 6}}))
        .await;
    let replay = ws.events_until(&room, 16).await;
    let seqs: Vec<u64> = replay.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (7..=16).collect::<Vec<u64>>());
    assert_eq!(replay[0]["event"]["body"], "missed 0");
    app.send(&alice, &room, "live again").await;
    let live = ws.next().await;
    assert_eq!(live["seq"], 17);
    assert_eq!(live["event"]["body"], "live again");
    assert!(ws.drain().await.is_empty());

    // Resuming a room you are not in is refused for that room only.
    let other = app.create_room(&alice, "private", &[]).await;
    ws.send(json!({"type": "resume", "rooms": {other.clone(): 0}}))
        .await;
    let err = ws.next().await;
    assert_eq!(err["code"], "room_not_found");
    assert_eq!(err["ref"], other.as_str());
}

#[tokio::test]
async fn rooms_joined_later_are_live_and_left_rooms_go_quiet() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut ws = connect(&app.api, &bob).await;
    assert!(ws.drain().await.is_empty());
    let room = app.create_room(&alice, "later", &[&bob]).await;
    let created = ws.next().await;
    assert_eq!(created["event"]["type"], "room_created");
    assert_eq!(created["room_id"], room.as_str());
    app.send(&alice, &room, "hello bob").await;
    assert_eq!(ws.next().await["event"]["body"], "hello bob");

    let (status, _) = app
        .delete(&format!("/v1/rooms/{room}/members/me"), &bob.token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(ws.next().await["event"]["type"], "member_left");
    app.send(&alice, &room, "bob is gone").await;
    assert!(
        ws.drain().await.is_empty(),
        "no events from a room you left"
    );

    // Invited back: the room is live again from the join, without what happened meanwhile.
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            &alice.token,
            json!({"user_ids": [bob.id]}),
        )
        .await;
    assert!(status.is_success());
    let joined = ws.next().await;
    assert_eq!(joined["event"]["type"], "member_joined", "{joined}");
    app.send(&alice, &room, "welcome back").await;
    assert_eq!(ws.next().await["event"]["body"], "welcome back");
    assert!(ws.drain().await.is_empty());
}

#[tokio::test]
async fn a_late_resume_replays_from_the_clients_seq() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "late", &[&bob]).await;
    for i in 0..3 {
        app.send(&alice, &room, &format!("missed {i}")).await;
    }
    // Bob's first frame is a ping, so the connection goes live before any resume.
    let mut ws = connect(&app.api, &bob).await;
    assert!(ws.drain().await.is_empty());
    let live = app.send(&alice, &room, "live").await["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(ws.next().await["seq"], live);
    // Now he resumes from seq 1: everything after it comes, the live one again included.
    ws.send(json!({"type": "resume", "rooms": {room.clone(): 1}}))
        .await;
    let replay = ws.events_until(&room, live).await;
    let seqs: Vec<u64> = replay.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (2..=live).collect::<Vec<_>>());
    app.send(&alice, &room, "after").await;
    assert_eq!(
        ws.next().await["seq"],
        live + 1,
        "and live again without duplicates"
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let stranger_room = {
        let bob = app.user("bob").await;
        app.create_room(&bob, "not yours", &[]).await
    };
    let mut ws = connect(&app.api, &alice).await;
    let cases = [
        (Message::text("not json"), "bad_frame"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_type"),
        (Message::text(r#"{"type":"read"}"#), "bad_frame"),
        (Message::binary(vec![1, 2, 3]), "bad_frame"),
        (
            Message::text(json!({"type": "ping", "pad": "x".repeat(20_000)}).to_string()),
            "frame_too_large",
        ),
    ];
    for (msg, code) in cases {
        ws.ws.send(msg).await.unwrap();
        let f = ws.next().await;
        assert_eq!(f["type"], "error");
        assert_eq!(f["code"], code, "{f}");
    }
    ws.send(json!({"type": "send", "room_id": stranger_room, "body": "hi", "client_msg_id": "x"}))
        .await;
    let f = ws.next().await;
    assert_eq!(
        (f["code"].as_str(), f["ref"].as_str()),
        (Some("room_not_found"), Some("x"))
    );
    assert!(
        ws.drain().await.is_empty(),
        "still serving after bad frames"
    );
}

#[tokio::test]
async fn a_flood_is_rate_limited_without_closing_the_connection() {
    // The default budget (the helpers raise it for other tests).
    let app = spawn_app_with(|s| s.ws_rate = 20).await;
    let alice = app.user("alice").await;
    let mut ws = connect(&app.api, &alice).await;
    for _ in 0..100 {
        ws.ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .unwrap();
    }
    let mut pongs = 0;
    let mut limited = 0;
    while pongs + limited < 100 {
        match ws.next().await["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited > 0, "some of 100 instant frames must be refused");
    assert!(pongs >= 40, "the burst allowance is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_is_disconnected_and_told_to_resume() {
    let app = spawn_app_with(|s| s.ws_queue = 16).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "firehose", &[&bob]).await;
    // Bob connects and then does not read while a few megabytes flow.
    let mut ws = connect(&app.api, &bob).await;
    let body = "x".repeat(3_900);
    let mut senders = Vec::new();
    for w in 0..8 {
        let (api, alice, room, body) = (app.api.clone(), alice.clone(), room.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..250 {
                api.send(&alice, &room, &format!("{w}-{i} {body}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    // Now read: what was buffered arrives, then the close frame with the resume code.
    let close = tokio::time::timeout(DEADLINE, async {
        while let Some(msg) = ws.ws.next().await {
            if let Message::Close(frame) = msg.unwrap() {
                return frame;
            }
        }
        None
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 4000, "{close:?}");
    // The client resumes and loses nothing.
    let mut ws = connect(&app.api, &bob).await;
    ws.send(json!({"type": "resume", "rooms": {room.clone(): 1}}))
        .await;
    let all = ws.events_until(&room, 2001).await;
    assert_eq!(all.len(), 2000);
    assert_gapless(&all);
}

#[tokio::test]
async fn events_arriving_between_connect_and_resume_stay_in_order() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "race", &[&bob]).await;
    for i in 0..3 {
        app.send(&alice, &room, &format!("old {i}")).await;
    }
    // Bob connects; new messages are sent before he gets his resume out.
    let mut ws = connect(&app.api, &bob).await;
    for i in 0..3 {
        app.send(&alice, &room, &format!("new {i}")).await;
    }
    ws.send(json!({"type": "resume", "rooms": {room.clone(): 1}}))
        .await;
    let events = ws.events_until(&room, 7).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (2..=7).collect::<Vec<u64>>(),
        "replay first, then live, no duplicates"
    );
    assert!(ws.drain().await.is_empty());
}

/// Frames of one type among `frames`.
pub(crate) fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

#[tokio::test]
async fn unread_counts_are_pushed_when_they_change_on_any_device() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "counts", &[&bob]).await;
    app.send(&alice, &room, "before bob connects").await;
    let mut b = connect(&app.api, &bob).await;
    let mut a = connect(&app.api, &alice).await;
    a.send(json!({"type": "resume"})).await;
    b.send(json!({"type": "resume"})).await;
    // The first push is the baseline.
    let f = b.next_of("unread").await;
    assert_eq!(
        f,
        json!({"type": "unread", "room_id": room, "unread_count": 1, "total": 1, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0})
    );
    // More messages: the count rises (bursts may be coalesced into one push).
    let last = app.send(&alice, &room, "one").await;
    app.send(&alice, &room, "two").await;
    loop {
        let f = b.next_of("unread").await;
        let n = f["unread_count"].as_u64().unwrap();
        assert!((2..=3).contains(&n), "{f}");
        assert_eq!(f["total"], n);
        if n == 3 {
            break;
        }
    }
    // Bob reads on another device (REST): this connection hears of it.
    let seq = last["seq"].as_u64().unwrap() + 1;
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/read"),
            &bob.token,
            json!({"seq": seq}),
        )
        .await;
    assert!(status.is_success());
    let f = b.next_of("unread").await;
    assert_eq!(
        f,
        json!({"type": "unread", "room_id": room, "unread_count": 0, "total": 0, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0})
    );
    // Alice's own messages never changed her count: she got no unread frame at all.
    assert!(of_type(&a.drain_any().await, "unread").is_empty());

    // A second connection of Bob's starts from the baseline; a delete reaches both.
    let three = app.send(&alice, &room, "three").await;
    let one = json!({"type": "unread", "room_id": room, "unread_count": 1, "total": 1, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0});
    assert_eq!(b.next_of("unread").await, one);
    let mut b2 = connect(&app.api, &bob).await;
    b2.send(json!({"type": "resume"})).await;
    assert_eq!(b2.next_of("unread").await, one);
    let id = three["message_id"].as_str().unwrap();
    let (status, _) = app
        .delete(&format!("/v1/rooms/{room}/messages/{id}"), &alice.token)
        .await;
    assert!(status.is_success());
    let zero = json!({"type": "unread", "room_id": room, "unread_count": 0, "total": 0, "mention_count": 0, "mention_total": 0, "thread_unread_count": 0});
    assert_eq!(b.next_of("unread").await, zero);
    assert_eq!(b2.next_of("unread").await, zero);
    // The first connection going away leaves the second one's counts live; leaving the room
    // reports it once with 0.
    b.close().await;
    app.send(&alice, &room, "four").await;
    assert_eq!(b2.next_of("unread").await, one);
    let (status, _) = app
        .delete(&format!("/v1/rooms/{room}/members/me"), &bob.token)
        .await;
    assert!(status.is_success());
    assert_eq!(b2.next_of("unread").await, zero);
}

#[tokio::test]
async fn typing_reaches_the_other_members_only_and_is_coalesced() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "typing", &[&bob]).await;
    // Carol shares another room with Alice, so she is connected and "near", but not a member.
    app.create_room(&alice, "elsewhere", &[&carol]).await;
    let (mut a, mut b, mut c) = (
        connect(&app.api, &alice).await,
        connect(&app.api, &bob).await,
        connect(&app.api, &carol).await,
    );
    for ws in [&mut a, &mut b, &mut c] {
        ws.send(json!({"type": "resume"})).await;
    }
    for _ in 0..5 {
        a.send(json!({"type": "typing", "room_id": room})).await;
    }
    // Alice's pong means the hub has handled all five.
    assert!(
        of_type(&a.drain_any().await, "typing").is_empty(),
        "not to herself"
    );
    let f = b.next_of("typing").await;
    assert_eq!(
        f,
        json!({"type": "typing", "room_id": room, "user_id": alice.id})
    );
    assert!(
        of_type(&b.drain_any().await, "typing").is_empty(),
        "five keystrokes within a second are one typing frame"
    );
    assert!(
        of_type(&c.drain_any().await, "typing").is_empty(),
        "non-members never see it"
    );
    // A non-member's typing is refused like a REST call would be, and goes nowhere.
    c.send(json!({"type": "typing", "room_id": room})).await;
    let f = c.next().await;
    assert_eq!(f["type"], "error");
    assert_eq!(f["code"], "room_not_found");
    assert_eq!(f["ref"], room);
    assert!(of_type(&b.drain_any().await, "typing").is_empty());
}

async fn online(app: &crate::helpers::TestApp, viewer: &TestUser, user: &TestUser) -> bool {
    let (status, friends) = app.get("/v1/friends", &viewer.token).await;
    assert_eq!(status, StatusCode::OK);
    friends
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["user_id"] == user.id.as_str())
        .expect("on the friend list")["online"]
        .as_bool()
        .unwrap()
}

/// Polls `condition` until it holds, failing after the deadline.
pub(crate) async fn eventually<F: Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presence_goes_online_at_once_offline_after_the_grace_and_flapping_does_not_storm() {
    let app = spawn_app_with(|s| s.presence_grace_ms = 1_000).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "presence", &[&bob]).await;
    app.befriend(&bob, &alice).await;
    let mut b = connect(&app.api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    assert!(!online(&app, &bob, &alice).await);

    let mut a = connect(&app.api, &alice).await;
    let f = b.next_of("presence").await;
    assert_eq!(
        f,
        json!({"type": "presence", "user_id": alice.id, "online": true})
    );
    assert!(online(&app, &bob, &alice).await, "friends list");
    let (_, detail) = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    let members = detail["members"].as_array().unwrap();
    let online_of =
        |id: &str| members.iter().find(|m| m["user_id"] == id).unwrap()["online"].clone();
    assert_eq!(online_of(&alice.id), true, "{detail}");
    assert_eq!(online_of(&bob.id), true, "{detail}");

    // A flapping connection: five times closed (the server has seen it go), down for 100 ms,
    // then reopened.
    for _ in 0..5 {
        a.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await; // the flap, not a wait for a condition
        a = connect(&app.api, &alice).await;
    }
    a.close().await;
    let closed = tokio::time::Instant::now();
    eventually("alice shown offline", || async {
        !online(&app, &bob, &alice).await
    })
    .await;
    assert!(
        closed.elapsed() >= Duration::from_millis(1_000),
        "offline only a whole grace after the last disconnect, not an earlier one"
    );
    // Everything Bob was sent about Alice since she came online: one offline, no flapping.
    let frames = b.drain_any().await;
    assert_eq!(
        of_type(&frames, "presence"),
        [&json!({"type": "presence", "user_id": alice.id, "online": false})],
        "{frames:?}"
    );
}

/// `SENDERS` concurrent senders each send `EACH` messages of about 4 KB; returns the KiB sent.
async fn flood(api: &Api, alice: &TestUser, room: &str) -> u64 {
    const SENDERS: usize = 8;
    const EACH: usize = 750;
    let body = "x".repeat(3_980);
    let mut senders = Vec::new();
    for w in 0..SENDERS {
        let (api, alice, room, body) = (api.clone(), alice.clone(), room.to_owned(), body.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                api.send(&alice, &room, &format!("{w}-{i} {body}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    (SENDERS * EACH * body.len() / 1024) as u64
}

/// Peak growth of a real server's anonymous memory (heap, not the memory-mapped log and
/// search index files, which the kernel may keep or drop as it likes) over a second flood,
/// with Bob connected and reading everything, or connected and never reading; and the KiB
/// sent. The search index commits only after the test so its buffers are the same in both.
async fn growth_over_a_flood(bob_reads: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = ChatdProcess::start_with(
        dir.path(),
        &[("CHAT_WS_QUEUE", "16"), ("CHAT_SEARCH_COMMIT_MS", "60000")],
    )
    .await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let room = api.create_room(&alice, "firehose", &[&bob]).await;
    flood(&api, &alice, &room).await;
    let baseline = server.memory_kib("RssAnon");
    let mut client = connect(&api, &bob).await;
    let (reader, _stalled) = if bob_reads {
        let reader =
            tokio::spawn(async move { while client.ws.next().await.is_some_and(|f| f.is_ok()) {} });
        (Some(reader), None)
    } else {
        (None, Some(client))
    };
    // The kernel keeps no peak of anonymous memory: sample it while the flood runs.
    let pid = server.pid();
    let flooding = CancellationToken::new();
    let sampler = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !flooding.is_cancelled() {
                peak = peak.max(ChatdProcess::memory_kib_of(pid, "RssAnon"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let sent = flood(&api, &alice, &room).await;
    flooding.cancel();
    if let Some(reader) = reader {
        reader.abort();
    }
    let peak = sampler.await.unwrap().max(server.memory_kib("RssAnon"));
    (peak.saturating_sub(baseline), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_does_not_grow_the_servers_memory() {
    // Sending alone grows the server (caches fill as the log grows): measure it with a client
    // that reads, then with one that does not. Buffering for the stalled client would add
    // about everything sent.
    let (control, _) = growth_over_a_flood(true).await;
    let (stalled, sent) = growth_over_a_flood(false).await;
    eprintln!(
        "peak growth: {control} KiB with a reading client, {stalled} KiB with a stalled one; {sent} KiB sent"
    );
    assert!(
        stalled < control + sent / 4,
        "the server kept what the stalled client did not read: grew {stalled} KiB (vs {control} KiB) for {sent} KiB sent"
    );
}
