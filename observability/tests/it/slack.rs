//! Slack alerts against a fake incoming webhook on a real socket. The clock is paused: windows,
//! the rate limit and `Retry-After` are exact, and waiting costs nothing.

use std::time::Duration;

use observability::{
    Alert, Alerts, LogFormat, Settings, Severity, SlackSettings, layers_with_writer,
};
use serde_json::Value;
use tokio::time::Instant;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{Capture, FakeSlack, SlackReply, all_text, header};

fn settings(slack: &FakeSlack) -> SlackSettings {
    let mut s = SlackSettings::new(slack.url());
    s.dedup_window = Duration::from_secs(60);
    s
}

fn alert(title: &str) -> Alert {
    let mut a = Alert::new(title, "the event log refused an append", Severity::Error);
    a.error_chain = vec!["append failed".into(), "disk full".into()];
    a.details = vec![("request_id".into(), "r-1".into())];
    a.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
    a
}

fn block_types(body: &Value) -> Vec<String> {
    body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_message_per_fingerprint_per_window_then_a_summary_with_the_count() {
    let slack = FakeSlack::start().await;
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    let start = Instant::now();
    for _ in 0..5 {
        alerts.raise("store-down", alert("Event log unavailable"));
    }
    alerts.raise("other", alert("Something else"));

    let got = slack.wait_requests(2).await;
    assert!(header(&got[0].1).contains("Event log unavailable"));
    assert!(header(&got[1].1).contains("Something else"));
    assert!(
        got[1].0 < start + Duration::from_secs(1),
        "first occurrences post at once"
    );

    // The window ends: one summary for the four repeats, none for "other" (no repeats).
    let got = slack.wait_requests(3).await;
    let (at, summary) = &got[2];
    assert!(*at >= start + Duration::from_secs(60));
    let text = summary["text"].as_str().unwrap();
    assert!(
        text.contains("4 more") && text.contains("5 in all"),
        "{text}"
    );
    assert!(header(summary).contains("×4"));
    assert_eq!(alerts.stats().deduplicated, 4);

    // Quiet for a whole window: the next raise posts at once again.
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert_eq!(slack.received().len(), 3, "no summary without repeats");
    let before = Instant::now();
    alerts.raise("store-down", alert("Event log unavailable"));
    let got = slack.wait_requests(4).await;
    assert!(got[3].0 < before + Duration::from_secs(1));
    assert!(all_text(&got[3].1).contains("*Count*\\n6"), "{}", got[3].1);

    let stats = sender.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.posted, 4);
}

#[tokio::test(start_paused = true)]
async fn messages_have_the_block_kit_shape() {
    let slack = FakeSlack::start().await;
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    alerts.raise("fp-1", alert("Event log <unavailable>"));
    let body = slack.wait_requests(1).await.remove(0).1;
    assert_eq!(
        block_types(&body),
        ["header", "section", "section", "section", "context"]
    );
    assert_eq!(body["blocks"][0]["text"]["type"], "plain_text");
    assert!(body["text"].as_str().unwrap().contains("chatd on node-1"));
    let fields = body["blocks"][1]["fields"].to_string();
    for needle in [
        "*Service*\\nchatd",
        "*Node*\\nnode-1",
        "*Severity*\\nerror",
        "*Count*\\n1",
    ] {
        assert!(fields.contains(needle), "{needle} in {fields}");
    }
    let chain = body["blocks"][2]["text"]["text"].as_str().unwrap();
    assert!(
        chain.contains("append failed\ncaused by: disk full"),
        "{chain}"
    );
    let context = body["blocks"][4]["elements"][0]["text"].as_str().unwrap();
    assert!(context.contains("first seen") && context.contains("last seen"));
    assert!(context.contains("0af7651916cd43dd8448eb211c80319c"));
    // mrkdwn is escaped, the plain-text header is not.
    assert!(header(&body).contains("<unavailable>"));
    sender.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_resolved_alert_posts_a_resolved_message_and_unknown_ones_nothing() {
    let slack = FakeSlack::start().await;
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    alerts.raise("nats", alert("NATS unreachable"));
    alerts.raise("nats", alert("NATS unreachable"));
    alerts.resolve("nats");
    alerts.resolve("never-raised");
    let got = slack.wait_requests(2).await;
    let resolved = &got[1].1;
    assert!(
        header(resolved).contains("Resolved: NATS unreachable"),
        "{resolved}"
    );
    assert!(all_text(resolved).contains("*Count*\\n2"));
    let stats = sender.shutdown(Duration::from_secs(5)).await;
    assert_eq!(slack.received().len(), 2);
    assert_eq!(stats.posted, 2);
}

#[tokio::test(start_paused = true)]
async fn messages_are_rate_limited_globally() {
    let slack = FakeSlack::start().await;
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    let start = Instant::now();
    for i in 0..8 {
        alerts.raise(format!("fp-{i}"), alert(&format!("alert {i}")));
    }
    let got = slack.wait_requests(8).await;
    // A burst of five, then one per second.
    for (i, (at, _)) in got.iter().enumerate() {
        if i < 5 {
            assert!(
                *at < start + Duration::from_millis(100),
                "message {i} at {:?}",
                *at - start
            );
        } else {
            let not_before = start + Duration::from_millis(999 * (i as u64 - 4));
            assert!(*at >= not_before, "message {i} at {:?}", *at - start);
        }
    }
    sender.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let slack = FakeSlack::start().await;
    slack.script([SlackReply::TooManyRequests {
        retry_after_secs: 1,
    }]);
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    alerts.raise("fp", alert("once"));
    let got = slack.wait_requests(2).await;
    assert!(
        got[1].0 >= got[0].0 + Duration::from_secs(1),
        "{:?}",
        got[1].0 - got[0].0
    );
    assert_eq!(got[0].1, got[1].1, "the same message is sent again");
    let stats = sender.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.posted, stats.throttled, stats.failed), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_and_refusals_are_failures() {
    let slack = FakeSlack::start().await;
    slack.script([
        SlackReply::Status(500),
        SlackReply::Ok,
        SlackReply::Status(404),
    ]);
    let (alerts, sender) = Alerts::start(&settings(&slack), "chatd", "node-1").unwrap();
    alerts.raise("a", alert("a"));
    slack.wait_requests(2).await;
    alerts.raise("b", alert("b"));
    slack.wait_requests(3).await;
    let stats = sender.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.posted, stats.failed), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let slack = FakeSlack::start().await;
    let mut s = settings(&slack);
    s.queue_capacity = 2;
    let (alerts, sender) = Alerts::start(&s, "chatd", "node-1").unwrap();
    // The sender task cannot run until this test awaits: the queue fills up.
    for i in 0..10 {
        alerts.raise(format!("fp-{i}"), alert("x"));
    }
    assert_eq!(alerts.stats().dropped, 8);
    let stats = sender.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.posted, 2);
}

#[tokio::test(start_paused = true)]
async fn error_events_become_alerts_fingerprinted_by_callsite_not_values() {
    let slack = FakeSlack::start().await;
    let mut settings = Settings::new("chatd", "node-1");
    settings.format = LogFormat::Json;
    let mut slack_settings = SlackSettings::new(slack.url());
    slack_settings.dedup_window = Duration::from_secs(60);
    settings.slack = Some(slack_settings);
    let (layer, telemetry) =
        layers_with_writer::<Registry, _>(settings, Capture::default()).unwrap();
    {
        let _default = tracing::subscriber::set_default(Registry::default().with(layer));
        let span = tracing::info_span!("request", request_id = "r-7");
        let _e = span.enter();
        for i in 0..3 {
            let e = std::io::Error::other(format!("disk {i} full"));
            tracing::error!(error = %e, "cannot append to room {i}");
        }
        tracing::error!("another callsite");
        tracing::warn!("warnings are not alerts");
    }
    let got = slack.wait_requests(2).await;
    let first = &got[0].1;
    assert!(header(first).contains("cannot append to room 0"), "{first}");
    assert!(all_text(first).contains("disk 0 full"));
    assert!(
        all_text(first).contains("r-7"),
        "span fields are details: {first}"
    );
    assert!(header(&got[1].1).contains("another callsite"));
    // Shutdown posts the summary of the open window.
    telemetry.shutdown(Duration::from_secs(30)).await;
    let got = slack.received();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[2].1["text"].as_str().unwrap().contains("2 more"));
}

/// The webhook URL is a secret (whoever has it can post to the channel): a failing post must
/// not put it in a log line.
#[tokio::test(start_paused = true)]
async fn a_failing_webhook_is_logged_without_its_url() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let secret = "s3cr3tW3bh00kT0ken";
    // Bound but not listening: connections are refused, and nothing else can take the port.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut s = SlackSettings::new(format!(
        "http://{}/services/T000/B000/{secret}",
        held.local_addr().unwrap()
    ));
    s.max_attempts = 2;
    let (alerts, sender) = Alerts::start(&s, "chatd", "node-1").unwrap();
    alerts.raise("fp", alert("unreachable"));
    let stats = sender.shutdown(Duration::from_secs(60)).await;
    assert_eq!(stats.failed, 1, "the post failed and was given up");
    let logged = capture.lines().join("\n");
    assert!(logged.contains("cannot post an alert to Slack"), "{logged}");
    assert!(!logged.contains(secret), "the webhook URL leaked: {logged}");
}
