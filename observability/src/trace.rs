//! OpenTelemetry traces: every `tracing` span is an OTel span (through
//! `tracing-opentelemetry`), exported over OTLP http/protobuf when an endpoint is configured.
//! Without one the tracer provider has no exporter: spans still get trace and span ids, for the
//! log lines and for propagation, and cost little more than the ids.
//!
//! The exporter honours the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`. Only `http/protobuf` is built in: another
//! `OTEL_EXPORTER_OTLP_PROTOCOL` falls back to it with a warning.
//!
//! W3C trace context: [`current_traceparent`] gives the header for the current span,
//! [`set_parent_from_traceparent`] continues a trace received from elsewhere.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, TracerProviderBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::{Error, Result};
use crate::settings::Settings;

/// Extra set-up of the tracer provider (the in-memory exporter of tests).
pub(crate) type ProviderHook = Box<dyn FnOnce(TracerProviderBuilder) -> TracerProviderBuilder>;

/// The tracer provider for these settings, and warnings to log once logging works.
pub(crate) fn provider(
    settings: &Settings,
    hook: Option<ProviderHook>,
) -> Result<(SdkTracerProvider, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(settings.service_name.clone());
    }
    resource = resource.with_attribute(KeyValue::new(
        "service.instance.id",
        settings.node_name.clone(),
    ));
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if settings.otlp {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(TokioHttpClient { client, runtime });
        if let Some(endpoint) = &settings.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .ok();
        if let Some(p) = protocol.filter(|p| p.trim() != "http/protobuf") {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported; using http/protobuf"
            ));
            exporter = exporter.with_protocol(Protocol::HttpBinary);
        }
        let exporter = exporter.build().map_err(|e| Error::Otlp(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    if let Some(hook) = hook {
        builder = hook(builder);
    }
    Ok((builder.build(), warnings))
}

/// The OTLP exporter's HTTP client. The SDK's batch processor exports from its own thread,
/// outside any tokio runtime, so requests are spawned onto the runtime `init` ran in. This is
/// reqwest 0.12 with the ring-based rustls the rest of the workspace uses (the exporter's own
/// reqwest feature would pull in a second TLS crypto provider).
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> std::result::Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let task = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await??;
        let mut out = Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        Ok(out.body(body)?)
    }
}

fn span_context_of(cx: &Context) -> Option<opentelemetry::trace::SpanContext> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// The W3C `traceparent` of the current span (`00-<trace id>-<span id>-<flags>`), if there is
/// one with a valid OpenTelemetry context (the OTel layer is installed).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
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
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    set_parent_from_headers(span, traceparent, None)
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
    set_parent_from_traceparent(&span, &tp);
    span
}

/// [`set_parent_from_traceparent`] with a `tracestate` header as well.
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
