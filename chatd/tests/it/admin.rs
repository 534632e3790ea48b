//! Room administration, account management, friend requests and blocking, against the real
//! `chatd` binary over real sockets (REST and WebSocket).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, ChatdProcess, PASSWORD, TestUser, assert_problem};
use crate::ws::connect;

/// The real binary with cheap password hashes (these tests log in often) and a short
/// presence grace.
async fn server(dir: &tempfile::TempDir) -> ChatdProcess {
    ChatdProcess::start_with(
        dir.path(),
        &[
            ("CHAT_ARGON2_MEMORY_KIB", "64"),
            ("CHAT_ARGON2_ITERATIONS", "1"),
            ("CHAT_PRESENCE_GRACE_MS", "100"),
        ],
    )
    .await
}

async fn call(
    api: &Api,
    method: Method,
    path: &str,
    who: &TestUser,
    body: Value,
) -> (StatusCode, Value) {
    let body = (!body.is_null()).then_some(body);
    api.call(method, path, Some(&who.token), body).await
}

/// `call`, which must answer 204.
async fn done(api: &Api, method: Method, path: &str, who: &TestUser, body: Value) {
    let (status, body) = call(api, method, path, who, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// A refusal of someone who is not in the room: 404 `room_not_found`, as for no room at all.
fn assert_outsider(got: &(StatusCode, Value)) {
    assert_problem(got, StatusCode::NOT_FOUND, "room_not_found");
}

fn types(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn roles_kick_ban_settings_transfer_archive_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = server(&dir).await;
    let api = &chatd.api;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    let dave = api.user("dave").await;
    let room = api.create_room(&alice, "admin", &[&bob, &carol]).await;
    let r = |rest: &str| format!("/v1/rooms/{room}{rest}");

    // The member list: roles, paging (two pages of two and one, no one twice).
    let (status, page) = api.get(&r("/members?limit=2"), &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = api
        .get(&r(&format!("/members?limit=2&cursor={cursor}")), &bob.token)
        .await;
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let mut roles: Vec<(String, String)> = [&page, &rest]
        .iter()
        .flat_map(|p| p["members"].as_array().unwrap().clone())
        .map(|m| {
            (
                m["username"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    roles.sort();
    let expected = [("alice", "owner"), ("bob", "member"), ("carol", "member")];
    assert_eq!(roles, expected.map(|(u, r)| (u.to_owned(), r.to_owned())));
    assert_problem(
        &api.get(&r("/members?cursor=nonsense"), &bob.token).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );
    assert_outsider(&api.get(&r("/members"), &dave.token).await);
    assert_outsider(
        &call(
            api,
            Method::DELETE,
            &r(&format!("/members/{}", bob.id)),
            &dave,
            Value::Null,
        )
        .await,
    );

    // Members cannot kick; the owner makes Bob an admin, who can.
    let kick_carol = r(&format!("/members/{}", carol.id));
    assert_problem(
        &call(api, Method::DELETE, &kick_carol, &bob, Value::Null).await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );
    done(
        api,
        Method::PUT,
        &r(&format!("/members/{}/role", bob.id)),
        &alice,
        json!({"role": "admin"}),
    )
    .await;
    assert_problem(
        &call(
            api,
            Method::PUT,
            &r(&format!("/members/{}/role", carol.id)),
            &bob,
            json!({"role": "admin"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );
    assert_problem(
        &call(
            api,
            Method::DELETE,
            &r(&format!("/members/{}", alice.id)),
            &bob,
            Value::Null,
        )
        .await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );

    // A kicked member's live connection stops receiving the room at once.
    let mut c = connect(api, &carol).await;
    c.send(json!({"type": "resume"})).await;
    c.drain_any().await;
    done(api, Method::DELETE, &kick_carol, &bob, Value::Null).await;
    let kicked = c.next_of("event").await;
    assert_eq!(kicked["event"]["type"], "member_kicked", "{kicked}");
    api.send(&alice, &room, "after the kick").await;
    let frames = c.drain_any().await;
    assert!(
        frames.iter().all(|f| f["room_id"] != room.as_str()),
        "nothing of the room after the kick: {frames:?}"
    );
    assert_outsider(&api.get(&r("/messages"), &carol.token).await);
    assert!(
        api.get("/v1/unread", &carol.token).await.1["rooms"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Ban: cannot join (even a public room) or be invited until unbanned.
    done(
        api,
        Method::PUT,
        &r(&format!("/bans/{}", carol.id)),
        &bob,
        Value::Null,
    )
    .await;
    done(
        api,
        Method::PATCH,
        &r(""),
        &bob,
        json!({"name": "renamed", "topic": "plans", "visibility": "public"}),
    )
    .await;
    assert_problem(
        &api.post(&r("/join"), &carol.token, Value::Null).await,
        StatusCode::FORBIDDEN,
        "banned",
    );
    assert_problem(
        &api.post(
            &r("/members"),
            &alice.token,
            json!({"user_ids": [carol.id]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "banned",
    );
    done(
        api,
        Method::DELETE,
        &r(&format!("/bans/{}", carol.id)),
        &bob,
        Value::Null,
    )
    .await;
    assert_eq!(
        api.post(&r("/join"), &carol.token, Value::Null).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, detail) = api.get(&r(""), &carol.token).await;
    assert_eq!(
        (&detail["name"], &detail["topic"], &detail["visibility"]),
        (&json!("renamed"), &json!("plans"), &json!("public")),
        "{detail}"
    );
    assert_problem(
        &call(api, Method::PATCH, &r(""), &carol, json!({"topic": "mine"})).await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );

    // Ownership moves to Bob; Alice is an admin now and cannot archive.
    done(
        api,
        Method::PUT,
        &r("/owner"),
        &alice,
        json!({"user_id": bob.id}),
    )
    .await;
    assert_problem(
        &call(api, Method::PUT, &r("/archive"), &alice, Value::Null).await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );
    done(api, Method::PUT, &r("/archive"), &bob, Value::Null).await;
    assert_problem(
        &api.post(&r("/messages"), &alice.token, json!({"body": "hello?"}))
            .await,
        StatusCode::CONFLICT,
        "room_archived",
    );
    let (_, detail) = api.get(&r(""), &alice.token).await;
    assert_eq!(detail["archived"], true);
    let history = api.full_history(&alice, &room).await;
    let t = types(&history);
    for expected in [
        "member_role_changed",
        "member_kicked",
        "member_banned",
        "member_unbanned",
        "room_settings_changed",
        "ownership_transferred",
        "room_archived",
    ] {
        assert!(t.contains(&expected), "{expected} in {t:?}");
    }
    let (_, page) = api.get(&r("/members"), &alice.token).await;
    let role_of = |name: &str| {
        page["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["username"] == name)
            .unwrap()["role"]
            .clone()
    };
    assert_eq!(
        (role_of("alice"), role_of("bob"), role_of("carol")),
        (json!("admin"), json!("owner"), json!("member"))
    );

    // Deleting: gone for everyone, live members told; search finds nothing of it.
    let mut a = connect(api, &alice).await;
    a.send(json!({"type": "resume"})).await;
    a.drain_any().await;
    assert_problem(
        &call(api, Method::DELETE, &r(""), &alice, Value::Null).await,
        StatusCode::FORBIDDEN,
        "insufficient_role",
    );
    done(api, Method::DELETE, &r(""), &bob, Value::Null).await;
    let gone = a.next_of("event").await;
    assert_eq!(gone["event"]["type"], "room_deleted", "{gone}");
    for who in [&alice, &bob, &carol] {
        assert_problem(
            &api.get(&r(""), &who.token).await,
            StatusCode::NOT_FOUND,
            "room_not_found",
        );
        assert!(
            api.get("/v1/rooms", &who.token)
                .await
                .1
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    let (_, hits) = api.get("/v1/search?q=kick", &alice.token).await;
    assert_eq!(hits["hits"], json!([]), "{hits}");
}

#[tokio::test]
async fn profile_password_sessions_and_deleting_an_account() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = server(&dir).await;
    let api = &chatd.api;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let room = api.create_room(&alice, "accounts", &[&bob]).await;

    let (status, me) = call(
        api,
        Method::PATCH,
        "/v1/users/me",
        &alice,
        json!({"display_name": "Alice L.", "status_message": "on holiday"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let (_, seen) = api
        .get(&format!("/v1/users/{}", alice.id), &bob.token)
        .await;
    assert_eq!(
        (&seen["display_name"], &seen["status_message"]),
        (&json!("Alice L."), &json!("on holiday"))
    );
    assert_problem(
        &call(
            api,
            Method::PATCH,
            "/v1/users/me",
            &alice,
            json!({"status_message": "x".repeat(141)}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    );

    assert_problem(
        &call(
            api,
            Method::PATCH,
            "/v1/users/me",
            &alice,
            json!({"display_name": null}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    );
    let (_, me) = call(
        api,
        Method::PATCH,
        "/v1/users/me",
        &alice,
        json!({"status_message": null}),
    )
    .await;
    assert_eq!(
        (&me["display_name"], me.get("status_message")),
        (&json!("Alice L."), None),
        "null clears: {me}"
    );

    // Two more sessions: listed, the caller's marked.
    let second = api.login("alice").await;
    let third = api.login("alice").await;
    let (_, sessions) = api.get("/v1/sessions", &alice.token).await;
    let sessions = sessions.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    // Revoking one: its refresh token is dead; nobody else can revoke it.
    let third_id = sessions[0]["session_id"].as_str().unwrap();
    assert_problem(
        &call(
            api,
            Method::DELETE,
            &format!("/v1/sessions/{third_id}"),
            &bob,
            Value::Null,
        )
        .await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    done(
        api,
        Method::DELETE,
        &format!("/v1/sessions/{third_id}"),
        &alice,
        Value::Null,
    )
    .await;
    let refresh = |token: &Value| {
        api.call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
    };
    assert_eq!(
        refresh(&third["refresh_token"]).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Changing the password ends every other session, keeps this one.
    assert_problem(
        &api.post(
            "/v1/users/me/password",
            &alice.token,
            json!({"current_password": "wrong password", "new_password": "a new password"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "wrong_password",
    );
    let (status, body) = api
        .post(
            "/v1/users/me/password",
            &alice.token,
            json!({"current_password": PASSWORD, "new_password": "a new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        refresh(&second["refresh_token"]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, sessions) = api.get("/v1/sessions", &alice.token).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(sessions[0]["current"], true);
    let login = |password: &str| {
        api.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": password})),
        )
    };
    assert_eq!(login(PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login("a new password").await.0, StatusCode::OK);

    // Deleting the account.
    let sent = api.send(&alice, &room, "remember me").await;
    assert_problem(
        &call(
            api,
            Method::DELETE,
            "/v1/users/me",
            &alice,
            json!({"password": PASSWORD}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "wrong_password",
    );
    done(
        api,
        Method::DELETE,
        "/v1/users/me",
        &alice,
        json!({"password": "a new password"}),
    )
    .await;
    assert_eq!(login("a new password").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&json!(alice.refresh)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let again = api
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"username": "ALICE", "password": PASSWORD})),
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "username_taken");
    let (_, ghost) = api
        .get(&format!("/v1/users/{}", alice.id), &bob.token)
        .await;
    assert_eq!(
        ghost,
        json!({"user_id": alice.id, "username": "", "display_name": "Deleted user", "deleted": true})
    );
    assert_eq!(api.get("/v1/users?q=ali", &bob.token).await.1, json!([]));
    // The message stays, from the deleted user; they left the room.
    let history = api.full_history(&bob, &room).await;
    let message = history
        .iter()
        .find(|e| e["message_id"] == sent["message_id"])
        .unwrap();
    assert_eq!(
        (&message["sender_id"], &message["body"]),
        (&json!(alice.id), &json!("remember me"))
    );
    assert_eq!(history.last().unwrap()["type"], "member_left");
    let (_, detail) = api.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    assert_eq!(detail["member_count"], 1, "{detail}");
    let (_, page) = api
        .get(&format!("/v1/rooms/{room}/members"), &bob.token)
        .await;
    assert_eq!(
        page["members"][0]["role"], "owner",
        "ownership passed on: {page}"
    );
}

#[tokio::test]
async fn friend_requests_need_consent_and_blocking_stops_dms_requests_invites_and_presence() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = server(&dir).await;
    let api = &chatd.api;
    let [alice, bob, carol, dave] = [
        api.user("alice").await,
        api.user("bob").await,
        api.user("carol").await,
        api.user("dave").await,
    ];
    let mut b = connect(api, &bob).await;
    b.send(json!({"type": "resume"})).await;
    b.drain_any().await;

    // A request is pending until accepted; both sides are told live.
    let (status, body) = api
        .post(
            "/v1/friends/requests",
            &alice.token,
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("requested")),
        "{body}"
    );
    assert_eq!(
        b.next_of("friend").await,
        json!({"type": "friend", "user_id": alice.id, "status": "incoming_request"})
    );
    let (_, requests) = api.get("/v1/friends/requests", &bob.token).await;
    assert_eq!(requests["incoming"][0]["username"], "alice", "{requests}");
    assert_eq!(api.get("/v1/friends", &alice.token).await.1, json!([]));
    assert_problem(
        &api.post(
            &format!("/v1/friends/requests/{}/accept", bob.id),
            &alice.token,
            Value::Null,
        )
        .await,
        StatusCode::NOT_FOUND,
        "friend_request_not_found",
    );
    let (status, _) = api
        .post(
            &format!("/v1/friends/requests/{}/accept", alice.id),
            &bob.token,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(b.next_of("friend").await["status"], "friends");
    assert_eq!(
        api.get("/v1/friends", &alice.token).await.1[0]["username"],
        "bob"
    );
    assert_eq!(
        api.get("/v1/friends", &bob.token).await.1[0]["username"],
        "alice"
    );

    // Declined and cancelled requests leave nothing behind.
    api.post(
        "/v1/friends/requests",
        &carol.token,
        json!({"user_id": bob.id}),
    )
    .await;
    let (status, _) = api
        .post(
            &format!("/v1/friends/requests/{}/decline", carol.id),
            &bob.token,
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    api.post(
        "/v1/friends/requests",
        &dave.token,
        json!({"user_id": bob.id}),
    )
    .await;
    done(
        api,
        Method::DELETE,
        &format!("/v1/friends/requests/{}", bob.id),
        &dave,
        Value::Null,
    )
    .await;
    assert_problem(
        &api.post(
            &format!("/v1/friends/requests/{}/accept", dave.id),
            &bob.token,
            Value::Null,
        )
        .await,
        StatusCode::NOT_FOUND,
        "friend_request_not_found",
    );
    assert_eq!(
        api.get("/v1/friends/requests", &bob.token).await.1,
        json!({"incoming": [], "outgoing": []})
    );
    // The one-sided friend list is gone.
    let old = call(
        api,
        Method::PUT,
        &format!("/v1/friends/{}", bob.id),
        &carol,
        Value::Null,
    )
    .await;
    assert_eq!(old.0, StatusCode::METHOD_NOT_ALLOWED, "{old:?}");

    // Presence: the friend sees Alice come online; Carol (no friend, no shared room) does not.
    let mut c = connect(api, &carol).await;
    c.send(json!({"type": "resume"})).await;
    c.drain_any().await;
    let mut a = connect(api, &alice).await;
    assert_eq!(
        b.next_of("presence").await,
        json!({"type": "presence", "user_id": alice.id, "online": true})
    );
    assert!(c.drain_any().await.iter().all(|f| f["type"] != "presence"));
    a.close().await;
    assert_eq!(b.next_of("presence").await["online"], false);

    // Bob blocks Alice: no presence, no direct messages, no friend requests either way.
    done(
        api,
        Method::PUT,
        &format!("/v1/blocks/{}", alice.id),
        &bob,
        Value::Null,
    )
    .await;
    assert_eq!(
        api.get("/v1/blocks", &bob.token).await.1[0]["username"],
        "alice"
    );
    api.befriend(&carol, &alice).await;
    let mut a = connect(api, &alice).await;
    assert_eq!(
        c.next_of("presence").await["user_id"],
        alice.id.as_str(),
        "the hub announced Alice"
    );
    assert!(
        b.drain_any().await.iter().all(|f| f["type"] != "presence"),
        "blocked: no presence"
    );
    let online_in = |list: Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["user_id"] == alice.id.as_str())
            .unwrap()["online"]
            .clone()
    };
    assert_eq!(
        online_in(api.get("/v1/friends", &carol.token).await.1),
        true
    );
    assert_eq!(
        online_in(api.get("/v1/friends", &bob.token).await.1),
        false,
        "hidden from who blocked her"
    );
    a.close().await;
    assert_problem(
        &api.post("/v1/rooms/direct", &alice.token, json!({"user_id": bob.id}))
            .await,
        StatusCode::FORBIDDEN,
        "blocked",
    );
    assert_problem(
        &api.post("/v1/rooms/direct", &bob.token, json!({"user_id": alice.id}))
            .await,
        StatusCode::FORBIDDEN,
        "blocked",
    );
    done(
        api,
        Method::DELETE,
        &format!("/v1/friends/{}", bob.id),
        &alice,
        Value::Null,
    )
    .await;
    assert_eq!(
        api.get("/v1/friends", &bob.token).await.1,
        json!([]),
        "unfriended both ways"
    );
    assert_problem(
        &api.post(
            "/v1/friends/requests",
            &alice.token,
            json!({"user_id": bob.id}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "blocked",
    );
    let (_, direct) = api
        .post(
            "/v1/rooms/direct",
            &carol.token,
            json!({"user_id": dave.id}),
        )
        .await;
    let direct_id = direct["room_id"].as_str().unwrap().to_owned();
    // A direct room that exists already: blocking stops its messages too.
    done(
        api,
        Method::PUT,
        &format!("/v1/blocks/{}", carol.id),
        &dave,
        Value::Null,
    )
    .await;
    assert_problem(
        &api.post(
            &format!("/v1/rooms/{direct_id}/messages"),
            &carol.token,
            json!({"body": "hi"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "blocked",
    );
    done(
        api,
        Method::DELETE,
        &format!("/v1/blocks/{}", carol.id),
        &dave,
        Value::Null,
    )
    .await;
    assert_eq!(
        api.post(
            &format!("/v1/rooms/{direct_id}/messages"),
            &carol.token,
            json!({"body": "hi"})
        )
        .await
        .0,
        StatusCode::CREATED
    );

    // An invitation from someone Bob blocked waits for his consent.
    let room = api.create_room(&alice, "invite", &[]).await;
    let (status, _) = api
        .post(
            &format!("/v1/rooms/{room}/members"),
            &alice.token,
            json!({"user_ids": [bob.id]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        b.next_of("invitation").await,
        json!({"type": "invitation", "room_id": room, "invited_by": alice.id})
    );
    assert_outsider(&api.get(&format!("/v1/rooms/{room}"), &bob.token).await);
    let (_, invitations) = api.get("/v1/invitations", &bob.token).await;
    assert_eq!(invitations[0]["room_id"], room.as_str(), "{invitations}");
    assert_eq!(
        api.post(&format!("/v1/rooms/{room}/join"), &bob.token, Value::Null)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get(&format!("/v1/rooms/{room}"), &bob.token).await.0,
        StatusCode::OK
    );
    assert_eq!(api.get("/v1/invitations", &bob.token).await.1, json!([]));
    // Declining: the invitation goes, the room stays closed.
    let other = api.create_room(&alice, "declined", &[]).await;
    api.post(
        &format!("/v1/rooms/{other}/members"),
        &alice.token,
        json!({"user_ids": [bob.id]}),
    )
    .await;
    done(
        api,
        Method::DELETE,
        &format!("/v1/rooms/{other}/invitations/me"),
        &bob,
        Value::Null,
    )
    .await;
    assert_problem(
        &call(
            api,
            Method::DELETE,
            &format!("/v1/rooms/{other}/invitations/me"),
            &bob,
            Value::Null,
        )
        .await,
        StatusCode::NOT_FOUND,
        "invitation_not_found",
    );
    assert_eq!(api.get("/v1/invitations", &bob.token).await.1, json!([]));
    assert_outsider(&api.get(&format!("/v1/rooms/{other}"), &bob.token).await);
}
