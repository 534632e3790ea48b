use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

fn room_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn group_room_lifecycle() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;

    let (status, room) = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": " general ", "member_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    assert_eq!(room["name"], "general");
    assert_eq!(room["kind"], "group");
    assert_eq!(room["visibility"], "private");
    assert_eq!(room["member_count"], 2);
    assert_eq!(room["last_seq"], 1);
    let id = room["room_id"].as_str().unwrap();
    let members: Vec<&str> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(members, [alice.id.as_str(), bob.id.as_str()]);

    // Bob sees it; Carol does not and is refused everywhere.
    let (_, list) = app.get("/v1/rooms", &bob.token).await;
    assert_eq!(room_ids(&list), [id]);
    let (_, list) = app.get("/v1/rooms", &carol.token).await;
    assert!(room_ids(&list).is_empty());
    assert_problem(
        &app.get(&format!("/v1/rooms/{id}"), &carol.token).await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    );

    // Bob invites Carol: now she is in.
    let (status, _) = app
        .post(
            &format!("/v1/rooms/{id}/members"),
            &bob.token,
            json!({"user_ids": [carol.id, alice.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, room) = app.get(&format!("/v1/rooms/{id}"), &carol.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(room["member_count"], 3);
    assert_eq!(
        room["last_seq"], 2,
        "one member_joined for Carol; Alice was already a member"
    );

    // Carol leaves: the room disappears from her list and is closed to her.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{id}/members/me"),
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = app.get("/v1/rooms", &carol.token).await;
    assert!(room_ids(&list).is_empty());
    assert_problem(
        &app.get(&format!("/v1/rooms/{id}/messages"), &carol.token)
            .await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    );
    let send = app
        .post(
            &format!("/v1/rooms/{id}/messages"),
            &carol.token,
            json!({"body": "hello?"}),
        )
        .await;
    assert_problem(&send, StatusCode::NOT_FOUND, "room_not_found");
    let again = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{id}/members/me"),
            Some(&carol.token),
            None,
        )
        .await;
    assert_problem(&again, StatusCode::NOT_FOUND, "room_not_found");
    let (_, room) = app.get(&format!("/v1/rooms/{id}"), &alice.token).await;
    assert_eq!(room["member_count"], 2);
}

#[tokio::test]
async fn non_members_and_strangers_are_refused_on_every_room_endpoint() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let id = app.create_room(&alice, "secret", &[]).await;
    let message = app.send(&alice, &id, "private words").await["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown = uuid::Uuid::now_v7();
    let bob = app.user("bob").await;
    let (status, room) = app
        .post("/v1/rooms/direct", &alice.token, json!({"user_id": bob.id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let direct = room["room_id"].as_str().unwrap().to_owned();

    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, String::from("/v1/rooms/{}"), None),
        (Method::GET, String::from("/v1/rooms/{}/messages"), None),
        (
            Method::POST,
            String::from("/v1/rooms/{}/messages"),
            Some(json!({"body": "hi"})),
        ),
        (
            Method::POST,
            String::from("/v1/rooms/{}/members"),
            Some(json!({"user_ids": [mallory.id]})),
        ),
        (
            Method::DELETE,
            String::from("/v1/rooms/{}/members/me"),
            None,
        ),
        (
            Method::POST,
            String::from("/v1/rooms/{}/join"),
            Some(json!({})),
        ),
        (
            Method::POST,
            String::from("/v1/rooms/{}/read"),
            Some(json!({"seq": 1})),
        ),
        (
            Method::PATCH,
            format!("/v1/rooms/{{}}/messages/{message}"),
            Some(json!({"body": "edited"})),
        ),
        (
            Method::DELETE,
            format!("/v1/rooms/{{}}/messages/{message}"),
            None,
        ),
    ];
    for (method, template, body) in calls {
        let unknown_room = app
            .call(
                method.clone(),
                &template.replace("{}", &unknown.to_string()),
                Some(&mallory.token),
                body.clone(),
            )
            .await;
        assert_problem(&unknown_room, StatusCode::NOT_FOUND, "room_not_found");
        // A room that exists but is not hers (a group room, the computable direct room of two
        // others) reads exactly like no room at all: no oracle.
        for room in [&id, &direct] {
            let path = template.replace("{}", room);
            let got = app
                .call(method.clone(), &path, Some(&mallory.token), body.clone())
                .await;
            assert_eq!(got, unknown_room, "{method} {path}");
            let got = app.call(method.clone(), &path, None, body.clone()).await;
            assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let got = app
            .call(
                method,
                &template.replace("{}", &unknown.to_string()),
                Some(&alice.token),
                body,
            )
            .await;
        assert_problem(&got, StatusCode::NOT_FOUND, "room_not_found");
    }
    // Mallory's attempts changed nothing.
    let (_, room) = app.get(&format!("/v1/rooms/{id}"), &alice.token).await;
    assert_eq!(room["member_count"], 1);
    let history = app.full_history(&alice, &id).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["body"], "private words");
}

#[tokio::test]
async fn direct_rooms_are_created_once_per_pair() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let (status, bob_profile) = app
        .call(Method::POST, "/v1/auth/register", None, Some(json!({"username": "bob", "password": crate::helpers::PASSWORD, "display_name": "밥"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let bob_tokens = app.login("bob").await;
    let bob_token = bob_tokens["access_token"].as_str().unwrap();
    let bob_id = bob_profile["user_id"].as_str().unwrap();

    let (status, first) = app
        .post("/v1/rooms/direct", &alice.token, json!({"user_id": bob_id}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["kind"], "direct");
    assert_eq!(
        first["name"], "밥",
        "a direct room is named after the other person"
    );
    let (status, again) = app
        .post("/v1/rooms/direct", &alice.token, json!({"user_id": bob_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["room_id"], first["room_id"]);
    let (status, from_bob) = app
        .post("/v1/rooms/direct", bob_token, json!({"user_id": alice.id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(from_bob["room_id"], first["room_id"]);
    assert_eq!(from_bob["name"], "alice");

    let id = first["room_id"].as_str().unwrap();
    let (_, history) = app
        .get(&format!("/v1/rooms/{id}/messages"), &alice.token)
        .await;
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        1,
        "created once: {history}"
    );

    let invite = app
        .post(
            &format!("/v1/rooms/{id}/members"),
            &alice.token,
            json!({"user_ids": [alice.id]}),
        )
        .await;
    assert_problem(&invite, StatusCode::FORBIDDEN, "not_allowed");
    let own = app
        .post(
            "/v1/rooms/direct",
            &alice.token,
            json!({"user_id": alice.id}),
        )
        .await;
    assert_problem(&own, StatusCode::BAD_REQUEST, "direct_with_self");
    let nobody = app
        .post(
            "/v1/rooms/direct",
            &alice.token,
            json!({"user_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_problem(&nobody, StatusCode::NOT_FOUND, "user_not_found");
}

#[tokio::test]
async fn creating_with_unknown_or_too_many_members_changes_nothing() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let unknown = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "x", "member_ids": [uuid::Uuid::new_v4()]}),
        )
        .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "user_not_found");
    let many: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let too_many = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "x", "member_ids": many}),
        )
        .await;
    assert_problem(&too_many, StatusCode::BAD_REQUEST, "validation_failed");
    for name in ["", "   ", &"n".repeat(101)] {
        let bad = app
            .post("/v1/rooms", &alice.token, json!({"name": name}))
            .await;
        assert_problem(&bad, StatusCode::BAD_REQUEST, "validation_failed");
    }
    let (_, list) = app.get("/v1/rooms", &alice.token).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn room_list_puts_most_recent_activity_first_with_last_message() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let first = app.create_room(&alice, "first", &[]).await;
    let second = app.create_room(&alice, "second", &[]).await;
    let (_, list) = app.get("/v1/rooms", &alice.token).await;
    assert_eq!(room_ids(&list), [second.as_str(), first.as_str()]);
    assert_eq!(list[0]["last_message"], Value::Null);

    let sent = app.send(&alice, &first, "bump").await;
    let (_, list) = app.get("/v1/rooms", &alice.token).await;
    assert_eq!(room_ids(&list), [first.as_str(), second.as_str()]);
    assert_eq!(list[0]["last_message"]["body"], "bump");
    assert_eq!(list[0]["last_message"]["message_id"], sent["message_id"]);
    assert_eq!(list[0]["last_message"]["sender_id"], alice.id.as_str());
    assert_eq!(list[0]["last_seq"], 2);
}
