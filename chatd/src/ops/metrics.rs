//! Prometheus metrics: the recorder, `GET /metrics`, and what chatd measures.
//!
//! Code records through the `metrics` facade (`metrics::counter!(names::…)`); the
//! Prometheus recorder is installed once per process by [`install`] and rendered by the
//! `/metrics` route. Every metric name is a constant in [`names`], so dashboards, alert
//! rules (`docker/prometheus/`) and tests have one list to agree with.
//!
//! Gauges that describe the state of the node rather than count things are set where that
//! state lives: the fan-out queue depth by the hub, projection lag by
//! [`super::monitor`].

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};

/// Metric names (the Prometheus text shows them as is).
pub mod names {
    pub const HTTP_REQUESTS: &str = "chat_http_requests_total";
    pub const HTTP_DURATION: &str = "chat_http_request_duration_seconds";
    pub const WS_CONNECTIONS: &str = "chat_ws_connections";
    pub const SSE_CONNECTIONS: &str = "chat_sse_connections";
    pub const MESSAGES_SENT: &str = "chat_messages_sent_total";
    pub const DELIVERIES: &str = "chat_deliveries_total";
    pub const FANOUT_QUEUE_DEPTH: &str = "chat_fanout_queue_depth";
    pub const FANOUT_FORCED_DISCONNECTS: &str = "chat_fanout_forced_disconnects_total";
    pub const APPEND_DURATION: &str = "chat_eventlog_append_duration_seconds";
    pub const APPEND_ERRORS: &str = "chat_eventlog_append_errors_total";
    pub const PROJECTION_LAG_EVENTS: &str = "chat_projection_lag_events";
    pub const PROJECTION_LAG_SECONDS: &str = "chat_projection_lag_seconds";
}

/// The kind of a metric, as Prometheus' `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The metrics chatd exports on `/metrics`, with their labels (besides `node`, `job` and
/// `instance`, which Prometheus adds). The alert rules and the Grafana dashboard may use these
/// and nothing else; the dashboard must show every one of them. The integration test `metrics` checks
/// it against the real `/metrics` output (its `# TYPE` lines); `docker-tests` checks the
/// dashboards and alert rules against it.
pub const CATALOGUE: &[(&str, Kind, &[&str])] = &[
    (
        names::HTTP_REQUESTS,
        Kind::Counter,
        &["method", "route", "status"],
    ),
    (names::HTTP_DURATION, Kind::Histogram, &["method", "route"]),
    (names::WS_CONNECTIONS, Kind::Gauge, &[]),
    (names::SSE_CONNECTIONS, Kind::Gauge, &[]),
    (names::MESSAGES_SENT, Kind::Counter, &[]),
    (names::DELIVERIES, Kind::Counter, &["transport"]),
    (names::FANOUT_QUEUE_DEPTH, Kind::Gauge, &[]),
    (names::FANOUT_FORCED_DISCONNECTS, Kind::Counter, &["reason"]),
    (names::APPEND_DURATION, Kind::Histogram, &[]),
    (names::APPEND_ERRORS, Kind::Counter, &["kind"]),
    (names::PROJECTION_LAG_EVENTS, Kind::Gauge, &["projection"]),
    (names::PROJECTION_LAG_SECONDS, Kind::Gauge, &["projection"]),
    ("chat_log_shipper_events_total", Kind::Counter, &["outcome"]),
    ("chat_log_shipper_queue_depth", Kind::Gauge, &[]),
    (
        "chat_log_shipper_batches_total",
        Kind::Counter,
        &["outcome"],
    ),
    ("chat_alerts_total", Kind::Counter, &["outcome"]),
];

/// Upper bounds of the latency histograms' buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle). `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    zero();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration");
    describe_gauge!(WS_CONNECTIONS, "open WebSocket connections");
    describe_gauge!(SSE_CONNECTIONS, "open SSE streams");
    describe_counter!(
        MESSAGES_SENT,
        "messages sent (appended; retries not counted)"
    );
    describe_counter!(DELIVERIES, "events delivered to live clients, by transport");
    describe_gauge!(FANOUT_QUEUE_DEPTH, "frames queued for live clients");
    describe_counter!(
        FANOUT_FORCED_DISCONNECTS,
        "live clients disconnected because they could not keep up"
    );
    describe_histogram!(APPEND_DURATION, Unit::Seconds, "event-log append latency");
    describe_counter!(APPEND_ERRORS, "failed event-log appends, by kind");
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "events in the log a projection has not applied yet"
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "how long a projection has been behind the head of the log it last saw"
    );
}

/// Shows the series that start at zero from the first scrape, so dashboards and rates have
/// them before the first message or connection.
fn zero() {
    use names::*;
    metrics::counter!(MESSAGES_SENT).absolute(0);
    metrics::gauge!(WS_CONNECTIONS).increment(0.0);
    metrics::gauge!(SSE_CONNECTIONS).increment(0.0);
    for transport in ["ws", "sse"] {
        metrics::counter!(DELIVERIES, "transport" => transport).absolute(0);
    }
    metrics::counter!(FANOUT_FORCED_DISCONNECTS, "reason" => "too_slow").absolute(0);
    // So `rate()` sees the first failure of the kinds that happen in production.
    for kind in ["unavailable", "closed"] {
        metrics::counter!(APPEND_ERRORS, "kind" => kind).absolute(0);
    }
}

/// `GET /metrics`: the Prometheus text format.
#[poem::handler]
pub fn render() -> Response {
    match install() {
        Some(handle) => Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(handle.render()),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Middleware: counts and times every request by method, route and status.
pub async fn track_http<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    // Any token is a valid method to hyper: only the standard ones get their own series.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = route_of(req.uri().path());
    let result = ep.call(req).await.map(IntoResponse::into_response);
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(names::HTTP_DURATION, "method" => method, "route" => route).record(elapsed);
    metrics::counter!(
        names::HTTP_REQUESTS,
        "method" => method,
        "route" => route,
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    result
}

/// The routes chatd serves, as templates with every path parameter written `{id}`.
static ROUTES: OnceLock<std::collections::HashSet<String>> = OnceLock::new();

/// Records the API's routes from its OpenAPI document (its `paths`, which include the
/// service's URL prefix), plus the operational endpoints. Only these become `route` labels.
pub fn register_routes(openapi_json: &str) {
    ROUTES.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(openapi_json).unwrap_or_default();
        let api = spec["paths"]
            .as_object()
            .into_iter()
            .flat_map(|paths| paths.keys())
            .map(|path| template(path, |seg| seg.starts_with('{')));
        let ops = ["/healthz", "/readyz", "/metrics", "/openapi.json"].map(String::from);
        api.chain(ops).collect()
    });
}

fn template(path: &str, is_param: impl Fn(&str) -> bool) -> String {
    path.trim_end_matches('/')
        .split('/')
        .map(|seg| if is_param(seg) { "{id}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The route template of `path` (ids become `{id}`) if chatd serves it, else `other`, so
/// made-up paths cannot multiply the series.
fn route_of(path: &str) -> &'static str {
    let template = template(path, |seg| {
        uuid::Uuid::parse_str(seg).is_ok()
            || (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
    });
    ROUTES
        .get()
        .and_then(|routes| routes.get(&template))
        .map_or("other", String::as_str)
}

/// Counts a connection in a gauge while it lives.
#[derive(Debug)]
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    pub fn open(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::{register_routes, route_of};

    #[test]
    fn routes_are_templates() {
        register_routes(
            r#"{"paths": {"/v1/rooms": {}, "/v1/rooms/{room_id}": {}, "/v1/rooms/{room_id}/messages/{message_id}": {}}}"#,
        );
        assert_eq!(
            route_of("/v1/rooms/0190f3c2-8d4e-7a51-b0c2-1f2e3d4c5b6a/messages/17"),
            "/v1/rooms/{id}/messages/{id}"
        );
        assert_eq!(route_of("/v1/rooms/"), "/v1/rooms");
        assert_eq!(route_of("/metrics"), "/metrics");
        assert_eq!(route_of("/wp-admin/setup.php"), "other");
        assert_eq!(route_of(&format!("/v1/{}", "a/".repeat(20))), "other");
        // Only served routes: an id that is not one does not make a new label.
        assert_eq!(route_of("/v1/rooms/undefined"), "other");
    }
}
