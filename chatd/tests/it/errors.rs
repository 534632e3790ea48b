//! Bad input of every kind gets a 4xx problem with a stable code, never a 500.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

async fn raw(
    app: &crate::helpers::TestApp,
    method: Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value, String) {
    let resp = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ct,
    )
}

#[tokio::test]
async fn malformed_bodies_are_400_problems() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let cases: [&str; 7] = [
        "{not json",
        "",
        r#"{"name": 1}"#,
        r#"{"name": true}"#,
        r#"{"name": "ok", "member_ids": "nope"}"#,
        r#"{"name": "ok", "member_ids": ["not-a-uuid"]}"#,
        r#"{"name": "ok", "surprise": 1}"#,
    ];
    for body in cases {
        let (status, problem, ct) = raw(
            &app,
            Method::POST,
            "/v1/rooms",
            &alice.token,
            "application/json",
            body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["code"], "invalid_body", "{body}");
        assert_eq!(ct, "application/problem+json");
    }
    let missing = app
        .post("/v1/rooms", &alice.token, json!({"member_ids": []}))
        .await;
    assert_problem(&missing, StatusCode::BAD_REQUEST, "invalid_body");
    // None of it created anything.
    let (_, list) = app.get("/v1/rooms", &alice.token).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let (status, problem, _) = raw(
        &app,
        Method::POST,
        "/v1/rooms",
        &alice.token,
        "text/plain",
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(problem["code"], "unsupported_media_type");
}

#[tokio::test]
async fn oversize_bodies_are_413_even_when_chunked() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "big", &[]).await;
    let huge = json!({"body": "x".repeat(200_000)}).to_string();
    let path = format!("/v1/rooms/{room}/messages");
    let (status, problem, _) = raw(
        &app,
        Method::POST,
        &path,
        &alice.token,
        "application/json",
        huge.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    // Without Content-Length: a streamed (chunked) body.
    let chunks: Vec<Result<String, std::io::Error>> = huge
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, problem, _) = raw(
        &app,
        Method::POST,
        &path,
        &alice.token,
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(
        app.full_history(&alice, &room).await.len(),
        1,
        "nothing stored"
    );
}

#[tokio::test]
async fn bad_paths_routes_and_methods() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    assert_problem(
        &app.get("/v1/rooms/not-a-uuid", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    assert_problem(
        &app.get("/v1/rooms/not-a-uuid/messages", &alice.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    assert_problem(
        &app.get("/v1/nothing-here", &alice.token).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    );
    let wrong = app
        .call(Method::PUT, "/v1/rooms", Some(&alice.token), None)
        .await;
    assert_problem(&wrong, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}
