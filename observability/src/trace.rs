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
//! W3C trace context is the `tracecontext` crate's; its helpers are re-exported here.

use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, TracerProviderBuilder};

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

/// The W3C trace-context helpers, owned by the `tracecontext` crate (re-exported under the
/// names this crate has always used).
pub use tracecontext::{
    continuing, current as current_traceparent, current_trace_id, of as traceparent_of,
    set_parent as set_parent_from_traceparent, set_parent_from_headers,
};
