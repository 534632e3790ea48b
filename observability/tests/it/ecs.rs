//! ECS lines as written by the layer.

use observability::testing::layers_with_exporter;
use observability::{LogFormat, Settings};
use serde_json::Value;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::Capture;

fn json_settings() -> Settings {
    let mut s = Settings::new("chatd", "node-1");
    s.format = LogFormat::Json;
    s
}

#[derive(Debug)]
enum StoreError {
    #[allow(dead_code)] // read through Debug
    Io(String),
}

#[test]
fn an_error_event_inside_a_span_has_the_ecs_keys_and_the_span_fields() {
    let capture = Capture::default();
    let (layer, _telemetry, _spans) =
        layers_with_exporter::<Registry, _>(json_settings(), capture.clone()).unwrap();
    let subscriber = Registry::default().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "request",
            request_id = "req-1",
            route = "/v1/rooms/{id}/messages",
            http.request.method = "POST",
        );
        let _entered = span.enter();
        let e = std::io::Error::other("disk full");
        tracing::error!(error = %e, room_id = 7, url.path = "/v1/rooms/7/messages", "cannot append");
        tracing::warn!(error = ?StoreError::Io("x".into()), "retrying");
    });
    let lines = capture.json_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let l = &lines[0];
    for key in [
        "@timestamp",
        "log.level",
        "message",
        "ecs.version",
        "service.name",
        "service.node.name",
        "event.dataset",
        "log.logger",
        "trace.id",
        "span.id",
        "error.message",
    ] {
        assert!(l.get(key).is_some(), "{key} missing from {l}");
    }
    assert_eq!(l["log.level"], "error");
    assert_eq!(l["message"], "cannot append");
    assert_eq!(l["ecs.version"], "8.11.0");
    assert_eq!(l["service.name"], "chatd");
    assert_eq!(l["service.node.name"], "node-1");
    assert_eq!(l["event.dataset"], "chatd.log");
    assert_eq!(l["error.message"], "disk full");
    assert_eq!(l["http.request.id"], "req-1");
    assert_eq!(l["http.request.method"], "POST");
    assert_eq!(l["url.path"], "/v1/rooms/7/messages");
    assert_eq!(l["chat.route"], "/v1/rooms/{id}/messages");
    assert_eq!(l["chat.room_id"], 7);
    assert_eq!(l["chat.span"], "request");
    assert_eq!(l["trace.id"].as_str().unwrap().len(), 32);
    assert_eq!(l["span.id"].as_str().unwrap().len(), 16);
    assert!(l["@timestamp"].as_str().unwrap().ends_with('Z'));
    // A Debug rendering names the type.
    assert_eq!(lines[1]["error.type"], "Io");
    assert_eq!(lines[1]["log.level"], "warn");
    // Both events are in one span.
    assert_eq!(lines[0]["trace.id"], lines[1]["trace.id"]);
}

#[test]
fn the_trace_id_in_the_line_is_the_exported_spans() {
    let capture = Capture::default();
    let (layer, _telemetry, spans) =
        layers_with_exporter::<Registry, _>(json_settings(), capture.clone()).unwrap();
    let subscriber = Registry::default().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("send");
        span.in_scope(|| tracing::info!("inside"));
        tracing::info!("outside");
    });
    let lines = capture.json_lines();
    let exported = spans.get_finished_spans().unwrap();
    assert_eq!(exported.len(), 1);
    let ctx = &exported[0].span_context;
    assert_eq!(lines[0]["trace.id"], ctx.trace_id().to_string());
    assert_eq!(lines[0]["span.id"], ctx.span_id().to_string());
    // Outside any span there is no trace.
    assert!(lines[1].get("trace.id").is_none(), "{}", lines[1]);
}

#[test]
fn fields_that_collide_with_our_own_keys_move_under_chat() {
    let capture = Capture::default();
    let (layer, _telemetry, _spans) =
        layers_with_exporter::<Registry, _>(json_settings(), capture.clone()).unwrap();
    tracing::subscriber::with_default(Registry::default().with(layer), || {
        tracing::info!(service.name = "evil", user_id = 42u64, "hello");
    });
    let l = &capture.json_lines()[0];
    assert_eq!(l["service.name"], "chatd");
    assert_eq!(l["chat.service_name"], "evil");
    assert_eq!(l["user.id"], 42);
    // Exactly one `service.name` key in the raw line.
    let raw = &capture.lines()[0];
    assert_eq!(raw.matches("\"service.name\"").count(), 1, "{raw}");
}

#[test]
fn pretty_format_is_not_json() {
    let capture = Capture::default();
    let mut settings = json_settings();
    settings.format = LogFormat::Pretty;
    let (layer, _telemetry, _spans) =
        layers_with_exporter::<Registry, _>(settings, capture.clone()).unwrap();
    tracing::subscriber::with_default(Registry::default().with(layer), || {
        tracing::info!(room_id = 3, "hello there");
    });
    let lines = capture.lines();
    assert_eq!(lines.len(), 1);
    assert!(
        serde_json::from_str::<Value>(&lines[0]).is_err(),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("hello there") && lines[0].contains("room_id=3"),
        "{lines:?}"
    );
}
