//! Throttling and limits against the real binary over real sockets, each with small limits
//! configured: 429 (or 503) with `Retry-After` and a stable `code`, and the security events.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Api, PASSWORD, assert_problem};
use crate::security::Chatd;

/// Cheap password hashes, and every limit not under test out of the way.
const BASE: &[(&str, &str)] = &[
    ("CHAT_ARGON2_MEMORY_KIB", "1024"),
    ("CHAT_ARGON2_ITERATIONS", "1"),
];

async fn start(env: &[(&str, &str)]) -> (Chatd, Api) {
    let all: Vec<(&str, &str)> = BASE.iter().chain(env).copied().collect();
    let mut chatd = Chatd::spawn(&[], &all);
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    (chatd, Api::new(addr))
}

/// A request with the full response: status, `Retry-After`, body.
async fn request(
    api: &Api,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<u64>, Value) {
    let (status, headers, value) = api.respond(method, path, token, body).await;
    let retry = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    (status, retry, value)
}

/// A refusal by a limit: the status, a `Retry-After` of at least a second, the code.
#[track_caller]
fn assert_limited(got: &(StatusCode, Option<u64>, Value), status: StatusCode, code: &str) {
    assert_problem(&(got.0, got.2.clone()), status, code);
    assert!(got.1.is_some_and(|s| s >= 1), "Retry-After: {got:?}");
}

async fn login(api: &Api, username: &str, password: &str) -> (StatusCode, Option<u64>, Value) {
    let body = json!({"username": username, "password": password});
    request(api, Method::POST, "/v1/auth/login", None, Some(body)).await
}

async fn register(api: &Api, username: &str) -> (StatusCode, Option<u64>, Value) {
    let body = json!({"username": username, "password": PASSWORD});
    request(api, Method::POST, "/v1/auth/register", None, Some(body)).await
}

/// Failed logins back off per account and per address; registrations are limited per
/// address; each refusal is a security event.
#[tokio::test]
async fn logins_back_off_after_failures_and_registrations_are_limited() {
    let (mut chatd, api) = start(&[
        ("CHAT_LOGIN_FAILURES_PER_ACCOUNT", "2"),
        ("CHAT_LOGIN_FAILURES_PER_ADDRESS", "4"),
        // Long enough that no wait runs out during the test.
        ("CHAT_LOGIN_BACKOFF_MS", "600000"),
        ("CHAT_LOGIN_BACKOFF_MAX_SECS", "3600"),
        ("CHAT_REGISTRATIONS_PER_MIN", "3"),
    ])
    .await;
    for name in ["alice", "bob", "carol"] {
        assert_eq!(register(&api, name).await.0, StatusCode::CREATED);
    }
    assert_limited(
        &register(&api, "dave").await,
        StatusCode::TOO_MANY_REQUESTS,
        "register_throttled",
    );

    for _ in 0..2 {
        let got = login(&api, "alice", "wrong password").await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{got:?}");
    }
    // Alice's account now waits, even for the right password.
    let refused = login(&api, "ALICE", PASSWORD).await;
    assert_limited(&refused, StatusCode::TOO_MANY_REQUESTS, "login_throttled");
    assert!(refused.1.unwrap() >= 500, "the first wait: {refused:?}");
    // Bob's account does not.
    assert_eq!(login(&api, "bob", PASSWORD).await.0, StatusCode::OK);
    // Two failures of Bob's make four from this address: Carol must wait too.
    for _ in 0..2 {
        assert_eq!(
            login(&api, "bob", "nope nope").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_limited(
        &login(&api, "carol", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "login_throttled",
    );

    let printed = chatd.stop().await;
    let refusals: Vec<(String, String)> = printed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event.category"] == "authentication" && v["event.reason"] == "throttled")
        .map(|v| {
            assert_eq!(v["event.outcome"], "failure", "{v}");
            assert_eq!(v["source.ip"], "127.0.0.1", "{v}");
            (v["event.action"].to_string(), v["url.path"].to_string())
        })
        .collect();
    let expected = [
        (r#""register""#, r#""/v1/auth/register""#),
        (r#""login""#, r#""/v1/auth/login""#),
        (r#""login""#, r#""/v1/auth/login""#),
    ]
    .map(|(a, p)| (a.to_owned(), p.to_owned()));
    assert_eq!(refusals, expected, "{printed}");
}

/// A signed-in user's password checks (password change, account deletion) back off like
/// logins, and share the account's count: a stolen access token does not guess faster.
#[tokio::test]
async fn password_checks_share_the_login_backoff() {
    let (_chatd, api) = start(&[
        ("CHAT_LOGIN_FAILURES_PER_ACCOUNT", "2"),
        ("CHAT_LOGIN_BACKOFF_MS", "600000"),
        ("CHAT_LOGIN_BACKOFF_MAX_SECS", "3600"),
    ])
    .await;
    assert_eq!(register(&api, "alice").await.0, StatusCode::CREATED);
    let (status, _, tokens) = login(&api, "alice", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let change = |current: &str| json!({"current_password": current, "new_password": "a brand new password"});
    // A right one in between starts the count over.
    for current in ["wrong guess 1", PASSWORD, "wrong guess 2", "wrong guess 3"] {
        let path = "/v1/users/me/password";
        let got = request(
            &api,
            Method::POST,
            path,
            Some(&token),
            Some(change(current)),
        )
        .await;
        if current == PASSWORD {
            assert_eq!(got.0, StatusCode::NO_CONTENT, "{got:?}");
            // Changing it back keeps the test's password (and is a second right one).
            let back =
                json!({"current_password": "a brand new password", "new_password": PASSWORD});
            let got = request(&api, Method::POST, path, Some(&token), Some(back)).await;
            assert_eq!(got.0, StatusCode::NO_CONTENT, "{got:?}");
        } else {
            assert_problem(&(got.0, got.2), StatusCode::FORBIDDEN, "wrong_password");
        }
    }
    // Two failures in a row: the right password waits too, here and at login.
    let got = request(
        &api,
        Method::POST,
        "/v1/users/me/password",
        Some(&token),
        Some(change(PASSWORD)),
    )
    .await;
    assert_limited(&got, StatusCode::TOO_MANY_REQUESTS, "login_throttled");
    let got = request(
        &api,
        Method::DELETE,
        "/v1/users/me",
        Some(&token),
        Some(json!({"password": PASSWORD})),
    )
    .await;
    assert_limited(&got, StatusCode::TOO_MANY_REQUESTS, "login_throttled");
    assert_limited(
        &login(&api, "alice", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "login_throttled",
    );
}

/// With every password-hash slot busy and no wait allowed, a login is refused with 503 at
/// once instead of queueing.
#[tokio::test]
async fn a_saturated_password_hasher_answers_503() {
    // The default hash cost: each verification holds the one slot for a while.
    let (_chatd, api) = start(&[
        ("CHAT_ARGON2_MEMORY_KIB", "19456"),
        ("CHAT_ARGON2_ITERATIONS", "2"),
        ("CHAT_HASH_CONCURRENCY", "1"),
        ("CHAT_HASH_WAIT_MS", "0"),
    ])
    .await;
    let attempts = (0..6).map(|i| {
        let api = api.clone();
        async move { login(&api, &format!("nobody{i}"), "whatever password").await }
    });
    let results = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
    assert!(
        statuses.contains(&401),
        "someone got the slot: {statuses:?}"
    );
    let busy = results
        .iter()
        .find(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .unwrap_or_else(|| panic!("no 503 among {statuses:?}"));
    assert_limited(busy, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
}

/// A user's REST requests are rate limited; REST sends draw on the same budget as the
/// user's WebSocket frames; invitations are capped per request and per minute.
#[tokio::test]
async fn requests_sends_and_invitations_are_limited_per_user() {
    let (_chatd, api) = start(&[
        ("CHAT_REQUEST_RATE", "3"),
        ("CHAT_WS_RATE", "1"),
        ("CHAT_INVITE_MAX_USERS", "2"),
        ("CHAT_INVITES_PER_MIN", "3"),
    ])
    .await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let carol = api.user("carol").await;
    let dave = api.user("dave").await;
    let erin = api.user("erin").await;
    let ids = |users: &[&crate::helpers::TestUser]| -> Vec<String> {
        users.iter().map(|u| u.id.clone()).collect()
    };

    // Invitations: three in one request are too many; two are fine; two more in the same
    // minute are over the budget of three.
    let create = |members: Vec<String>| {
        let api = api.clone();
        let token = alice.token.clone();
        async move {
            let body = json!({"name": "team", "member_ids": members});
            request(&api, Method::POST, "/v1/rooms", Some(&token), Some(body)).await
        }
    };
    let got = create(ids(&[&bob, &carol, &dave])).await;
    assert_problem(
        &(got.0, got.2),
        StatusCode::BAD_REQUEST,
        "too_many_invitees",
    );
    let got = create(ids(&[&bob, &carol])).await;
    assert_eq!(got.0, StatusCode::CREATED, "{got:?}");
    let room = got.2["room_id"].as_str().unwrap().to_owned();
    let invite = json!({"user_ids": ids(&[&dave, &erin])});
    let got = request(
        &api,
        Method::POST,
        &format!("/v1/rooms/{room}/members"),
        Some(&alice.token),
        Some(invite),
    )
    .await;
    assert_limited(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    // Bob spends his send budget (one a second, bursts of two) over the WebSocket...
    let mut ws = ws_open(api.base.trim_start_matches("http://"), &bob.token)
        .await
        .expect("connected");
    for i in 0..2 {
        let send = json!({"type": "send", "room_id": room, "body": "hi", "client_msg_id": format!("m{i}")});
        ws.send(Message::text(send.to_string())).await.unwrap();
        let ack = next_frame(&mut ws, "ack").await;
        assert_eq!(ack["client_msg_id"], format!("m{i}"), "{ack}");
    }
    // ...and a REST send right after has nothing left.
    let body = json!({"body": "and more", "client_msg_id": "m2"});
    let got = request(
        &api,
        Method::POST,
        &format!("/v1/rooms/{room}/messages"),
        Some(&bob.token),
        Some(body),
    )
    .await;
    assert_limited(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    // Carol's requests: three a second, bursts of six. A quick run of them is cut off...
    let mut refused = None;
    for _ in 0..30 {
        let got = request(&api, Method::GET, "/v1/rooms", Some(&carol.token), None).await;
        if got.0 != StatusCode::OK {
            refused = Some(got);
            break;
        }
    }
    let refused = refused.expect("30 requests at once were all served");
    assert_limited(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // ...while Dave's are not.
    let got = request(&api, Method::GET, "/v1/rooms", Some(&dave.token), None).await;
    assert_eq!(got.0, StatusCode::OK, "{got:?}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_open(addr: &str, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{addr}/v1/ws?access_token={token}");
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next frame of `kind`, skipping others (presence, unread), within 30 s.
async fn next_frame(ws: &mut Ws, kind: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let msg = ws.next().await.expect("open").expect("frame");
            if let Message::Text(text) = msg {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} frame within 30 s"))
}

/// A user holds at most the configured live connections (WebSocket and SSE together); one
/// more is refused with 429 until one closes.
#[tokio::test]
async fn live_connections_per_user_are_capped() {
    let (_chatd, api) = start(&[("CHAT_LIVE_CONNECTIONS_PER_USER", "2")]).await;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    let first = ws_open(&addr, &alice.token).await.expect("first");
    let sse = api
        .http
        .get(format!("{}/v1/notifications", api.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    match ws_open(&addr, &alice.token).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "too_many_connections", "{body}");
        }
        other => panic!("a third connection: {:?}", other.map(|_| "open")),
    }
    let got = request(
        &api,
        Method::GET,
        "/v1/notifications",
        Some(&alice.token),
        None,
    )
    .await;
    assert_limited(&got, StatusCode::TOO_MANY_REQUESTS, "too_many_connections");
    // Others are not affected.
    drop(ws_open(&addr, &bob.token).await.expect("bob connects"));
    // Closing one makes room (the server notices the close shortly).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ws_open(&addr, &alice.token).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sse);
}

/// Writes a request head and returns the raw response (status line and headers) read back.
async fn raw_get(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(head) = text.find("\r\n\r\n")
                && let Some(len) = text[..head].lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                && got.len() >= head + 4 + len
            {
                return;
            }
        }
    })
    .await
    .expect("a response within 30 s");
    String::from_utf8(got).unwrap()
}

/// Beyond the server-wide cap a connection gets one 503 `overloaded` and is closed; once a
/// connection closes, new ones are served again.
#[tokio::test]
async fn connections_beyond_the_server_cap_are_answered_503() {
    let (_chatd, api) = start(&[("CHAT_MAX_CONNECTIONS", "2")]).await;
    let addr: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    // The readiness check's connection counts until the server has seen it close: take the
    // two places as they come free.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.len() < 2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let resp = raw_get(&mut s, "/healthz").await;
        if resp.starts_with("HTTP/1.1 200") {
            held.push(s);
            continue;
        }
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(Instant::now() < deadline, "still refused: {resp}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let resp = raw_get(&mut third, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{resp}");
    assert!(lower.contains("connection: close"), "{resp}");
    assert!(resp.contains(r#""code":"overloaded""#), "{resp}");
    let mut rest = Vec::new();
    third.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after the answer");

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let resp = raw_get(&mut s, "/healthz").await;
        if resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {resp}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `bytes` one at a time, `every` apart, until the server closes the connection;
/// returns how many it sent by then (all of them if it never did, within a minute).
async fn trickle(addr: SocketAddr, bytes: &[u8], every: Duration) -> usize {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let mut sent = 0;
    let mut tick = tokio::time::interval(every);
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if sent == bytes.len() {
                    continue; // all sent; wait for the close (or the deadline)
                }
                if write.write_all(&bytes[sent..=sent]).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return sent,
                Ok(_) => {} // a response (a 408, say); the close follows
            },
            () = &mut deadline => return sent,
        }
    }
}

/// Slowloris: a client sending its headers a byte at a time is cut off after the
/// header-read timeout; one that stalls in the middle of a body, after the idle timeout.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    let (_chatd, api) = start(&[
        ("CHAT_HEADER_READ_TIMEOUT_SECS", "1"),
        ("CHAT_IDLE_TIMEOUT_SECS", "2"),
    ])
    .await;
    let addr: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    // 60 bytes of headers at 10 a second take 6 s, and the blank line never comes.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: test\r\nx-slow: {}",
        "a".repeat(30)
    );
    let sent = trickle(addr, head.as_bytes(), Duration::from_millis(100)).await;
    assert!(
        sent < head.len(),
        "all {sent} bytes of the headers were taken"
    );

    // A complete head announcing a body that never comes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a stalled body held the connection for a minute"
    );
}

/// A `resume` frame names at most the configured number of rooms, and a user sends at most
/// so many resumes a minute.
#[tokio::test]
async fn resumes_are_bounded() {
    let (_chatd, api) = start(&[
        ("CHAT_RESUME_MAX_ROOMS", "2"),
        ("CHAT_RESUMES_PER_MIN", "2"),
    ])
    .await;
    let alice = api.user("alice").await;
    let mut rooms = Vec::new();
    for name in ["r0", "r1", "r2"] {
        rooms.push(api.create_room(&alice, name, &[]).await);
    }
    let mut ws = ws_open(api.base.trim_start_matches("http://"), &alice.token)
        .await
        .unwrap();
    let resume = |rooms: &[String]| {
        let map: serde_json::Map<String, Value> =
            rooms.iter().map(|r| (r.clone(), json!(0))).collect();
        Message::text(json!({"type": "resume", "rooms": map}).to_string())
    };
    ws.send(resume(&rooms)).await.unwrap();
    let error = next_frame(&mut ws, "error").await;
    assert_eq!(error["code"], "too_many_rooms", "{error}");
    for _ in 0..2 {
        ws.send(resume(&rooms[..2])).await.unwrap();
    }
    ws.send(resume(&rooms[..1])).await.unwrap();
    let error = next_frame(&mut ws, "error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
}
