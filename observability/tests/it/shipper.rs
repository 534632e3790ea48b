//! The Elasticsearch shipper against a fake `_bulk` endpoint on a real socket.

use std::collections::HashSet;
use std::time::Duration;

use observability::{
    Alerts, ElasticsearchSettings, LogFormat, Settings, Shipper, SlackSettings, layers_with_writer,
};
use serde_json::Value;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{Capture, EsReply, FakeEs, FakeSlack, HeldPort, eventually, header};

const WAIT: Duration = Duration::from_secs(20);

fn es_settings(url: &str) -> ElasticsearchSettings {
    let mut es = ElasticsearchSettings::new(url);
    es.batch_size = 10;
    es.flush_interval = Duration::from_millis(20);
    es.backoff_initial = Duration::from_millis(10);
    es.backoff_max = Duration::from_millis(50);
    es.request_timeout = Duration::from_secs(5);
    es
}

fn messages(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["message"].as_str().unwrap().to_owned())
        .collect()
}

fn line(i: usize) -> String {
    format!(r#"{{"message":"line {i}","log.level":"info"}}"#)
}

#[tokio::test]
async fn log_events_are_shipped_as_create_operations_with_ecs_fields() {
    let es = FakeEs::start().await;
    let mut settings = Settings::new("chatd", "node-1");
    settings.format = LogFormat::Json;
    settings.elasticsearch = Some(es_settings(&es.url()));
    let capture = Capture::default();
    let (layer, telemetry) = layers_with_writer::<Registry, _>(settings, capture.clone()).unwrap();
    let subscriber = Registry::default().with(layer);
    {
        let _default = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("request", request_id = "r-9");
        let _e = span.enter();
        for i in 0..25 {
            tracing::info!(seq = i, http.response.status_code = 201u64, "message {i}");
        }
        tracing::warn!(error = %std::io::Error::other("boom"), "went wrong");
    }
    es.wait_indexed(WAIT, |d| d.len() == 26).await;

    let requests = es.requests();
    assert!(
        requests.len() >= 3,
        "batches of at most 10: {}",
        requests.len()
    );
    for r in &requests {
        assert_eq!(r.path, "/logs-chatd-default/_bulk");
        assert_eq!(r.content_type, "application/x-ndjson");
        assert!(r.docs.len() <= 10);
        for a in &r.actions {
            assert_eq!(a, &serde_json::json!({"create": {}}));
        }
    }
    let docs = es.indexed();
    let expected: Vec<String> = (0..25).map(|i| format!("message {i}")).collect();
    assert_eq!(messages(&docs)[..25], expected[..]);
    let d = &docs[0];
    assert_eq!(d["service.name"], "chatd");
    assert_eq!(d["service.node.name"], "node-1");
    assert_eq!(d["event.dataset"], "chatd.log");
    assert_eq!(d["log.level"], "info");
    assert_eq!(d["chat.seq"], 0);
    assert_eq!(d["http.response.status_code"], 201);
    assert_eq!(d["http.request.id"], "r-9");
    assert!(d["trace.id"].is_string());
    assert_eq!(docs[25]["error.message"], "boom");
    // The line on stdout is the line shipped.
    let stdout = capture.json_lines();
    assert_eq!(stdout[0], docs[0]);

    // The fake has indexed them; the shipper counts them once it has read the response.
    eventually(WAIT, "the responses to be read", || {
        telemetry.shipper_stats().unwrap().shipped == 26
    })
    .await;
    let stats = telemetry.shipper_stats().unwrap();
    assert_eq!((stats.accepted, stats.dropped, stats.failed), (26, 0, 0));
    telemetry.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_429_a_503_and_items_refused_with_429_are_retried_and_arrive_once() {
    let es = FakeEs::start().await;
    es.script([
        EsReply::Status(429),
        EsReply::Status(503),
        EsReply::Items(vec![429, 201, 429, 201, 201]),
    ]);
    let mut settings = es_settings(&es.url());
    settings.batch_size = 5;
    let shipper = Shipper::start(&settings, Alerts::disabled()).unwrap();
    let handle = shipper.handle();
    for i in 0..5 {
        assert!(handle.try_send(line(i)));
    }
    es.wait_indexed(WAIT, |d| d.len() == 5).await;
    let got: HashSet<String> = messages(&es.indexed()).into_iter().collect();
    assert_eq!(got.len(), 5);

    let requests = es.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    // The last request carried only the two items refused with 429.
    assert_eq!(messages(&requests[3].docs), ["line 0", "line 2"]);

    let stats = shipper.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.shipped, 5);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.batch_retries, 3);
    assert_eq!(stats.batches_ok, 1);
}

#[tokio::test]
async fn items_refused_for_good_are_counted_as_failed_and_not_retried() {
    let es = FakeEs::start().await;
    es.script([EsReply::Items(vec![400, 201])]);
    let mut settings = es_settings(&es.url());
    settings.batch_size = 2;
    let shipper = Shipper::start(&settings, Alerts::disabled()).unwrap();
    shipper.handle().try_send(line(0));
    shipper.handle().try_send(line(1));
    eventually(WAIT, "the batch to be done", || {
        shipper.stats().batches_ok == 1
    })
    .await;
    let stats = shipper.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.shipped, stats.failed), (1, 1));
    assert_eq!(es.requests().len(), 1);
}

#[tokio::test]
async fn while_elasticsearch_is_down_memory_is_bounded_and_drops_are_counted_then_it_recovers() {
    let es = FakeEs::start().await;
    es.set_down(true);
    let mut settings = es_settings(&es.url());
    settings.batch_size = 5;
    settings.queue_capacity = 20;
    let shipper = Shipper::start(&settings, Alerts::disabled()).unwrap();
    let handle = shipper.handle();
    // Let the first batch be taken and fail, so the queue is what is left to fill.
    for i in 0..5 {
        handle.try_send(line(i));
    }
    eventually(WAIT, "a failed attempt", || {
        shipper.stats().batch_retries >= 1
    })
    .await;
    let mut accepted = HashSet::new();
    for i in 0..5 {
        accepted.insert(format!("line {i}"));
    }
    for i in 5..200 {
        if handle.try_send(line(i)) {
            accepted.insert(format!("line {i}"));
        }
    }
    let stats = shipper.stats();
    assert!(stats.queue_depth <= 20, "{stats:?}");
    assert_eq!(stats.accepted, 25, "{stats:?}");
    assert_eq!(stats.dropped, 175, "{stats:?}");
    assert_eq!(stats.shipped, 0);

    es.set_down(false);
    es.wait_indexed(WAIT, |d| d.len() == accepted.len()).await;
    // After recovery, new lines arrive too.
    for i in 200..210 {
        assert!(handle.try_send(line(i)));
        accepted.insert(format!("line {i}"));
    }
    es.wait_indexed(WAIT, |d| d.len() == accepted.len()).await;
    let got = messages(&es.indexed());
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "nothing arrives twice");
    assert_eq!(unique, accepted);
    let stats = shipper.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.shipped, 35);
    assert_eq!(stats.failed, 0);
}

#[tokio::test]
async fn the_queue_is_bounded_by_bytes_too() {
    let port = HeldPort::new();
    let mut settings = es_settings(&format!("http://{}", port.addr()));
    settings.queue_bytes = 1000;
    settings.flush_interval = Duration::from_secs(3600);
    settings.batch_size = 10_000;
    let shipper = Shipper::start(&settings, Alerts::disabled()).unwrap();
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(400));
    let results: Vec<bool> = (0..5)
        .map(|_| shipper.handle().try_send(big.clone()))
        .collect();
    // The worker may have taken the first line off the queue already; at most 3 fit anyway.
    assert!(results[..2].iter().all(|ok| *ok), "{results:?}");
    assert!(!results[4], "{results:?}");
    assert!(shipper.stats().queue_bytes <= 1000);
    assert!(shipper.stats().dropped >= 2);
    shipper.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn connection_errors_are_retried_until_elasticsearch_listens() {
    let port = HeldPort::new();
    let shipper = Shipper::start(
        &es_settings(&format!("http://{}", port.addr())),
        Alerts::disabled(),
    )
    .unwrap();
    for i in 0..3 {
        shipper.handle().try_send(line(i));
    }
    eventually(WAIT, "two failed attempts", || {
        shipper.stats().batch_retries >= 2
    })
    .await;
    let es = FakeEs::start_on(port).await;
    es.wait_indexed(WAIT, |d| d.len() == 3).await;
    let stats = shipper.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.shipped, stats.failed), (3, 0));
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_and_gives_up_at_the_deadline() {
    let es = FakeEs::start().await;
    let mut settings = es_settings(&es.url());
    settings.flush_interval = Duration::from_secs(3600);
    settings.batch_size = 1000;
    let shipper = Shipper::start(&settings, Alerts::disabled()).unwrap();
    for i in 0..7 {
        shipper.handle().try_send(line(i));
    }
    let stats = shipper.shutdown(Duration::from_secs(10)).await;
    assert_eq!(es.indexed().len(), 7);
    assert_eq!(stats.shipped, 7);

    // Down for good: shutdown still returns, and counts what it could not send.
    let down = FakeEs::start().await;
    down.set_down(true);
    let shipper = Shipper::start(&es_settings(&down.url()), Alerts::disabled()).unwrap();
    let handle = shipper.handle();
    for i in 0..4 {
        handle.try_send(line(i));
    }
    let stats = shipper.shutdown(Duration::from_millis(300)).await;
    assert_eq!((stats.shipped, stats.failed), (0, 4), "{stats:?}");
    // Lines offered after shutdown are dropped, not queued.
    assert!(!handle.try_send(line(5)));
    assert_eq!(handle.stats().dropped, 1);
}

#[tokio::test]
async fn a_failing_shipper_raises_an_alert_and_resolves_it_when_it_recovers() {
    let es = FakeEs::start().await;
    es.set_down(true);
    let slack = FakeSlack::start().await;
    let (alerts, sender) =
        Alerts::start(&SlackSettings::new(slack.url()), "chatd", "node-1").unwrap();
    let mut settings = es_settings(&es.url());
    settings.failing_alert_after = Duration::ZERO;
    let shipper = Shipper::start(&settings, alerts).unwrap();
    shipper.handle().try_send(line(0));
    let got = slack.wait_requests(1).await;
    assert!(header(&got[0].1).contains("Log shipping"), "{}", got[0].1);
    es.set_down(false);
    let got = slack.wait_requests(2).await;
    assert!(header(&got[1].1).contains("Resolved"), "{}", got[1].1);
    shipper.shutdown(Duration::from_secs(5)).await;
    sender.shutdown(Duration::from_secs(5)).await;
}
