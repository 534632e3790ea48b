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
