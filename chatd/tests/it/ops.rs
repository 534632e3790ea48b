use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_readiness_and_the_openapi_document() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ready: Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");

    let spec: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/auth/register", "post"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/refresh", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/users/me", "get"),
        ("/v1/users", "get"),
        ("/v1/users/{user_id}", "get"),
        ("/v1/rooms", "post"),
        ("/v1/rooms", "get"),
        ("/v1/rooms/direct", "post"),
        ("/v1/rooms/{room_id}", "get"),
        ("/v1/rooms/{room_id}/members", "post"),
        ("/v1/rooms/{room_id}/members/me", "delete"),
        ("/v1/rooms/{room_id}/messages", "post"),
        ("/v1/rooms/{room_id}/messages", "get"),
        ("/v1/rooms/{room_id}/messages/{message_id}", "patch"),
        ("/v1/rooms/{room_id}/messages/{message_id}", "delete"),
        ("/v1/rooms/{room_id}/read", "post"),
        ("/v1/rooms/{room_id}/join", "post"),
        ("/v1/rooms/public", "get"),
        ("/v1/unread", "get"),
        ("/v1/rooms/{room_id}/messages/{message_id}/readers", "get"),
        ("/v1/rooms/{room_id}/messages/{message_id}/thread", "get"),
        (
            "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
            "put",
        ),
        (
            "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
            "delete",
        ),
        ("/v1/rooms/{room_id}/pins", "get"),
        ("/v1/rooms/{room_id}/pins/{message_id}", "put"),
        ("/v1/rooms/{room_id}/pins/{message_id}", "delete"),
        ("/v1/friends", "get"),
        ("/v1/friends/{user_id}", "delete"),
        ("/v1/friends/requests", "post"),
        ("/v1/friends/requests", "get"),
        ("/v1/friends/requests/{user_id}/accept", "post"),
        ("/v1/friends/requests/{user_id}/decline", "post"),
        ("/v1/friends/requests/{user_id}", "delete"),
        ("/v1/blocks", "get"),
        ("/v1/blocks/{user_id}", "put"),
        ("/v1/blocks/{user_id}", "delete"),
        ("/v1/users/me", "patch"),
        ("/v1/users/me", "delete"),
        ("/v1/users/me/password", "post"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{session_id}", "delete"),
        ("/v1/rooms/{room_id}", "patch"),
        ("/v1/rooms/{room_id}", "delete"),
        ("/v1/rooms/{room_id}/members", "get"),
        ("/v1/rooms/{room_id}/members/{user_id}", "delete"),
        ("/v1/rooms/{room_id}/members/{user_id}/role", "put"),
        ("/v1/rooms/{room_id}/owner", "put"),
        ("/v1/rooms/{room_id}/bans/{user_id}", "put"),
        ("/v1/rooms/{room_id}/bans/{user_id}", "delete"),
        ("/v1/rooms/{room_id}/archive", "put"),
        ("/v1/rooms/{room_id}/archive", "delete"),
        ("/v1/rooms/{room_id}/invitations/me", "delete"),
        ("/v1/invitations", "get"),
        ("/v1/ws", "get"),
        ("/v1/notifications", "get"),
    ] {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from {:?}", paths.keys()))[method];
        assert!(op.is_object(), "{method} {path} missing");
        let problem = &op["responses"]["default"]["content"]["application/problem+json"];
        assert!(
            problem.is_object(),
            "{method} {path} documents no problem response: {op}"
        );
    }
    assert!(spec["components"]["schemas"]["Problem"]["properties"]["code"].is_object());
    assert!(spec["components"]["securitySchemes"]["BearerAuth"].is_object());

    // The live endpoints: a 101 carrying the frame schemas, and an event stream.
    let ws = &paths["/v1/ws"]["get"];
    assert_eq!(
        ws["responses"]["101"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebSocketFrames",
        "{ws}"
    );
    let security: Vec<String> = ws["security"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        security,
        ["BearerAuth", "QueryToken"],
        "header or query token"
    );
    let sse = &paths["/v1/notifications"]["get"]["responses"]["200"]["content"];
    assert!(sse["text/event-stream"].is_object(), "{sse}");
    let schemas = &spec["components"]["schemas"];
    for (union, members) in [
        (
            "ServerFrame",
            &[
                "event",
                "ack",
                "error",
                "pong",
                "unread",
                "typing",
                "presence",
                "receipt",
                "friend",
                "invitation",
            ][..],
        ),
        (
            "ClientFrame",
            &["resume", "send", "read", "typing", "ping", "auth"][..],
        ),
    ] {
        let mapping = schemas[union]["discriminator"]["mapping"]
            .as_object()
            .unwrap_or_else(|| panic!("{union}: {}", schemas[union]));
        let mut got: Vec<&str> = mapping.keys().map(String::as_str).collect();
        let mut want = members.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{union}");
    }
    assert!(schemas["AckFrame"]["properties"]["client_msg_id"].is_object());
    assert!(schemas["MessageNotice"]["properties"]["preview"].is_object());
    assert!(schemas["ReceiptFrame"]["properties"]["previous_seq"].is_object());
    assert!(schemas["UnreadFrame"]["properties"]["mention_count"].is_object());
    assert!(schemas["SendFrame"]["properties"]["reply_to"].is_object());

    let docs = app
        .http
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));

    let base = app.base.clone();
    app.stop().await.expect("graceful stop succeeds");
    assert!(
        crate::helpers::client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn read_models_ahead_of_the_log_are_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::spawn_app_in(dir.path()).await;
    for name in ["alice", "alina", "alfred"] {
        app.register(name).await;
    }
    app.stop().await.unwrap();
    // Replace the log with an empty one (say, a restore of an older backup).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("events.db{suffix}")));
    }
    let app = crate::helpers::spawn_app_in(dir.path()).await;
    let bob = app.user("bob").await;
    let (status, found) = app.get("/v1/users?q=al", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        serde_json::json!([]),
        "users from the old log must not survive"
    );
    // The names are free again in the new log.
    app.register("alice").await;
    app.stop().await.unwrap();
}

/// The read side's threads yield to the live path, by their settings: the read models'
/// writer and checkpointer run nicer by `CHAT_PROJECTOR_NICE`; the search indexer's threads
/// (Tantivy's merge threads included) run under `SCHED_IDLE` by default, or nicer by
/// `CHAT_SEARCH_NICE` with `CHAT_SEARCH_IDLE=false`; the async workers (sockets, room actors,
/// fan-out) keep the process's priority and policy.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_read_side_yields_to_the_live_path() {
    let own = priority::current_thread_nice().unwrap();
    if own + 5 > 19 {
        test_support::skip!("the tests already run at nice {own}; nothing lower to see");
        return;
    }
    for idle in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = vec![("CHAT_PROJECTOR_NICE", "3"), ("CHAT_SEARCH_NICE", "5")];
        if !idle {
            settings.push(("CHAT_SEARCH_IDLE", "false"));
        }
        let server = crate::helpers::ChatdProcess::start_with(dir.path(), &settings).await;
        let nice_of = |prefix| priority::nice_of_threads(server.pid(), prefix);
        let policy_of = |prefix| priority::policy_of_threads(server.pid(), prefix);
        // The models are opened before the server listens; the indexer's threads start beside.
        assert_eq!(nice_of("models-writer"), [own + 3]);
        assert_eq!(nice_of("models-checkpoi"), [own + 3]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while policy_of("merge_thread").is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let search: Vec<u32> = ["search-indexer", "merge_thread"]
            .into_iter()
            .flat_map(policy_of)
            .collect();
        assert!(search.len() >= 2, "search threads: {search:?}");
        if idle {
            assert!(
                search.iter().all(|p| *p == priority::SCHED_IDLE),
                "search threads' policies: {search:?}"
            );
        } else {
            assert!(search.iter().all(|p| *p == 0), "policies: {search:?}");
            assert_eq!(nice_of("search-indexer"), [own + 5]);
            assert!(nice_of("merge_thread").iter().all(|n| *n == own + 5));
        }
        let workers = nice_of("tokio-rt-worker");
        assert!(!workers.is_empty(), "no runtime worker threads");
        assert!(workers.iter().all(|n| *n == own), "workers: {workers:?}");
        let policies = policy_of("tokio-rt-worker");
        assert!(policies.iter().all(|p| *p == 0), "workers: {policies:?}");
    }
}
