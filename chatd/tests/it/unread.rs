//! Read markers, unread counts, edits and deletes, over HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_problem, spawn_app};

async fn unread(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app.get("/v1/unread", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn room_unread(app: &TestApp, user: &TestUser, room: &str) -> u64 {
    let (status, r) = app.get(&format!("/v1/rooms/{room}"), &user.token).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    r["unread_count"].as_u64().unwrap()
}

async fn read(app: &TestApp, user: &TestUser, room: &str, seq: u64) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/rooms/{room}/read"),
        &user.token,
        json!({"seq": seq}),
    )
    .await
}

#[tokio::test]
async fn unread_counts_follow_sends_reads_joins_and_deletes() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "counts", &[&bob]).await;

    for i in 0..3 {
        app.send(&alice, &room, &format!("hi {i}")).await;
    }
    assert_eq!(room_unread(&app, &bob, &room).await, 3);
    assert_eq!(
        room_unread(&app, &alice, &room).await,
        0,
        "your own messages are never unread"
    );
    assert_eq!(
        unread(&app, &bob).await,
        json!({"total": 3, "mention_total": 0, "thread_unread_total": 0,
            "rooms": [{"room_id": room, "unread_count": 3, "mention_count": 0, "thread_unread_count": 0}]})
    );
    assert_eq!(
        unread(&app, &alice).await,
        json!({"total": 0, "mention_total": 0, "thread_unread_total": 0, "rooms": []})
    );

    // Bob reads up to the second message (seq 3).
    let (status, _) = read(&app, &bob, &room, 3).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(room_unread(&app, &bob, &room).await, 1);
    // The marker never moves back.
    let (status, _) = read(&app, &bob, &room, 1).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(room_unread(&app, &bob, &room).await, 1);
    // Nor beyond the room's newest event.
    assert_problem(
        &read(&app, &bob, &room, 99).await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    );

    // Carol joins later: history before her join is not unread.
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{room}/members"),
            &alice.token,
            json!({"user_ids": [carol.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(room_unread(&app, &carol, &room).await, 0);
    let last = app.send(&alice, &room, "welcome carol").await;
    assert_eq!(room_unread(&app, &carol, &room).await, 1);
    assert_eq!(room_unread(&app, &bob, &room).await, 2);

    // Deleting an unread message takes it out of the counts.
    let id = last["message_id"].as_str().unwrap();
    let (status, deleted) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(room_unread(&app, &carol, &room).await, 0);
    assert_eq!(room_unread(&app, &bob, &room).await, 1);

    // The room list agrees with /v1/unread.
    let (_, list) = app.get("/v1/rooms", &bob.token).await;
    assert_eq!(list[0]["unread_count"], 1);
    assert_eq!(unread(&app, &bob).await["total"], 1);

    // Leaving drops the room from the counts.
    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}/members/me"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(
        unread(&app, &bob).await,
        json!({"total": 0, "mention_total": 0, "thread_unread_total": 0, "rooms": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_never_conflict_with_sends() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "busy", &[&bob]).await;
    let sender = {
        let (api, alice, room) = (app.api.clone(), alice.clone(), room.clone());
        tokio::spawn(async move {
            for i in 0..60 {
                api.send(&alice, &room, &format!("m{i}")).await;
            }
        })
    };
    let mut marked = 1;
    for _ in 0..60 {
        let (_, r) = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
        let last = r["last_seq"].as_u64().unwrap();
        let (status, body) = read(&app, &bob, &room, last).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        marked = last;
    }
    sender.await.unwrap();
    let (_, r) = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    assert_eq!(
        r["unread_count"].as_u64().unwrap(),
        r["last_seq"].as_u64().unwrap() - marked
    );
}

#[tokio::test]
async fn edits_and_deletes_are_for_the_sender_and_show_in_history_and_room_list() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mallory = app.user("mallory").await;
    let room = app.create_room(&alice, "edits", &[&bob]).await;
    let first = app.send(&alice, &room, "first").await;
    let second = app.send(&alice, &room, "second").await;
    let path = |m: &Value| {
        format!(
            "/v1/rooms/{room}/messages/{}",
            m["message_id"].as_str().unwrap()
        )
    };

    let (status, edited) = app
        .call(
            Method::PATCH,
            &path(&second),
            Some(&alice.token),
            Some(json!({"body": " second, edited "})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["seq"], 4);
    let (_, list) = app.get("/v1/rooms", &bob.token).await;
    assert_eq!(list[0]["last_message"]["body"], "second, edited");

    let not_mine = app
        .call(
            Method::PATCH,
            &path(&second),
            Some(&bob.token),
            Some(json!({"body": "hijack"})),
        )
        .await;
    assert_problem(&not_mine, StatusCode::FORBIDDEN, "not_the_sender");
    let not_mine = app
        .call(Method::DELETE, &path(&second), Some(&bob.token), None)
        .await;
    assert_problem(&not_mine, StatusCode::FORBIDDEN, "not_the_sender");
    let stranger = app
        .call(
            Method::PATCH,
            &path(&second),
            Some(&mallory.token),
            Some(json!({"body": "x"})),
        )
        .await;
    assert_problem(&stranger, StatusCode::NOT_FOUND, "room_not_found");
    let no_token = app.call(Method::DELETE, &path(&second), None, None).await;
    assert_problem(&no_token, StatusCode::UNAUTHORIZED, "unauthorized");
    let empty = app
        .call(
            Method::PATCH,
            &path(&second),
            Some(&alice.token),
            Some(json!({"body": "  "})),
        )
        .await;
    assert_problem(&empty, StatusCode::BAD_REQUEST, "validation_failed");
    let unknown = format!("/v1/rooms/{room}/messages/{}", uuid::Uuid::new_v4());
    assert_problem(
        &app.call(Method::DELETE, &unknown, Some(&alice.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "message_not_found",
    );

    let (status, _) = app
        .call(Method::DELETE, &path(&second), Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The room list falls back to the newest message still standing.
    let (_, list) = app.get("/v1/rooms", &bob.token).await;
    assert_eq!(list[0]["last_message"]["message_id"], first["message_id"]);
    // Deleted messages cannot be edited or deleted again.
    let again = app
        .call(Method::DELETE, &path(&second), Some(&alice.token), None)
        .await;
    assert_problem(&again, StatusCode::NOT_FOUND, "message_not_found");

    let history = app.full_history(&bob, &room).await;
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "room_created",
            "message_sent",
            "message_sent",
            "message_edited",
            "message_deleted"
        ]
    );
    // A deleted message's text is gone from every version of it in the history.
    assert!(history[2].get("body").is_none(), "{}", history[2]);
    assert!(history[3].get("body").is_none(), "{}", history[3]);
    assert_eq!(history[3]["message_id"], second["message_id"]);
    assert_eq!(history[1]["body"], "first");
}
