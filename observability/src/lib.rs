//! Telemetry for `chatd`, initialised once by the binary with [`init`].
//!
//! - **Logs**: Elastic Common Schema JSON lines on stdout ([`ecs`]), or a human-readable format
//!   when stdout is a terminal. `RUST_LOG` sets the filter (default `info`).
//! - **Log shipping**: the same lines, batched into an Elasticsearch data stream ([`shipper`]).
//! - **Alerts**: every ERROR event, and whatever the application raises through [`Alerts`],
//!   posted to Slack, deduplicated and rate limited ([`alerts`]).
//! - **Traces**: `tracing` spans become OpenTelemetry spans, exported over OTLP when configured;
//!   W3C trace-context helpers in [`trace`].
//! - **Metrics**: counters and a gauge through the `metrics` facade (the binary installs the
//!   recorder): `chat_log_shipper_events_total{outcome}`, `chat_log_shipper_queue_depth`,
//!   `chat_log_shipper_batches_total{outcome}`, `chat_alerts_total{outcome}`.
//!
//! Nothing here may block or fail the server because Elasticsearch, Slack or the collector is
//! slow or down: producers only ever `try_send` onto bounded queues, and one task per sink owns
//! its client. [`layers`] builds the same pieces as a layer for a local subscriber, for tests.

pub mod alerts;
mod backoff;
pub mod ecs;
mod error;
mod guard;
pub mod settings;
pub mod shipper;
pub mod trace;

#[cfg(feature = "testing")]
pub mod testing;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use alerts::{Alert, AlertSender, AlertStats, Alerts, Severity};
pub use error::{Error, Result};
pub use settings::{ElasticsearchSettings, LogFormat, Settings, SlackSettings, TelemetryArgs};
pub use shipper::{Shipper, ShipperHandle, ShipperStats};

/// A boxed layer for subscriber `S`.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync + 'static>;

/// What [`init`] or [`layers`] started; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    alerts: Alerts,
    alert_sender: Option<AlertSender>,
    shipper: Option<Shipper>,
    tracer_provider: Option<SdkTracerProvider>,
    installed: bool,
}

impl Telemetry {
    /// The handle for raising and resolving alerts ([`Alerts::disabled`] without Slack).
    pub fn alerts(&self) -> Alerts {
        self.alerts.clone()
    }

    /// The shipper's counters, when log shipping is on.
    pub fn shipper_stats(&self) -> Option<ShipperStats> {
        self.shipper.as_ref().map(Shipper::stats)
    }

    /// The alert sender's counters (all zero without Slack).
    pub fn alert_stats(&self) -> AlertStats {
        self.alerts.stats()
    }

    /// Whether this call installed the global subscriber ([`init`] called a second time in one
    /// process does not).
    pub fn installed_global_subscriber(&self) -> bool {
        self.installed
    }

    /// Flushes the shipper and the alert sender (side by side) and the span exporter, giving up
    /// on what is still unsent after `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let at = tokio::time::Instant::now() + deadline;
        let shipper = async {
            if let Some(s) = self.shipper {
                s.shutdown(deadline).await;
            }
        };
        let alerts = async {
            if let Some(a) = self.alert_sender {
                a.shutdown(deadline).await;
            }
        };
        tokio::join!(shipper, alerts);
        if let Some(provider) = self.tracer_provider {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            let flush = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(left.max(Duration::from_millis(100)))
            });
            let _ = tokio::time::timeout(left + Duration::from_secs(1), flush).await;
        }
    }
}

/// Installs the global subscriber: the `RUST_LOG` filter (default `info`), the OpenTelemetry
/// layer, ECS JSON (or pretty) logs on stdout, log shipping and alerts as configured, and the
/// W3C trace-context propagator. Must run inside a tokio runtime when shipping, alerts or OTLP
/// are on.
///
/// Calling it again in the same process (tests starting several servers) does not install
/// anything global again; it returns a [`Telemetry`] with its own [`Alerts`] (if Slack is
/// configured) and no shipper: log lines keep going where the first call sent them.
pub fn init(settings: Settings) -> Result<Telemetry> {
    if tracing::dispatcher::has_been_set() {
        return second_init(&settings);
    }
    type Filtered = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, warnings, mut telemetry) =
        build::<Filtered, _>(settings.clone(), std::io::stdout, None)?;
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_err()
    {
        // Lost a race with another initialiser: behave like a second call.
        return second_init(&settings);
    }
    telemetry.installed = true;
    if let Some(p) = &telemetry.tracer_provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(
        service = %settings.service_name,
        shipping = telemetry.shipper.is_some(),
        alerts = telemetry.alerts.is_enabled(),
        otlp = settings.otlp,
        "telemetry initialised"
    );
    Ok(telemetry)
}

fn second_init(settings: &Settings) -> Result<Telemetry> {
    let (alerts, alert_sender) = match &settings.slack {
        Some(slack) => {
            let (a, s) = Alerts::start(slack, &settings.service_name, &settings.node_name)?;
            (a, Some(s))
        }
        None => (Alerts::disabled(), None),
    };
    Ok(Telemetry {
        alerts,
        alert_sender,
        shipper: None,
        tracer_provider: None,
        installed: false,
    })
}

/// The layers [`init`] installs, without a filter, for a subscriber of your own (tests use
/// `tracing::subscriber::with_default`). Lines go to stdout.
pub fn layers<S>(settings: Settings) -> Result<(BoxedLayer<S>, Telemetry)>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    layers_with_writer(settings, std::io::stdout)
}

/// [`layers`] writing lines to `writer` instead of stdout.
pub fn layers_with_writer<S, W>(settings: Settings, writer: W) -> Result<(BoxedLayer<S>, Telemetry)>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (layer, _warnings, telemetry) = build(settings, writer, None)?;
    Ok((layer, telemetry))
}

pub(crate) fn build<S, W>(
    settings: Settings,
    writer: W,
    hook: Option<trace::ProviderHook>,
) -> Result<(BoxedLayer<S>, Vec<String>, Telemetry)>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let (alerts, alert_sender) = match &settings.slack {
        Some(slack) => {
            let (a, s) = Alerts::start(slack, &settings.service_name, &settings.node_name)?;
            (a, Some(s))
        }
        None => (Alerts::disabled(), None),
    };
    let shipper = settings
        .elasticsearch
        .as_ref()
        .map(|es| Shipper::start(es, alerts.clone()))
        .transpose()?;
    let (provider, warnings) = trace::provider(&settings, hook)?;
    let tracer = provider.tracer(settings.service_name.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);

    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let error_alerts = settings.slack.as_ref().is_some_and(|s| s.error_events);
    let ecs = |stdout| {
        ecs::EcsLayer::new(
            &settings.service_name,
            &settings.node_name,
            stdout,
            shipper.as_ref().map(Shipper::handle),
            alerts.clone(),
            error_alerts,
        )
    };
    // Not an `Option` layer for the pretty one: a `None` layer caps the level hint at OFF.
    let layer = if json {
        otel.and_then(ecs(Some(writer))).boxed()
    } else {
        let pretty = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(writer);
        otel.and_then(ecs(None)).and_then(pretty).boxed()
    };
    let telemetry = Telemetry {
        alerts,
        alert_sender,
        shipper,
        tracer_provider: Some(provider),
        installed: false,
    };
    Ok((layer, warnings, telemetry))
}
