//! `GET /v1/search` on the real server: member-only results (also after leaving), edits and
//! deletes reflected, cursor pagination, 400s with stable codes and never a 500 on odd
//! input; and the real binary killed mid-indexing gives the same results as a rebuild.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, ChatdProcess, TestUser, assert_problem, spawn_app};

const DEADLINE: Duration = Duration::from_secs(30);

/// `q` and other parameters, URL-encoded.
fn path(params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("/v1/search?{}", query.join("&"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn search(api: &Api, user: &TestUser, params: &[(&str, &str)]) -> Value {
    let (status, body) = api.get(&path(params), &user.token).await;
    assert_eq!(status, StatusCode::OK, "{params:?}: {body}");
    body
}

fn message_ids(page: &Value) -> Vec<String> {
    page["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `condition` until it holds, failing after the deadline.
async fn eventually<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the search index reflects everything in the log (per `/readyz`).
async fn indexed(api: &Api) {
    eventually("the search index catches up with the log", || async {
        let (status, ready) = api.call(Method::GET, "/readyz", None, None).await;
        status == StatusCode::OK && ready["indexed"].as_u64() >= ready["log_head"].as_u64()
    })
    .await;
}

#[tokio::test]
async fn korean_text_is_found_inside_words_by_members_only() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let room = app.create_room(&alice, "팀", &[&bob]).await;
    let other = app.create_room(&carol, "carol's", &[]).await;
    let sent = app.send(&alice, &room, "내일 채팅방에서 만나요 <3").await;
    app.send(&alice, &room, "서울에서 만나요 그리고 에서").await;
    app.send(&carol, &other, "carol의 채팅방").await;
    indexed(&app).await;

    let page = search(&app, &bob, &[("q", "채팅")]).await;
    assert_eq!(page["total"], 1, "{page}");
    let hit = &page["hits"][0];
    assert_eq!(hit["room_id"], room.as_str());
    assert_eq!(hit["message_id"], sent["message_id"]);
    assert_eq!(hit["seq"], sent["seq"]);
    assert_eq!(hit["sender_id"], alice.id.as_str());
    assert_eq!(hit["sent_at"], sent["sent_at"]);
    assert_eq!(hit["snippet"], "내일 <mark>채팅</mark>방에서 만나요 &lt;3");
    assert!(hit["score"].as_f64().unwrap() > 0.0);
    assert!(page["next_cursor"].is_null());

    // Syllables that are not adjacent do not make a phrase.
    assert_eq!(search(&app, &bob, &[("q", "에서울")]).await["total"], 0);

    // Carol sees only her own room's message, however she asks.
    let theirs = search(&app, &carol, &[("q", "채팅방")]).await;
    assert_eq!(theirs["total"], 1);
    assert_eq!(theirs["hits"][0]["room_id"], other.as_str());
    let got = app
        .get(&path(&[("q", "채팅"), ("room_id", &room)]), &carol.token)
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "room_not_found");
    let got = app
        .get(
            &path(&[
                ("q", "채팅"),
                ("room_id", &uuid::Uuid::now_v7().to_string()),
            ]),
            &carol.token,
        )
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "room_not_found");
    let by_room = search(&app, &bob, &[("q", "만나요"), ("room_id", &room)]).await;
    assert_eq!(by_room["total"], 2);
    let by_sender = search(&app, &bob, &[("q", "만나요"), ("sender_id", &bob.id)]).await;
    assert_eq!(by_sender["total"], 0);

    let got = app
        .call(Method::GET, &path(&[("q", "채팅")]), None, None)
        .await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn leaving_a_room_takes_its_messages_out_of_your_results() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "secrets", &[&bob]).await;
    app.send(&alice, &room, "the launch code is tangerine")
        .await;
    indexed(&app).await;
    assert_eq!(search(&app, &bob, &[("q", "tangerine")]).await["total"], 1);

    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/members/me"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // At once: membership is read when searching, not when indexing.
    let after = search(&app, &bob, &[("q", "tangerine")]).await;
    assert_eq!(after["total"], 0);
    assert_eq!(after["hits"], json!([]));
    // Nor what is sent after leaving.
    app.send(&alice, &room, "new tangerine plans").await;
    indexed(&app).await;
    assert_eq!(search(&app, &bob, &[("q", "tangerine")]).await["total"], 0);
    assert_eq!(
        search(&app, &alice, &[("q", "tangerine")]).await["total"],
        2
    );
    let got = app
        .get(&path(&[("q", "tangerine"), ("room_id", &room)]), &bob.token)
        .await;
    assert_problem(&got, StatusCode::NOT_FOUND, "room_not_found");
}

#[tokio::test]
async fn edits_and_deletes_are_reflected() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "edits", &[]).await;
    let sent = app.send(&alice, &room, "오늘 점심은 김치찌개").await;
    let id = sent["message_id"].as_str().unwrap().to_owned();
    indexed(&app).await;
    assert_eq!(search(&app, &alice, &[("q", "김치")]).await["total"], 1);

    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}/messages/{id}"),
            Some(&alice.token),
            Some(json!({"body": "오늘 점심은 된장찌개"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    indexed(&app).await;
    assert_eq!(search(&app, &alice, &[("q", "김치")]).await["total"], 0);
    let page = search(&app, &alice, &[("q", "된장")]).await;
    assert_eq!(message_ids(&page), std::slice::from_ref(&id));
    assert_eq!(page["hits"][0]["seq"], sent["seq"]);
    assert_eq!(page["hits"][0]["sent_at"], sent["sent_at"]);

    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    indexed(&app).await;
    assert_eq!(search(&app, &alice, &[("q", "된장")]).await["total"], 0);
    assert_eq!(search(&app, &alice, &[("q", "점심")]).await["total"], 0);
}

/// Every page of `q`, following `next_cursor`.
async fn all_pages(api: &Api, user: &TestUser, q: &str, sort: &str, limit: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![("q", q), ("sort", sort), ("limit", limit)];
        if let Some(c) = &cursor {
            params.push(("cursor", c));
        }
        let page = search(api, user, &params).await;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
}

#[tokio::test]
async fn pages_are_full_and_neither_repeat_nor_skip() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let rooms = [
        app.create_room(&alice, "one", &[]).await,
        app.create_room(&alice, "two", &[]).await,
    ];
    let mut sent = HashSet::new();
    for i in 0..45 {
        let body = format!("page test {i} {}", "word ".repeat(i % 5));
        let m = app.send(&alice, &rooms[i % 2], &body).await;
        sent.insert(m["message_id"].as_str().unwrap().to_owned());
    }
    indexed(&app).await;
    for sort in ["recent", "relevance"] {
        let pages = all_pages(&app, &alice, "page", sort, "10").await;
        let sizes: Vec<usize> = pages.iter().map(|p| message_ids(p).len()).collect();
        assert_eq!(sizes, [10, 10, 10, 10, 5], "{sort}");
        assert!(pages.iter().all(|p| p["total"] == 45));
        let ids: Vec<String> = pages.iter().flat_map(message_ids).collect();
        let unique: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(unique.len(), 45, "{sort}: no repeats");
        assert_eq!(unique, sent, "{sort}: no gaps");
    }
    // Recent is newest first.
    let pages = all_pages(&app, &alice, "page", "recent", "10").await;
    let times: Vec<String> = pages
        .iter()
        .flat_map(|p| p["hits"].as_array().unwrap().clone())
        .map(|h| h["sent_at"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
}

#[tokio::test]
async fn bad_parameters_get_400_with_stable_codes() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "r", &[]).await;
    for i in 0..3 {
        app.send(&alice, &room, &format!("cursor {i}")).await;
    }
    indexed(&app).await;
    let page = search(&app, &alice, &[("q", "cursor"), ("limit", "1")]).await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let long = "가".repeat(257);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "invalid_query"),
        (vec![("q", "")], "invalid_query"),
        (vec![("q", "   ")], "invalid_query"),
        (vec![("q", &long)], "invalid_query"),
        (vec![("q", "?!.,")], "invalid_query"),
        (vec![("q", "-spam")], "invalid_query"),
        (vec![("q", "x"), ("limit", "0")], "invalid_parameter"),
        (vec![("q", "x"), ("limit", "101")], "invalid_parameter"),
        (vec![("q", "x"), ("limit", "ten")], "invalid_parameter"),
        (vec![("q", "x"), ("sort", "oldest")], "invalid_parameter"),
        (
            vec![("q", "x"), ("room_id", "not-a-uuid")],
            "invalid_parameter",
        ),
        (vec![("q", "x"), ("sender_id", "42")], "invalid_parameter"),
        (vec![("q", "x"), ("from", "yesterday")], "invalid_parameter"),
        (
            vec![
                ("q", "x"),
                ("from", "2026-01-02T00:00:00Z"),
                ("to", "2026-01-01T00:00:00Z"),
            ],
            "invalid_parameter",
        ),
        (vec![("q", "x"), ("cursor", "garbage!")], "invalid_cursor"),
        (vec![("q", "x"), ("cursor", "")], "invalid_cursor"),
        // A real cursor, but of another query or sort.
        (vec![("q", "other"), ("cursor", &cursor)], "invalid_cursor"),
        (
            vec![("q", "cursor"), ("sort", "relevance"), ("cursor", &cursor)],
            "invalid_cursor",
        ),
    ];
    for (params, code) in cases {
        let got = app.get(&path(&params), &alice.token).await;
        assert_problem(&got, StatusCode::BAD_REQUEST, code);
    }
    // The cursor itself works.
    let next = search(
        &app,
        &alice,
        &[("q", "cursor"), ("limit", "1"), ("cursor", &cursor)],
    )
    .await;
    assert_eq!(message_ids(&next).len(), 1);
    assert_ne!(message_ids(&next), message_ids(&page));
}

#[tokio::test]
async fn odd_query_syntax_never_fails_the_server() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.create_room(&alice, "odd", &[]).await;
    app.send(
        &alice,
        &room,
        "AND OR NOT title:foo (a) \"q\" c++ 🎉 \\n 채팅*",
    )
    .await;
    indexed(&app).await;
    let long_word = "a".repeat(256);
    let nasty = [
        "\"",
        "\"\"",
        "\"\"\"",
        "(",
        ")",
        "()",
        "AND",
        "OR",
        "NOT",
        "*",
        "?",
        ":",
        "\\",
        "\\\\",
        "title:foo",
        "a AND",
        "AND b",
        "+",
        "-",
        "--",
        "-\"\"",
        "\"unterminated",
        "a:b:c",
        "[1 TO 5]",
        "{*}",
        "~",
        "foo~2",
        "foo^3",
        "/regex/",
        "'",
        "`",
        "%",
        "%00",
        "\u{0}",
        "\u{FEFF}",
        "\u{200D}",
        "🎉",
        "👍🏽",
        "🇰🇷",
        "채팅*",
        "c++",
        "\\n",
        "<script>",
        "&amp;",
        "ＡＮＤ",
        "ﾁｬｯﾄ",
        "\u{1100}\u{1161}",
        &long_word,
    ];
    for q in nasty {
        let (status, body) = app.get(&path(&[("q", q)]), &alice.token).await;
        assert!(
            status == StatusCode::OK
                || (status == StatusCode::BAD_REQUEST && body["code"] == "invalid_query"),
            "{q:?}: {status} {body}"
        );
    }
    // Some of them are real searches of that text.
    for q in ["AND", "title:foo", "\"q\"", "c++", "🎉", "채팅*", "(a)"] {
        assert_eq!(search(&app, &alice, &[("q", q)]).await["total"], 1, "{q}");
    }
    // Not UTF-8 at all.
    let (status, body) = app.get("/v1/search?q=%FF%FE", &alice.token).await;
    assert!(status.is_client_error(), "{status} {body}");
}

/// Everything a query returns, page by page, for comparing two servers.
async fn results(api: &Api, user: &TestUser, queries: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for q in queries {
        let pages = all_pages(api, user, q, "recent", "100").await;
        let hits: Vec<Value> = pages
            .iter()
            .flat_map(|p| p["hits"].as_array().unwrap().clone())
            .map(|mut h| {
                // Scores depend on index statistics, which count deleted documents until
                // segments merge: not part of the comparison.
                h.as_object_mut().unwrap().remove("score");
                h
            })
            .collect();
        out.insert(
            (*q).to_owned(),
            json!({"total": pages[0]["total"], "hits": hits}),
        );
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_while_indexing_then_restarted_equals_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let rooms = [
        api.create_room(&alice, "한국어", &[&bob]).await,
        api.create_room(&alice, "english", &[&bob]).await,
    ];
    // Some history with edits and deletes, indexed and committed.
    let mut early = Vec::new();
    for i in 0..20 {
        let m = api
            .send(&alice, &rooms[i % 2], &format!("초기 메시지 early {i}"))
            .await;
        early.push(m["message_id"].as_str().unwrap().to_owned());
    }
    for (i, id) in early.iter().enumerate().take(6) {
        let room = &rooms[i % 2];
        let (method, body) = if i % 2 == 0 {
            (
                Method::PATCH,
                Some(json!({"body": format!("수정된 메시지 edited {i}")})),
            )
        } else {
            (Method::DELETE, None)
        };
        let (status, _) = api
            .call(
                method,
                &format!("/v1/rooms/{room}/messages/{id}"),
                Some(&alice.token),
                body,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    indexed(&api).await;

    // A burst from several clients; kill -9 in the middle of it.
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for worker in 0..6 {
        let (api, acked, rooms) = (api.clone(), acked.clone(), rooms.clone());
        let user = if worker % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        senders.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let body = format!("버스트 채팅방에서 burst w{worker} n{i}");
                let sent = api
                    .http
                    .post(format!("{}/v1/rooms/{}/messages", api.base, rooms[i % 2]))
                    .bearer_auth(&user.token)
                    .json(&json!({"body": body}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    eventually("300 sends acknowledged", || {
        let acked = acked.clone();
        async move { acked.load(Ordering::SeqCst) >= 300 }
    })
    .await;
    server.kill9();
    server.wait().await;
    for s in senders {
        s.await.unwrap();
    }

    // Restart: the index resumes from its last commit.
    let queries = ["burst", "채팅", "초기", "edited", "수정된", "메시지", "w3"];
    let mut server = ChatdProcess::start(dir.path()).await;
    indexed(&server.api).await;
    let resumed = results(&server.api, &bob, &queries).await;
    // Every stored message once: as many hits as acknowledged sends at least, no duplicates.
    let burst = &resumed["burst"];
    let n = burst["total"].as_u64().unwrap() as usize;
    assert!(n >= acked.load(Ordering::SeqCst), "{n} hits");
    assert_eq!(burst["hits"].as_array().unwrap().len(), n);
    let unique: HashSet<&str> = burst["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), n, "no message indexed twice");
    let history: usize = {
        let mut count = 0;
        for room in &rooms {
            count += server
                .api
                .full_history(&alice, room)
                .await
                .iter()
                .filter(|e| {
                    e["type"] == "message_sent"
                        && e["body"].as_str().is_some_and(|b| b.contains("burst"))
                })
                .count();
        }
        count
    };
    assert_eq!(n, history, "every stored burst message is searchable");
    server.terminate();
    assert!(server.wait().await.success());

    // Delete the index: rebuilt from the log on start.
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    indexed(&server.api).await;
    let rebuilt = results(&server.api, &bob, &queries).await;
    assert_eq!(
        resumed, rebuilt,
        "after the crash the index equals a rebuild"
    );
    server.terminate();
    assert!(server.wait().await.success());
}
