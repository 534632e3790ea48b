use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn history_pages_backwards_and_forwards_without_gaps() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "paging", &[]).await;
    for i in 0..120 {
        app.send(&alice, &room, &format!("message {i}")).await;
    }
    // Newest 50 by default, oldest first within the page.
    let (status, page) = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (72..=121).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["events"][49]["body"], "message 119");
    assert_eq!(page["events"][49]["type"], "message_sent");
    assert!(page["events"][49]["at"].as_str().unwrap().ends_with('Z'));

    // Backwards with before_seq covers everything exactly once, down to room_created.
    let all = app.full_history(&alice, &room).await;
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=121).collect::<Vec<_>>());
    assert_eq!(all[0]["type"], "room_created");

    // Forwards with after_seq.
    let (_, page) = app
        .get(
            &format!("/v1/rooms/{room}/messages?after_seq=100&limit=15"),
            &alice.token,
        )
        .await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (101..=115).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    let (_, page) = app
        .get(
            &format!("/v1/rooms/{room}/messages?after_seq=115&limit=15"),
            &alice.token,
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 6);
    assert_eq!(page["has_more"], false);
    let (_, page) = app
        .get(
            &format!("/v1/rooms/{room}/messages?after_seq=10&before_seq=13"),
            &alice.token,
        )
        .await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [11, 12]);

    for bad in ["limit=0", "limit=201", "limit=-1", "before_seq=abc"] {
        let got = app
            .get(&format!("/v1/rooms/{room}/messages?{bad}"), &alice.token)
            .await;
        assert_problem(&got, StatusCode::BAD_REQUEST, "invalid_parameter");
    }
}

#[tokio::test]
async fn a_retried_send_is_stored_once_and_answered_the_same() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "retry", &[]).await;
    let path = format!("/v1/rooms/{room}/messages");
    let (status, first) = app
        .post(
            &path,
            &alice.token,
            json!({"body": "once", "client_msg_id": "c-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.send(&alice, &room, "in between").await;
    let (status, retry) = app
        .post(
            &path,
            &alice.token,
            json!({"body": "once", "client_msg_id": "c-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry, first, "same message id, seq and time");

    // Concurrent retries of one key also store one message.
    let sends = (0..8).map(|_| {
        app.post(
            &path,
            &alice.token,
            json!({"body": "burst", "client_msg_id": "c-2"}),
        )
    });
    let results = futures::future::join_all(sends).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1);
    assert!(
        results
            .iter()
            .all(|(_, b)| b["message_id"] == results[0].1["message_id"])
    );

    let all = app.full_history(&alice, &room).await;
    let bodies: Vec<&str> = all.iter().filter_map(|e| e["body"].as_str()).collect();
    assert_eq!(bodies, ["once", "in between", "burst"]);
}

/// `Prefer: return=minimal` answers from the durable append (same body, the preference
/// acknowledged); without it nothing says so. The message is stored either way.
#[tokio::test]
async fn a_send_may_skip_read_your_writes() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "minimal", &[]).await;
    let url = format!("{}/v1/rooms/{room}/messages", app.base);
    let send = |prefer: Option<&'static str>, key: &'static str| {
        let mut req = app
            .http
            .post(&url)
            .bearer_auth(&alice.token)
            .json(&json!({"body": "fire and forget", "client_msg_id": key}));
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let applied = |r: &reqwest::Response| {
        r.headers()
            .get("preference-applied")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let resp = send(Some("respond-async, return=minimal"), "m-1")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(applied(&resp).as_deref(), Some("return=minimal"));
    let minimal: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(minimal["seq"], 2);
    assert!(minimal["message_id"].is_string() && minimal["sent_at"].is_string());

    // A retry is recognised the same way.
    let resp = send(Some("return=minimal"), "m-1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(applied(&resp).as_deref(), Some("return=minimal"));
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), minimal);

    for prefer in [None, Some("return=representation")] {
        let resp = send(prefer, "m-2").await.unwrap();
        assert!(resp.status().is_success());
        assert_eq!(applied(&resp), None, "{prefer:?}");
    }
    let all = app.full_history(&alice, &room).await;
    assert_eq!(all.len(), 3, "{all:?}");
}

#[tokio::test]
async fn message_bodies_are_validated() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "rules", &[]).await;
    let path = format!("/v1/rooms/{room}/messages");
    for body in [
        json!({"body": ""}),
        json!({"body": " \n\t "}),
        json!({"body": "x".repeat(4001)}),
        json!({"body": "a\u{0}b"}),
    ] {
        assert_problem(
            &app.post(&path, &alice.token, body).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        );
    }
    let bad_key = app
        .post(
            &path,
            &alice.token,
            json!({"body": "x", "client_msg_id": ""}),
        )
        .await;
    assert_problem(&bad_key, StatusCode::BAD_REQUEST, "validation_failed");
    // 4,000 Hangul syllables are 12,000 bytes: counted as characters, accepted.
    let (status, _) = app
        .post(&path, &alice.token, json!({"body": "가".repeat(4000)}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, sent) = app
        .post(&path, &alice.token, json!({"body": "  trimmed  "}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, page) = app
        .get(
            &format!("{path}?after_seq={}", sent["seq"].as_u64().unwrap() - 1),
            &alice.token,
        )
        .await;
    assert_eq!(page["events"][0]["body"], "trimmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_unique_gapless_seqs() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "busy", &[&bob]).await;
    let mut tasks = Vec::new();
    for (i, user) in [alice.clone(), bob.clone(), alice.clone(), bob.clone()]
        .into_iter()
        .enumerate()
    {
        let api = app.api.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for j in 0..25 {
                seqs.push(
                    api.send(&user, &room, &format!("{i}-{j}")).await["seq"]
                        .as_u64()
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut seqs = HashSet::new();
    for t in tasks {
        for s in t.await.unwrap() {
            assert!(seqs.insert(s), "seq {s} handed out twice");
        }
    }
    assert_eq!(seqs, (2..=101).collect::<HashSet<u64>>());
    let all = app.full_history(&bob, &room).await;
    assert_eq!(all.len(), 101);
}
