//! Log events as Elastic Common Schema JSON lines.
//!
//! One line per event, dotted keys as Elastic's own ECS loggers write them:
//! `@timestamp`, `log.level`, `message`, `ecs.version`, `service.name`, `service.node.name`,
//! `event.dataset`, `log.logger`, `log.origin.file.*`, `trace.id`/`span.id` (from the
//! OpenTelemetry context of the current span, when there is one), `error.*`, then the fields of
//! the spans in scope (outermost first, inner ones win) and of the event:
//!
//! - `error` (the code base logs `error = %e`) becomes `error.message`; a value recorded as
//!   `&dyn Error` adds its sources as `error.stack_trace` (one `caused by:` line each).
//!   `error.type` is an explicit `error.type`/`error_type` field, else the type or variant name
//!   when the value is a `Debug` rendering (`error = ?e` gives `Io(..)` → `Io`).
//! - Names that already are ECS (`http.request.method`, `url.path`, `user.id`, `client.ip`, any
//!   dotted name whose first part is an ECS field set) pass through unchanged.
//! - A few plain names are mapped to ECS: `request_id` → `http.request.id`, `method` →
//!   `http.request.method`, `path` → `url.path`, `status` → `http.response.status_code`,
//!   `user_id` → `user.id`.
//! - Everything else goes under `chat.` with dots replaced by `_` (`room_id` → `chat.room_id`),
//!   so our own names can never clash with ECS or with each other (a leaf and an object).
//! - `chat.span` is the name of the current span.
//!
//! The same line feeds stdout (in JSON mode), the Elasticsearch shipper, and, for ERROR events,
//! the Slack alerts.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::alerts::{Alert, Alerts, Severity};
use crate::shipper::ShipperHandle;

/// The ECS version the lines follow.
pub const ECS_VERSION: &str = "8.11.0";

/// Dotted names starting with one of these are ECS already and keep their name.
const ECS_FIELD_SETS: &[&str] = &[
    "client",
    "cloud",
    "container",
    "destination",
    "dns",
    "error",
    "event",
    "file",
    "host",
    "http",
    "labels",
    "network",
    "process",
    "server",
    "service",
    "source",
    "span",
    "trace",
    "transaction",
    "url",
    "user",
    "user_agent",
];

/// Plain names with an obvious ECS home.
const ALIASES: &[(&str, &str)] = &[
    ("request_id", "http.request.id"),
    ("method", "http.request.method"),
    ("path", "url.path"),
    ("status", "http.response.status_code"),
    ("user_id", "user.id"),
];

/// Keys this layer writes itself; an event field with one of these names goes under `chat.`.
const RESERVED: &[&str] = &[
    "@timestamp",
    "log.level",
    "message",
    "ecs.version",
    "service.name",
    "service.node.name",
    "event.dataset",
    "log.logger",
    "log.origin.file.name",
    "log.origin.file.line",
    "trace.id",
    "span.id",
    "error.type",
    "error.message",
    "error.stack_trace",
    "chat.span",
];

/// Maps a tracing field name to its key in the ECS line.
pub fn ecs_key(name: &str) -> Cow<'static, str> {
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == name) {
        return Cow::Borrowed(to);
    }
    if let Some((set, _)) = name.split_once('.')
        && ECS_FIELD_SETS.contains(&set)
        && !RESERVED.contains(&name)
    {
        return Cow::Owned(name.to_owned());
    }
    Cow::Owned(format!("chat.{}", name.replace('.', "_")))
}

/// Fields of an event or a span, already under their ECS names.
#[derive(Debug, Default, Clone)]
struct Fields {
    message: Option<String>,
    error_message: Option<String>,
    error_chain: Vec<String>,
    error_type_guess: Option<String>,
    error_type: Option<String>,
    /// `log.target` of an event bridged from the `log` crate.
    log_target: Option<String>,
    pairs: Vec<(Cow<'static, str>, Value)>,
}

impl Fields {
    fn set(&mut self, key: Cow<'static, str>, value: Value) {
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key, value)),
        }
    }

    fn value(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "error" => {
                let text = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                self.error_type_guess = type_name_of_debug(&text);
                self.error_message = Some(text);
            }
            "error.type" | "error_type" => {
                self.error_type = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => {
                if let Value::String(s) = value {
                    self.log_target = Some(s);
                }
            }
            // The rest of the `log` crate bridge's fields are in the normalised metadata.
            "log.module_path" | "log.file" | "log.line" => {}
            name => self.set(ecs_key(name), value),
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.value(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if field.name() == "error" {
            self.error_message = Some(value.to_string());
            let mut chain = Vec::new();
            let mut source = value.source();
            while let Some(s) = source {
                chain.push(s.to_string());
                source = s.source();
            }
            self.error_chain = chain;
        } else {
            self.value(field, Value::from(value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.value(field, Value::from(format!("{value:?}")));
    }
}

/// `Io(Custom { .. })` → `Io`, `Timeout` → `Timeout`; a Display message (lower case by Rust
/// convention, with spaces) → none.
fn type_name_of_debug(text: &str) -> Option<String> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    let last = name.rsplit("::").next().unwrap_or(name);
    let looks_like_type = last.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && (rest.is_empty() || rest.starts_with('(') || rest.starts_with(" {"));
    looks_like_type.then(|| last.to_owned())
}

/// Fields of a span, kept in its extensions.
#[derive(Debug, Default)]
struct SpanFields(Fields);

/// What an event looks like once formatted; used by the layer and by tests.
#[derive(Debug)]
pub(crate) struct Formatted {
    pub line: String,
    pub alert: Option<(String, Alert)>,
}

struct Base {
    service: String,
    node: String,
    dataset: String,
}

/// The layer that writes ECS lines to stdout (JSON mode), hands them to the Elasticsearch
/// shipper and turns ERROR events into Slack alerts. Build it with [`crate::layers`].
pub struct EcsLayer<W> {
    base: Arc<Base>,
    stdout: Option<W>,
    shipper: Option<ShipperHandle>,
    alerts: Alerts,
    error_alerts: bool,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl<W> std::fmt::Debug for EcsLayer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsLayer")
            .field("service", &self.base.service)
            .field("node", &self.base.node)
            .field("stdout", &self.stdout.is_some())
            .field("shipper", &self.shipper.is_some())
            .field("alerts", &self.alerts)
            .finish()
    }
}

impl<W> EcsLayer<W> {
    pub(crate) fn new(
        service: &str,
        node: &str,
        stdout: Option<W>,
        shipper: Option<ShipperHandle>,
        alerts: Alerts,
        error_alerts: bool,
    ) -> Self {
        Self {
            base: Arc::new(Base {
                service: service.to_owned(),
                node: node.to_owned(),
                dataset: format!("{service}.log"),
            }),
            stdout,
            shipper,
            alerts,
            error_alerts,
            dispatch: OnceLock::new(),
        }
    }

    fn wants_alert(&self, level: Level) -> bool {
        level == Level::ERROR && self.error_alerts && self.alerts.is_enabled()
    }

    fn format<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Formatted
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);

        // Span fields, outermost first so inner spans win.
        let mut extra: BTreeMap<Cow<'static, str>, Value> = BTreeMap::new();
        let current = ctx.event_span(event);
        let mut span_name = None;
        let mut current_id = None;
        if let Some(span) = &current {
            span_name = Some(span.name());
            current_id = Some(span.id());
            for s in span.scope().from_root() {
                if let Some(f) = s.extensions().get::<SpanFields>() {
                    for (k, v) in &f.0.pairs {
                        extra.insert(k.clone(), v.clone());
                    }
                    if let Some(m) = &f.0.message {
                        extra.insert(Cow::Borrowed("chat.message"), Value::from(m.as_str()));
                    }
                }
            }
        }
        for (k, v) in fields.pairs.drain(..) {
            extra.insert(k, v);
        }

        let (trace_id, span_id) = current_id
            .and_then(|id| self.otel_ids(&id))
            .map_or((None, None), |(t, s)| (Some(t), Some(s)));

        let level = *meta.level();
        let target = fields.log_target.as_deref().unwrap_or(meta.target());
        let message = fields.message.take().unwrap_or_default();
        let error_type = fields.error_type.take().or(fields.error_type_guess.take());
        let stack_trace = (!fields.error_chain.is_empty()).then(|| {
            fields.error_chain.iter().fold(String::new(), |mut acc, c| {
                if !acc.is_empty() {
                    acc.push('\n');
                }
                let _ = write!(acc, "caused by: {c}");
                acc
            })
        });

        let mut out = String::with_capacity(256);
        out.push('{');
        let mut first = true;
        let mut put = |out: &mut String, key: &str, value: &Value| {
            if !first {
                out.push(',');
            }
            first = false;
            push_json_str(out, key);
            out.push(':');
            // Writing into a String cannot fail.
            out.push_str(&value.to_string());
        };
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        put(&mut out, "@timestamp", &Value::from(timestamp));
        put(&mut out, "log.level", &Value::from(level_name(level)));
        put(&mut out, "message", &Value::from(message.as_str()));
        put(&mut out, "ecs.version", &Value::from(ECS_VERSION));
        put(
            &mut out,
            "service.name",
            &Value::from(self.base.service.as_str()),
        );
        put(
            &mut out,
            "service.node.name",
            &Value::from(self.base.node.as_str()),
        );
        put(
            &mut out,
            "event.dataset",
            &Value::from(self.base.dataset.as_str()),
        );
        put(&mut out, "log.logger", &Value::from(target));
        if let Some(file) = meta.file() {
            put(&mut out, "log.origin.file.name", &Value::from(file));
        }
        if let Some(line) = meta.line() {
            put(&mut out, "log.origin.file.line", &Value::from(line));
        }
        if let Some(t) = &trace_id {
            put(&mut out, "trace.id", &Value::from(t.as_str()));
        }
        if let Some(s) = &span_id {
            put(&mut out, "span.id", &Value::from(s.as_str()));
        }
        if let Some(t) = &error_type {
            put(&mut out, "error.type", &Value::from(t.as_str()));
        }
        if let Some(m) = &fields.error_message {
            put(&mut out, "error.message", &Value::from(m.as_str()));
        }
        if let Some(st) = &stack_trace {
            put(&mut out, "error.stack_trace", &Value::from(st.as_str()));
        }
        if let Some(name) = span_name {
            put(&mut out, "chat.span", &Value::from(name));
        }
        for (k, v) in &extra {
            if RESERVED.contains(&k.as_ref()) {
                put(&mut out, &format!("chat.{}", k.replace(['.', '@'], "_")), v);
            } else {
                put(&mut out, k, v);
            }
        }
        out.push('}');

        let alert = self.wants_alert(level).then(|| {
            // The callsite stands for the message template: the formatted message carries
            // values, the callsite does not.
            let fingerprint = format!(
                "log|{target}|{}|{}",
                meta.name(),
                error_type.as_deref().unwrap_or("")
            );
            let mut details: Vec<(String, String)> = vec![("logger".to_owned(), target.to_owned())];
            if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
                details.push(("location".to_owned(), format!("{file}:{line}")));
            }
            if let Some(t) = &error_type {
                details.push(("error.type".to_owned(), t.clone()));
            }
            for (k, v) in &extra {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                details.push((k.to_string(), v));
            }
            let mut error_chain: Vec<String> = fields.error_message.iter().cloned().collect();
            error_chain.extend(fields.error_chain.iter().cloned());
            let alert = Alert {
                title: message.clone(),
                message: fields
                    .error_message
                    .clone()
                    .unwrap_or_else(|| message.clone()),
                severity: Severity::Error,
                details,
                error_chain,
                trace_id: trace_id.clone(),
            };
            (fingerprint, alert)
        });
        Formatted { line: out, alert }
    }

    /// Trace and span id of the span's OpenTelemetry context, if the OTel layer is installed.
    fn otel_ids(&self, id: &Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&Value::from(s).to_string());
}

impl<S, W> Layer<S> for EcsLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Pretty logs, nothing shipped, no alerts: no line is ever built, so keep no fields.
        if self.stdout.is_none() && self.shipper.is_none() && !self.alerts.is_enabled() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanFields>() {
                values.record(&mut fields.0);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Events raised by the shipper or the alert sender (and the HTTP clients they drive)
        // go to stdout only: shipping them could feed on itself.
        let inside_worker = crate::guard::in_worker();
        let ship = self.shipper.as_ref().filter(|_| !inside_worker);
        let alert = !inside_worker && self.wants_alert(*event.metadata().level());
        if self.stdout.is_none() && ship.is_none() && !alert {
            return;
        }
        let formatted = self.format(event, &ctx);
        if let Some(w) = &self.stdout {
            let mut buf = Vec::with_capacity(formatted.line.len() + 1);
            buf.extend_from_slice(formatted.line.as_bytes());
            buf.push(b'\n');
            // Nowhere to report a failed write to stdout.
            let _ = w.make_writer_for(event.metadata()).write_all(&buf);
        }
        if let Some(shipper) = ship {
            shipper.try_send(formatted.line);
        }
        if alert && let Some((fingerprint, a)) = formatted.alert {
            self.alerts.raise(fingerprint, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_ecs_or_chat() {
        assert_eq!(ecs_key("http.request.method"), "http.request.method");
        assert_eq!(ecs_key("url.path"), "url.path");
        assert_eq!(ecs_key("request_id"), "http.request.id");
        assert_eq!(ecs_key("room_id"), "chat.room_id");
        assert_eq!(ecs_key("room.id"), "chat.room_id");
        assert_eq!(ecs_key("service.name"), "chat.service_name");
    }

    #[test]
    fn type_names_come_from_debug_renderings_only() {
        assert_eq!(
            type_name_of_debug("Io(Custom { kind: Other })").as_deref(),
            Some("Io")
        );
        assert_eq!(type_name_of_debug("Timeout").as_deref(), Some("Timeout"));
        assert_eq!(
            type_name_of_debug("VersionConflict { expected: 3 }").as_deref(),
            Some("VersionConflict")
        );
        assert_eq!(
            type_name_of_debug("connection refused (os error 111)"),
            None
        );
        assert_eq!(type_name_of_debug("Connection refused"), None);
    }
}
