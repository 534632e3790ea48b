//! chatd on the KurrentDB event log (`CHAT_KURRENTDB_URL`), against the local KurrentDB endpoint
//! of `eventlog-testkit` (no KurrentDB server can run here; docs/kurrentdb.md): two nodes share
//! the log, so what one node accepts the other serves.

use eventlog_testkit::kurrentdb_server::KurrentDbServer;
use reqwest::StatusCode;

use crate::helpers::{TestApp, spawn_app_with};
use crate::ws::eventually;

async fn node(url: &str) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |s| {
        s.kurrentdb_url = Some(url);
        s.jwt_secret = Some("a-secret-every-node-shares-0123456789".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_kurrentdb_log() {
    let server = KurrentDbServer::start().await;
    let (a, b) = (node(&server.url()).await, node(&server.url()).await);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let room = a.create_room(&alice, "on kurrentdb", &[&bob]).await;
    a.send(&alice, &room, "hello from node a").await;
    // A retried send (same client id) is stored once, whichever node gets it.
    let again = serde_json::json!({"body": "once", "client_msg_id": "c-1"});
    let path = format!("/v1/rooms/{room}/messages");
    let (status, first) = a.post(&path, &alice.token, again.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let retried = b.post(&path, &alice.token, again).await;
    assert_eq!(
        retried,
        (StatusCode::OK, first),
        "same message id, seq and time"
    );

    eventually("node b serves what node a accepted", || async {
        let (status, page) = b.get(&path, &bob.token).await;
        status == StatusCode::OK
            && page["events"]
                .as_array()
                .is_some_and(|e| e.iter().filter(|e| e["body"].is_string()).count() == 2)
    })
    .await;
    let texts: Vec<String> = b
        .full_history(&bob, &room)
        .await
        .iter()
        .filter_map(|e| e["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts, ["hello from node a", "once"], "{texts:?}");
}

/// A node follows `$all` once: the projector, the hub, the search indexer and the event-id
/// index all read the one subscription of its shared follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_to_all_once() {
    let server = KurrentDbServer::start().await;
    let a = node(&server.url()).await;
    // The second append waits for the event-id index to cover the first one: by then the
    // index is following, through whichever subscription it uses.
    let alice = a.user("alice").await;
    a.create_room(&alice, "one subscription", &[]).await;
    assert_eq!(server.subscriptions(), 1, "node a");
    let b = node(&server.url()).await;
    let bob = b.user("bob").await;
    b.create_room(&bob, "and one more", &[]).await;
    assert_eq!(server.subscriptions(), 2, "nodes a and b");
}
