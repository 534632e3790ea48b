//! OpenTelemetry: the spans of one send (the request, the append, both projections and the
//! fan-out) share the caller's trace id, recorded by an in-process exporter.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::helpers::spawn_app;
use crate::ws::eventually;

/// The process-wide subscriber with an in-memory exporter (tests run in parallel: each
/// filters the spans by its own trace id). Logs go nowhere.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let settings = observability::Settings::new("chatd", "test-node");
        let (layer, telemetry, exporter) =
            observability::testing::layers_with_exporter(settings, std::io::sink).unwrap();
        // The subscriber lives as long as the process; so must what it exports through.
        std::mem::forget(telemetry);
        tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::EnvFilter::new("info"))
            .try_init()
            .expect("no other global subscriber in this test binary");
        exporter
    })
}

fn spans_of(trace: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace)
        .collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test]
async fn the_spans_of_one_send_share_its_trace() {
    exporter();
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.create_room(&alice, "traced", &[&bob]).await;

    let trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let caller_span = "00f067aa0ba902b7";
    let resp = app
        .http
        .post(format!("{}/v1/rooms/{room}/messages", app.base))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&serde_json::json!({"body": "follow me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);

    let wanted = [
        "http.request",
        "eventlog.append",
        "projection.apply read_model",
        "projection.apply search",
        "fanout",
    ];
    let label = |s: &SpanData| match attr(s, "projection") {
        Some(p) => format!("{} {p}", s.name),
        None => s.name.to_string(),
    };
    eventually("every part of the send in the trace", || async {
        let names: BTreeSet<String> = spans_of(&trace).iter().map(label).collect();
        wanted.iter().all(|w| names.contains(*w))
    })
    .await;

    let spans = spans_of(&trace);
    let request = spans.iter().find(|s| s.name == "http.request").unwrap();
    assert_eq!(
        request.parent_span_id.to_string(),
        caller_span,
        "the request continues the caller's span"
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("201")
    );
    let append = spans.iter().find(|s| s.name == "eventlog.append").unwrap();
    assert_eq!(
        append.parent_span_id,
        request.span_context.span_id(),
        "the append happens inside the request"
    );
    // The consumers run in their own tasks, parented by the request's context carried in
    // the event's metadata.
    for consumer in spans
        .iter()
        .filter(|s| s.name != "http.request" && s.name != "eventlog.append")
    {
        assert_eq!(
            consumer.parent_span_id,
            request.span_context.span_id(),
            "{} continues the request",
            label(consumer)
        );
    }

    // A request without a traceparent starts a trace of its own.
    app.send(&alice, &room, "untraced").await;
    let path = format!("/v1/rooms/{room}/messages");
    let sends: Vec<String> = exporter()
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|s| s.name == "http.request" && attr(s, "url.path") == Some(path.clone()))
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(
        sends.iter().filter(|t| **t == trace).count(),
        1,
        "{sends:?}"
    );
}

#[tokio::test]
async fn a_send_is_one_trace_on_every_node_that_consumes_it() {
    exporter();
    let nats = eventlog_testkit::nats_server::NatsServer::start();
    let a = crate::cluster::node(&nats.url(), 1).await;
    let b = crate::cluster::node(&nats.url(), 1).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let room = a.create_room(&alice, "across", &[&bob]).await;

    let trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let resp = a
        .http
        .post(format!("{}/v1/rooms/{room}/messages", a.base))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"body": "to both nodes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);

    // Node A handles the request; both nodes project the event and fan it out (each of a
    // node's two hub shards, see `helpers::settings`, for its own connections).
    let count = |spans: &[SpanData], name: &str, projection: Option<&str>| {
        spans
            .iter()
            .filter(|s| s.name == name && attr(s, "projection").as_deref() == projection)
            .count()
    };
    eventually("both nodes' consumers in the trace", || async {
        let spans = spans_of(&trace);
        count(&spans, "fanout", None) == 4
            && count(&spans, "projection.apply", Some("read_model")) == 2
            && count(&spans, "projection.apply", Some("search")) == 2
    })
    .await;
    let spans = spans_of(&trace);
    let mut shards: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "fanout")
        .filter_map(|s| attr(s, "hub.shard"))
        .collect();
    shards.sort();
    assert_eq!(shards, ["0", "0", "1", "1"]);
    assert_eq!(count(&spans, "http.request", None), 1);
    let request = spans.iter().find(|s| s.name == "http.request").unwrap();
    for consumer in spans
        .iter()
        .filter(|s| s.name == "fanout" || s.name == "projection.apply")
    {
        assert_eq!(consumer.parent_span_id, request.span_context.span_id());
    }
    drop(b);
}
