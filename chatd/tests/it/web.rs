//! The web client: how it is served (over plain HTTP), and how it behaves in a real browser.
//!
//! The browser test drives Debian's Chromium through chromedriver (WebDriver, via fantoccini)
//! against the real `chatd` binary: two users chat in real time, unread counts move in the
//! other's list, the server is killed and restarted without the client losing or repeating a
//! message, and search finds a Korean message and jumps to it. Replies (quoted, counted, a
//! thread answered in its dialog) and reactions are made through the page and seen by the
//! other user; dark mode is emulated (CDP `Emulation.setEmulatedMedia`) and its colours and
//! contrast checked; notifications are granted (CDP `Browser.grantPermissions`) and one must
//! be shown while Alice's tab is hidden behind another tab. It is recorded as skipped
//! (`test_support::skip!`: on the real stderr, and in `scripts/test`'s summary) when Chromium
//! or chromedriver is not installed; `scripts/test` installs them. On failure, screenshots of both browsers are saved
//! under `target/tmp/web-client/` and their paths printed.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use anyhow::{Context, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Api, ChatdProcess, PASSWORD, TestUser, client, spawn_app};

// ---------------------------------------------------------------- served files (no browser)

#[tokio::test]
async fn the_client_is_served_with_strict_headers_and_cache_validators() {
    let app = spawn_app().await;
    let http = client();
    let page = http.get(format!("{}/", app.api.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline code"
    );

    // Revalidation: the same ETag answers 304 with no body.
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(format!("{}/", app.api.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], etag.as_str());

    // Assets: versioned URLs, immutable; the right content types.
    let main = html
        .split('"')
        .find(|s| s.starts_with("/app/") && s.ends_with("/main.js"))
        .expect("the page loads main.js")
        .to_owned();
    let version = main.split('/').nth(2).unwrap().to_owned();
    for (file, ty) in [
        ("main.js", "text/javascript; charset=utf-8"),
        ("live.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let resp = http
            .get(format!("{}/app/{version}/{file}", app.api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        assert_eq!(resp.headers()["content-type"], ty, "{file}");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{file}"
        );
        assert!(resp.headers().contains_key("content-security-policy"));
    }
    // A page of another build gets today's file, but not as immutable.
    let stale = http
        .get(format!("{}/app/0123456789ab/main.js", app.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    // Unknown files are a problem+json 404, like any unknown route.
    let (status, body) = app
        .api
        .call(
            reqwest::Method::GET,
            &format!("/app/{version}/x.js"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "route_not_found");
    // The API documentation stays where it was.
    let docs = http
        .get(format!("{}/docs", app.api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
}

// ---------------------------------------------------------------- in Chromium

/// Access tokens live 10 s (the least allowed), so the clients refresh them every 7.5 s.
const SETTINGS: &[(&str, &str)] = &[("CHAT_ACCESS_TOKEN_TTL", "10")];

/// Deadline for every condition the browser test waits for.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_chromium_through_a_restart_and_search_in_korean() {
    let Some(tools) = Tools::find() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut driver = Driver::start(&tools).await;
    let mut chatd = ChatdProcess::start_with(dir.path(), SETTINGS).await;
    let base = chatd.api.base.clone();
    let alice_browser = driver.session(&tools, "alice").await;
    let bob_browser = driver.session(&tools, "bob").await;
    let browsers = [
        ("alice", alice_browser.clone()),
        ("bob", bob_browser.clone()),
    ];

    // Run the scenario in its own task so that a panic inside it still leaves the browsers
    // here to be photographed.
    let scenario = tokio::spawn({
        let (a, b) = (alice_browser.clone(), bob_browser.clone());
        let data_dir = dir.path().to_owned();
        let api = chatd.api.clone();
        let driver_url = driver.url.clone();
        async move {
            scenario(a, b, api, &mut chatd, &data_dir, &driver_url)
                .await
                .map(|()| chatd)
        }
    });
    let outcome = match scenario.await {
        Ok(Ok(chatd)) => Ok(chatd),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(join) => Err(format!("the scenario panicked: {join}")),
    };
    if outcome.is_err() {
        for (who, b) in &browsers {
            if let Ok(path) = save_screenshot(b, &format!("failure-{who}.png")).await {
                eprintln!("screenshot of {who}'s browser: {}", path.display());
                let _ = writeln!(std::io::stderr(), "screenshot: {}", path.display());
            }
        }
    }
    for (_, b) in browsers {
        let _ = b.close().await;
    }
    if let Err(e) = outcome {
        panic!("web client scenario failed (server at {base}): {e}");
    }
}

async fn scenario(
    alice: Client,
    bob: Client,
    api: Api,
    chatd: &mut ChatdProcess,
    data_dir: &Path,
    driver: &str,
) -> anyhow::Result<()> {
    let base = api.base.clone();
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;

    // ---- Alice registers through the page; Bob exists already and logs in.
    let bob_user = api.user("bob").await;
    alice.goto(&format!("{base}/")).await?;
    click(&alice, "input[name=mode][value=register]").await?;
    type_into(&alice, "#auth-username", "alice").await?;
    type_into(&alice, "#auth-password", PASSWORD).await?;
    type_into(&alice, "#auth-display", "Alice").await?;
    click(&alice, "#auth-submit").await?;
    wait_js(&alice, "connected", CONNECTED).await?;
    let alice_refresh = js(&alice, REFRESH_TOKEN).await?;
    let alice_user = login_as(&api, "alice").await;

    let lobby = api.create_room(&alice_user, "lobby", &[&bob_user]).await;
    let random = api.create_room(&alice_user, "random", &[&bob_user]).await;

    bob.goto(&format!("{base}/")).await?;
    type_into(&bob, "#auth-username", "bob").await?;
    type_into(&bob, "#auth-password", PASSWORD).await?;
    click(&bob, "#auth-submit").await?;
    wait_js(&bob, "connected", CONNECTED).await?;
    let bob_refresh = js(&bob, REFRESH_TOKEN).await?;

    // Both lists show both rooms (Alice's rooms appeared live, after she had loaded the page).
    for b in [&alice, &bob] {
        for room in [&lobby, &random] {
            wait_js(b, "the room in the list", &format!("!!{}", room_item(room))).await?;
        }
    }

    // ---- The dialogs: a public room Bob joins, a private one Alice invites him to, and a
    // direct conversation Bob starts.
    click(&alice, "#new-group").await?;
    type_into(&alice, "#f-name", "open house").await?;
    js(
        &alice,
        "document.getElementById('f-visibility').value = 'public'",
    )
    .await?;
    click(&alice, "#dialog-ok").await?;
    wait_js(&alice, "the new room open", &room_title_is("open house")).await?;
    click(&bob, "#browse").await?;
    wait_js(
        &bob,
        "the public room listed",
        "!!document.querySelector('#dialog .public li button')",
    )
    .await?;
    click(&bob, "#dialog .public li button").await?;
    wait_js(&bob, "the joined room open", &room_title_is("open house")).await?;
    wait_js(&alice, "Bob's arrival", &timeline_sys_has("bob joined")).await?;

    click(&alice, "#new-group").await?;
    type_into(&alice, "#f-name", "plans").await?;
    click(&alice, "#dialog-ok").await?;
    wait_js(&alice, "the private room open", &room_title_is("plans")).await?;
    click(&alice, "#invite").await?;
    type_into(&alice, "#f-invitees", "Bob").await?;
    click(&alice, "#dialog-ok").await?;
    wait_js(&alice, "the invitation", &timeline_sys_has("You added bob")).await?;
    wait_js(
        &bob,
        "the room he was invited to, in his list",
        "[...document.querySelectorAll('#rooms .room-name')].some(n => n.textContent === 'plans')",
    )
    .await?;

    click(&bob, "#new-direct").await?;
    type_into(&bob, "#f-who", "alice").await?;
    click(&bob, "#dialog-ok").await?;
    wait_js(&bob, "the direct room open", &room_title_is("Alice")).await?;
    wait_js(
        &alice,
        "the direct room, named after Bob, with his presence",
        "[...document.querySelectorAll('#rooms .room-item')].some(b => b.querySelector('.room-name').textContent === 'bob' && b.querySelector('.dot')?.dataset.online === 'true')",
    )
    .await?;

    // ---- Real time: Alice writes in the lobby while Bob looks at another room.
    open_room(&bob, &random).await?;
    open_room(&alice, &lobby).await?;
    send_message(&alice, "hello bob").await?;
    wait_js(&bob, "unread 1 in the lobby", &unread_is(&lobby, 1)).await?;
    wait_js(
        &bob,
        "the lobby's preview",
        &format!(
            "{}.querySelector('.preview').textContent.includes('hello bob')",
            room_item(&lobby)
        ),
    )
    .await?;
    send_message(&alice, "are you there?").await?;
    wait_js(&bob, "unread 2 in the lobby", &unread_is(&lobby, 2)).await?;
    ensure!(
        js(&bob, "document.title").await? == json!("(2) chatd"),
        "the title counts unread messages"
    );
    // Read counts per message: Alice sees her messages unread by Bob ("1")…
    wait_js(
        &alice,
        "her message shown unread by one",
        &message_reads_are("are you there?", "1"),
    )
    .await?;

    // Opening the room shows the messages and reads them; Alice sees Bob online and typing.
    open_room(&bob, &lobby).await?;
    wait_js(&bob, "Alice's messages", &timeline_has("are you there?")).await?;
    wait_js(&bob, "the lobby read", &unread_is(&lobby, 0)).await?;
    // Access tokens live 10 s: the test's own are renewed before use.
    let bob_user = login_as(&api, "bob").await;
    server_unread_is_zero(&api, &bob_user).await?;
    // …until his read receipt arrives, live.
    wait_js(
        &alice,
        "her messages read by Bob",
        &message_reads_are("are you there?", ""),
    )
    .await?;
    ensure!(
        js(&alice, &message_reads_js("hello bob")).await? == json!(""),
        "the earlier message read too"
    );
    // A reaction shows on both sides, counted.
    let first = api
        .full_history(&bob_user, &lobby)
        .await
        .into_iter()
        .find(|e| e["body"] == "are you there?")
        .expect("the message");
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!(
                "/v1/rooms/{lobby}/messages/{}/reactions/%F0%9F%91%8D",
                first["message_id"].as_str().unwrap()
            ),
            Some(&bob_user.token),
            None,
        )
        .await;
    ensure!(status == StatusCode::NO_CONTENT, "reaction stored");
    wait_js(
        &alice,
        "Bob's reaction on her message",
        &format!(
            "{}?.querySelector('.reactions').textContent === '👍 1'",
            message_js("are you there?")
        ),
    )
    .await?;

    // ---- Replies: Bob answers Alice's question with the message's Reply action; Alice sees
    // the quoted question above it (a link back to it), and a reply count on the question.
    let (question_seq, question_id) = (
        first["seq"].as_u64().context("seq")?,
        first["message_id"].as_str().context("id")?.to_owned(),
    );
    js(
        &bob,
        &format!(
            "[...{}.querySelectorAll('.tools button')].find(b => b.textContent.startsWith('Reply')).click()",
            message_js("are you there?")
        ),
    )
    .await?;
    wait_js(
        &bob,
        "the composer replying",
        "!document.getElementById('replying').hidden && document.getElementById('replying-text').textContent.includes('are you there?') && document.activeElement.id === 'compose'",
    )
    .await?;
    type_into(&bob, "#compose", "yes, here\u{E007}").await?;
    wait_js(&bob, "the reply confirmed", &timeline_has("yes, here")).await?;
    ensure!(
        js(&bob, "document.getElementById('replying').hidden").await? == json!(true),
        "the reply bar closes after sending"
    );
    let reply_quote = |text: &str| {
        format!(
            "{}?.querySelector('.quote[data-parent=\"{question_id}\"]')?.textContent.includes({})",
            message_js(text),
            json!("are you there?")
        )
    };
    wait_js(
        &alice,
        "Bob's reply, quoting her question",
        &reply_quote("yes, here"),
    )
    .await?;
    wait_js(
        &alice,
        "one reply counted on the question",
        &format!(
            "{}.querySelector('.replies').textContent === '1 reply'",
            message_js("are you there?")
        ),
    )
    .await?;
    js(
        &alice,
        &format!(
            "{}.querySelector('.quote').click()",
            message_js("yes, here")
        ),
    )
    .await?;
    wait_js(
        &alice,
        "the quote jumps to the question",
        &format!("document.activeElement?.dataset.seq === '{question_seq}'"),
    )
    .await?;
    // The thread: Alice opens it from the count, sees question and reply, and answers in it.
    js(
        &alice,
        &format!(
            "{}.querySelector('.replies').click()",
            message_js("are you there?")
        ),
    )
    .await?;
    wait_js(
        &alice,
        "the thread with its root and reply",
        "document.getElementById('thread').open && [...document.querySelectorAll('#thread-list .body')].map(b => b.textContent).join('|') === 'are you there?|yes, here'",
    )
    .await?;
    type_into(&alice, "#thread-compose", "good to hear\u{E007}").await?;
    wait_js(
        &alice,
        "her thread reply in the thread",
        "[...document.querySelectorAll('#thread-list .body')].map(b => b.textContent).join('|') === 'are you there?|yes, here|good to hear'",
    )
    .await?;
    click(&alice, "#thread-close").await?;
    wait_js(
        &bob,
        "Alice's thread reply, quoting the question",
        &reply_quote("good to hear"),
    )
    .await?;
    wait_js(
        &bob,
        "two replies counted",
        &format!(
            "{}.querySelector('.replies').textContent === '2 replies'",
            message_js("are you there?")
        ),
    )
    .await?;
    // A reaction from the picker; its chip takes it back.
    js(
        &alice,
        &format!(
            "{}.querySelector('.react').click()",
            message_js("yes, here")
        ),
    )
    .await?;
    click(
        &alice,
        "#messages .picker button[aria-label='React with 🎉']",
    )
    .await?;
    let party = format!(
        "{}?.querySelector('.reactions').textContent",
        message_js("yes, here")
    );
    wait_js(
        &bob,
        "Alice's 🎉 on his reply",
        &format!("{party} === '🎉 1'"),
    )
    .await?;
    wait_js(
        &alice,
        "her reaction marked as hers",
        &format!(
            "{}.querySelector('.reaction').getAttribute('aria-pressed') === 'true'",
            message_js("yes, here")
        ),
    )
    .await?;
    js(
        &alice,
        &format!(
            "{}.querySelector('.reaction').click()",
            message_js("yes, here")
        ),
    )
    .await?;
    wait_js(&bob, "the reaction taken back", &format!("{party} === ''")).await?;
    wait_js(
        &alice,
        "Bob shown online",
        &format!(
            "document.querySelector('#room-sub .dot[data-uid=\"{}\"]')?.dataset.online === 'true'",
            bob_user.id
        ),
    )
    .await?;
    type_into(&bob, "#compose", "hi alice").await?;
    wait_js(
        &alice,
        "Bob typing",
        "document.getElementById('typing').textContent.includes('is typing')",
    )
    .await?;
    bob.find(Locator::Css("#compose"))
        .await?
        .send_keys("\u{E007}")
        .await?;
    wait_js(&alice, "Bob's reply", &timeline_has("hi alice")).await?;
    wait_js(
        &alice,
        "typing cleared by the message",
        "document.getElementById('typing').textContent === ''",
    )
    .await?;
    // Alice is looking at the lobby, so Bob's reply is read at once.
    wait_js(&alice, "Bob's reply read", &unread_is(&lobby, 0)).await?;

    // Alice edits her first message; Bob sees the new text, marked edited.
    js(
        &alice,
        "[...document.querySelectorAll('#messages .msg.mine')].find(m => m.querySelector('.body').textContent === 'hello bob').querySelector('.tools button:nth-of-type(3)').click()",
    )
    .await?;
    let editor = alice.find(Locator::Css("#messages .edit textarea")).await?;
    editor.clear().await?;
    editor.send_keys("hello, bob\u{E007}").await?;
    wait_js(
        &bob,
        "the edit",
        "[...document.querySelectorAll('#messages .msg')].some(m => m.querySelector('.body').textContent === 'hello, bob' && !m.querySelector('.edited').hidden)",
    )
    .await?;

    // ---- Restart: kill the server under both browsers. Bob writes while it is down; Alice
    // writes (over REST) while a second server on another port serves the same data, so that
    // Bob cannot have received it before his own reconnect.
    chatd.kill9();
    chatd.wait().await;
    wait_js(
        &bob,
        "Bob offline",
        "document.getElementById('conn').dataset.state !== 'online'",
    )
    .await?;
    type_into(&bob, "#compose", "written while offline\u{E007}").await?;
    wait_js(
        &bob,
        "queued",
        "document.querySelector('#outbox .pending')?.dataset.status === 'queued'",
    )
    .await?;
    {
        let mut elsewhere = ChatdProcess::start(data_dir).await;
        ensure!(elsewhere.api.base != base, "another port");
        let alice_token = login_as(&elsewhere.api, "alice").await;
        for text in ["missed one", "missed two"] {
            elsewhere.api.send(&alice_token, &lobby, text).await;
        }
        elsewhere.terminate();
        elsewhere.wait().await;
    }
    *chatd = ChatdProcess::start_on(data_dir, &addr.to_string(), SETTINGS).await;
    for b in [&bob, &alice] {
        wait_js(b, "reconnected", CONNECTED).await?;
    }
    for text in ["missed one", "missed two", "written while offline"] {
        wait_js(&bob, text, &timeline_has(text)).await?;
        wait_js(&alice, text, &timeline_has(text)).await?;
    }
    wait_js(
        &bob,
        "the outbox emptied",
        "document.querySelectorAll('#outbox li').length === 0",
    )
    .await?;
    // Alice reads Bob's message as it arrives, and the server agrees.
    wait_js(
        &alice,
        "the lobby read after the restart",
        &unread_is(&lobby, 0),
    )
    .await?;
    let (alice_user, bob_user) = (
        login_as(&chatd.api, "alice").await,
        login_as(&chatd.api, "bob").await,
    );
    server_unread_is_zero(&chatd.api, &alice_user).await?;
    // Nothing lost, nothing twice: the timeline holds exactly the server's events.
    let history: Vec<Value> = chatd.api.full_history(&bob_user, &lobby).await;
    let server_seqs: Vec<u64> = history.iter().filter_map(|e| e["seq"].as_u64()).collect();
    for b in [&alice, &bob] {
        let shown = js(
            b,
            "[...document.querySelectorAll('#messages [data-seq]')].map(e => Number(e.dataset.seq))",
        )
        .await?;
        let shown: Vec<u64> = serde_json::from_value(shown)?;
        let visible_events: Vec<u64> = history
            .iter()
            .filter(|e| {
                !matches!(
                    e["type"].as_str(),
                    Some(
                        "message_edited"
                            | "message_deleted"
                            | "reaction_added"
                            | "reaction_removed"
                            | "message_pinned"
                            | "message_unpinned"
                    )
                )
            })
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        ensure!(
            shown == visible_events,
            "timeline {shown:?} != server's {visible_events:?} (all seqs {server_seqs:?})"
        );
    }

    // Korean through the composer; the picture for the README, with Bob typing.
    send_message(&alice, "안녕하세요! 검색도 한국어로 돼요").await?;
    wait_js(
        &bob,
        "Alice's Korean message",
        &timeline_has("안녕하세요! 검색도 한국어로 돼요"),
    )
    .await?;
    type_into(&bob, "#compose", "좋아요").await?;
    wait_js(
        &alice,
        "Bob typing",
        "document.getElementById('typing').textContent.includes('is typing')",
    )
    .await?;
    save_screenshot(&alice, "web-client.png").await?;
    bob.find(Locator::Css("#compose")).await?.clear().await?;

    // ---- Search: a Korean message far back in another room; the hit opens the room there.
    let korean = "오늘 <b>채팅방</b>에서 만나요";
    let alice_now = login_as(&chatd.api, "alice").await;
    let sent = chatd.api.send(&alice_now, &random, korean).await;
    let target_seq = sent["seq"].as_u64().context("seq")?;
    for i in 0..60 {
        chatd
            .api
            .send(&alice_now, &random, &format!("filler {i}"))
            .await;
    }
    searchable(&chatd.api, &login_as(&chatd.api, "bob").await, "채팅").await?;
    type_into(&bob, "#search-q", "채팅\u{E007}").await?;
    wait_js(
        &bob,
        "a hit",
        "document.querySelectorAll('#hits .hit').length === 1",
    )
    .await?;
    let hit = js(
        &bob,
        "(() => { const s = document.querySelector('#hits .snippet'); return { text: s.textContent, marks: [...s.querySelectorAll('mark')].map(m => m.textContent), elements: s.querySelectorAll('*').length }; })()",
    )
    .await?;
    ensure!(hit["marks"] == json!(["채팅"]), "highlight: {hit}");
    ensure!(
        hit["text"].as_str().is_some_and(|t| t.contains("<b>")) && hit["elements"] == json!(1),
        "the message's markup is shown as text, only <mark> is an element: {hit}"
    );
    click(&bob, "#hits .hit").await?;
    wait_js(
        &bob,
        "the message focused in its room",
        &format!(
            "document.activeElement?.dataset.seq === '{target_seq}' && document.getElementById('room-title').textContent === 'random'"
        ),
    )
    .await?;
    // Focused first, then (layout settling under load) inside the scroller's view.
    wait_js(
        &bob,
        "the message scrolled into view",
        &format!("(() => {{ const r = document.activeElement.getBoundingClientRect(), s = document.getElementById('scroller').getBoundingClientRect(); return document.activeElement.dataset.seq === '{target_seq}' && r.top >= s.top && r.bottom <= s.bottom; }})()"),
    )
    .await?;

    // ---- History paging: Alice opens the long room and scrolls to the top, which loads the
    // older pages until the room's first event.
    open_room(&alice, &random).await?;
    wait_js(
        &alice,
        "older pages available",
        "!document.getElementById('older').hidden",
    )
    .await?;
    let first = js(
        &alice,
        "Number(document.querySelector('#messages [data-seq]').dataset.seq)",
    )
    .await?;
    ensure!(
        first.as_u64() > Some(1),
        "the first page is not the whole room: {first}"
    );
    wait_js(
        &alice,
        "the room's first event, after scrolling up",
        "(document.getElementById('scroller').scrollTop = 0, document.querySelector('#messages [data-seq]').dataset.seq === '1' && document.getElementById('older').hidden)",
    )
    .await?;

    // ---- Dark mode: with `prefers-color-scheme: dark` emulated, the colours change and text
    // keeps a readable contrast (WCAG AA, 4.5:1) on its backgrounds, as in light mode.
    open_room(&alice, &lobby).await?;
    let light = js(&alice, COLOURS).await?;
    cdp(
        driver,
        &alice,
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    )
    .await?;
    wait_js(
        &alice,
        "dark mode",
        "matchMedia('(prefers-color-scheme: dark)').matches",
    )
    .await?;
    let dark = js(&alice, COLOURS).await?;
    save_screenshot(&alice, "web-client-dark.png").await?;
    cdp(
        driver,
        &alice,
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
    )
    .await?;
    for key in ["page", "bubble", "mine"] {
        ensure!(
            light[key]["bg"] != dark[key]["bg"] && light[key]["fg"] != dark[key]["fg"],
            "{key}: the same colours in both modes: {light} / {dark}"
        );
    }
    for (mode, colours) in [("light", &light), ("dark", &dark)] {
        for (key, pair) in colours.as_object().context("colours")? {
            let ratio = pair["contrast"].as_f64().context("contrast")?;
            ensure!(
                ratio >= 4.5,
                "{mode} mode, {key}: contrast {ratio:.2} below 4.5 ({pair})"
            );
        }
    }

    // ---- Browser notifications while the tab is hidden. Chromium grants the permission (as
    // a person would when asked), the page's Notification constructor is wrapped to record
    // what is shown, and Alice switches to another tab of the same site, which hides hers.
    cdp(
        driver,
        &alice,
        "Browser.grantPermissions",
        json!({"origin": base, "permissions": ["notifications"]}),
    )
    .await?;
    wait_js(
        &alice,
        "notifications granted",
        "Notification.permission === 'granted'",
    )
    .await?;
    js(&alice, RECORD_NOTIFICATIONS).await?;
    let chat_tab = alice.window().await?;
    let other = alice.new_window(true).await?;
    alice.switch_to_window(other.handle).await?;
    alice.goto(&format!("{base}/openapi.json")).await?;
    let hidden = until("the chat tab hidden", || async {
        let v = js(&alice, "localStorage.getItem('test.visibility')").await?;
        Ok((v == json!("hidden")).then_some(()))
    })
    .await;
    if hidden.is_err() {
        alice.close_window().await?;
        alice.switch_to_window(chat_tab).await?;
        test_support::skip!(
            "web client notifications: this Chromium does not hide a background tab \
             (document.visibilityState stayed 'visible'), so the hidden-tab notification is untested"
        );
    } else {
        let bob_now = login_as(&chatd.api, "bob").await;
        let note = chatd.api.send(&bob_now, &random, "ping while away").await;
        let note_seq = note["seq"].as_u64().context("seq")?;
        until("a notification shown", || async {
            let v = js(&alice, "localStorage.getItem('test.notified')").await?;
            Ok(v.as_str()
                .is_some_and(|s| s.contains("ping while away"))
                .then_some(()))
        })
        .await?;
        alice.close_window().await?;
        alice.switch_to_window(chat_tab).await?;
        let shown = js(
            &alice,
            "window.testNotifications.map(n => [n.title, n.body])",
        )
        .await?;
        ensure!(
            shown.as_array().map(Vec::len) == Some(1)
                && shown[0][0]
                    .as_str()
                    .is_some_and(|t| t.ends_with(" in random"))
                && shown[0][1] == json!("ping while away"),
            "one notification, naming the room: {shown}"
        );
        // Clicking the notification opens the message in its room.
        js(&alice, "window.testNotifications[0].onclick()").await?;
        wait_js(
            &alice,
            "the notified message focused in its room",
            &format!(
                "document.activeElement?.dataset.seq === '{note_seq}' && document.getElementById('room-title').textContent === 'random'"
            ),
        )
        .await?;
    }

    // Both sessions have lived through several access-token lifetimes on rotated refresh
    // tokens (a reused one would have revoked the session and logged them out).
    for (b, initial) in [(&alice, &alice_refresh), (&bob, &bob_refresh)] {
        wait_js(
            b,
            "a rotated refresh token",
            &format!("{REFRESH_TOKEN} !== {initial}"),
        )
        .await?;
        wait_js(b, "still connected", CONNECTED).await?;
    }

    // ---- A phone: one pane at a time, with a way back to the list.
    bob.set_window_size(390, 844).await?;
    wait_js(
        &bob,
        "the list hidden",
        "getComputedStyle(document.getElementById('sidebar')).display === 'none'",
    )
    .await?;
    click(&bob, "#back").await?;
    wait_js(
        &bob,
        "the list shown",
        "getComputedStyle(document.getElementById('sidebar')).display !== 'none'",
    )
    .await?;

    // ---- Logging out forgets the session.
    click(&bob, "#logout").await?;
    wait_js(
        &bob,
        "the login form",
        "!document.getElementById('auth').hidden",
    )
    .await?;
    bob.refresh().await?;
    wait_js(
        &bob,
        "still logged out",
        "!document.getElementById('auth').hidden && localStorage.length === 0",
    )
    .await?;
    Ok(())
}

/// Text and background colours of the page, a message, one's own message, muted text and the
/// unread badge, with the contrast ratio of each pair (WCAG 2 relative luminance).
const COLOURS: &str = r#"(() => {
  const rgb = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const pair = (fgEl, bgEl) => {
    const fg = getComputedStyle(fgEl).color, bg = getComputedStyle(bgEl).backgroundColor;
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return { fg, bg, contrast: (a + 0.05) / (b + 0.05) };
  };
  const other = document.querySelector('#messages .msg:not(.mine)');
  const mine = document.querySelector('#messages .msg.mine');
  const room = document.querySelector('#rooms .room-item');
  return {
    page: pair(document.body, document.body),
    bubble: pair(other.querySelector('.body'), other),
    mine: pair(mine.querySelector('.body'), mine),
    muted: pair(other.querySelector('.meta'), other),
    preview: pair(room.querySelector('.preview'), document.getElementById('sidebar')),
  };
})()"#;

/// Records the notifications the page shows (in `window.testNotifications`, and in
/// localStorage for another tab of the site to see) and the page's visibility changes.
const RECORD_NOTIFICATIONS: &str = r#"(() => {
  const Real = window.Notification;
  window.testNotifications = [];
  window.Notification = class extends Real {
    constructor(title, options) {
      super(title, options);
      window.testNotifications.push(this);
      this.recorded = { title, body: options?.body };
      localStorage.setItem('test.notified', JSON.stringify(window.testNotifications.map((n) => n.recorded)));
    }
  };
  document.addEventListener('visibilitychange', () => localStorage.setItem('test.visibility', document.visibilityState));
  return true;
})()"#;

const REFRESH_TOKEN: &str = "JSON.parse(localStorage.getItem('chatd.session')).refresh_token";

const CONNECTED: &str = "document.getElementById('conn')?.dataset.state === 'online'";

fn room_item(room: &str) -> String {
    format!("document.querySelector('#rooms li[data-room-id=\"{room}\"]')")
}

fn unread_is(room: &str, n: u64) -> String {
    format!("{}?.dataset.unread === '{n}'", room_item(room))
}

fn room_title_is(title: &str) -> String {
    format!(
        "document.getElementById('room-title').textContent === {} && !document.getElementById('room').hidden",
        json!(title)
    )
}

/// A membership line of the open room, e.g. "bob joined".
fn timeline_sys_has(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .sys')].some(l => l.textContent.startsWith({}))",
        json!(text)
    )
}

/// The shown message with this text.
fn message_js(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .msg')].find(m => m.querySelector('.body').textContent === {})",
        json!(text)
    )
}

/// The read count shown on the message with this text ("" when everyone has read it).
fn message_reads_js(text: &str) -> String {
    format!("{}?.querySelector('.reads').textContent", message_js(text))
}

fn message_reads_are(text: &str, reads: &str) -> String {
    format!("{} === {}", message_reads_js(text), json!(reads))
}

fn timeline_has(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .msg .body')].some(b => b.textContent === {})",
        json!(text)
    )
}

async fn open_room(b: &Client, room: &str) -> anyhow::Result<()> {
    click(b, &format!("#rooms li[data-room-id=\"{room}\"] button")).await?;
    wait_js(
        b,
        "the room's history",
        "document.querySelectorAll('#messages [data-seq]').length > 0",
    )
    .await?;
    Ok(())
}

/// Types a message into the composer and sends it; waits until the server confirmed it.
async fn send_message(b: &Client, text: &str) -> anyhow::Result<()> {
    type_into(b, "#compose", &format!("{text}\u{E007}")).await?;
    wait_js(b, "the message confirmed", &timeline_has(text)).await
}

async fn login_as(api: &Api, username: &str) -> TestUser {
    let tokens = api.login(username).await;
    let (_, me) = api
        .get(
            "/v1/users/me",
            tokens["access_token"].as_str().unwrap_or_default(),
        )
        .await;
    TestUser {
        id: me["user_id"].as_str().unwrap_or_default().to_owned(),
        username: username.to_owned(),
        token: tokens["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        refresh: tokens["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

async fn server_unread_is_zero(api: &Api, user: &TestUser) -> anyhow::Result<()> {
    until("no unread messages on the server", || async {
        let (_, unread) = api.get("/v1/unread", &user.token).await;
        Ok((unread["total"] == json!(0)).then_some(()))
    })
    .await
}

/// Waits until the search index has the message (it commits about every 250 ms).
async fn searchable(api: &Api, user: &TestUser, q: &str) -> anyhow::Result<()> {
    let path = format!("/v1/search?q={}", urlencode(q));
    until(&format!("{q} searchable"), || async {
        let (_, body) = api.get(&path, &user.token).await;
        Ok((body["total"].as_u64() == Some(1)).then_some(()))
    })
    .await
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

// ---------------------------------------------------------------- WebDriver plumbing

async fn click(b: &Client, css: &str) -> anyhow::Result<()> {
    b.find(Locator::Css(css))
        .await
        .with_context(|| format!("no {css}"))?
        .click()
        .await
        .with_context(|| format!("clicking {css}"))?;
    Ok(())
}

async fn type_into(b: &Client, css: &str, text: &str) -> anyhow::Result<()> {
    b.find(Locator::Css(css))
        .await
        .with_context(|| format!("no {css}"))?
        .send_keys(text)
        .await
        .with_context(|| format!("typing into {css}"))?;
    Ok(())
}

/// A Chrome DevTools Protocol command, through chromedriver's `goog/cdp/execute`.
async fn cdp(driver: &str, b: &Client, cmd: &str, params: Value) -> anyhow::Result<Value> {
    let id = b.session_id().await?.context("a WebDriver session")?;
    let resp = client()
        .post(format!("{driver}/session/{id}/goog/cdp/execute"))
        .json(&json!({"cmd": cmd, "params": params}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "CDP {cmd}: {status} {body}");
    Ok(body["value"].clone())
}

async fn js(b: &Client, expr: &str) -> anyhow::Result<Value> {
    Ok(b.execute(&format!("return ({expr});"), vec![]).await?)
}

/// Waits until the JavaScript expression is truthy in the page.
async fn wait_js(b: &Client, what: &str, expr: &str) -> anyhow::Result<()> {
    let script = format!("try {{ return !!({expr}); }} catch (e) {{ return false; }}");
    until(what, || async {
        let v = b.execute(&script, vec![]).await?;
        Ok((v == json!(true)).then_some(()))
    })
    .await
    .with_context(|| format!("waiting for {what}: {expr}"))
}

/// Polls `check` until it yields a value, for at most [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn save_screenshot(b: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-client");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, b.screenshot().await?)?;
    Ok(path)
}

/// Chromium and chromedriver, when installed.
struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Tools {
    fn find() -> Option<Self> {
        let which = |names: &[&str]| {
            names.iter().find_map(|n| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        };
        let chromium = which(&["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = which(&["chromedriver"]);
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(Self {
                chromium,
                chromedriver,
            }),
            _ => {
                test_support::skip!(
                    "the web client's browser test needs chromium and chromedriver \
                     (Debian: apt-get install chromium chromium-driver; scripts/test installs them)"
                );
                None
            }
        }
    }
}

/// A chromedriver on a port it picks itself (`--port=0`, read back from its banner); killed
/// when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
    profiles: Vec<tempfile::TempDir>,
}

impl Driver {
    async fn start(tools: &Tools) -> Self {
        let mut child = tokio::process::Command::new(&tools.chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let port: u16 = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) =
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                {
                    return rest.trim_end_matches('.').parse().expect("a port number");
                }
            }
            panic!("chromedriver exited before it listened");
        })
        .await
        .expect("chromedriver listening");
        // Keep draining stdout so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("http://127.0.0.1:{port}");
        let http = client();
        until("chromedriver ready", || async {
            Ok(match http.get(format!("{url}/status")).send().await {
                Ok(r) => r.json::<Value>().await?["value"]["ready"]
                    .as_bool()
                    .filter(|ready| *ready),
                Err(_) => None,
            })
        })
        .await
        .expect("chromedriver answers");
        Self {
            child,
            url,
            profiles: Vec::new(),
        }
    }

    /// A new browser with a fresh profile.
    async fn session(&mut self, tools: &Tools, who: &str) -> Client {
        let profile = tempfile::Builder::new()
            .prefix(&format!("chromium-{who}-"))
            .tempdir()
            .expect("profile dir");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("an object literal")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        // Kept until the driver goes: Chromium may still write to it while closing.
        self.profiles.push(profile);
        client
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.profiles.clear();
    }
}
