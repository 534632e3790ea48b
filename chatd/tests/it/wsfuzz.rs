//! A WebSocket frame fuzzer against the real binary: random and malformed frames (invalid
//! JSON, wrong types, huge numbers, unknown types, binary frames, oversized frames, control-frame
//! abuse, and raw protocol violations on a hand-made socket). After each round a normal client
//! must still send and receive, and at the end the server must have logged no panic and no
//! error.
//!
//! The generator is seeded (the seeds are fixed: a failure reproduces), and the server's rate
//! limit is lifted so every frame reaches the parser.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{Api, TestUser};
use crate::security::Chatd;

const DEADLINE: Duration = Duration::from_secs(20);
/// Frames per round; rounds per seed.
const FRAMES: usize = 300;
const SEEDS: [u64; 3] = [1, 2, 3];

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(api: &Api, user: &TestUser) -> Ws {
    let url = format!(
        "{}/v1/ws?access_token={}",
        api.base.replacen("http://", "ws://", 1),
        user.token
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

/// A random string: ASCII, multi-byte, control characters and JSON punctuation.
fn junk_string(rng: &mut StdRng, max: usize) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", "0", " ", "\"", "\\", "{", "}", "[", "]", ":", ",", "\u{0}", "\n", "é", "채",
        "東", "🎉", "\u{202e}", "\u{feff}", "null", "true", "-", "e", ".",
    ];
    let n = rng.gen_range(0..=max);
    (0..n)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

/// A value of a random JSON type, sometimes absurd.
fn junk_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(u64::MAX),
        4 => json!(-1),
        5 => json!(rng.r#gen::<f64>() * 1e300),
        6 => json!(junk_string(rng, 40)),
        7 => json!(uuid::Uuid::new_v4().to_string()),
        8 if depth < 4 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| junk_value(rng, depth + 1))
                .collect(),
        ),
        9 if depth < 4 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                m.insert(junk_string(rng, 8), junk_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => json!(""),
    }
}

/// One text frame a buggy or hostile client might send. `room` is a room the sender is in.
fn junk_text(rng: &mut StdRng, room: &str) -> String {
    let types = [
        "resume", "send", "read", "typing", "ping", "dance", "", "SEND", "ack",
    ];
    let ty = types[rng.gen_range(0..types.len())];
    let room_ref = || -> Value { json!(room) };
    match rng.gen_range(0..16) {
        // Not JSON, or JSON that is not an object.
        0 => junk_string(rng, 200),
        1 => [
            "{",
            "{\"type\":",
            "[",
            "null",
            "\"ping\"",
            "42",
            "{}}",
            "{\"type\":\"ping\"",
        ][rng.gen_range(0..8)]
        .to_owned(),
        // Deep nesting (serde_json's recursion limit).
        2 => {
            let depth = rng.gen_range(100..3000);
            format!(
                "{{\"type\":\"resume\",\"rooms\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        }
        // `type` of the wrong type, or missing.
        3 => json!({"type": junk_value(rng, 0), "room_id": room_ref()}).to_string(),
        4 => json!({"room_id": room_ref(), "body": "hi"}).to_string(),
        // Known types with fields of wrong types or absurd values.
        5 => json!({"type": "send", "room_id": junk_value(rng, 0), "body": junk_value(rng, 0),
                    "client_msg_id": junk_value(rng, 0)})
        .to_string(),
        6 => json!({"type": "send", "room_id": room_ref(), "body": junk_string(rng, 300),
                    "client_msg_id": junk_string(rng, 300)})
        .to_string(),
        7 => json!({"type": "read", "room_id": room_ref(), "seq": junk_value(rng, 0)}).to_string(),
        8 => format!(
            "{{\"type\":\"read\",\"room_id\":\"{room}\",\"seq\":{}}}",
            [
                "18446744073709551615",
                "18446744073709551616",
                "1e400",
                "-0",
                "1.5",
                "00",
                "-9223372036854775809"
            ][rng.gen_range(0..7)]
        ),
        9 => {
            // Not u64::MAX: see `resume_after_the_largest_seq_is_not_a_panic` (a known bug).
            let after =
                [0u64, 1, 1 << 53, u64::MAX - 1, rng.gen_range(0..u64::MAX)][rng.gen_range(0..5)];
            json!({"type": "resume", "rooms": {room: after}}).to_string()
        }
        10 => {
            let mut rooms = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..50) {
                rooms.insert(uuid::Uuid::new_v4().to_string(), json!(rng.r#gen::<u64>()));
            }
            json!({"type": "resume", "rooms": rooms}).to_string()
        }
        11 => json!({"type": "resume", "rooms": junk_value(rng, 0)}).to_string(),
        12 => json!({"type": "typing", "room_id": junk_value(rng, 0)}).to_string(),
        // Unknown or mis-cased types, extra fields, duplicate keys.
        13 => json!({"type": ty, "room_id": room_ref(), "extra": junk_value(rng, 0)}).to_string(),
        14 => format!("{{\"type\":\"ping\",\"type\":\"{ty}\"}}"),
        // Over the frame limit (16 KiB), under the message limit (64 KiB).
        _ => json!({"type": "send", "room_id": room_ref(), "client_msg_id": "big",
                    "body": "x".repeat(rng.gen_range(16 * 1024..60 * 1024))})
        .to_string(),
    }
}

/// Reads frames until a `pong` (the connection is alive and in order), checking that every
/// frame on the way is JSON with a `type`, and every `error` has a code and a detail.
async fn until_pong(ws: &mut Ws) -> usize {
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("ping sent");
    let mut errors = 0;
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .unwrap_or_else(|e| panic!("{e}: the server closed the connection"));
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        };
        let v: Value = serde_json::from_str(&text).expect("the server sends JSON");
        match v["type"].as_str() {
            Some("pong") => return errors,
            Some("error") => {
                assert!(
                    v["code"].as_str().is_some_and(|c| !c.is_empty()) && v["detail"].is_string(),
                    "{v}"
                );
                errors += 1;
            }
            Some(_) => {}
            None => panic!("a frame without a type: {v}"),
        }
    }
}

/// A normal client still works: alice sends, bob receives it live.
async fn still_correct(api: &Api, alice: &TestUser, bob: &TestUser, room: &str, n: usize) {
    let mut a = open(api, alice).await;
    let mut b = open(api, bob).await;
    until_pong(&mut b).await;
    let body = format!("still fine {n}");
    a.send(Message::text(
        json!({"type": "send", "room_id": room, "body": body, "client_msg_id": format!("ok-{n}")})
            .to_string(),
    ))
    .await
    .expect("send");
    seen(&mut a, |v| v["type"] == "ack").await;
    seen(&mut b, |v| {
        v["type"] == "event" && v["event"]["body"] == body.as_str()
    })
    .await;
}

/// Reads until a JSON frame satisfies `hit`, within the deadline.
async fn seen(ws: &mut Ws, hit: impl Fn(&Value) -> bool) -> Value {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("the frame in time")
            .expect("open")
            .expect("no error");
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        if hit(&v) {
            return v;
        }
    }
}

/// A hand-made WebSocket: the upgrade by hand, then raw bytes, so frames no client library
/// would produce can be sent.
async fn raw_socket(api: &Api, user: &TestUser) -> TcpStream {
    let addr = api.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /v1/ws?access_token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        user.token
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("upgrade sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut byte))
            .await
            .expect("upgrade answered in time")
            .expect("read");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// A client frame: FIN/RSV/opcode byte, mask bit and length as given (the length field may
/// lie), masked payload.
fn raw_frame(first: u8, masked: bool, declared: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match declared {
        0..=125 => out.push(mask_bit | declared as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(declared as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&declared.to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
    }
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
    );
    out
}

/// Protocol violations: after each, the server closes that connection (or ignores the frame)
/// without taking anything else down.
fn violations(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let text = br#"{"type":"ping"}"#;
    let mut out = vec![
        raw_frame(0x81, false, text.len() as u64, text), // unmasked client frame
        raw_frame(0x83, true, 4, b"abcd"),               // reserved data opcode
        raw_frame(0x8B, true, 4, b"abcd"),               // reserved control opcode
        raw_frame(0xC1, true, text.len() as u64, text),  // RSV1 without an extension
        raw_frame(0x80, true, 4, b"abcd"),               // continuation with nothing to continue
        raw_frame(0x09, true, 4, b"ping"),               // fragmented control frame
        raw_frame(0x89, true, 200, &[b'p'; 200]),        // control frame over 125 bytes
        raw_frame(0x81, true, 4, &[0xff, 0xfe, 0xfd, 0xfc]), // text that is not UTF-8
        raw_frame(0x81, true, u64::MAX >> 1, b"x"),      // a length of 2^63
        raw_frame(0x81, true, 1 << 20, &[b'a'; 1024]),   // over the message limit, cut short
        raw_frame(0x88, true, 1, b"x"),                  // close with a 1-byte payload
        raw_frame(0x88, true, 2, &999u16.to_be_bytes()), // close with an invalid code
        {
            // A text message in fragments, one of them with a wrong opcode.
            let mut v = raw_frame(0x01, true, 5, b"{\"typ");
            v.extend(raw_frame(0x02, true, 4, b"e\":\""));
            v
        },
    ];
    // Random bytes after a valid start.
    for _ in 0..5 {
        let n = rng.gen_range(1..512);
        out.push((0..n).map(|_| rng.r#gen::<u8>()).collect());
    }
    out
}

#[tokio::test]
async fn random_and_malformed_frames_neither_crash_nor_wedge_the_server() {
    let mut chatd = Chatd::spawn(
        &[],
        &[
            ("CHAT_WS_RATE", "1000000"),
            ("RUST_LOG", "info,chatd::live=debug"),
            ("CHAT_ARGON2_MEMORY_KIB", "1024"),
            ("CHAT_ARGON2_ITERATIONS", "1"),
        ],
    );
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    let api = Api::new(addr);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mallory = api.user("mallory").await;
    let room = api.create_room(&alice, "fuzzed", &[&bob, &mallory]).await;
    still_correct(&api, &alice, &bob, &room, 0).await;

    let mut replies = 0;
    for seed in SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ws = open(&api, &mallory).await;
        let mut last = String::new();
        for i in 0..FRAMES {
            let msg = match rng.gen_range(0..20) {
                0 => Message::binary(
                    (0..rng.gen_range(0..2048))
                        .map(|_| rng.r#gen::<u8>())
                        .collect::<Vec<u8>>(),
                ),
                1 => Message::Ping(
                    (0..rng.gen_range(0..=125))
                        .map(|_| rng.r#gen::<u8>())
                        .collect::<Vec<u8>>()
                        .into(),
                ),
                2 => Message::Pong(
                    (0..rng.gen_range(0..=125))
                        .map(|_| rng.r#gen::<u8>())
                        .collect::<Vec<u8>>()
                        .into(),
                ),
                _ => Message::text(junk_text(&mut rng, &room)),
            };
            let what = match &msg {
                Message::Text(t) => format!(
                    "text {}: {}",
                    t.len(),
                    t.chars().take(200).collect::<String>()
                ),
                other => format!("{other:?}").chars().take(200).collect(),
            };
            let sent = ws.send(msg).await;
            if let Err(e) = sent {
                let printed = chatd.printed();
                let tail: Vec<&str> = printed.lines().rev().take(5).collect();
                panic!("seed {seed}, frame {i} ({what}, previous {last}): {e}\n{tail:#?}");
            }
            last = what;
            // Answer as we go, so neither side's buffers fill up.
            if i % 50 == 49 {
                replies += until_pong(&mut ws).await;
            }
        }
        replies += until_pong(&mut ws).await;

        // Over the message limit: the server ends this connection, and only it. (The comment
        // in live/ws.rs promises close code 1009; the connection is in fact dropped without a
        // close frame, which clients see as an abnormal closure (1006) and also resume from.)
        ws.send(Message::text("x".repeat(100 * 1024))).await.ok();
        let ended = tokio::time::timeout(DEADLINE, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map(|f| f.code).unwrap_or(CloseCode::Abnormal);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return CloseCode::Abnormal,
                }
            }
        })
        .await
        .expect("the oversized message ends the connection in time");
        assert!(
            matches!(ended, CloseCode::Size | CloseCode::Abnormal),
            "seed {seed}: {ended:?}"
        );

        // Control-frame abuse: a flood of pings, then a close with an odd code.
        let mut ws = open(&api, &mallory).await;
        for _ in 0..500 {
            ws.send(Message::Ping(vec![7; 125].into()))
                .await
                .expect("ping");
        }
        until_pong(&mut ws).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4999),
            reason: "bye".into(),
        })))
        .await
        .ok();

        // Raw protocol violations, one connection each.
        for bytes in violations(&mut rng) {
            let mut tcp = raw_socket(&api, &mallory).await;
            tcp.write_all(&bytes).await.ok();
            // The server closes (or keeps waiting for a frame that never completes): either
            // way this connection ends here, and must not take the server with it.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
        }

        still_correct(&api, &alice, &bob, &room, seed as usize).await;
    }
    assert!(
        replies > 100,
        "the fuzzed frames were answered: {replies} errors"
    );

    let printed = chatd.stop().await;
    for line in printed.lines() {
        assert!(!line.contains("panicked"), "a panic: {line}");
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("not an ECS line (a panic message?): {line}"));
        assert_ne!(v["log.level"], "error", "{line}");
    }
}

/// Found by the fuzzer: `resume` from seq `u64::MAX` overflowed `after + 1` in the catch-up
/// (`chatd/src/live/connections/ws.rs`, `catch_up`): the connection task panicked (debug
/// builds) or wrapped to seq 0 and replayed the whole room (release builds).
#[tokio::test]
async fn resume_after_the_largest_seq_is_not_a_panic() {
    let mut chatd = Chatd::spawn(&[], &[]);
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    let api = Api::new(addr);
    let alice = api.user("alice").await;
    let room = api.create_room(&alice, "edge", &[]).await;
    let mut ws = open(&api, &alice).await;
    ws.send(Message::text(
        json!({"type": "resume", "rooms": {&room: u64::MAX}}).to_string(),
    ))
    .await
    .expect("sent");
    until_pong(&mut ws).await;
    let printed = chatd.stop().await;
    assert!(!printed.contains("panicked"), "{printed}");
}
