//! Several `chatd` nodes on one NATS JetStream: cross-node delivery, identical read models,
//! a node restarted mid-stream, and a three-node JetStream cluster losing a node.

use std::collections::HashSet;
use std::time::Duration;

use eventlog_testkit::nats_server::{NatsCluster, NatsServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, ChatdProcess, TestApp, TestUser, spawn_app_with};
use crate::ws::{assert_gapless, connect, eventually};

const SECRET: &str = "a-secret-every-node-shares-0123456789";
const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) async fn node(url: &str, replicas: usize) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |s| {
        s.nats.url = Some(url);
        s.nats.replicas = replicas;
        s.jwt_secret = Some(SECRET.into());
        s.presence_grace_ms = 200;
    })
    .await
}

async fn readyz(api: &Api) -> Option<(u64, u64)> {
    let resp = api
        .http
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .ok()?;
    let body: Value = resp.json().await.ok()?;
    Some((body["log_head"].as_u64()?, body["projected"].as_u64()?))
}

/// Waits until every node's read models reflect the whole log as it is now.
async fn in_sync(nodes: &[&Api]) {
    let (head, _) = readyz(nodes[0]).await.expect("ready");
    for api in nodes {
        let api = (*api).clone();
        eventually("the node projected the whole log", || {
            let api = api.clone();
            async move { readyz(&api).await.is_some_and(|(_, p)| p >= head) }
        })
        .await;
    }
}

/// What a user reads, minus what legitimately differs between nodes (nothing should).
async fn view(api: &Api, user: &TestUser, rooms: &[&str]) -> Value {
    let (s1, room_list) = api.get("/v1/rooms", &user.token).await;
    let (s2, unread) = api.get("/v1/unread", &user.token).await;
    let (s3, friends) = api.get("/v1/friends", &user.token).await;
    assert_eq!(
        (s1, s2, s3),
        (StatusCode::OK, StatusCode::OK, StatusCode::OK)
    );
    let mut histories = Vec::new();
    for room in rooms {
        histories.push(Value::Array(api.full_history(user, room).await));
    }
    json!({"rooms": room_list, "unread": unread, "friends": friends, "histories": histories})
}

async fn send_with_id(
    api: &Api,
    user: &TestUser,
    room: &str,
    body: &str,
    id: &str,
) -> (StatusCode, Value) {
    api.call(
        Method::POST,
        &format!("/v1/rooms/{room}/messages"),
        Some(&user.token),
        Some(json!({"body": body, "client_msg_id": id})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_across_and_agree_on_every_read() {
    let nats = NatsServer::start();
    let (a, b) = (node(&nats.url(), 1).await, node(&nats.url(), 1).await);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    // The user names are one namespace across nodes.
    let (status, _) = b
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"username": "alice", "password": crate::helpers::PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    in_sync(&[&a, &b]).await;
    let room = a.create_room(&alice, "across", &[&bob]).await;
    in_sync(&[&a, &b]).await;

    // Bob listens on node B; Alice connects on node A: Bob sees her come online.
    let mut bob_ws = connect(&b, &bob).await;
    bob_ws.send(json!({"type": "resume"})).await;
    bob_ws.drain_any().await;
    let mut alice_ws = connect(&a, &alice).await;
    alice_ws.send(json!({"type": "resume"})).await;
    let presence = bob_ws.next_of("presence").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "user_id": alice.id, "online": true})
    );

    // Typing crosses too (never through the log).
    alice_ws
        .send(json!({"type": "typing", "room_id": room}))
        .await;
    let typing = bob_ws.next_of("typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "room_id": room, "user_id": alice.id})
    );

    // Messages sent on A arrive live on B, in order, without gaps.
    let mut last = 0;
    for i in 0..20 {
        let sent = if i % 2 == 0 {
            a.send(&alice, &room, &format!("m{i}")).await
        } else {
            b.send(&bob, &room, &format!("m{i}")).await
        };
        last = sent["seq"].as_u64().unwrap();
    }
    let events = bob_ws.events_until(&room, last).await;
    let seqs = assert_gapless(&events);
    assert_eq!(seqs[&room].last(), Some(&last));

    // A retry on the other node is recognised: same message, same seq, nothing new.
    let first = send_with_id(
        &a,
        &alice,
        &room,
        "once",
        "0190a0c0-0000-7000-8000-000000000001",
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let again = send_with_id(
        &b,
        &alice,
        &room,
        "once",
        "0190a0c0-0000-7000-8000-000000000001",
    )
    .await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.1);
    assert_eq!(again.1["message_id"], first.1["message_id"]);
    assert_eq!(again.1["seq"], first.1["seq"]);

    // Both nodes' read models say the same, for both users.
    in_sync(&[&a, &b]).await;
    for user in [&alice, &bob] {
        assert_eq!(
            view(&a, user, &[&room]).await,
            view(&b, user, &[&room]).await
        );
    }
    let (_, unread) = b.get("/v1/unread", &bob.token).await;
    assert_eq!(
        unread["total"], 11,
        "Alice's 10 plus the retried one: {unread}"
    );
    // Each node follows the stream once: its projector, hub, search indexer and event-id
    // index share one consumer.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("CHAT_EVENTS")
        .await
        .expect("stream");
    let consumers = stream.info().await.expect("info").state.consumer_count;
    assert_eq!(consumers, 2, "one consumer per node");

    // Alice leaves: Bob (on the other node) sees her go offline after the grace.
    alice_ws.close().await;
    let presence = bob_ws.next_of("presence").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "user_id": alice.id, "online": false})
    );
}

fn process_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_NATS_URL", url.to_owned()),
        ("CHAT_JWT_SECRET", SECRET.to_owned()),
        ("CHAT_ARGON2_MEMORY_KIB", "64".to_owned()),
        ("CHAT_ARGON2_ITERATIONS", "1".to_owned()),
    ]
}

async fn start_process(dir: &std::path::Path, env: &[(&'static str, String)]) -> ChatdProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ChatdProcess::start_with(dir, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_catches_up_without_gaps_or_duplicates() {
    let nats = NatsServer::start();
    let env = process_env(&nats.url());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_process(dir_a.path(), &env).await;
    let mut b = start_process(dir_b.path(), &env).await;
    let alice = a.api.user("alice").await;
    let bob = a.api.user("bob").await;
    let room = a.api.create_room(&alice, "restart", &[&bob]).await;
    in_sync(&[&a.api, &b.api]).await;

    let mut bob_ws = connect(&b.api, &bob).await;
    bob_ws.send(json!({"type": "resume"})).await;
    let mut seen = 0;
    for i in 0..30 {
        seen = a.api.send(&alice, &room, &format!("before {i}")).await["seq"]
            .as_u64()
            .unwrap();
    }
    let before = bob_ws.events_until(&room, seen).await;
    assert_gapless(&before);

    // Node B dies while Alice keeps sending through A.
    let sender = {
        let (api, alice, room) = (a.api.clone(), alice.clone(), room.clone());
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..150 {
                last = api.send(&alice, &room, &format!("during {i}")).await["seq"]
                    .as_u64()
                    .unwrap();
            }
            last
        })
    };
    b.kill9();
    b.wait().await;
    drop(bob_ws);
    let b = start_process(dir_b.path(), &env).await;
    let last = sender.await.unwrap();

    // Bob resumes on the restarted node from what he had: the rest, exactly once, in order.
    let mut bob_ws = connect(&b.api, &bob).await;
    bob_ws
        .send(json!({"type": "resume", "rooms": {room.clone(): seen}}))
        .await;
    let after = bob_ws.events_until(&room, last).await;
    let seqs = assert_gapless(&after);
    assert_eq!(seqs[&room].first(), Some(&(seen + 1)));
    assert_eq!(seqs[&room].last(), Some(&last));

    // Its read models match the node that never stopped.
    in_sync(&[&a.api, &b.api]).await;
    let history = b.api.full_history(&bob, &room).await;
    let ids: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=last).collect::<Vec<_>>());
    assert_eq!(
        view(&a.api, &bob, &[&room]).await,
        view(&b.api, &bob, &[&room]).await
    );
}

/// The stream's replicas as the cluster reports them: (leader, [(name, current, lag)]).
async fn replicas(url: &str, stream: &str) -> Option<(String, Vec<(String, bool, u64)>)> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.parse().expect("server url"))
        .collect();
    let client = async_nats::connect(servers).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    let cluster = info.cluster.clone()?;
    let peers = cluster
        .replicas
        .iter()
        .map(|r| (r.name.clone(), r.current, r.lag.unwrap_or(0)))
        .collect();
    Some((cluster.leader?, peers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_loses_the_stream_leader_and_no_acknowledged_send_is_lost() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    let chat = node(&url, 3).await;
    let alice = chat.user("alice").await;
    let bob = chat.user("bob").await;
    let room = chat.create_room(&alice, "r3", &[&bob]).await;

    // Sends with client ids; a send that fails (the cluster is electing) is retried with the
    // same id until acknowledged, as a client would.
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut killed = None;
    for i in 0..90 {
        if i == 30 {
            let (leader, _) = replicas(&url, "CHAT_EVENTS").await.expect("stream info");
            let n: usize = leader.trim_start_matches('n').parse().expect("node name");
            cluster.nodes[n].kill();
            killed = Some(n);
        }
        let id = format!("0190a0c0-0000-7000-8000-{i:012}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (status, body) = send_with_id(&chat, &alice, &room, &format!("m{i}"), &id).await;
            if status.is_success() {
                acked.push((
                    body["message_id"].as_str().unwrap().to_owned(),
                    body["seq"].as_u64().unwrap(),
                ));
                break;
            }
            assert!(
                status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT,
                "{status} {body}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "sends never recovered: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let killed = killed.expect("a node was killed");
    let (leader, _) = replicas(&url, "CHAT_EVENTS").await.expect("stream info");
    assert_ne!(leader, format!("n{killed}"), "a new leader took over");

    // Every acknowledged message is in the room, once, at the seq it was acknowledged with.
    let history = chat.full_history(&bob, &room).await;
    let stored: HashSet<(String, u64)> = history
        .iter()
        .filter(|e| e["type"] == "message_sent")
        .map(|e| {
            (
                e["message_id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged {a:?} is missing");
    }
    assert_eq!(stored.len(), acked.len());

    // The killed node comes back and catches up: every replica current, no lag.
    cluster.nodes[killed].restart();
    let name = format!("n{killed}");
    eventually("the restarted node is a current replica again", || {
        let (url, name) = (url.clone(), name.clone());
        async move {
            match replicas(&url, "CHAT_EVENTS").await {
                Some((leader, peers)) => {
                    (leader == name
                        || peers
                            .iter()
                            .any(|(n, current, lag)| *n == name && *current && *lag == 0))
                        && peers.iter().all(|(_, current, lag)| *current && *lag == 0)
                }
                None => false,
            }
        }
    })
    .await;
    // And sends keep working.
    chat.send(&alice, &room, "after the rejoin").await;
}

/// The last event message of a room, read straight from JetStream.
async fn last_room_message(url: &str, room: &str) -> async_nats::jetstream::message::StreamMessage {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("CHAT_EVENTS").await.expect("stream");
    stream
        .direct_get_last_for_subject(format!("chat.events.room-{room}"))
        .await
        .expect("last message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_id_and_the_callers_trace_context_travel_in_message_headers() {
    let nats = NatsServer::start();
    let chat = node(&nats.url(), 1).await;
    let alice = chat.user("alice").await;
    let room = chat.create_room(&alice, "traced", &[]).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let sent: Value = chat
        .http
        .post(format!("{}/v1/rooms/{room}/messages", chat.base))
        .bearer_auth(&alice.token)
        .header("traceparent", traceparent)
        .json(&json!({"body": "traced"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = last_room_message(&nats.url(), &room).await;
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("traceparent").as_deref(), Some(traceparent));
    assert_eq!(
        header("Nats-Msg-Id"),
        sent["message_id"].as_str().map(str::to_owned)
    );
    assert_eq!(header("Chat-Event-Type").as_deref(), Some("message_sent"));
    assert_eq!(
        header("Chat-Version"),
        sent["seq"].as_u64().map(|s| s.to_string())
    );

    // A malformed trace context is not passed on.
    let status = chat
        .http
        .post(format!("{}/v1/rooms/{room}/messages", chat.base))
        .bearer_auth(&alice.token)
        .header("traceparent", "00-not-a-trace-01")
        .json(&json!({"body": "untraced"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CREATED);
    let message = last_room_message(&nats.url(), &room).await;
    assert!(message.headers.get("traceparent").is_none());
}
