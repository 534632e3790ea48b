use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

#[tokio::test]
async fn register_login_and_read_own_profile() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"username": "Alice", "password": PASSWORD, "display_name": " 앨리스 "})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "Alice");
    assert_eq!(body["display_name"], "앨리스");

    let tokens = app.login("Alice").await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["user_id"], body["user_id"]);
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    let (status, me) = app
        .get("/v1/users/me", tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user_id"], body["user_id"]);
    assert_eq!(me["display_name"], "앨리스");
}

#[tokio::test]
async fn usernames_are_unique_regardless_of_case() {
    let app = spawn_app().await;
    app.register("bob").await;
    for name in ["bob", "BOB", "Bob"] {
        let got = app
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await;
        assert_problem(&got, StatusCode::CONFLICT, "username_taken");
    }
    // Logging in works with any case too: it is the same account.
    assert_eq!(
        app.login("BoB").await["user_id"],
        app.login("bob").await["user_id"]
    );
}

#[tokio::test]
async fn invalid_registrations_are_refused_with_validation_failed() {
    let app = spawn_app().await;
    for body in [
        json!({"username": "ab", "password": PASSWORD}),
        json!({"username": "has space", "password": PASSWORD}),
        json!({"username": "x".repeat(33), "password": PASSWORD}),
        json!({"username": "carol", "password": "short"}),
        json!({"username": "carol", "password": PASSWORD, "display_name": "   "}),
    ] {
        let got = app
            .call(Method::POST, "/v1/auth/register", None, Some(body.clone()))
            .await;
        assert_problem(&got, StatusCode::BAD_REQUEST, "validation_failed");
    }
    // Nothing was half-created: the name is still free.
    app.register("carol").await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let app = spawn_app().await;
    app.register("dave").await;
    for body in [
        json!({"username": "dave", "password": "wrong password"}),
        json!({"username": "nobody", "password": PASSWORD}),
        json!({"username": "no such name!", "password": PASSWORD}),
    ] {
        let got = app
            .call(Method::POST, "/v1/auth/login", None, Some(body))
            .await;
        assert_problem(&got, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let user = app.user("erin").await;

    let (status, second) = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": user.refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], user.refresh.as_str());
    let (status, _) = app
        .get("/v1/users/me", second["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);

    // The spent token again: refused, and the whole session is revoked...
    let reuse = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": user.refresh})),
        )
        .await;
    assert_problem(&reuse, StatusCode::UNAUTHORIZED, "refresh_token_reused");
    // ...so even the newest refresh token no longer works.
    let newest = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": second["refresh_token"]})),
        )
        .await;
    assert_problem(&newest, StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    let garbage = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": "garbage"})),
        )
        .await;
    assert_problem(&garbage, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = spawn_app().await;
    let user = app.user("frank").await;
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/logout",
            None,
            Some(json!({"refresh_token": user.refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/logout",
            None,
            Some(json!({"refresh_token": user.refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logging out twice is fine");
    let after = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": user.refresh})),
        )
        .await;
    assert_problem(&after, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    // Another session of the same user is unaffected.
    let other = app.login("frank").await;
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": other["refresh_token"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn users_can_be_found_by_prefix_and_by_id() {
    let app = spawn_app().await;
    let me = app.user("gina").await;
    let kim = app.register("kim.minsu").await;
    app.register("kimberly").await;
    app.register("lee").await;

    let (status, found) = app.get("/v1/users?q=KIM", &me.token).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kim.minsu", "kimberly"]);

    let (status, user) = app.get(&format!("/v1/users/{kim}"), &me.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["username"], "kim.minsu");

    let unknown = app
        .get(&format!("/v1/users/{}", uuid::Uuid::new_v4()), &me.token)
        .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "user_not_found");
    assert_problem(
        &app.get("/v1/users?q=", &me.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    );
}

#[tokio::test]
async fn endpoints_refuse_missing_or_bad_tokens() {
    let app = spawn_app().await;
    let user = app.user("hank").await;
    let forged = format!("{}x", user.token);
    for token in [None, Some("not-a-jwt"), Some(forged.as_str())] {
        let got = app.call(Method::GET, "/v1/users/me", token, None).await;
        assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}
