//! Typed settings with documented defaults. [`TelemetryArgs`] is how a binary takes them
//! from its flags and environment (clap); the structs may also be filled by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Everything [`crate::init`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` in every log line and the OTel resource (unless `OTEL_SERVICE_NAME` is
    /// set), e.g. `chatd`. `event.dataset` is `<service_name>.log`.
    pub service_name: String,
    /// `service.node.name`: this instance, e.g. the host name.
    pub node_name: String,
    /// Stdout format. `CHAT_LOG_FORMAT` = `auto` (default) | `json` | `pretty`.
    pub format: LogFormat,
    /// Ship ECS lines to Elasticsearch. Off (`None`) unless `CHAT_ELASTICSEARCH_URL` is set.
    pub elasticsearch: Option<ElasticsearchSettings>,
    /// Post alerts to Slack. Off (`None`) unless `CHAT_SLACK_WEBHOOK_URL` is set.
    pub slack: Option<SlackSettings>,
    /// Export spans over OTLP (http/protobuf). `true` when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and `OTEL_SDK_DISABLED` is not `true`.
    /// The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables itself. Without it, spans
    /// still get trace ids (for log lines and propagation) but go nowhere.
    pub otlp: bool,
    /// Full URL of the OTLP traces endpoint (`http://collector:4318/v1/traces`), overriding
    /// the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables. `None` (default): from the environment.
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// ECS JSON unless stdout is a terminal, then [`LogFormat::Pretty`].
    #[default]
    Auto,
    /// One ECS JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The Elasticsearch log shipper.
#[derive(Clone)]
pub struct ElasticsearchSettings {
    /// `CHAT_ELASTICSEARCH_URL`, e.g. `https://es.example:9200`.
    pub url: String,
    /// `CHAT_ELASTICSEARCH_USERNAME` (basic auth, with `password`).
    pub username: Option<String>,
    /// `CHAT_ELASTICSEARCH_PASSWORD`. Never printed.
    pub password: Option<String>,
    /// `CHAT_ELASTICSEARCH_API_KEY`: the base64 `id:key` form Kibana shows ("encoded").
    /// Takes precedence over username/password. Never printed.
    pub api_key: Option<String>,
    /// `CHAT_ELASTICSEARCH_CA_CERT`: PEM file with the CA that signed the cluster's certificate
    /// (besides the built-in web PKI roots).
    pub ca_cert: Option<PathBuf>,
    /// `CHAT_ELASTICSEARCH_DATA_STREAM`, default `logs-chatd-default` (the `logs-*-*` index
    /// template applies: `logs-<dataset>-<namespace>`).
    pub data_stream: String,
    /// `CHAT_ELASTICSEARCH_BATCH_SIZE`: lines per `_bulk` request, default 500.
    pub batch_size: usize,
    /// Bytes of lines per `_bulk` request, default 5 MiB.
    pub batch_bytes: usize,
    /// `CHAT_ELASTICSEARCH_FLUSH_MS`: how long a partial batch waits for more lines, default
    /// 1000 ms.
    pub flush_interval: Duration,
    /// `CHAT_ELASTICSEARCH_QUEUE`: lines waiting to be shipped, default 10 000. More are dropped
    /// (and counted).
    pub queue_capacity: usize,
    /// `CHAT_ELASTICSEARCH_QUEUE_BYTES`: bytes of lines waiting to be shipped, default 16 MiB.
    pub queue_bytes: usize,
    /// Timeout of one `_bulk` request, default 10 s.
    pub request_timeout: Duration,
    /// First retry delay, default 100 ms; doubles per attempt, with jitter.
    pub backoff_initial: Duration,
    /// Longest retry delay, default 30 s.
    pub backoff_max: Duration,
    /// Raise the "log shipping failing" alert after failing continuously this long, default 60 s.
    pub failing_alert_after: Duration,
}

impl ElasticsearchSettings {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            api_key: None,
            ca_cert: None,
            data_stream: "logs-chatd-default".to_owned(),
            batch_size: 500,
            batch_bytes: 5 * 1024 * 1024,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 10_000,
            queue_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            failing_alert_after: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for ElasticsearchSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("data_stream", &self.data_stream)
            .field("batch_size", &self.batch_size)
            .field("batch_bytes", &self.batch_bytes)
            .field("flush_interval", &self.flush_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("failing_alert_after", &self.failing_alert_after)
            .finish()
    }
}

/// Slack alerts through an incoming webhook.
#[derive(Clone)]
pub struct SlackSettings {
    /// `CHAT_SLACK_WEBHOOK_URL`. It is a secret: never printed.
    pub webhook_url: String,
    /// `CHAT_SLACK_ERROR_EVENTS`: every ERROR log event becomes an alert, default `true`.
    pub error_events: bool,
    /// `CHAT_SLACK_DEDUP_WINDOW_SECS`: repeats of one fingerprint within this window are counted
    /// and summarised when it ends, default 300 s.
    pub dedup_window: Duration,
    /// `CHAT_SLACK_RATE_PER_SEC`: messages per second in the long run, default 1 (Slack's limit
    /// for a webhook).
    pub rate_per_sec: f64,
    /// `CHAT_SLACK_BURST`: messages that may go out at once, default 5.
    pub burst: u32,
    /// Alert commands waiting for the sender, default 1024; more are dropped (and counted).
    pub queue_capacity: usize,
    /// Messages waiting for the rate limiter, default 100; more are dropped as `rate_limited`.
    pub outbox_capacity: usize,
    /// Timeout of one webhook request, default 10 s.
    pub request_timeout: Duration,
    /// Attempts per message on 5xx or connection errors, default 3 (429 waits and does not
    /// count).
    pub max_attempts: u32,
}

impl SlackSettings {
    /// Defaults for everything but the webhook URL.
    pub fn new(webhook_url: impl Into<String>) -> Self {
        Self {
            webhook_url: webhook_url.into(),
            error_events: true,
            dedup_window: Duration::from_secs(300),
            rate_per_sec: 1.0,
            burst: 5,
            queue_capacity: 1024,
            outbox_capacity: 100,
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
        }
    }
}

impl std::fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackSettings")
            .field("webhook_url", &"<redacted>")
            .field("error_events", &self.error_events)
            .field("dedup_window", &self.dedup_window)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("burst", &self.burst)
            .field("queue_capacity", &self.queue_capacity)
            .field("outbox_capacity", &self.outbox_capacity)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl Settings {
    /// Plain JSON/pretty logs, nothing shipped, no alerts, no OTLP.
    pub fn new(service_name: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            node_name: node_name.into(),
            format: LogFormat::Auto,
            elasticsearch: None,
            slack: None,
            otlp: false,
            otlp_endpoint: None,
        }
    }
}

/// The telemetry settings as flags, each overridable by its environment variable. The binary
/// flattens them into its own settings (`#[command(flatten)]`), so `--help` lists every one
/// and no list of variables is kept by hand. Unset means the default of
/// [`ElasticsearchSettings::new`] / [`SlackSettings::new`]; an empty value counts as unset (the
/// compose files turn shipping off with `CHAT_ELASTICSEARCH_URL: ""`). Values are checked by
/// [`TelemetryArgs::settings`], which names the variable of a bad one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Log format on stdout: `auto` (pretty on a terminal, ECS JSON otherwise), `json` or
    /// `pretty`.
    #[arg(long, env = "CHAT_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Ship the log lines to this Elasticsearch (e.g. `https://es:9200`). Unset: no shipping.
    #[arg(long, env = "CHAT_ELASTICSEARCH_URL", global = true)]
    pub elasticsearch_url: Option<String>,
    /// Elasticsearch basic-auth user (with the password: both or neither).
    #[arg(long, env = "CHAT_ELASTICSEARCH_USERNAME", global = true)]
    pub elasticsearch_username: Option<String>,
    /// Elasticsearch basic-auth password. Never printed.
    #[arg(
        long,
        env = "CHAT_ELASTICSEARCH_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub elasticsearch_password: Option<String>,
    /// Elasticsearch API key in the base64 `id:key` ("encoded") form; wins over basic auth.
    /// Never printed.
    #[arg(
        long,
        env = "CHAT_ELASTICSEARCH_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub elasticsearch_api_key: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate.
    #[arg(long, env = "CHAT_ELASTICSEARCH_CA_CERT", global = true)]
    pub elasticsearch_ca_cert: Option<String>,
    /// Target data stream (default `logs-chatd-default`).
    #[arg(long, env = "CHAT_ELASTICSEARCH_DATA_STREAM", global = true)]
    pub elasticsearch_data_stream: Option<String>,
    /// Lines per `_bulk` request (default 500).
    #[arg(long, env = "CHAT_ELASTICSEARCH_BATCH_SIZE", global = true)]
    pub elasticsearch_batch_size: Option<String>,
    /// Longest wait of a partial batch, in milliseconds (default 1000).
    #[arg(long, env = "CHAT_ELASTICSEARCH_FLUSH_MS", global = true)]
    pub elasticsearch_flush_ms: Option<String>,
    /// Lines queued before new ones are dropped (default 10000).
    #[arg(long, env = "CHAT_ELASTICSEARCH_QUEUE", global = true)]
    pub elasticsearch_queue: Option<String>,
    /// Bytes queued before new lines are dropped (default 16 MiB).
    #[arg(long, env = "CHAT_ELASTICSEARCH_QUEUE_BYTES", global = true)]
    pub elasticsearch_queue_bytes: Option<String>,

    /// Post alerts to this Slack incoming webhook. Unset: no alerts. A secret: never printed.
    #[arg(
        long,
        env = "CHAT_SLACK_WEBHOOK_URL",
        hide_env_values = true,
        global = true
    )]
    pub slack_webhook_url: Option<String>,
    /// Whether every ERROR log event becomes an alert (default true).
    #[arg(long, env = "CHAT_SLACK_ERROR_EVENTS", global = true)]
    pub slack_error_events: Option<String>,
    /// Repeats of one alert within this many seconds are counted, not posted (default 300).
    #[arg(long, env = "CHAT_SLACK_DEDUP_WINDOW_SECS", global = true)]
    pub slack_dedup_window_secs: Option<String>,
    /// Slack messages per second in the long run (default 1).
    #[arg(long, env = "CHAT_SLACK_RATE_PER_SEC", global = true)]
    pub slack_rate_per_sec: Option<String>,
    /// Slack messages that may go out at once (default 5).
    #[arg(long, env = "CHAT_SLACK_BURST", global = true)]
    pub slack_burst: Option<String>,

    /// Export traces to this OTLP/HTTP collector (e.g. `http://collector:4318`); the other
    /// `OTEL_*` variables are read by the OpenTelemetry SDK itself. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The full traces URL, instead of `<endpoint>/v1/traces`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", global = true)]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,
    /// Turns trace export off whatever the endpoint.
    #[arg(long, env = "OTEL_SDK_DISABLED", global = true)]
    pub otel_sdk_disabled: Option<String>,
}

impl TelemetryArgs {
    /// The settings of `service_name` on `node_name`, checked.
    pub fn settings(
        &self,
        service_name: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Result<Settings> {
        let owned = |v: &Option<String>| set(v).map(str::to_owned);
        let mut settings = Settings::new(service_name, node_name);
        settings.format = match set(&self.log_format) {
            None | Some("auto") => LogFormat::Auto,
            Some("json") | Some("ecs") => LogFormat::Json,
            Some("pretty") | Some("text") => LogFormat::Pretty,
            Some(other) => {
                return Err(invalid(
                    "CHAT_LOG_FORMAT",
                    format!("{other:?} is not auto, json or pretty"),
                ));
            }
        };
        if let Some(url) = set(&self.elasticsearch_url) {
            let mut es = ElasticsearchSettings::new(url);
            es.username = owned(&self.elasticsearch_username);
            es.password = owned(&self.elasticsearch_password);
            es.api_key = owned(&self.elasticsearch_api_key);
            es.ca_cert = set(&self.elasticsearch_ca_cert).map(PathBuf::from);
            if let Some(ds) = set(&self.elasticsearch_data_stream) {
                es.data_stream = ds.to_owned();
            }
            if let Some(v) = set(&self.elasticsearch_batch_size) {
                es.batch_size = positive("CHAT_ELASTICSEARCH_BATCH_SIZE", v)?;
            }
            if let Some(v) = set(&self.elasticsearch_flush_ms) {
                es.flush_interval =
                    Duration::from_millis(positive("CHAT_ELASTICSEARCH_FLUSH_MS", v)? as u64);
            }
            if let Some(v) = set(&self.elasticsearch_queue) {
                es.queue_capacity = positive("CHAT_ELASTICSEARCH_QUEUE", v)?;
            }
            if let Some(v) = set(&self.elasticsearch_queue_bytes) {
                es.queue_bytes = positive("CHAT_ELASTICSEARCH_QUEUE_BYTES", v)?;
            }
            if es.username.is_some() != es.password.is_some() {
                return Err(invalid(
                    "CHAT_ELASTICSEARCH_USERNAME",
                    "set both CHAT_ELASTICSEARCH_USERNAME and CHAT_ELASTICSEARCH_PASSWORD, or neither"
                        .to_owned(),
                ));
            }
            settings.elasticsearch = Some(es);
        }
        if let Some(url) = set(&self.slack_webhook_url) {
            let mut slack = SlackSettings::new(url);
            if let Some(v) = set(&self.slack_error_events) {
                slack.error_events = boolean("CHAT_SLACK_ERROR_EVENTS", v)?;
            }
            if let Some(v) = set(&self.slack_dedup_window_secs) {
                slack.dedup_window =
                    Duration::from_secs(positive("CHAT_SLACK_DEDUP_WINDOW_SECS", v)? as u64);
            }
            if let Some(v) = set(&self.slack_rate_per_sec) {
                slack.rate_per_sec = v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| {
                        invalid(
                            "CHAT_SLACK_RATE_PER_SEC",
                            format!("{v:?} is not a positive number"),
                        )
                    })?;
            }
            if let Some(v) = set(&self.slack_burst) {
                slack.burst = positive("CHAT_SLACK_BURST", v)? as u32;
            }
            settings.slack = Some(slack);
        }
        let sdk_disabled = set(&self.otel_sdk_disabled) == Some("true");
        settings.otlp = !sdk_disabled
            && (set(&self.otel_exporter_otlp_endpoint).is_some()
                || set(&self.otel_exporter_otlp_traces_endpoint).is_some());
        Ok(settings)
    }
}

/// A value that is there: set and not blank, trimmed.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn positive(name: &'static str, v: &str) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(name, format!("{v:?} is not a positive whole number")))
}

fn boolean(name: &'static str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, format!("{v:?} is not true or false"))),
    }
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::InvalidSetting { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    fn from(args: &[&str]) -> Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("chatd").chain(args.iter().copied()))
            .map_err(|e| invalid("args", e.to_string()))?;
        cli.telemetry.settings("chatd", "n1")
    }

    #[test]
    fn everything_is_off_by_default() {
        let s = from(&[]).unwrap();
        assert_eq!(s.format, LogFormat::Auto);
        assert!(s.elasticsearch.is_none() && s.slack.is_none() && !s.otlp);
    }

    #[test]
    fn elasticsearch_and_slack_are_read_and_secrets_are_not_printed() {
        let s = from(&[
            "--elasticsearch-url=http://es:9200",
            "--elasticsearch-username=elastic",
            "--elasticsearch-password=hunter2",
            "--elasticsearch-batch-size=7",
            "--slack-webhook-url=https://hooks.slack.com/services/SECRET",
            "--slack-dedup-window-secs=60",
            "--slack-error-events=false",
            "--otel-exporter-otlp-endpoint=http://collector:4318",
            "--log-format=json",
        ])
        .unwrap();
        let es = s.elasticsearch.as_ref().unwrap();
        assert_eq!(es.batch_size, 7);
        assert_eq!(es.data_stream, "logs-chatd-default");
        let slack = s.slack.as_ref().unwrap();
        assert_eq!(slack.dedup_window, Duration::from_secs(60));
        assert!(!slack.error_events);
        assert!(s.otlp);
        assert_eq!(s.format, LogFormat::Json);
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("SECRET"),
            "{printed}"
        );
    }

    #[test]
    fn empty_values_are_unset() {
        let s = from(&["--elasticsearch-url=", "--log-format= ", "--slack-burst="]).unwrap();
        assert!(s.elasticsearch.is_none() && s.slack.is_none());
        assert_eq!(s.format, LogFormat::Auto);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(from(&["--log-format=xml"]).is_err());
        assert!(from(&["--elasticsearch-url=http://es", "--elasticsearch-queue=0"]).is_err());
        assert!(
            from(&[
                "--elasticsearch-url=http://es",
                "--elasticsearch-username=u"
            ])
            .is_err()
        );
        assert!(
            from(&[
                "--slack-webhook-url=https://hooks",
                "--slack-rate-per-sec=-1"
            ])
            .is_err()
        );
        assert!(
            !from(&[
                "--otel-exporter-otlp-endpoint=http://c",
                "--otel-sdk-disabled=true"
            ])
            .unwrap()
            .otlp
        );
    }
}
