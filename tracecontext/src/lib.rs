//! W3C trace context (`traceparent`), owned here and nowhere else.
//!
//! - [`parse`] accepts a `traceparent` a client sent, if it is well formed (version 00);
//! - [`of`] / [`current`] give the header for a span, [`current_trace_id`] its trace id;
//! - [`set_parent`] makes a span continue a trace received from elsewhere, and [`continuing`]
//!   builds a consumer's span that way (projections, the search index, fan-out);
//! - [`scope`] and [`scoped`] carry the trace of the request being handled down to where its
//!   events are appended, so every node that consumes them joins the same trace.
//!
//! The spans are `tracing` spans; their OpenTelemetry context exists when the `observability`
//! crate has installed its layer (otherwise the functions that need one return `None`/`false`).

use std::collections::HashMap;
use std::future::Future;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    /// The `traceparent` of the request being handled, if there is one.
    static REQUEST_TRACE: Option<String>;
}

/// Runs `fut` as the handling of a request whose trace is `traceparent`: [`scoped`] returns it
/// inside.
pub async fn scope<F: Future>(traceparent: Option<String>, fut: F) -> F::Output {
    REQUEST_TRACE.scope(traceparent, fut).await
}

/// The trace of the request being handled (see [`scope`]), for the metadata of the events it
/// appends.
pub fn scoped() -> Option<String> {
    REQUEST_TRACE.try_with(Clone::clone).ok().flatten()
}

/// `traceparent` if it is a well-formed W3C trace context (version 00, non-zero ids),
/// lower-cased.
pub fn parse(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if *version == "00"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some(v.trim().to_ascii_lowercase())
        }
        _ => None,
    }
}

fn span_context_of(cx: &Context) -> Option<opentelemetry::trace::SpanContext> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// The W3C `traceparent` of the current span (`00-<trace id>-<span id>-<flags>`), if there is
/// one with a valid OpenTelemetry context (the OTel layer is installed).
pub fn current() -> Option<String> {
    of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`.
pub fn of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    span_context_of(&cx)?;
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id of the current span, as 32 hex digits.
pub fn current_trace_id() -> Option<String> {
    span_context_of(&tracing::Span::current().context()).map(|sc| sc.trace_id().to_string())
}

/// Makes `span` a child of the remote span in `traceparent`, so it and its children continue
/// that trace. Call it right after creating the span, before it is entered or logged in (a
/// span whose OTel span has started cannot change parent). Returns `false` when the header is
/// malformed or the span cannot take a parent (no OTel layer, already started, disabled).
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> bool {
    set_parent_from_headers(span, traceparent, None)
}

/// [`set_parent`] with a `tracestate` header as well.
pub fn set_parent_from_headers(
    span: &tracing::Span,
    traceparent: &str,
    tracestate: Option<&str>,
) -> bool {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_owned(), ts.to_owned());
    }
    // Against an empty context: a malformed header must not fall back to the current one.
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    if span_context_of(&cx).is_none() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// A span made by `make`, continuing the trace in `traceparent`; no span at all without one.
/// For the consumers of an event (projections, the search index, fan-out), whose work
/// belongs to the trace of the request that appended it, and costs nothing otherwise.
pub fn continuing(
    traceparent: Option<String>,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    let Some(tp) = traceparent else {
        return tracing::Span::none();
    };
    let span = make();
    set_parent(&span, &tp);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_version_00_headers_parse() {
        let ok = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(parse(ok).as_deref(), Some(ok.to_ascii_lowercase().as_str()));
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_request_trace_is_seen_inside_its_scope_only() {
        assert_eq!(scoped(), None);
        let inside = scope(Some("tp".into()), async { scoped() }).await;
        assert_eq!(inside.as_deref(), Some("tp"));
        assert_eq!(scoped(), None);
    }
}
