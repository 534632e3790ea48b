//! Public rooms. (Friend requests and blocking: `admin.rs`.)

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn public_rooms_can_be_found_and_joined_private_ones_cannot() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (_, public) = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "Rust 러스트", "visibility": "public"}),
        )
        .await;
    let (_, other) = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "cooking", "visibility": "public"}),
        )
        .await;
    let private = app.create_room(&alice, "Rust internal", &[]).await;
    let public_id = public["room_id"].as_str().unwrap();
    assert_eq!(public["visibility"], "public");

    let (status, found) = app.get("/v1/rooms/public?q=rust", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [public_id],
        "case-insensitive match on public rooms only"
    );
    let (_, all) = app.get("/v1/rooms/public", &bob.token).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, none) = app.get("/v1/rooms/public?q=%25", &bob.token).await;
    assert_eq!(none, json!([]), "LIKE wildcards in q are literal");
    assert_eq!(other["kind"], "group");

    // Bob cannot read before joining, can after.
    assert_problem(
        &app.get(&format!("/v1/rooms/{public_id}/messages"), &bob.token)
            .await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    );
    for _ in 0..2 {
        let (status, body) = app
            .post(
                &format!("/v1/rooms/{public_id}/join"),
                &bob.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, room) = app.get(&format!("/v1/rooms/{public_id}"), &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(room["member_count"], 2);
    let history = app.full_history(&bob, public_id).await;
    assert_eq!(history.last().unwrap()["type"], "member_joined");
    assert_eq!(
        history.last().unwrap()["invited_by"],
        serde_json::Value::Null
    );

    let join_private = app
        .post(&format!("/v1/rooms/{private}/join"), &bob.token, json!({}))
        .await;
    assert_problem(&join_private, StatusCode::NOT_FOUND, "room_not_found");
    let join_unknown = app
        .post(
            &format!("/v1/rooms/{}/join", uuid::Uuid::now_v7()),
            &bob.token,
            json!({}),
        )
        .await;
    assert_problem(&join_unknown, StatusCode::NOT_FOUND, "room_not_found");
}
