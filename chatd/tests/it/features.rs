//! The message features over real sockets (issue 17): read counts per message and receipts,
//! replies and threads, reactions, mentions, pins — in history, live frames, SSE, unread counts
//! and room lists.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, ChatdProcess, TestUser, spawn_app};
use crate::sse;
use crate::ws::connect;

/// The `message_sent` item of `message_id` in the room's history, as `user` sees it.
async fn item(api: &Api, user: &TestUser, room: &str, message_id: &Value) -> Value {
    api.full_history(user, room)
        .await
        .into_iter()
        .find(|e| e["type"] == "message_sent" && e["message_id"] == *message_id)
        .expect("the message is in the history")
}

async fn send_body(api: &Api, user: &TestUser, room: &str, body: Value) -> (StatusCode, Value) {
    api.post(&format!("/v1/rooms/{room}/messages"), &user.token, body)
        .await
}

async fn read(api: &Api, user: &TestUser, room: &str, seq: &Value) {
    let (status, body) = api
        .post(
            &format!("/v1/rooms/{room}/read"),
            &user.token,
            json!({"seq": seq}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

async fn readers(api: &Api, user: &TestUser, room: &str, message_id: &Value) -> Value {
    let mid = message_id.as_str().unwrap();
    let (status, body) = api
        .get(
            &format!("/v1/rooms/{room}/messages/{mid}/readers"),
            &user.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn names(readers: &Value) -> Vec<&str> {
    readers["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn read_counts_per_message_follow_the_read_markers_live_and_in_history() {
    // The real binary: counts, receipts and readers as a deployed server serves them.
    let dir = tempfile::tempdir().unwrap();
    let server = ChatdProcess::start(dir.path()).await;
    let api = &server.api;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    let room = api.create_room(&alice, "receipts", &[&bob, &carol]).await;
    let mut a = connect(api, &alice).await;
    a.send(json!({"type": "resume"})).await;
    let m1 = api.send(&alice, &room, "first").await;
    let m2 = api.send(&alice, &room, "second").await;
    // Live: a new message is unread by everyone but its sender.
    let live = a.next_of("event").await;
    assert_eq!(live["event"]["message_id"], m1["message_id"], "{live}");
    assert_eq!(live["event"]["unread_by"], 2, "{live}");
    assert_eq!(live["event"]["reactions"], json!([]));
    assert_eq!(
        item(api, &bob, &room, &m1["message_id"]).await["unread_by"],
        2
    );

    // Bob reads the first: its count drops, the second's does not; Alice hears of it.
    read(api, &bob, &room, &m1["seq"]).await;
    let receipt = a.next_of("receipt").await;
    assert_eq!(
        receipt,
        json!({"type": "receipt", "room_id": room, "user_id": bob.id, "seq": m1["seq"],
               "previous_seq": 1})
    );
    assert_eq!(
        item(api, &alice, &room, &m1["message_id"]).await["unread_by"],
        1
    );
    assert_eq!(
        item(api, &alice, &room, &m2["message_id"]).await["unread_by"],
        2
    );
    assert_eq!(
        names(&readers(api, &carol, &room, &m1["message_id"]).await),
        ["bob"]
    );
    assert!(names(&readers(api, &carol, &room, &m2["message_id"]).await).is_empty());

    // Carol reads everything; Dave joins later and never counts for older messages.
    read(api, &carol, &room, &m2["seq"]).await;
    let receipt = a.next_of("receipt").await;
    assert_eq!(receipt["user_id"], carol.id.as_str());
    assert_eq!(receipt["previous_seq"], 1);
    let dave = api.user("dave").await;
    let (status, _) = api
        .post(
            &format!("/v1/rooms/{room}/members"),
            &alice.token,
            json!({"user_ids": [dave.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = readers(api, &dave, &room, &m2["message_id"]).await;
    assert_eq!(r["unread_by"], 1, "bob has not read it: {r}");
    assert_eq!(names(&r), ["carol"]);
    assert_eq!(
        names(&readers(api, &bob, &room, &m1["message_id"]).await),
        ["bob", "carol"]
    );
    // Bob reading again below his marker moves nothing and tells nobody.
    read(api, &bob, &room, &m1["seq"]).await;
    let m3 = api.send(&dave, &room, "hi all").await;
    let live = a.next_of("event").await;
    let live = if live["event"]["type"] == "member_joined" {
        a.next_of("event").await
    } else {
        live
    };
    assert_eq!(live["event"]["message_id"], m3["message_id"]);
    assert_eq!(
        live["event"]["unread_by"], 3,
        "alice, bob and carol: {live}"
    );
    assert!(
        crate::ws::of_type(&a.drain_any().await, "receipt").is_empty(),
        "no receipt for a marker that did not move"
    );

    // Bad input.
    let (status, body) = api
        .get(
            &format!("/v1/rooms/{room}/messages/{}/readers", uuid::Uuid::now_v7()),
            &bob.token,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
    let eve = api.user("eve").await;
    let (status, body) = api
        .get(
            &format!(
                "/v1/rooms/{room}/messages/{}/readers",
                m1["message_id"].as_str().unwrap()
            ),
            &eve.token,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("room_not_found"))
    );
}

async fn thread(api: &Api, user: &TestUser, room: &str, root: &Value, query: &str) -> Value {
    let root = root.as_str().unwrap();
    let (status, body) = api
        .get(
            &format!("/v1/rooms/{room}/messages/{root}/thread{query}"),
            &user.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn unread(api: &Api, user: &TestUser) -> Value {
    let (status, body) = api.get("/v1/unread", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn replies_form_threads_with_counts_paging_and_unread_for_participants() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "threads", &[&bob, &carol]).await;
    let root = app.send(&alice, &room, "lunch?").await;
    let mut replies = Vec::new();
    for (i, text) in ["yes", "noodles", "at noon"].iter().enumerate() {
        // The third replies to a reply: it joins the root's thread.
        let parent = if i == 2 {
            &replies[0]
        } else {
            &root["message_id"]
        };
        let (status, body) =
            send_body(&app, &bob, &room, json!({"body": text, "reply_to": parent})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        replies.push(body["message_id"].clone());
    }
    let root_item = item(&app, &alice, &room, &root["message_id"]).await;
    assert_eq!(root_item["reply_count"], 3);
    assert_eq!(root_item["last_reply"]["message_id"], replies[2]);
    assert_eq!(root_item["last_reply"]["sender_id"], bob.id.as_str());
    let third = item(&app, &alice, &room, &replies[2]).await;
    assert_eq!(third["reply_to"], root["message_id"], "{third}");

    // Paged: the newest two, then the rest.
    let page = thread(&app, &carol, &room, &root["message_id"], "?limit=2").await;
    assert_eq!(page["root"]["message_id"], root["message_id"]);
    assert_eq!(page["root"]["reply_count"], 3);
    let ids: Vec<&Value> = page["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["message_id"])
        .collect();
    assert_eq!(ids, [&replies[1], &replies[2]]);
    assert_eq!(page["has_more"], true);
    let oldest = page["replies"][0]["seq"].as_u64().unwrap();
    let page = thread(
        &app,
        &carol,
        &room,
        &root["message_id"],
        &format!("?limit=2&before_seq={oldest}"),
    )
    .await;
    assert_eq!(page["replies"].as_array().unwrap().len(), 1);
    assert_eq!(page["replies"][0]["message_id"], replies[0]);
    assert_eq!(page["has_more"], false);

    // Thread unread: Alice wrote the root, so Bob's replies are hers to read; Carol takes
    // no part (her room unread counts them all the same).
    let u = unread(&app, &alice).await;
    assert_eq!(u["rooms"][0]["thread_unread_count"], 3, "{u}");
    assert_eq!(u["thread_unread_total"], 3);
    let u = unread(&app, &carol).await;
    assert_eq!(
        (u["total"].as_u64(), u["thread_unread_total"].as_u64()),
        (Some(4), Some(0)),
        "{u}"
    );

    // A deleted reply leaves the thread.
    let mid = replies[2].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{mid}"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = thread(&app, &carol, &room, &root["message_id"], "").await;
    assert_eq!(page["root"]["reply_count"], 2);
    assert_eq!(page["root"]["last_reply"]["message_id"], replies[1]);
    assert_eq!(page["replies"].as_array().unwrap().len(), 2);
    assert_eq!(unread(&app, &alice).await["thread_unread_total"], 2);

    // A reply over the WebSocket: acknowledged once durable, and the sender's next read
    // shows it (other users' reads do not wait for the read models).
    let mut c = connect(&app.api, &carol).await;
    c.send(json!({"type": "send", "room_id": room, "body": "me too",
                  "client_msg_id": "c1", "reply_to": root["message_id"]}))
        .await;
    let ack = c.next_of("ack").await;
    assert_eq!(ack["client_msg_id"], "c1", "{ack}");
    let page = thread(&app, &carol, &room, &root["message_id"], "").await;
    assert_eq!(page["root"]["reply_count"], 3);
    assert_eq!(page["root"]["last_reply"]["message_id"], ack["message_id"]);
    assert_eq!(
        unread(&app, &carol).await["thread_unread_total"],
        2,
        "carol takes part now"
    );

    // Replying to nothing (or to a deleted message) is refused, nothing stored.
    for parent in [json!(uuid::Uuid::now_v7()), replies[2].clone()] {
        let (status, body) =
            send_body(&app, &bob, &room, json!({"body": "x", "reply_to": parent})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("validation_failed")),
            "{body}"
        );
    }
    let (status, body) =
        send_body(&app, &bob, &room, json!({"body": "x", "reply_to": "nope"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .get(
            &format!("/v1/rooms/{room}/messages/{}/thread", uuid::Uuid::now_v7()),
            &bob.token,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
    let (status, _) = app
        .get(
            &format!(
                "/v1/rooms/{room}/messages/{}/thread?limit=0",
                root["message_id"].as_str().unwrap()
            ),
            &bob.token,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn reaction_path(room: &str, message: &Value, emoji: &str) -> String {
    let emoji = url_escape(emoji);
    format!(
        "/v1/rooms/{room}/messages/{}/reactions/{emoji}",
        message.as_str().unwrap()
    )
}

/// Percent-encodes every byte that is not an unreserved ASCII character.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn react(
    api: &Api,
    user: &TestUser,
    method: Method,
    room: &str,
    message: &Value,
    emoji: &str,
) -> (StatusCode, Value) {
    api.call(
        method,
        &reaction_path(room, message, emoji),
        Some(&user.token),
        None,
    )
    .await
}

#[tokio::test]
async fn reactions_are_one_per_user_per_emoji_with_counts_live_and_in_history() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "reactions", &[&bob, &carol]).await;
    let m = app.send(&alice, &room, "cake in the kitchen").await;
    let id = &m["message_id"];
    let mut c = connect(&app.api, &carol).await;
    c.send(json!({"type": "resume"})).await;

    for _ in 0..2 {
        assert_eq!(
            react(&app, &bob, Method::PUT, &room, id, "👍").await.0,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        react(&app, &alice, Method::PUT, &room, id, "👍").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        react(&app, &bob, Method::PUT, &room, id, "🎉").await.0,
        StatusCode::NO_CONTENT
    );
    // Live: one event per change (Bob's second 👍 changed nothing), each with the new count.
    let mut live = Vec::new();
    while live.len() < 3 {
        let f = c.next_of("event").await;
        live.push((
            f["event"]["type"].clone(),
            f["event"]["emoji"].clone(),
            f["event"]["count"].clone(),
            f["event"]["user_id"].clone(),
        ));
    }
    assert_eq!(
        live,
        [
            (
                json!("reaction_added"),
                json!("👍"),
                json!(1),
                json!(bob.id)
            ),
            (
                json!("reaction_added"),
                json!("👍"),
                json!(2),
                json!(alice.id)
            ),
            (
                json!("reaction_added"),
                json!("🎉"),
                json!(1),
                json!(bob.id)
            ),
        ]
    );
    // History: counts per emoji, most used first, and whether the viewer reacted.
    assert_eq!(
        item(&app, &bob, &room, id).await["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": "🎉", "count": 1, "me": true}])
    );
    assert_eq!(
        item(&app, &carol, &room, id).await["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": false}, {"emoji": "🎉", "count": 1, "me": false}])
    );
    assert_eq!(
        react(&app, &bob, Method::DELETE, &room, id, "👍").await.0,
        StatusCode::NO_CONTENT
    );
    let f = c.next_of("event").await;
    assert_eq!(
        (f["event"]["type"].as_str(), f["event"]["count"].as_u64()),
        (Some("reaction_removed"), Some(1))
    );
    assert_eq!(
        react(&app, &bob, Method::DELETE, &room, id, "👍").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        item(&app, &alice, &room, id).await["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}, {"emoji": "🎉", "count": 1, "me": false}])
    );

    // Bad input: a bad emoji, a stranger, a message that does not exist.
    let (status, body) = react(&app, &bob, Method::PUT, &room, id, "two words").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("validation_failed")),
        "{body}"
    );
    let eve = app.user("eve").await;
    let (status, body) = react(&app, &eve, Method::PUT, &room, id, "👍").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("room_not_found"))
    );
    let (status, body) = react(
        &app,
        &bob,
        Method::PUT,
        &room,
        &json!(uuid::Uuid::now_v7()),
        "👍",
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );

    // A deleted message shows no reactions and takes none.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{}", id.as_str().unwrap()),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(item(&app, &bob, &room, id).await["reactions"], json!([]));
    let (status, body) = react(&app, &bob, Method::PUT, &room, id, "👍").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
}

#[tokio::test]
async fn mentions_are_counted_next_to_unread_and_pushed_over_ws_and_sse() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "mentions", &[&bob, &carol]).await;
    let mut b = connect(&app.api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    let mut notes = sse::open(&app.api, &bob, None).await;

    let named = app
        .send(&alice, &room, "@bob can you look? cc @nobody")
        .await;
    app.send(&alice, &room, "plain words, mail bob@example.com")
        .await;
    let everyone = app.send(&alice, &room, "@all standup in 5").await;
    let ev = item(&app, &bob, &room, &named["message_id"]).await;
    assert_eq!(
        ev["mentions"],
        json!([{"kind": "user", "user_id": bob.id}]),
        "{ev}"
    );
    assert_eq!(
        item(&app, &bob, &room, &everyone["message_id"]).await["mentions"],
        json!([{"kind": "all"}])
    );

    let u = unread(&app, &bob).await;
    assert_eq!(u["rooms"][0]["unread_count"], 3, "{u}");
    assert_eq!(u["rooms"][0]["mention_count"], 2, "{u}");
    assert_eq!(u["mention_total"], 2);
    assert_eq!(
        unread(&app, &carol).await["mention_total"],
        1,
        "carol only by @all"
    );
    assert_eq!(
        unread(&app, &alice).await["mention_total"],
        0,
        "her own messages"
    );
    let (_, rooms) = app.get("/v1/rooms", &bob.token).await;
    assert_eq!(rooms[0]["mention_count"], 2, "{rooms}");

    // Live: the unread push carries the mention counts; SSE has a `mention` per mention.
    // (Pushes are coalesced: the counts rise to 2 mentions within the deadline.)
    loop {
        let f = b.next_of("unread").await;
        assert!(f["mention_count"].as_u64().unwrap() <= 2, "{f}");
        if f["mention_count"] == 2 {
            assert_eq!(
                (f["mention_total"].as_u64(), f["unread_count"].as_u64()),
                (Some(2), Some(3)),
                "{f}"
            );
            break;
        }
    }
    let message = notes.next_of("message").await;
    let m1 = notes.next_of("mention").await;
    assert_eq!(m1.data["seq"], named["seq"]);
    assert_eq!(m1.id, message.id, "a mention has its message's id");
    let m2 = notes.next_of("mention").await;
    assert_eq!(m2.data["seq"], everyone["seq"]);
    // Resuming with Last-Event-ID replays the mentions after it too.
    let mut again = sse::open(&app.api, &bob, message.id.as_deref()).await;
    let replayed = again.next_of("mention").await;
    assert_eq!(
        replayed.data["seq"], everyone["seq"],
        "only the mention after the id"
    );

    // An edit that drops the mention drops the count; reading clears the rest.
    let mid = named["message_id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}/messages/{mid}"),
            Some(&alice.token),
            Some(json!({"body": "never mind"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unread(&app, &bob).await["mention_total"], 1);
    read(&app, &bob, &room, &everyone["seq"]).await;
    let u = unread(&app, &bob).await;
    assert_eq!(
        (u["total"].as_u64(), u["mention_total"].as_u64()),
        (Some(0), Some(0)),
        "{u}"
    );
}

/// The next `unread` frame of `room` on `ws`.
async fn next_unread(ws: &mut crate::ws::Client, room: &str) -> Value {
    loop {
        let f = ws.next_of("unread").await;
        if f["room_id"] == room {
            return f;
        }
    }
}

#[tokio::test]
async fn a_mention_added_or_removed_by_an_edit_is_pushed() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "edits", &[&bob]).await;
    let mut b = connect(&app.api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    let sent = app.send(&alice, &room, "standup in 5").await;
    loop {
        let f = next_unread(&mut b, &room).await;
        if f["unread_count"] == 1 {
            assert_eq!(f["mention_count"], 0, "{f}");
            break;
        }
    }
    let mid = sent["message_id"].as_str().unwrap();
    let edit = |body: &'static str| {
        let (app, token, room) = (&app, alice.token.clone(), room.clone());
        async move {
            let (status, _) = app
                .call(
                    Method::PATCH,
                    &format!("/v1/rooms/{room}/messages/{mid}"),
                    Some(&token),
                    Some(json!({ "body": body })),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    // The unread count stays 1; the mention count moves, and is pushed by itself.
    edit("@bob standup in 5").await;
    let f = next_unread(&mut b, &room).await;
    assert_eq!(
        (f["unread_count"].as_u64(), f["mention_count"].as_u64()),
        (Some(1), Some(1)),
        "{f}"
    );
    assert_eq!(f["mention_total"], 1, "{f}");
    // An edit that keeps the mention pushes nothing; one that drops it pushes 0.
    edit("@bob standup in 10").await;
    edit("standup in 10").await;
    let f = next_unread(&mut b, &room).await;
    assert_eq!(
        (f["unread_count"].as_u64(), f["mention_count"].as_u64()),
        (Some(1), Some(0)),
        "{f}"
    );
}

#[tokio::test]
async fn here_mentions_the_members_online_when_it_is_sent() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "here", &[&bob, &carol]).await;
    // Alice and Bob are connected, Carol is not; Alice sees Bob come online.
    let mut a = connect(&app.api, &alice).await;
    a.send(json!({"type": "resume"})).await;
    let mut b = connect(&app.api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    loop {
        let f = a.next_of("presence").await;
        if f["user_id"] == bob.id.as_str() && f["online"] == true {
            break;
        }
    }

    let here = app.send(&alice, &room, "@here standup in 5").await;
    let ev = item(&app, &carol, &room, &here["message_id"]).await;
    let mut resolved: Vec<&str> = ev["mentions"][0]["user_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("resolved on the event: {ev}"))
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    resolved.sort_unstable();
    let mut want = vec![alice.id.as_str(), bob.id.as_str()];
    want.sort_unstable();
    assert_eq!(ev["mentions"][0]["kind"], "here", "{ev}");
    assert_eq!(resolved, want, "the members online, the sender too: {ev}");
    assert_eq!(unread(&app, &bob).await["mention_total"], 1);
    let u = unread(&app, &carol).await;
    assert_eq!(
        (u["total"].as_u64(), u["mention_total"].as_u64()),
        (Some(1), Some(0)),
        "carol was offline: unread, not mentioned: {u}"
    );
    let (_, rooms) = app.get("/v1/rooms", &carol.token).await;
    assert_eq!(rooms[0]["mention_count"], 0, "{rooms}");
}

/// The unread push keeps the mention counts it read and reads them again only after an event
/// that may change them: a mention, an edit or a read marker shows in the next push, however
/// many plain messages came before.
#[tokio::test]
async fn unread_pushes_follow_mention_changes_between_plain_messages() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "pushes", &[&bob]).await;
    let mut b = connect(&app.api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    // The push that shows `unread` messages: its mention count and total.
    async fn push_at(b: &mut crate::ws::Client, unread: u64) -> (u64, u64) {
        loop {
            let f = b.next_of("unread").await;
            if f["unread_count"] == unread {
                return (
                    f["mention_count"].as_u64().unwrap(),
                    f["mention_total"].as_u64().unwrap(),
                );
            }
        }
    }

    app.send(&alice, &room, "plain one").await;
    assert_eq!(push_at(&mut b, 1).await, (0, 0));
    let named = app.send(&alice, &room, "@bob a question").await;
    assert_eq!(
        push_at(&mut b, 2).await,
        (1, 1),
        "the mention after a plain message"
    );
    app.send(&alice, &room, "plain two").await;
    assert_eq!(push_at(&mut b, 3).await, (1, 1), "still one");
    let mid = named["message_id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}/messages/{mid}"),
            Some(&alice.token),
            Some(json!({"body": "never mind"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.send(&alice, &room, "plain three").await;
    assert_eq!(
        push_at(&mut b, 4).await,
        (0, 0),
        "the edit dropped the mention"
    );
    let again = app.send(&alice, &room, "@all again").await;
    assert_eq!(push_at(&mut b, 5).await, (1, 1));
    read(&app.api, &bob, &room, &again["seq"]).await;
    app.send(&alice, &room, "plain four").await;
    assert_eq!(push_at(&mut b, 1).await, (0, 0), "read past the mention");
}

#[tokio::test]
async fn pins_are_listed_and_deleted_messages_leave_the_list() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "pins", &[&bob]).await;
    let m1 = app.send(&alice, &room, "rules: be kind").await;
    let m2 = app
        .send(&bob, &room, "wifi password is on the fridge")
        .await;
    let pin = |user: &TestUser, method: Method, m: &Value| {
        let path = format!(
            "/v1/rooms/{room}/pins/{}",
            m["message_id"].as_str().unwrap()
        );
        let token = user.token.clone();
        let api = app.api.clone();
        async move { api.call(method, &path, Some(&token), None).await }
    };
    for (user, m) in [(&bob, &m1), (&alice, &m2), (&alice, &m2)] {
        assert_eq!(pin(user, Method::PUT, m).await.0, StatusCode::NO_CONTENT);
    }
    let pins = |user: &TestUser| {
        let path = format!("/v1/rooms/{room}/pins");
        let token = user.token.clone();
        let api = app.api.clone();
        async move {
            let (status, body) = api.get(&path, &token).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["pins"].as_array().unwrap().clone()
        }
    };
    let list = pins(&bob).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["message_id"], m2["message_id"], "newest pin first");
    assert_eq!(list[0]["pinned_by"], alice.id.as_str());
    assert_eq!(list[1]["body"], "rules: be kind");
    assert_eq!(
        item(&app, &bob, &room, &m1["message_id"]).await["pinned"],
        true
    );

    assert_eq!(
        pin(&bob, Method::DELETE, &m1).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        pin(&bob, Method::DELETE, &m1).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        item(&app, &bob, &room, &m1["message_id"]).await["pinned"],
        false
    );
    let mid = m2["message_id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{mid}"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(pins(&alice).await.is_empty());
    let history = app.full_history(&alice, &room).await;
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"message_pinned") && kinds.contains(&"message_unpinned"),
        "{kinds:?}"
    );

    let carol = app.user("carol").await;
    let (status, body) = app
        .get(&format!("/v1/rooms/{room}/pins"), &carol.token)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("room_not_found"))
    );
    let (status, body) = pin(&alice, Method::PUT, &m2).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("message_not_found"))
    );
}
