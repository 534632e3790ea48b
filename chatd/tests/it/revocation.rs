//! Revocation that bites: an ended session's access tokens are refused everywhere (401
//! `session_ended`) and its live connections are closed; a live connection whose token
//! expires is closed unless the client sent a fresh one in an `auth` frame. Over real sockets,
//! on one node and across two nodes on JetStream (the set of ended sessions comes from the
//! log, so every node agrees).

use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use eventlog_testkit::nats_server::NatsServer;

use crate::cluster::node;
use crate::helpers::{Api, TestUser, assert_problem, spawn_app, spawn_app_in, spawn_app_with};

const DEADLINE: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn ws(api: &Api, token: &str) -> Ws {
    let url = format!(
        "{}/v1/ws?access_token={token}",
        api.base.replacen("http://", "ws://", 1)
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

/// Reads until the server closes the socket; returns its close code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("closed in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a reason"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

/// Sends a ping and waits for its pong, returning the frames before it.
async fn ping(ws: &mut Ws) -> Vec<Value> {
    let mut frames = until_pong(ws).await;
    frames.pop();
    frames
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// Sends a ping and returns every text frame up to its pong (included): everything queued
/// for the client before the server read the ping.
pub(crate) async fn until_pong(ws: &mut Ws) -> Vec<String> {
    ws.send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a pong in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            let pong = serde_json::from_str::<Value>(&t).unwrap()["type"] == "pong";
            frames.push(t.to_string());
            if pong {
                return frames;
            }
        }
    }
}

/// The notification stream, read as raw text.
struct Sse(futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>);

impl Sse {
    async fn open(api: &Api, token: &str) -> Self {
        let resp = api
            .http
            .get(format!("{}/v1/notifications", api.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Self(resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed())
    }

    /// Everything until the server ends the stream.
    async fn until_end(mut self) -> String {
        let mut text = String::new();
        loop {
            let chunk = tokio::time::timeout(DEADLINE, self.0.next())
                .await
                .expect("the stream ends in time");
            match chunk {
                Some(Ok(bytes)) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
                Some(Err(e)) => panic!("{e}"),
                None => return text,
            }
        }
    }
}

async fn me(api: &Api, token: &str) -> (StatusCode, Value) {
    api.get("/v1/users/me", token).await
}

async fn refresh(api: &Api, refresh: &str) -> (StatusCode, Value) {
    api.session_call("refresh", refresh).await
}

/// A second session of `user`.
async fn login(api: &Api, user: &TestUser) -> TestUser {
    let tokens = api.login(&user.username).await;
    TestUser {
        token: tokens["access_token"].as_str().unwrap().to_owned(),
        refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        ..user.clone()
    }
}

/// The last event of an SSE text, as (event name, data).
fn last_event(text: &str) -> (String, Value) {
    let block = text.trim_end().rsplit("\n\n").next().unwrap();
    let name = block
        .lines()
        .find_map(|l| l.strip_prefix("event:"))
        .unwrap()
        .trim()
        .to_owned();
    let data = block
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap()
        .trim();
    (name, serde_json::from_str(data).unwrap())
}

#[tokio::test]
async fn logout_and_refresh_token_reuse_end_the_sessions_tokens_and_connections() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let other = login(&app, &alice).await;
    let mut socket = ws(&app, &alice.token).await;
    assert!(ping(&mut socket).await.iter().all(|f| f["type"] != "error"));
    let sse = Sse::open(&app, &alice.token).await;
    assert_eq!(me(&app, &alice.token).await.0, StatusCode::OK);

    logout(&app, &alice).await;
    assert_problem(
        &me(&app, &alice.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    );
    assert_eq!(
        closed(&mut socket).await,
        (4001, "session_ended".to_owned())
    );
    let (event, data) = last_event(&sse.until_end().await);
    assert_eq!(
        (event.as_str(), &data["code"]),
        ("closed", &json!("session_ended"))
    );
    // The live endpoints refuse the token too, before any upgrade.
    let url = format!(
        "{}/v1/ws?access_token={}",
        app.base.replacen("http://", "ws://", 1),
        alice.token
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    // Another session of the same user is untouched.
    assert_eq!(me(&app, &other.token).await.0, StatusCode::OK);

    // Reusing a spent refresh token ends that session: every access token it issued stops.
    let (status, rotated) = refresh(&app, &other.refresh).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let newest = rotated["access_token"].as_str().unwrap().to_owned();
    let mut socket = ws(&app, &newest).await;
    ping(&mut socket).await;
    assert_problem(
        &refresh(&app, &other.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    );
    for token in [&other.token, &newest] {
        assert_problem(
            &me(&app, token).await,
            StatusCode::UNAUTHORIZED,
            "session_ended",
        );
    }
    assert_eq!(
        closed(&mut socket).await,
        (4001, "session_ended".to_owned())
    );
}

/// The `exp` claim of a JWT.
fn exp(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&json).unwrap()["exp"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn a_live_connection_ends_when_its_token_expires_unless_it_reauthenticates() {
    let app = spawn_app_with(|s| s.access_token_ttl_secs = 3).await;
    let alice = app.user("alice").await;
    let mut stale = ws(&app, &alice.token).await;
    let mut renewed = ws(&app, &alice.token).await;
    let sse = Sse::open(&app, &alice.token).await;
    ping(&mut stale).await;

    // A fresh token of the same session (refreshed until it outlives the first).
    let mut held = alice.refresh.clone();
    let fresh = loop {
        let (status, tokens) = refresh(&app, &held).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        held = tokens["refresh_token"].as_str().unwrap().to_owned();
        let token = tokens["access_token"].as_str().unwrap().to_owned();
        if exp(&token) > exp(&alice.token) {
            break token;
        }
    };
    // Refused: a forged token and another session's token; accepted: the fresh one.
    let another = login(&app, &alice).await;
    for (token, code) in [
        ("forged", "unauthorized"),
        (another.token.as_str(), "unauthorized"),
    ] {
        renewed
            .send(Message::text(
                json!({"type": "auth", "access_token": token}).to_string(),
            ))
            .await
            .unwrap();
        let errors = ping(&mut renewed).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0]["code"], code);
    }
    renewed
        .send(Message::text(
            json!({"type": "auth", "access_token": fresh}).to_string(),
        ))
        .await
        .unwrap();
    assert!(
        ping(&mut renewed)
            .await
            .iter()
            .all(|f| f["type"] != "error")
    );

    // The first token expires: the connection that kept it is closed, the SSE stream ends.
    assert_eq!(closed(&mut stale).await, (4002, "token_expired".to_owned()));
    let (event, data) = last_event(&sse.until_end().await);
    assert_eq!(
        (event.as_str(), &data["code"]),
        ("closed", &json!("token_expired"))
    );
    // The re-authenticated one lives on, until its own token expires.
    assert!(
        ping(&mut renewed)
            .await
            .iter()
            .all(|f| f["type"] != "error")
    );
    assert_eq!(
        closed(&mut renewed).await,
        (4002, "token_expired".to_owned())
    );
}

async fn logout(api: &Api, user: &TestUser) {
    let (status, body) = api.session_call("logout", &user.refresh).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn every_node_refuses_an_ended_session_and_a_restart_remembers_it() {
    // Two nodes on one JetStream log: a logout on one bites on the other.
    let nats = NatsServer::start();
    let (a, b) = (node(&nats.url(), 1).await, node(&nats.url(), 1).await);
    let alice = a.user("alice").await;
    let mut on_b = ws(&b, &alice.token).await;
    ping(&mut on_b).await;
    logout(&a, &alice).await;
    assert_eq!(closed(&mut on_b).await, (4001, "session_ended".to_owned()));
    assert_problem(
        &me(&b, &alice.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    );

    // One node, restarted: the ended session is rebuilt from the log (via the read models).
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(dir.path()).await;
    let bob = app.user("bob").await;
    logout(&app, &bob).await;
    app.stop().await.unwrap();
    let app = spawn_app_in(dir.path()).await;
    assert_problem(
        &me(&app, &bob.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    );
}
