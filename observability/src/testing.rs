//! Test support (feature `testing`): spans recorded in memory, so tests can assert that the
//! spans of one request share a trace id.

use std::sync::OnceLock;

pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

use crate::{BoxedLayer, Result, Settings, Telemetry};

/// [`crate::layers_with_writer`] with every finished span also exported, synchronously, to the
/// returned in-memory exporter.
pub fn layers_with_exporter<S, W>(
    settings: Settings,
    writer: W,
) -> Result<(BoxedLayer<S>, Telemetry, InMemorySpanExporter)>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let exporter = InMemorySpanExporter::default();
    let hooked = exporter.clone();
    let (layer, _warnings, telemetry) = crate::build(
        settings,
        writer,
        Some(Box::new(move |b| b.with_simple_exporter(hooked))),
    )?;
    Ok((layer, telemetry, exporter))
}

static GLOBAL: OnceLock<InMemorySpanExporter> = OnceLock::new();

/// Installs the global subscriber like [`crate::init`], with an in-memory exporter shared by
/// the whole process (tests run in parallel: filter its spans by your trace id). Later calls
/// return the same exporter. If [`crate::init`] installed the subscriber first, the exporter
/// stays empty.
pub fn init(settings: Settings) -> Result<(Telemetry, InMemorySpanExporter)> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Filtered = tracing_subscriber::layer::Layered<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >;
    if let Some(e) = GLOBAL.get() {
        return Ok((crate::init(settings)?, e.clone()));
    }
    if tracing::dispatcher::has_been_set() {
        let e = GLOBAL.get_or_init(InMemorySpanExporter::default).clone();
        return Ok((crate::init(settings)?, e));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (layer, telemetry, exporter) =
        layers_with_exporter::<Filtered, _>(settings.clone(), std::io::stdout)?;
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_err()
    {
        let e = GLOBAL.get_or_init(InMemorySpanExporter::default).clone();
        return Ok((crate::init(settings)?, e));
    }
    let e = GLOBAL.get_or_init(|| exporter).clone();
    Ok((telemetry, e))
}
