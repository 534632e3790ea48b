//! The authorization matrix: every operation of the OpenAPI document the running binary
//! serves (so an operation added later is covered without touching this test) is called with
//! no token, a token signed with another key, an `alg: none` token, an expired token and a
//! token of an ended session; every room-scoped operation also by an outsider (a valid user
//! who is not in the room), and every room-scoped WebSocket frame likewise. Each call must be
//! refused with 401, 403 or 404 and a problem+json `code` (an `error` frame for the
//! WebSocket). The operations anyone may call are listed in [`PUBLIC`].

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Api, ChatdProcess, TestUser};

const SECRET: &str = "the-matrix-test-secret-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(20);

/// Operations that need no token: getting one, and giving it up.
const PUBLIC: [(&str, &str); 4] = [
    ("post", "/v1/auth/register"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"),
];

fn jwt(claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(key)).unwrap()
}

/// The claims of a token for `user` in a session that exists nowhere, expiring `exp_in` from
/// now.
fn claims(user: &TestUser, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": user.id, "sid": uuid::Uuid::now_v7(), "iat": now - 60, "exp": now + exp_in})
}

/// Follows `#/components/schemas/…` references.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => resolve(
            spec,
            &spec["components"]["schemas"][r.rsplit('/').next().unwrap()],
        ),
        None => match schema["allOf"].as_array() {
            Some(all) if all.len() == 1 => resolve(spec, &all[0]),
            _ => schema,
        },
    }
}

/// A value valid for `schema` (required fields only), ids taken from `ids` by field name.
fn example(spec: &Value, schema: &Value, name: &str, ids: &Map<String, Value>) -> Value {
    let schema = resolve(spec, schema);
    if let Some(id) = ids.get(name) {
        return id.clone();
    }
    if let Some(parts) = schema["allOf"].as_array() {
        // The union of the parts' fields.
        let mut obj = Map::new();
        for part in parts {
            if let Value::Object(fields) = example(spec, part, name, ids) {
                obj.extend(fields);
            }
        }
        return Value::Object(obj);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut obj = Map::new();
            for field in schema["required"].as_array().into_iter().flatten() {
                let field = field.as_str().unwrap();
                let sub = &schema["properties"][field];
                obj.insert(field.to_owned(), example(spec, sub, field, ids));
            }
            Value::Object(obj)
        }
        Some("array") => {
            let item = name.strip_suffix('s').unwrap_or(name);
            json!([example(spec, &schema["items"], item, ids)])
        }
        Some("integer") => json!(1),
        Some("boolean") => json!(true),
        Some("string") if schema["format"] == "uuid" => json!(uuid::Uuid::now_v7()),
        Some("string") => match schema["enum"].as_array() {
            Some(values) => values[0].clone(),
            None => json!("a valid string"),
        },
        _ => json!({}),
    }
}

/// One call of the matrix.
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    what: String,
}

async fn refused(api: &Api, call: &Call, token: Option<&str>, who: &str) {
    let mut req = api
        .http
        .request(call.method.clone(), format!("{}{}", api.base, call.path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = &call.body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND
        ]
        .contains(&status),
        "{who}: {} answered {status} {body}",
        call.what
    );
    assert_eq!(
        kind.as_deref(),
        Some("application/problem+json"),
        "{who}: {}",
        call.what
    );
    assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{who}: {} without a code: {body}",
        call.what
    );
}

#[tokio::test]
async fn every_operation_refuses_bad_tokens_and_outsiders() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChatdProcess::start_with(dir.path(), &[("CHAT_JWT_SECRET", SECRET)]).await;
    let api = &server.api;
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let outsider = api.user("mallory").await;
    let room = api.create_room(&alice, "private", &[&bob]).await;
    let message = api.send(&alice, &room, "members only").await["message_id"].clone();

    // The tokens to refuse.
    let ended = {
        let tokens = api.login("alice").await;
        let refresh = tokens["refresh_token"].as_str().unwrap();
        let (status, _) = api.session_call("logout", refresh).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        tokens["access_token"].as_str().unwrap().to_owned()
    };
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(&alice, 600).to_string())
    );
    let bad_tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "a token signed with another key",
            Some(jwt(
                &claims(&alice, 600),
                b"not-the-servers-key-0123456789abcdef",
            )),
        ),
        ("an alg:none token", Some(none_alg)),
        (
            "an expired token",
            Some(jwt(&claims(&alice, -600), SECRET.as_bytes())),
        ),
        ("a token of an ended session", Some(ended)),
    ];

    let (status, spec) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Map<String, Value> = [
        ("room_id", json!(room)),
        ("message_id", message),
        ("user_id", json!(bob.id)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut seen_public = BTreeSet::new();
    let mut operations = 0;
    let mut room_scoped = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if PUBLIC.contains(&(method.as_str(), template.as_str())) {
                assert!(
                    !secured,
                    "{method} {template} is listed public but needs a token"
                );
                seen_public.insert((method.clone(), template.clone()));
                continue;
            }
            assert!(
                secured,
                "{method} {template} takes no token and is not listed public"
            );
            operations += 1;
            let mut path = template.clone();
            for (name, id) in &ids {
                path = path.replace(&format!("{{{name}}}"), id.as_str().unwrap());
            }
            let body = op["requestBody"]["content"]
                .as_object()
                .and_then(|content| content.values().next())
                .map(|media| example(&spec, &media["schema"], "", &ids));
            let call = Call {
                method: m,
                path,
                body,
                what: format!("{method} {template}"),
            };
            for (who, token) in &bad_tokens {
                refused(api, &call, token.as_deref(), who).await;
            }
            if template.contains("{room_id}") {
                room_scoped += 1;
                refused(api, &call, Some(&outsider.token), "an outsider").await;
            }
        }
    }
    assert_eq!(
        seen_public.len(),
        PUBLIC.len(),
        "every public operation exists"
    );
    assert!(
        operations >= 15 && room_scoped >= 8,
        "{operations} operations, {room_scoped} room-scoped"
    );

    // The WebSocket frames naming a room, by an outsider: each refused with an `error` frame.
    let mut ws = crate::revocation::ws(api, &outsider.token).await;
    let frames = spec["components"]["schemas"]["ClientFrame"]["discriminator"]["mapping"]
        .as_object()
        .expect("ClientFrame is a discriminated union");
    let mut room_frames = 0;
    for (kind, schema) in frames {
        let mut frame = example(&spec, &json!({"$ref": schema}), "", &ids);
        let frame = frame.as_object_mut().unwrap();
        let names_room = frame.contains_key("room_id") || kind == "resume";
        if !names_room {
            continue;
        }
        room_frames += 1;
        frame.insert("type".into(), json!(kind));
        if kind == "resume" {
            frame.insert("rooms".into(), json!({&room: 0}));
        }
        ws.send(Message::text(Value::Object(frame.clone()).to_string()))
            .await
            .unwrap();
        let answer = loop {
            let msg = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .expect("an answer in time")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if !["unread", "presence"].contains(&v["type"].as_str().unwrap_or_default()) {
                    break v;
                }
            }
        };
        assert_eq!(answer["type"], "error", "{kind}: {answer}");
        assert_eq!(answer["code"], "room_not_found", "{kind}: {answer}");
    }
    assert!(room_frames >= 4, "{room_frames} room frames");
}
