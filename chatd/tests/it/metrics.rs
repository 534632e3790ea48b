//! `GET /metrics` of the real binary (its own process, so the numbers are exactly ours):
//! well-formed Prometheus text that moves with traffic.

use std::collections::{BTreeMap, HashMap};

use reqwest::StatusCode;

use crate::helpers::{Api, ChatdProcess};
use crate::ws::{connect, eventually};
use chatd::ops::metrics::{CATALOGUE as CHATD_METRICS, Kind};

/// One scrape: `name{sorted labels}` → value.
#[derive(Debug, Default)]
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of `name` with exactly these labels, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let sorted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let labels: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Parses the Prometheus text exposition format strictly: `# HELP`/`# TYPE` lines, samples
/// `name{label="value",…} number`, and every sample's family declared by a `# TYPE`.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            && !s.as_bytes()[0].is_ascii_digit()
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            match kind {
                Some("TYPE") => {
                    let t = value.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "bad type in {line:?}"
                    );
                    scrape.types.insert(name.to_owned(), t.to_owned());
                }
                Some("HELP") => {}
                _ => panic!("unknown comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = Vec::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(is_name(k), "bad label name in {line:?}");
                    labels.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
                }
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| scrape.types.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        assert!(
            scrape.types.contains_key(family),
            "sample without a # TYPE: {line:?}"
        );
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        scrape.samples.insert(key(name, &labels), value);
    }
    scrape
}

async fn scrape(api: &Api) -> Scrape {
    let resp = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    promtool_check(&text);
    parse(&text)
}

/// `promtool check metrics` agrees, when promtool is installed (scripts/test installs it
/// where it can; otherwise the check is recorded as skipped).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            test_support::skip!("promtool is not installed: `promtool check metrics` not run");
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Lint findings (e.g. naming advice) exit 3; malformed text exits 1.
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let room = api.create_room(&alice, "metered", &[&bob]).await;
    let before = scrape(&api).await;
    assert_eq!(before.value("chat_messages_sent_total", &[]), 0.0);

    let mut ws = connect(&api, &bob).await;
    eventually("one WebSocket counted", || async {
        scrape(&api).await.get("chat_ws_connections", &[]) == Some(1.0)
    })
    .await;
    for i in 0..5 {
        api.send(&alice, &room, &format!("hello {i}")).await;
    }
    // A retry with the same client id is not another message.
    for _ in 0..2 {
        api.post(
            &format!("/v1/rooms/{room}/messages"),
            &alice.token,
            serde_json::json!({"body": "once", "client_msg_id": "m-1"}),
        )
        .await;
    }
    let (status, _) = api
        .get(&format!("/v1/rooms/{}", uuid::Uuid::nil()), &alice.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut got = 0;
    while got < 6 {
        let frame = ws.next().await;
        if frame["type"] == "event" && frame["event"]["type"] == "message_sent" {
            got += 1;
        }
    }

    eventually("deliveries counted", || async {
        scrape(&api)
            .await
            .value("chat_deliveries_total", &[("transport", "ws")])
            >= 6.0
    })
    .await;
    let after = scrape(&api).await;
    assert_eq!(after.value("chat_messages_sent_total", &[]), 6.0);
    let sends = [
        ("method", "POST"),
        ("route", "/v1/rooms/{id}/messages"),
        ("status", "201"),
    ];
    assert_eq!(
        after.value("chat_http_requests_total", &sends)
            - before.value("chat_http_requests_total", &sends),
        6.0,
        "{:?}",
        after
            .samples
            .keys()
            .filter(|k| k.starts_with("chat_http"))
            .collect::<Vec<_>>()
    );
    let retried = [
        ("method", "POST"),
        ("route", "/v1/rooms/{id}/messages"),
        ("status", "200"),
    ];
    assert_eq!(after.value("chat_http_requests_total", &retried), 1.0);
    let not_found = [
        ("method", "GET"),
        ("route", "/v1/rooms/{id}"),
        ("status", "404"),
    ];
    assert_eq!(after.value("chat_http_requests_total", &not_found), 1.0);
    let timed = [("method", "POST"), ("route", "/v1/rooms/{id}/messages")];
    assert!(
        after.value("chat_http_request_duration_seconds_count", &timed)
            - before.value("chat_http_request_duration_seconds_count", &timed)
            >= 6.0
    );
    assert!(
        after.value("chat_eventlog_append_duration_seconds_count", &[])
            - before.value("chat_eventlog_append_duration_seconds_count", &[])
            >= 6.0
    );
    assert_eq!(
        after.types["chat_eventlog_append_duration_seconds"],
        "histogram"
    );
    // Every projection reports its lag, and each catches up.
    eventually("projections caught up", || async {
        let s = scrape(&api).await;
        ["read_model", "search", "hub"].iter().all(|p| {
            s.get("chat_projection_lag_events", &[("projection", p)]) == Some(0.0)
                && s.get("chat_projection_lag_seconds", &[("projection", p)]) == Some(0.0)
        })
    })
    .await;

    // The dashboards and alert rules are written against `CHATD_METRICS`: every metric chatd
    // really exports is there, with its type and labels.
    for (name, kind) in &after.types {
        let listed = CHATD_METRICS.iter().find(|(n, ..)| n == name);
        let Some((_, listed_kind, labels)) = listed else {
            panic!("{name} is exported but not in chatd::ops::metrics::CATALOGUE");
        };
        let kind = match kind.as_str() {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            other => panic!("{name} has type {other}"),
        };
        assert_eq!(kind, *listed_kind, "{name}");
        for series in after
            .samples
            .keys()
            .filter(|k| k.starts_with(name.as_str()))
        {
            let (_, label_part) = series.split_once('{').unwrap();
            for pair in label_part
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let label = pair.split_once('=').unwrap().0;
                assert!(
                    label == "le" || labels.contains(&label),
                    "{series}: label {label} not in CHATD_METRICS"
                );
            }
        }
    }

    ws.close().await;
    eventually("the WebSocket uncounted", || async {
        scrape(&api).await.get("chat_ws_connections", &[]) == Some(0.0)
    })
    .await;
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# TYPE a counter\na{x=\"1\",y=\"2\"} 3\n";
    assert_eq!(parse(ok).value("a", &[("y", "2"), ("x", "1")]), 3.0);
    for bad in [
        "a 1\n",                        // no TYPE
        "# TYPE a counter\na{x=1} 1\n", // unquoted label
        "# TYPE a counter\na one\n",    // not a number
        "# TYPE a counter\n1a 1\n",     // bad name
        "# TYPE a countr\na 1\n",       // bad type
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
