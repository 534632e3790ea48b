//! Spans of one operation share a trace id, across a W3C `traceparent` too.

use observability::testing::layers_with_exporter;
use observability::trace::{current_trace_id, current_traceparent, set_parent_from_traceparent};
use observability::{LogFormat, Settings};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::Capture;

#[test]
fn parent_child_and_a_span_continued_from_a_traceparent_share_the_trace_id() {
    let mut settings = Settings::new("chatd", "node-1");
    settings.format = LogFormat::Json;
    let (layer, _telemetry, spans) =
        layers_with_exporter::<Registry, _>(settings, Capture::default()).unwrap();
    let subscriber = Registry::default().with(layer);
    let (traceparent, trace_id) = tracing::subscriber::with_default(subscriber, || {
        let parent = tracing::info_span!("http_request");
        let _p = parent.enter();
        let child = tracing::info_span!("append");
        let _c = child.enter();
        let traceparent = current_traceparent().unwrap();
        let trace_id = current_trace_id().unwrap();
        // Elsewhere (another task, another node): continue the trace.
        let consumer = tracing::info_span!(parent: None, "project");
        assert!(set_parent_from_traceparent(&consumer, &traceparent));
        consumer.in_scope(|| {
            let inner = tracing::info_span!("apply");
            inner.in_scope(|| assert_eq!(current_trace_id().as_deref(), Some(trace_id.as_str())));
        });
        // A malformed header changes nothing.
        let other = tracing::info_span!(parent: None, "other");
        assert!(!set_parent_from_traceparent(&other, "00-not-a-trace-01"));
        (traceparent, trace_id)
    });
    let finished = spans.get_finished_spans().unwrap();
    let by_name = |n: &str| {
        finished
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n}"))
    };
    for name in ["http_request", "append", "project", "apply"] {
        assert_eq!(
            by_name(name).span_context.trace_id().to_string(),
            trace_id,
            "{name}"
        );
    }
    assert_ne!(
        by_name("other").span_context.trace_id().to_string(),
        trace_id
    );
    let append = by_name("append");
    assert_eq!(
        append.parent_span_id,
        by_name("http_request").span_context.span_id()
    );
    assert_eq!(
        by_name("project").parent_span_id,
        append.span_context.span_id()
    );
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", trace_id, append.span_context.span_id())
    );
}

#[test]
fn no_span_no_traceparent() {
    assert!(current_traceparent().is_none());
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http_protobuf() {
    use std::sync::{Arc, Mutex};

    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::{Request, Response, Server};

    /// Path, content type, body.
    type Export = (String, String, Vec<u8>);
    let received: Arc<Mutex<Vec<Export>>> = Arc::default();
    let r = received.clone();
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    let collector = tokio::spawn(async move {
        let app = poem::endpoint::make(move |req: Request| {
            let r = r.clone();
            async move {
                let path = req.uri().path().to_owned();
                let ct = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req.into_body().into_vec().await.unwrap();
                r.lock().unwrap().push((path, ct, body));
                Response::builder()
                    .content_type("application/x-protobuf")
                    .body(Vec::<u8>::new())
            }
        });
        let _ = Server::new_with_acceptor(acceptor).run(app).await;
    });

    let mut settings = Settings::new("chatd", "node-1");
    settings.format = LogFormat::Json;
    settings.otlp = true;
    settings.otlp_endpoint = Some(format!("http://{addr}/v1/traces"));
    let (layer, telemetry) =
        observability::layers_with_writer::<Registry, _>(settings, Capture::default()).unwrap();
    {
        let _default = tracing::subscriber::set_default(Registry::default().with(layer));
        let span = tracing::info_span!("send_message", room_id = 1);
        span.in_scope(|| tracing::info_span!("append_events").in_scope(|| {}));
    }
    // Shutdown flushes the batch processor, whose export runs on this runtime.
    telemetry.shutdown(std::time::Duration::from_secs(10)).await;
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "nothing exported");
    let (path, ct, body) = &got[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    let body = String::from_utf8_lossy(body);
    assert!(body.contains("send_message") && body.contains("append_events"));
    assert!(body.contains("chatd"), "service.name in the resource");
    collector.abort();
}
